"""Storage benchmarks: durable puts of 100-byte values with group commit against one transaction
and sync per put, beside raw `lmdb` baselines; and point reads.

Every put benchmark does PUTS_PER_ROUND durable puts per round, so their medians compare
directly (the ratio is the speed-up per put). The engine benchmarks run inside one trio.run: the
benchmark loop runs in a worker thread and drives each round with trio.from_thread.run.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import lmdb
import pytest
import trio
from pytest_benchmark.fixture import BenchmarkFixture

from dynacore.storage import Engine, open_lmdb_engine, open_memory_engine

PUTS_PER_ROUND = 512
WRITERS = 64
VALUE = b"v" * 100
MAP_SIZE_BYTES = 1 << 30
ROUNDS = 5
READ_KEYS = 10_000


def value_of(_old: bytes | None) -> bytes:
    return VALUE


def pedantic(
    benchmark: BenchmarkFixture,
    fn: Callable[[], object],
    *,
    rounds: int,
    setup: Callable[[], object] | None = None,
    iterations: int = 1,
    warmup_rounds: int = 1,
) -> None:
    """benchmark.pedantic, typed (pytest-benchmark's own is not annotated)."""
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        fn, setup=setup, rounds=rounds, iterations=iterations, warmup_rounds=warmup_rounds
    )


class Keys:
    """Fresh keys for every round, so each put really writes."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[bytes]:
        first, self.next = self.next, self.next + n
        return [b"key%010d" % i for i in range(first, first + n)]


async def put_concurrently(engine: Engine, keys: list[bytes], writers: int) -> None:
    async def writer(mine: list[bytes]) -> None:
        for key in mine:
            await engine.update("data", key, value_of)

    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, keys[w::writers])


async def put_one_by_one(engine: Engine, keys: list[bytes]) -> None:
    for key in keys:
        await engine.update("data", key, value_of)


def bench_in_trio(
    benchmark: BenchmarkFixture, engine: Engine, round_fn: Callable[[Engine], Awaitable[None]]
) -> None:
    """Benchmark `round_fn(engine)` from a worker thread while trio runs the engine."""

    def one_round() -> None:
        trio.from_thread.run(round_fn, engine)

    pedantic(benchmark, one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def run_lmdb_bench(
    path: Path,
    sync: bool,
    benchmark: BenchmarkFixture,
    round_fn: Callable[[Engine], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES, sync=sync) as engine:
            await trio.to_thread.run_sync(bench_in_trio, benchmark, engine, round_fn)
            stats = engine.stats
            benchmark.extra_info["ops_per_commit"] = round(stats.ops / max(stats.commits, 1), 1)

    trio.run(main)


# -- durable puts --------------------------------------------------------------------------


def test_put_engine_group_commit_64_writers(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    """Group commit; before each round (untimed by pytest-benchmark) the same number of puts is
    timed one commit per put, so that `speedup_vs_commit_per_put` compares the two under the
    same disk conditions (fsync latency on a shared machine swings by 10x from second to second).
    """
    benchmark.group = "storage.put_durable"
    keys = Keys()
    one_by_one_s: list[float] = []
    grouped_s: list[float] = []

    async def timed_one_by_one(engine: Engine) -> None:
        start = time.perf_counter()
        await put_one_by_one(engine, keys.take(PUTS_PER_ROUND))
        one_by_one_s.append(time.perf_counter() - start)

    async def timed_group(engine: Engine) -> None:
        start = time.perf_counter()
        await put_concurrently(engine, keys.take(PUTS_PER_ROUND), WRITERS)
        grouped_s.append(time.perf_counter() - start)

    async def main() -> None:
        path = tmp_path / "db"
        async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES) as engine:

            def run() -> None:
                pedantic(
                    benchmark,
                    lambda: trio.from_thread.run(timed_group, engine),
                    setup=lambda: trio.from_thread.run(timed_one_by_one, engine),
                    rounds=ROUNDS,
                    iterations=1,
                    warmup_rounds=1,
                )

            await trio.to_thread.run_sync(run)
        speedup = sum(one_by_one_s) / sum(grouped_s)
        benchmark.extra_info["speedup_vs_commit_per_put"] = round(speedup, 1)
        benchmark.extra_info["us_per_put_grouped"] = round(min(grouped_s) / PUTS_PER_ROUND * 1e6, 1)
        benchmark.extra_info["us_per_put_one_by_one"] = round(
            min(one_by_one_s) / PUTS_PER_ROUND * 1e6, 1
        )
        print(f"\ngroup commit speed-up, interleaved rounds: {speedup:.1f}x", benchmark.extra_info)

    trio.run(main)


def test_put_engine_one_commit_per_put(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    benchmark.group = "storage.put_durable"
    keys = Keys()
    run_lmdb_bench(
        tmp_path / "db",
        True,
        benchmark,
        lambda engine: put_one_by_one(engine, keys.take(PUTS_PER_ROUND)),
    )


def test_put_engine_group_commit_unsafe_no_sync(
    benchmark: BenchmarkFixture, tmp_path: Path
) -> None:
    benchmark.group = "storage.put_durable"
    keys = Keys()
    run_lmdb_bench(
        tmp_path / "db",
        False,
        benchmark,
        lambda engine: put_concurrently(engine, keys.take(PUTS_PER_ROUND), WRITERS),
    )


def test_put_memory_engine_group_commit_64_writers(benchmark: BenchmarkFixture) -> None:
    """The group-commit machinery alone: no disk, no thread."""
    benchmark.group = "storage.put_durable"
    keys = Keys()

    async def main() -> None:
        async with open_memory_engine() as engine:
            await trio.to_thread.run_sync(
                bench_in_trio,
                benchmark,
                engine,
                lambda e: put_concurrently(e, keys.take(PUTS_PER_ROUND), WRITERS),
            )

    trio.run(main)


@pytest.fixture
def raw_env(tmp_path: Path) -> Iterator[lmdb.Environment]:
    env = lmdb.open(str(tmp_path / "raw"), map_size=MAP_SIZE_BYTES, max_dbs=2)
    yield env
    env.close()


def test_put_raw_lmdb_txn_per_put(benchmark: BenchmarkFixture, raw_env: lmdb.Environment) -> None:
    benchmark.group = "storage.put_durable"
    keys = Keys()
    dbi = raw_env.open_db(b"data")

    def one_round() -> None:
        for key in keys.take(PUTS_PER_ROUND):
            with raw_env.begin(write=True, db=dbi) as txn:
                txn.put(key, VALUE)

    pedantic(benchmark, one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_put_raw_lmdb_one_txn_per_round(
    benchmark: BenchmarkFixture, raw_env: lmdb.Environment
) -> None:
    """The floor: every put of the round in one transaction and one sync, no Python machinery."""
    benchmark.group = "storage.put_durable"
    keys = Keys()
    dbi = raw_env.open_db(b"data")

    def one_round() -> None:
        with raw_env.begin(write=True, db=dbi) as txn:
            for key in keys.take(PUTS_PER_ROUND):
                txn.put(key, VALUE)

    pedantic(benchmark, one_round, rounds=ROUNDS * 4, iterations=1, warmup_rounds=1)


# -- point reads ---------------------------------------------------------------------------


def test_get_engine(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    benchmark.group = "storage.get"
    keys = [b"key%010d" % i for i in range(READ_KEYS)]

    async def main() -> None:
        async with open_lmdb_engine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES) as engine:
            for start in range(0, READ_KEYS, 1024):
                await engine.update_many(
                    "data", [(k, value_of) for k in keys[start : start + 1024]]
                )

            def read_all() -> None:
                for key in keys[:1000]:
                    engine.get("data", key)

            benchmark(read_all)

    trio.run(main)


def test_get_raw_lmdb(benchmark: BenchmarkFixture, raw_env: lmdb.Environment) -> None:
    benchmark.group = "storage.get"
    keys = [b"key%010d" % i for i in range(READ_KEYS)]
    dbi = raw_env.open_db(b"data")
    with raw_env.begin(write=True, db=dbi) as txn:
        for key in keys:
            txn.put(key, VALUE)

    def read_all() -> None:
        for key in keys[:1000]:
            with raw_env.begin(db=dbi) as txn:
                txn.get(key)

    benchmark(read_all)
