"""Data-path benchmark: a 3-node loopback cluster of real `dynacore serve` processes (LMDB,
durable commits, n=3 r=2 w=2) driven by one AsyncClient process with 64 concurrent requests of
100-byte values, for the 95/5 and 50/50 read/write mixes, on the rust and the python backends
(every node and the client on the same one), with durable commits and with `--no-sync`.

The client runs in its own process (it must import its backend fresh): a worker that reads
"ROUND <ops> <read_fraction>" lines on stdin and answers one JSON line of figures per round, so
that pytest-benchmark times the rounds themselves. Each round's ops/s, p50 and p99 latency land
in extra_info. As a script it is the quick driver used while profiling:

    python benches/bench_datapath.py --backend rust --mix 0.95 --ops 20000 [--no-sync]
    python benches/bench_datapath.py worker --seeds 127.0.0.1:7001   (the benchmark's worker)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from dynacore.client import AsyncClient
from dynacore.localcluster import LocalCluster

CONCURRENCY = 64
VALUE_SIZE_BYTES = 100
KEY_COUNT = 10_000
OPS_PER_ROUND = 4_000
ROUNDS = 3
MIXES = {"95/5": 0.95, "50/50": 0.50}
BENCH_BACKENDS = ("rust", "python")
# "durable": every commit synced (the default); "nosync": `serve --no-sync`, the unsafe fast mode
# (a machine crash may undo the last commits), the fair match for a Redis without appendfsync.
BENCH_CLUSTERS = [(b, s) for s in ("durable", "nosync") for b in BENCH_BACKENDS]
ROUND_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Figures:
    """One round: how many ops, how long, and the latency percentiles."""

    ops: int
    elapsed_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    read_p99_ms: float
    write_p99_ms: float
    errors: int


def key_of(index: int) -> bytes:
    return b"key%08d" % index


def percentile(sorted_values: list[float], fraction: float) -> float:
    assert sorted_values and 0.0 <= fraction <= 1.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def preload(client: AsyncClient, key_count: int) -> None:
    """Write every key once, so that reads find values."""
    value = b"p" * VALUE_SIZE_BYTES
    for start in range(0, key_count, 1000):
        await client.put_many(
            [(key_of(i), value) for i in range(start, min(start + 1000, key_count))]
        )


async def run_round(
    client: AsyncClient, ops: int, read_fraction: float, concurrency: int, rng: random.Random
) -> Figures:
    """`ops` requests from `concurrency` workers; each op is a read with `read_fraction`."""
    plan = [(rng.random() < read_fraction, rng.randrange(KEY_COUNT)) for _ in range(ops)]
    value = rng.randbytes(VALUE_SIZE_BYTES)
    latencies_s: list[float] = []
    by_kind_s: dict[bool, list[float]] = {True: [], False: []}
    errors = 0
    next_op = 0

    async def worker() -> None:
        nonlocal next_op, errors
        while next_op < len(plan):
            is_read, index = plan[next_op]
            next_op += 1
            start = time.perf_counter()
            try:
                if is_read:
                    await client.get(key_of(index), r=2)
                else:
                    await client.put(key_of(index), value, w=2)
            except Exception:
                errors += 1
                continue
            latency_s = time.perf_counter() - start
            latencies_s.append(latency_s)
            by_kind_s[is_read].append(latency_s)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed_s = time.perf_counter() - started
    latencies_s.sort()

    def p99_ms(values: list[float]) -> float:
        return round(percentile(sorted(values), 0.99) * 1000, 3) if values else 0.0

    return Figures(
        ops=len(latencies_s),
        elapsed_s=round(elapsed_s, 4),
        ops_per_s=round(len(latencies_s) / elapsed_s, 1),
        p50_ms=round(percentile(latencies_s, 0.50) * 1000, 3) if latencies_s else 0.0,
        p99_ms=round(percentile(latencies_s, 0.99) * 1000, 3) if latencies_s else 0.0,
        read_p99_ms=p99_ms(by_kind_s[True]),
        write_p99_ms=p99_ms(by_kind_s[False]),
        errors=errors,
    )


# -- the client worker process -------------------------------------------------------------------


async def worker_main(seeds: list[str], concurrency: int, do_preload: bool) -> None:
    """Serve ROUND requests from stdin until EOF; one JSON line of Figures per round."""
    rng = random.Random(42)
    async with AsyncClient(seeds) as client:
        if do_preload:
            await preload(client, KEY_COUNT)
        print("READY", flush=True)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            _, ops, fraction = line.split()
            figures = await run_round(client, int(ops), float(fraction), concurrency, rng)
            print(json.dumps(asdict(figures)), flush=True)


class Worker:
    """A client worker process on one backend."""

    def __init__(
        self, seeds: list[str], backend: str, do_preload: bool, concurrency: int = CONCURRENCY
    ) -> None:
        env = {**os.environ, "DYNACORE_BACKEND": backend}
        args = [sys.executable, __file__, "worker", "--seeds", ",".join(seeds)]
        args += ["--concurrency", str(concurrency)]
        if do_preload:
            args.append("--preload")
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        if self._line() != "READY":
            raise RuntimeError("the client worker did not start")

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def round(self, ops: int, read_fraction: float) -> Figures:
        assert self.process.stdin is not None
        self.process.stdin.write(f"ROUND {ops} {read_fraction}\n")
        self.process.stdin.flush()
        return Figures(**json.loads(self._line()))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=ROUND_TIMEOUT_S)


def start_cluster(base_dir: Path, backend: str, durable: bool) -> LocalCluster:
    extra_args = [] if durable else ["--no-sync"]
    env = {"DYNACORE_BACKEND": backend}
    cluster = LocalCluster(base_dir, nodes_count=3, n=3, env=env, extra_args=extra_args)
    cluster.start()
    return cluster


# -- pytest-benchmark --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BENCH_CLUSTERS, ids=["-".join(c) for c in BENCH_CLUSTERS])
def cluster_worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Worker]]:
    backend, sync_mode = request.param
    base_dir = tmp_path_factory.mktemp(f"datapath-{backend}-{sync_mode}")
    cluster = start_cluster(base_dir, backend, durable=sync_mode == "durable")
    try:
        worker = Worker(cluster.addresses, backend, do_preload=True)
        try:
            yield backend, sync_mode, worker
        finally:
            worker.close()
    finally:
        cluster.stop()


@pytest.mark.parametrize("mix", list(MIXES))
def test_cluster_datapath(
    benchmark: Any, cluster_worker: tuple[str, str, Worker], mix: str
) -> None:
    backend, sync_mode, worker = cluster_worker
    benchmark.group = f"datapath.3node.{sync_mode}.{mix}"
    benchmark.extra_info["impl"] = backend
    rounds: list[Figures] = []

    def one_round() -> None:
        rounds.append(worker.round(OPS_PER_ROUND, MIXES[mix]))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    timed = rounds[1:]  # the first was the warm-up
    assert all(f.errors == 0 for f in timed), timed
    assert all(f.ops == OPS_PER_ROUND for f in timed)
    best = max(timed, key=lambda f: f.ops_per_s)
    benchmark.extra_info["ops_per_s"] = best.ops_per_s
    benchmark.extra_info["p50_ms"] = best.p50_ms
    benchmark.extra_info["p99_ms"] = best.p99_ms
    benchmark.extra_info["rounds"] = [asdict(f) for f in timed]


# -- the quick driver ----------------------------------------------------------------------------


def syscalls(pid: int) -> int:
    """Read plus write system calls of a process so far (Linux /proc; sockets included)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]) + int(fields["syscw"])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "worker"])
    parser.add_argument("--seeds", default="")
    parser.add_argument("--preload", action="store_true")
    parser.add_argument("--backend", default="rust")
    parser.add_argument("--mix", type=float, default=0.95, help="read fraction")
    parser.add_argument("--ops", type=int, default=OPS_PER_ROUND)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--no-sync", action="store_true", help="nodes run `serve --no-sync`")
    parser.add_argument("--hold", action="store_true", help="print node pids, wait for Enter")
    args = parser.parse_args()
    if args.mode == "worker":
        trio.run(worker_main, args.seeds.split(","), args.concurrency, args.preload)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp), args.backend, durable=not args.no_sync)
        try:
            pids = [n.process.pid for n in cluster.nodes if n.process is not None]
            print("node pids:", " ".join(map(str, pids)), flush=True)
            worker = Worker(cluster.addresses, args.backend, True, args.concurrency)
            print("client pid:", worker.process.pid, flush=True)
            if args.hold:
                input("Enter to start the rounds> ")
            for _ in range(args.rounds):
                before = [cpu_s(pid) for pid in pids]
                client_before = cpu_s(worker.process.pid)
                calls_before = [syscalls(pid) for pid in [*pids, worker.process.pid]]
                figures = worker.round(args.ops, args.mix)
                node_us = [
                    (cpu_s(p) - b) * 1e6 / figures.ops for p, b in zip(pids, before, strict=True)
                ]
                client_us = (cpu_s(worker.process.pid) - client_before) * 1e6 / figures.ops
                calls_after = [syscalls(pid) for pid in [*pids, worker.process.pid]]
                print(json.dumps(asdict(figures)), flush=True)
                per_op = [
                    (a - b) / figures.ops for a, b in zip(calls_after, calls_before, strict=True)
                ]
                print("  syscalls per op (nodes, client):", " ".join(f"{c:.2f}" for c in per_op))
                cpu = " ".join(f"{us:.0f}" for us in node_us)
                print(f"  cpu per op: nodes {cpu} us, client {client_us:.0f} us", flush=True)
            worker.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
