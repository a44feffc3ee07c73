"""Embedded-cache benchmarks (issue 6): `Cache.get` served locally (r=1, in the calling thread)
against a raw `lmdb` get, redis-py GET and a plain dict; `Cache.set` at w=1 and w=2 in a
3-member cluster against redis-py SET (Redis with one replica; SET + WAIT 1 for w=2).

Each dynacore row runs in its own worker process (benches/cache_worker.py) started with
DYNACORE_BACKEND=rust or python, so that the whole cache runs on that backend; a round is one
command of OPS operations, timed by pytest-benchmark around the command (the pipe round trip is
under 1% of a round) and by the worker around its loop (extra_info). The baselines run in this
process with the same OPS per round, so medians compare directly (divide by OPS for per-op).
Before each get round (untimed) the worker does OPS raw lmdb gets on a raw environment of its
own, so `ratio_to_raw_lmdb` (extra_info) compares the two back to back in one process, by the
thread's CPU time (best round of each), which the preemptions of a loaded machine leave out.

Redis runs as a primary plus one replica (benches/e2e/redis_pair.py), no persistence; the
caches run with sync=False (LMDB without fsync, like Redis without AOF). Everything is started
and stopped by the module's fixtures on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
import redis
from benches.e2e.redis_pair import RedisPair
from pytest_benchmark.fixture import BenchmarkFixture

from dynacore import _backend
from dynacore.localcluster import free_ports

WORKER = Path(__file__).with_name("cache_worker.py")
BACKENDS = [name for name in ("rust", "python") if name in _backend.available()]
KEYS = 1000
VALUE_BYTES = 100
GET_OPS = 10_000  # gets per round
SET_OPS = 200  # sequential sets per round
GET_ROUNDS = 7
SET_ROUNDS = 5
REPLY_TIMEOUT_S = 120.0
MAP_SIZE_BYTES = 1 << 28


def keys() -> list[bytes]:
    return [b"user%010d" % i for i in range(KEYS)]


def pedantic(
    benchmark: BenchmarkFixture,
    fn: Callable[[], object],
    rounds: int,
    setup: Callable[[], object] | None = None,
) -> None:
    """benchmark.pedantic, typed (pytest-benchmark's own is not annotated); `setup` runs
    before each round, untimed."""
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1
    )


class WorkerProcess:
    """benches/cache_worker.py on one backend; stopped by close()."""

    def __init__(self, backend: str) -> None:
        env = {**os.environ, "DYNACORE_BACKEND": backend}
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], REPLY_TIMEOUT_S)
        assert ready, f"cache worker: no reply to {command['op']} in {REPLY_TIMEOUT_S} s"
        line = self.process.stdout.readline()
        assert line, f"cache worker exited with {self.process.wait()}"
        reply: dict[str, Any] = json.loads(line)
        assert "error" not in reply, reply["error"]
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.flush()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- fixtures: every process and server is stopped when the module ends ----------------------------


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench_cache")


@pytest.fixture(scope="module")
def redis_pair(base_dir: Path) -> Iterator[RedisPair]:
    with RedisPair(base_dir / "redis") as pair:
        with pair.client("primary") as client:
            client.mset({key: b"v" * VALUE_BYTES for key in keys()})
        pair.wait_replicated()
        yield pair


@pytest.fixture(scope="module")
def local_workers(base_dir: Path) -> Iterator[dict[str, WorkerProcess]]:
    """One standalone LMDB cache per backend, loaded with KEYS keys."""
    workers = {backend: WorkerProcess(backend) for backend in BACKENDS}
    try:
        for backend, worker in workers.items():
            reply = worker.call(op="open", dir=str(base_dir / f"local-{backend}"), sync=False)
            assert reply["backend"] == backend
            worker.call(op="load", keys=KEYS, value_bytes=VALUE_BYTES)
            worker.call(op="raw_open", dir=str(base_dir / f"raw-{backend}"))
        yield workers
    finally:
        for worker in workers.values():
            worker.close()


@pytest.fixture(scope="module")
def cluster_workers(base_dir: Path) -> Iterator[dict[str, WorkerProcess]]:
    """Per backend, three cache members of one cluster (n=3); the first one is measured."""
    out: dict[str, WorkerProcess] = {}
    started: list[WorkerProcess] = []
    try:
        for backend in BACKENDS:
            ports = free_ports(3)
            ids = [f"{backend}{i}" for i in range(3)]
            members = ",".join(f"{i}@127.0.0.1:{p}" for i, p in zip(ids, ports, strict=True))
            for node_id, port in zip(ids, ports, strict=True):
                worker = WorkerProcess(backend)
                started.append(worker)
                worker.call(
                    op="open",
                    dir=str(base_dir / f"cluster-{node_id}"),
                    node_id=node_id,
                    listen=f"127.0.0.1:{port}",
                    members=members,
                    n=3,
                    sync=False,
                )
            out[backend] = started[-3]
            out[backend].call(op="load", keys=KEYS, value_bytes=VALUE_BYTES, w=3)
        yield out
    finally:
        for worker in started:
            worker.close()


@pytest.fixture(scope="module")
def raw_env(base_dir: Path) -> Iterator[tuple[lmdb.Environment, Any]]:
    env = lmdb.open(str(base_dir / "raw"), map_size=MAP_SIZE_BYTES, max_dbs=2)
    db = env.open_db(b"data")
    with env.begin(write=True, db=db) as txn:
        for key in keys():
            txn.put(key, b"v" * VALUE_BYTES)
    yield env, db
    env.close()


def cycled(count: int) -> list[bytes]:
    all_keys = keys()
    rounds, rest = divmod(count, len(all_keys))
    return all_keys * rounds + all_keys[:rest]


# -- Cache.get (r=1, local) ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_cache_local(
    benchmark: BenchmarkFixture, local_workers: dict[str, WorkerProcess], backend: str
) -> None:
    benchmark.group = "cache.get x10k (local, r=1)"
    benchmark.extra_info["impl"] = backend
    worker = local_workers[backend]
    cache_s: list[float] = []
    raw_s: list[float] = []

    def raw_round() -> None:  # untimed by pytest-benchmark: the same gets on raw lmdb
        raw_s.append(worker.call(op="raw_gets", count=GET_OPS, keys=KEYS)["cpu_s"])

    def round_() -> None:
        cache_s.append(worker.call(op="gets", count=GET_OPS, keys=KEYS)["cpu_s"])

    pedantic(benchmark, round_, GET_ROUNDS, setup=raw_round)
    benchmark.extra_info["cpu_ns_per_get"] = round(min(cache_s) / GET_OPS * 1e9)
    benchmark.extra_info["cpu_ns_per_raw_lmdb_get"] = round(min(raw_s) / GET_OPS * 1e9)
    benchmark.extra_info["ratio_to_raw_lmdb"] = round(min(raw_s) / min(cache_s), 3)


def test_get_raw_lmdb(benchmark: BenchmarkFixture, raw_env: tuple[lmdb.Environment, Any]) -> None:
    """A raw get: begin a read transaction, get, abort (py-lmdb's fastest per-get idiom)."""
    benchmark.group = "cache.get x10k (local, r=1)"
    benchmark.extra_info["impl"] = "lmdb raw (begin/get/abort)"
    env, db = raw_env
    batch = cycled(GET_OPS)

    def round_() -> None:
        for key in batch:
            txn = env.begin(db=db)
            txn.get(key)
            txn.abort()

    pedantic(benchmark, round_, GET_ROUNDS)


def test_get_raw_lmdb_with_block(
    benchmark: BenchmarkFixture, raw_env: tuple[lmdb.Environment, Any]
) -> None:
    """A raw get as py-lmdb's docs write it: `with env.begin() as txn: txn.get(key)`."""
    benchmark.group = "cache.get x10k (local, r=1)"
    benchmark.extra_info["impl"] = "lmdb raw (with block)"
    env, db = raw_env
    batch = cycled(GET_OPS)

    def round_() -> None:
        for key in batch:
            with env.begin(db=db) as txn:
                txn.get(key)

    pedantic(benchmark, round_, GET_ROUNDS)


def test_get_dict(benchmark: BenchmarkFixture) -> None:
    benchmark.group = "cache.get x10k (local, r=1)"
    benchmark.extra_info["impl"] = "dict"
    table = {key: b"v" * VALUE_BYTES for key in keys()}
    batch = cycled(GET_OPS)
    get = table.get

    def round_() -> None:
        for key in batch:
            get(key)

    pedantic(benchmark, round_, GET_ROUNDS)


def test_get_redis(benchmark: BenchmarkFixture, redis_pair: RedisPair) -> None:
    benchmark.group = "cache.get x10k (local, r=1)"
    benchmark.extra_info["impl"] = "redis-py GET"
    batch = cycled(GET_OPS)
    with redis_pair.client("primary") as client:
        get = client.get

        def round_() -> None:
            for key in batch:
                get(key)

        pedantic(benchmark, round_, GET_ROUNDS)


# -- Cache.set in a 3-member cluster ---------------------------------------------------------------


@pytest.mark.parametrize("w", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_set_cache_cluster(
    benchmark: BenchmarkFixture,
    cluster_workers: dict[str, WorkerProcess],
    backend: str,
    w: int,
) -> None:
    benchmark.group = f"cache.set x{SET_OPS} w={w} (3 members)"
    benchmark.extra_info["impl"] = backend
    worker = cluster_workers[backend]
    elapsed: list[float] = []

    def round_() -> None:
        reply = worker.call(op="sets", count=SET_OPS, keys=KEYS, value_bytes=VALUE_BYTES, w=w)
        elapsed.append(reply["elapsed_s"])

    pedantic(benchmark, round_, SET_ROUNDS)
    benchmark.extra_info["us_per_set"] = round(min(elapsed) / SET_OPS * 1e6, 1)


@pytest.mark.parametrize("w", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_set_many_cache_cluster(
    benchmark: BenchmarkFixture,
    cluster_workers: dict[str, WorkerProcess],
    backend: str,
    w: int,
) -> None:
    """The same writes as one set_many call: concurrent inside the node (group commit, one
    crossing into the loop)."""
    benchmark.group = f"cache.set x{SET_OPS} w={w} (3 members)"
    benchmark.extra_info["impl"] = f"{backend} set_many"
    worker = cluster_workers[backend]

    def round_() -> None:
        worker.call(op="set_many", count=SET_OPS, keys=KEYS, value_bytes=VALUE_BYTES, w=w)

    pedantic(benchmark, round_, SET_ROUNDS)


@pytest.mark.parametrize("w", [1, 2])
def test_set_redis(benchmark: BenchmarkFixture, redis_pair: RedisPair, w: int) -> None:
    """w=1: SET (acknowledged before the replica has it); w=2: SET then WAIT 1 (the replica
    acknowledged it)."""
    benchmark.group = f"cache.set x{SET_OPS} w={w} (3 members)"
    benchmark.extra_info["impl"] = "redis-py SET" if w == 1 else "redis-py SET+WAIT 1"
    value = b"w" * VALUE_BYTES
    batch = cycled(SET_OPS)
    with redis_pair.client("primary") as client:

        def round_() -> None:
            for key in batch:
                client.set(key, value)
                if w == 2:
                    client.execute_command("WAIT", 1, 5000)

        pedantic(benchmark, round_, SET_ROUNDS)


def test_redis_is_reachable(redis_pair: RedisPair) -> None:
    """The baseline really answers (a benchmark of a dead server would time errors)."""
    with redis_pair.client("primary") as client:
        client.set(b"probe", b"here")
        assert client.get(b"probe") == b"here"
    with pytest.raises(redis.ResponseError):
        with redis_pair.client("primary") as client:
            client.execute_command("NOSUCHCOMMAND")
