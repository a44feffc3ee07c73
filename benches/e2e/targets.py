"""The systems under test and the driver process that loads them: `open_impl(impl, config,
work_dir)` starts one implementation ("redis", "dynacore-rust", "dynacore-python", ...), starts
a driver process against it, loads the records, and yields an `ImplSession` whose
`run(workload)` measures one workload. Leaving it stops the driver and the servers.

Mode switch: every dynacore implementation runs the same 3-node LocalCluster (n=3 by default) on
one data directory; "dynacore-<backend>" starts each node and the driver with
DYNACORE_BACKEND=<backend>; "dynacore-<backend>-nosync" also runs the nodes with
`serve --no-sync` (commits without fsync: the match for a Redis without persistence). The
records are loaded once (by the first dynacore mode of the run) and the later modes restart the
nodes on the same data: every backend stores the same bytes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from dynacore.localcluster import LocalCluster

from . import procs, ycsb
from .redis_pair import RedisPair

REDIS_IMPLS = ("redis", "redis-threads", "redis-fsync")
DYNACORE_PREFIX = "dynacore-"
NOSYNC = "-nosync"
DRIVER_READY_TIMEOUT_S = 60.0
REPLY_SLACK_S = 120.0  # a reply may come this long after the run's own duration
LOAD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run's parameters (the defaults are the issue's: 100k keys of 100 bytes,
    64 concurrent requests, n=3 r=2 w=2)."""

    records: int = ycsb.DEFAULT_RECORDS
    value_size_bytes: int = ycsb.DEFAULT_VALUE_SIZE_BYTES
    concurrency: int = ycsb.DEFAULT_CONCURRENCY
    warmup_s: float = 2.0
    duration_s: float = 10.0
    workloads: tuple[str, ...] = ("A", "B", "C")
    impls: tuple[str, ...] = (
        "redis",
        "redis-fsync",
        "dynacore-rust",
        "dynacore-python",
        "dynacore-rust-nosync",
        "dynacore-python-nosync",
    )
    seed: int = 1
    nodes: int = 3
    n: int = 3
    r: int = 2
    w: int = 2
    partitions: int = 64
    redis_appendonly: bool = False

    def __post_init__(self) -> None:
        for name in self.workloads:
            ycsb.workload(name)
        for impl in self.impls:
            check_impl(impl)
        checks = {
            f"records in [2, {ycsb.MAX_RECORDS}]": 2 <= self.records <= ycsb.MAX_RECORDS,
            "concurrency in [1, 4096]": 1 <= self.concurrency <= 4096,
            "duration_s > 0, warmup_s >= 0": self.duration_s > 0 and self.warmup_s >= 0,
            "1 <= r, w <= n <= nodes": 1
            <= min(self.r, self.w)
            <= max(self.r, self.w)
            <= self.n
            <= self.nodes,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"bad benchmark config: need {', '.join(failed)}")


def check_impl(impl: str) -> str:
    backends = ("rust", "cython", "python")
    if impl in REDIS_IMPLS or dynacore_mode(impl)[0] in backends:
        return impl
    names = [*REDIS_IMPLS, *(DYNACORE_PREFIX + b + s for b in backends for s in ("", NOSYNC))]
    raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(names)}")


def dynacore_mode(impl: str) -> tuple[str, bool]:
    """(backend, durable) of "dynacore-<backend>[-nosync]": durable nodes sync every commit
    (the default); -nosync runs `serve --no-sync` (no fsync, like Redis without persistence)."""
    name = impl.removeprefix(DYNACORE_PREFIX)
    if name.endswith(NOSYNC):
        return name.removesuffix(NOSYNC), False
    return name, True


QUICK = BenchConfig(records=10_000, warmup_s=0.5, duration_s=3.0)


@dataclass(frozen=True)
class Result:
    """One workload's figures on one implementation."""

    impl: str
    workload: str
    summary: ycsb.Summary
    info: dict[str, Any] = field(default_factory=dict)


def _package_root() -> tuple[str, Path]:
    """This package's import name and the directory to put on sys.path to import it, so that
    the driver runs whether the harness was imported as `benches.e2e` or (by pytest) `e2e`."""
    package = __package__ or "benches.e2e"
    root = Path(__file__).resolve().parents[len(package.split("."))]
    return package, root


class DriverProcess:
    """The load driver as a child process, spoken to in JSON lines (see driver.py)."""

    def __init__(
        self,
        target: str,
        addresses: list[str],
        config: BenchConfig,
        log_path: Path,
        env_extra: dict[str, str],
    ) -> None:
        package, root = _package_root()
        env = {**os.environ, **env_extra}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", f"{package}.driver", "--target", target]
        for address in addresses:
            argv += ["--address", address]
        argv += [
            "--concurrency", str(config.concurrency),
            "--value-size-bytes", str(config.value_size_bytes),
            "--seed", str(config.seed),
            "--r", str(config.r),
            "--w", str(config.w),
        ]  # fmt: skip
        self.log_path = log_path
        self.process = procs.start(argv, log_path, env=env, pipes=True)
        try:
            ready = self._read_reply(DRIVER_READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        self.info: dict[str, Any] = ready["info"]

    def _read_reply(self, timeout_s: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout_s)
        line = stdout.readline() if readable else ""
        if not line:
            raise procs.BenchError(
                f"driver gave no reply within {timeout_s}s:\n{procs.tail(self.log_path)}"
            )
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise procs.BenchError(f"driver failed: {reply.get('error')}")
        return reply

    def send(self, command: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One command, its (successful) reply; BenchError for an error reply or none."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        return self._read_reply(timeout_s)

    def request(self, command: dict[str, Any], timeout_s: float) -> ycsb.Summary:
        """A load or run command: its summary."""
        return ycsb.Summary.from_json(self.send(command, timeout_s)["summary"])

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=procs.STOP_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        procs.stop(self.process)

    def __enter__(self) -> DriverProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class ImplSession:
    """One implementation, started and loaded, with its driver: measure workloads on it."""

    impl: str
    config: BenchConfig
    driver: DriverProcess
    server_pids: list[int]
    load: ycsb.Summary | None = None

    def run(self, workload: str) -> Result:
        config = self.config
        command = {
            "cmd": "run",
            "workload": workload,
            "records": config.records,
            "seed": config.seed,
            "warmup_s": config.warmup_s,
            "duration_s": config.duration_s,
            "cpu_pids": self.server_pids,
        }
        timeout_s = config.warmup_s + config.duration_s + REPLY_SLACK_S
        load_before = os.getloadavg()[0]
        summary = self.driver.request(command, timeout_s)
        machine = {"loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0]}
        return Result(self.impl, workload, summary, {**self.driver.info, **machine})

    def prepare(self) -> None:
        """Have the driver build every workload's plan now, outside any measured window."""
        for workload in self.config.workloads:
            command = {"workload": workload, "records": self.config.records}
            self.driver.send({"cmd": "prepare", "seed": self.config.seed, **command}, 60.0)

    def load_records(self) -> ycsb.Summary:
        command = {"cmd": "load", "records": self.config.records, "cpu_pids": self.server_pids}
        summary = self.driver.request(command, LOAD_TIMEOUT_S)
        if summary.errors or summary.ops != self.config.records:
            raise procs.BenchError(f"{self.impl}: load incomplete: {summary}")
        self.load = summary
        return summary


@contextmanager
def open_redis(impl: str, config: BenchConfig, work_dir: Path) -> Iterator[ImplSession]:
    """Redis primary + replica: "redis" and "redis-threads" without persistence (or with
    --redis-appendonly), "redis-fsync" with an AOF fsynced before every write is acknowledged."""
    fsync = impl == "redis-fsync"
    appendonly = config.redis_appendonly or fsync
    pair = RedisPair(work_dir / "redis", appendonly, appendfsync="always" if fsync else "everysec")
    with pair:
        target = "redis-threads" if impl == "redis-threads" else "redis"
        log = work_dir / f"driver-{impl}.log"
        with DriverProcess(target, [pair.primary_address], config, log, {}) as driver:
            pids = [p.pid for p in pair.processes.values()]
            session = ImplSession(impl, config, driver, pids)
            session.load_records()
            pair.wait_replicated()
            if pair.dbsize("replica") != config.records:
                raise procs.BenchError("redis replica does not hold every loaded record")
            yield session


def loaded_marker(cluster_dir: Path, config: BenchConfig) -> Path:
    """Present once a load of this shape completed in `cluster_dir` (reused by later modes, and
    by later runs given the same --work-dir)."""
    shape = f"{config.records}r-{config.value_size_bytes}b-{config.nodes}x{config.partitions}q"
    return cluster_dir / f"loaded-{shape}-n{config.n}-seed{config.seed}"


@contextmanager
def open_dynacore(impl: str, config: BenchConfig, work_dir: Path) -> Iterator[ImplSession]:
    """A LocalCluster on `work_dir/cluster`, every node and the driver on the impl's backend."""
    backend, durable = dynacore_mode(impl)
    cluster_dir = work_dir / "cluster"
    cluster = LocalCluster(
        cluster_dir,
        nodes_count=config.nodes,
        partitions=config.partitions,
        n=config.n,
        extra_args=[] if durable else ["--no-sync"],
    )
    env = {**os.environ, "DYNACORE_BACKEND": backend}
    try:
        cluster.base_dir.mkdir(parents=True, exist_ok=True)
        for node in cluster.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            node.start(env)
        for node in cluster.nodes:
            cluster.wait_ready(node)
        log = work_dir / f"driver-{impl}.log"
        env_extra = {"DYNACORE_BACKEND": backend}
        with DriverProcess("dynacore", cluster.addresses, config, log, env_extra) as driver:
            if driver.info.get("backend") != backend:
                raise procs.BenchError(f"driver runs backend {driver.info.get('backend')}")
            pids = [node.process.pid for node in cluster.nodes if node.process is not None]
            session = ImplSession(impl, config, driver, pids)
            marker = loaded_marker(cluster_dir, config)
            if not marker.exists():
                session.load_records()
                marker.touch()
            yield session
    finally:
        codes = stop_cluster(cluster)
        if any(code != 0 for code in codes):
            print(f"warning: dynacore node exit codes {codes}", file=sys.stderr)


def stop_cluster(
    cluster: LocalCluster, timeout_s: float = procs.STOP_TIMEOUT_S
) -> list[int | None]:
    """One SIGTERM to every node, then wait for each (SIGKILL after `timeout_s`). Not
    LocalCluster.stop(): it signals each node twice, and a second SIGTERM during a node's clean
    shutdown kills it (exit -15)."""
    for node in cluster.nodes:
        node.signal(signal.SIGTERM)
    codes = []
    for node in cluster.nodes:
        code = node.wait(timeout_s)
        if code is None and node.running:
            node.kill()
            code = node.wait(timeout_s)
        codes.append(code)
    return codes


@contextmanager
def open_impl(impl: str, config: BenchConfig, work_dir: Path) -> Iterator[ImplSession]:
    """Start `impl`, its driver, and load it (see the module doc); stop all of it on exit."""
    check_impl(impl)
    opener = open_redis if impl in REDIS_IMPLS else open_dynacore
    started = time.monotonic()
    with opener(impl, config, work_dir) as session:
        session.prepare()
        print(f"[{impl}] ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        yield session
