"""Profiling the dynacore side of a run: py-spy samples every node process and the driver while
one workload runs, and the samples become a table of where the time goes (self and inclusive
share per function, aggregated over the nodes), beside each process's CPU use from psutil.

py-spy is a sampling profiler that attaches to a running process (`pip install py-spy`; it needs
ptrace, which root has). Idle threads are not sampled (py-spy drops threads that sleep), but a
thread that is runnable and waiting for a core is: on a loaded machine a share is "of the time
the process wanted to run". The µs-per-op figures scale the shares by the CPU per op the driver
measured (servers' and its own), which is the load-independent measure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import procs
from .targets import ImplSession, Result

SAMPLE_RATE_HZ = 250
TOP_FUNCTIONS = 25
PYSPY_EXIT_TIMEOUT_S = 60.0
_LINE_NUMBER = re.compile(r":\d+\)$")


def py_spy() -> str:
    """The py-spy executable (beside this Python first, then on PATH)."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise procs.BenchError("py-spy is not installed: pip install py-spy")
    return found


@dataclass(frozen=True)
class Profile:
    """Samples of a set of processes: stacks (root first) with their counts."""

    stacks: Counter[tuple[str, ...]]

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def self_shares(self) -> list[tuple[str, float]]:
        """Each function's share of samples in which it was the innermost frame."""
        leaves: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            leaves[stack[-1]] += count
        return self._shares(leaves)

    def inclusive_shares(self) -> list[tuple[str, float]]:
        """Each function's share of samples in which it was anywhere on the stack."""
        anywhere: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            for frame in set(stack):
                anywhere[frame] += count
        return self._shares(anywhere)

    def area_shares(self) -> list[tuple[str, float]]:
        """Self time grouped by the code area of the innermost frame (see `area_of`)."""
        areas: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            areas[area_of(stack[-1])] += count
        return self._shares(areas)

    def _shares(self, counts: Counter[str]) -> list[tuple[str, float]]:
        total = max(self.samples, 1)
        return [(frame, count / total) for frame, count in counts.most_common()]


AREAS: tuple[tuple[str, str], ...] = (  # (path prefix, area), first match wins
    ("trio/_core/_thread_cache.py", "trio threads (to_thread)"),
    ("trio/_threads.py", "trio threads (to_thread)"),
    ("trio/_core/_io_epoll.py", "trio epoll (I/O wait and wake-ups)"),
    ("trio/_core/", "trio scheduler"),
    ("trio/", "trio sockets, streams, channels"),
    ("outcome/", "trio scheduler"),
    ("<attrs generated", "trio scheduler"),
    ("redis/", "redis-py"),
    ("asyncio/", "asyncio"),
    ("e2e/", "benchmark driver"),
)


def area_of(frame: str) -> str:
    """The code area of a frame `function (path)`: dynacore's subpackage or module, trio's
    scheduler / epoll / sockets / threads, or the library; Rust calls count in their caller."""
    _, _, path = frame.rpartition(" (")
    path = path.rstrip(")")
    if path.startswith("dynacore/"):
        parts = path.split("/")
        return "dynacore/" + parts[1] + ("/" if len(parts) > 2 else "")
    for prefix, area in AREAS:
        if path.startswith(prefix) or frame.startswith(prefix):
            return area
    return "stdlib and other (" + path.split("/")[0] + ")"


def parse_raw(text: str) -> Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) format: `frame;frame;...;frame count` per line, frames as
    `function (file:line)`; line numbers are dropped so that a function is one entry. The first
    frame (the thread name) is dropped too."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack_text.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if frames:
            stacks[tuple(frames)] += int(count)
    return stacks


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    times = {}
    for pid in pids:
        try:
            cpu = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        times[pid] = cpu.user + cpu.system
    return times


def profile_run(session: ImplSession, workload: str, out_dir: Path) -> Result:
    """Run `workload` on the session while py-spy samples each dynacore node (Redis is not
    Python: only its driver is sampled) and the driver; write the raw samples and `summary.txt`
    into `out_dir`; the run's result as usual."""
    out_dir.mkdir(parents=True, exist_ok=True)
    duration_s = session.config.warmup_s + session.config.duration_s
    python_servers = session.server_pids if session.impl.startswith("dynacore-") else []
    roles = {pid: f"node{i + 1}" for i, pid in enumerate(python_servers)}
    roles[session.driver.pid] = "driver"
    spies: dict[int, subprocess.Popen[str]] = {}
    for pid, role in roles.items():
        argv = [py_spy(), "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE_HZ)]
        argv += ["--duration", str(max(1, round(duration_s))), "--format", "raw", "--nonblocking"]
        argv += ["--output", str(out_dir / f"{role}.txt")]
        spies[pid] = procs.start(argv, out_dir / f"py-spy-{role}.log")
    cpu_before = cpu_seconds(list(roles))
    try:
        result = session.run(workload)
        cpu_after = cpu_seconds(list(roles))
    finally:
        for spy in spies.values():
            try:
                spy.wait(timeout=PYSPY_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                procs.stop(spy)
    elapsed_s = result.summary.duration_s + session.config.warmup_s
    cpu_share = {
        roles[pid]: (cpu_after[pid] - cpu_before[pid]) / elapsed_s
        for pid in roles
        if pid in cpu_before and pid in cpu_after
    }
    summary = summarize(out_dir, roles, cpu_share, result)
    (out_dir / "summary.txt").write_text(summary)
    print(summary, file=sys.stderr)
    return result


def load_profile(paths: list[Path]) -> Profile:
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        if path.exists():
            stacks.update(parse_raw(path.read_text(errors="replace")))
    return Profile(stacks)


def summarize(
    out_dir: Path, roles: dict[int, str], cpu_share: dict[str, float], result: Result
) -> str:
    """The findings as text: CPU per process, then top functions for nodes and driver."""
    s = result.summary
    lines = [
        f"{result.impl} workload {result.workload}: {s.ops_per_s:,.0f} ops/s, "
        f"p50 {s.p50_ms} ms, p99 {s.p99_ms} ms",
        "CPU use during the run (1.0 = one core busy): "
        + ", ".join(f"{role} {share:.2f}" for role, share in sorted(cpu_share.items())),
    ]
    node_files = [out_dir / f"{role}.txt" for role in roles.values() if role != "driver"]
    parts = [("nodes", node_files)] if node_files else []
    for title, files in [*parts, ("driver", [out_dir / "driver.txt"])]:
        profile = load_profile(files)
        cpu_us = s.driver_cpu_us_per_op if title == "driver" else s.server_cpu_us_per_op
        lines.append(
            f"\n== {title}: {profile.samples} samples; CPU {cpu_us:.0f} µs per op "
            f"({'the driver' if title == 'driver' else 'all nodes together'}) =="
        )
        lines.append("-- self time by area (share, and µs of CPU per op) --")
        lines += [
            f"{share:6.1%}  {share * cpu_us:7.1f} µs  {area}"
            for area, share in profile.area_shares()
            if share >= 0.005
        ]
        for label, shares in (
            ("self (innermost frame)", profile.self_shares()),
            ("inclusive (anywhere on the stack)", profile.inclusive_shares()),
        ):
            lines.append(f"-- {label} --")
            lines += [f"{share:6.1%}  {frame}" for frame, share in shares[:TOP_FUNCTIONS]]
    return "\n".join(lines) + "\n"
