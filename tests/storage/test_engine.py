"""The Engine contract, checked on both engines: reads, group-committed writes, limits, errors."""

from __future__ import annotations

import pytest
import trio

from dynacore.errors import (
    ConfigError,
    KeyTooLarge,
    LimitExceeded,
    StorageClosed,
    StorageError,
    StorageFull,
)
from dynacore.storage import CommitConfig, Engine, Update

from .conftest import OpenEngine


def put(value: bytes | None) -> Update:
    return lambda _old: value


def increment(old: bytes | None) -> bytes:
    return str(int(old or b"0") + 1).encode()


class Boom(Exception):
    pass


def boom(_old: bytes | None) -> bytes:
    raise Boom("the update function failed")


async def test_read_your_write(engine: Engine) -> None:
    assert engine.get("data", b"k") is None
    assert await engine.update("data", b"k", put(b"v1")) == b"v1"
    assert engine.get("data", b"k") == b"v1"
    assert await engine.update("data", b"k", lambda old: (old or b"") + b"+") == b"v1+"
    assert engine.get("data", b"k") == b"v1+"
    assert engine.count("data") == 1


async def test_delete_and_delete_of_absent_key(engine: Engine) -> None:
    await engine.update("data", b"k", put(b"v"))
    assert await engine.update("data", b"k", put(None)) is None
    assert engine.get("data", b"k") is None
    assert await engine.update("data", b"never", put(None)) is None
    assert engine.count("data") == 0


async def test_databases_are_separate(engine: Engine) -> None:
    await engine.update("data", b"k", put(b"d"))
    await engine.update("hints", b"k", put(b"h"))
    await engine.update("meta", b"k", put(b"m"))
    assert [engine.get(db, b"k") for db in ("data", "hints", "meta")] == [b"d", b"h", b"m"]
    assert [engine.count(db) for db in ("data", "hints", "meta")] == [1, 1, 1]


async def test_unknown_database_is_a_config_error(engine: Engine) -> None:
    with pytest.raises(ConfigError):
        engine.get("nope", b"k")
    with pytest.raises(ConfigError):
        engine.scan("_sys")
    with pytest.raises(ConfigError):
        engine.count("")
    with pytest.raises(ConfigError):
        await engine.update("Data", b"k", put(b"v"))


async def test_bad_keys_get_typed_errors(engine: Engine) -> None:
    with pytest.raises(LimitExceeded):
        await engine.update("data", b"", put(b"v"))
    with pytest.raises(KeyTooLarge):
        engine.get("data", b"k" * (65 * 1024 + 1))
    with pytest.raises(ConfigError):
        engine.get("data", "text")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        await engine.update("data", b"k", b"not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        engine.scan("data", limit=-1)
    assert engine.count("data") == 0


async def test_key_limit_is_configurable(open_engine: OpenEngine) -> None:
    async with open_engine(config=CommitConfig(key_size_bytes=8)) as engine:
        await engine.update("data", b"12345678", put(b"v"))
        with pytest.raises(KeyTooLarge):
            await engine.update("data", b"123456789", put(b"v"))


async def test_update_function_returning_a_non_bytes_fails_its_op(engine: Engine) -> None:
    with pytest.raises(StorageError):
        await engine.update("data", b"k", lambda _old: "str")  # type: ignore[arg-type,return-value]
    assert engine.get("data", b"k") is None


async def test_100_concurrent_updates_of_one_key_are_serialized(engine: Engine) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(engine.update, "data", b"counter", increment)
    assert engine.get("data", b"counter") == b"100"


async def test_group_commit_batches_concurrent_writers(engine: Engine) -> None:
    results: dict[int, bytes | None] = {}

    async def writer(i: int) -> None:
        results[i] = await engine.update("data", b"key%03d" % i, put(b"v%d" % i))

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(writer, i)
    assert results == {i: b"v%d" % i for i in range(200)}
    assert engine.stats.ops == 200
    assert engine.stats.requests == 200
    # 200 writers queued at once: a handful of transactions, not one each.
    assert engine.stats.commits <= 10
    assert engine.stats.max_batch_ops >= 20
    assert engine.count("data") == 200


async def test_batches_are_cut_at_max_batch_ops(open_engine: OpenEngine) -> None:
    config = CommitConfig(max_batch_ops=16, queue_ops=64)
    async with open_engine(config=config) as engine, trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(engine.update, "data", b"k%d" % i, put(b"v"))
    assert engine.stats.ops == 100
    assert engine.stats.max_batch_ops <= 16
    assert engine.stats.commits >= 100 // 16


async def test_batches_are_cut_at_max_batch_bytes(open_engine: OpenEngine) -> None:
    config = CommitConfig(max_batch_bytes=4096)
    async with open_engine(config=config) as engine:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(engine.update, "data", b"k%02d" % i, put(b"x" * 1000))
        assert engine.count("data") == 40
    assert engine.stats.ops == 40
    assert engine.stats.commits >= 40 * 1000 // (4096 + 1000)


async def test_raising_function_fails_only_its_own_op(engine: Engine) -> None:
    outcomes: dict[int, object] = {}

    async def writer(i: int) -> None:
        try:
            outcomes[i] = await engine.update("data", b"k%d" % i, boom if i % 5 == 0 else put(b"v"))
        except Boom as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(writer, i)
    for i in range(50):
        if i % 5 == 0:
            assert isinstance(outcomes[i], Boom)
            assert engine.get("data", b"k%d" % i) is None
        else:
            assert outcomes[i] == b"v"
            assert engine.get("data", b"k%d" % i) == b"v"
    assert engine.stats.failed_ops == 10
    assert engine.stats.ops == 40


async def test_update_many_is_atomic_and_sees_its_own_writes(engine: Engine) -> None:
    results = await engine.update_many(
        "data", [(b"a", put(b"1")), (b"a", lambda old: (old or b"") + b"2"), (b"b", put(b"x"))]
    )
    assert results == [b"1", b"12", b"x"]
    assert engine.get("data", b"a") == b"12"
    with pytest.raises(Boom):
        await engine.update_many("data", [(b"c", put(b"new")), (b"a", put(b"lost")), (b"d", boom)])
    assert engine.get("data", b"c") is None
    assert engine.get("data", b"a") == b"12"
    assert await engine.update_many("data", []) == []


async def test_update_many_larger_than_a_batch_is_refused(open_engine: OpenEngine) -> None:
    async with open_engine(config=CommitConfig(max_batch_ops=4, queue_ops=8)) as engine:
        with pytest.raises(LimitExceeded):
            await engine.update_many("data", [(b"k%d" % i, put(b"v")) for i in range(5)])
        assert len(await engine.update_many("data", [(b"k%d" % i, put(b"v")) for i in range(4)]))


async def test_scan_order_bounds_and_limit(engine: Engine) -> None:
    keys = [b"b", b"a", b"ab", b"a\x00", b"\xff", b"c", b"bb", b"\x00"]
    await engine.update_many("data", [(k, put(b"v" + k)) for k in keys])
    ordered = sorted(keys)
    assert [k for k, _ in engine.scan("data")] == ordered
    assert engine.scan("data")[0] == (b"\x00", b"v\x00")
    assert [k for k, _ in engine.scan("data", b"a", b"b")] == [b"a", b"a\x00", b"ab"]
    assert [k for k, _ in engine.scan("data", b"aa", b"bb")] == [b"ab", b"b"]
    assert [k for k, _ in engine.scan("data", b"b")] == [b"b", b"bb", b"c", b"\xff"]
    assert [k for k, _ in engine.scan("data", end=b"a\x00")] == [b"\x00", b"a"]
    assert [k for k, _ in engine.scan("data", limit=3)] == ordered[:3]
    assert engine.scan("data", limit=0) == []
    assert engine.scan("data", b"c", b"b") == []
    assert engine.scan("data", b"b", b"b") == []
    assert engine.scan("hints") == []


async def test_scan_pages_through_everything(engine: Engine) -> None:
    await engine.update_many("data", [(b"%04d" % i, put(b"v")) for i in range(250)])
    seen: list[bytes] = []
    start = b""
    while page := engine.scan("data", start, limit=64):
        seen += [k for k, _ in page]
        start = page[-1][0] + b"\x00"
    assert seen == [b"%04d" % i for i in range(250)]


async def test_one_kib_keys_round_trip(engine: Engine) -> None:
    long_keys = [bytes([i]) * 1024 for i in (1, 2, 200)] + [
        b"p" * 1023 + bytes([i]) for i in (9, 3)
    ]
    short_keys = [b"\x02", b"p" * 100, b"p" * 511, b"q"]
    for key in long_keys + short_keys:
        await engine.update("data", key, put(b"value of " + key[:4] + b"%d" % len(key)))
    for key in long_keys + short_keys:
        assert engine.get("data", key) == b"value of " + key[:4] + b"%d" % len(key)
    assert engine.get("data", b"p" * 1024) is None
    assert engine.count("data") == len(long_keys) + len(short_keys)
    assert [k for k, _ in engine.scan("data")] == sorted(long_keys + short_keys)
    assert [k for k, _ in engine.scan("data", b"p" * 600, b"q")] == [
        b"p" * 1023 + b"\x03",
        b"p" * 1023 + b"\x09",
    ]
    await engine.update("data", b"p" * 1023 + b"\x03", put(None))
    assert engine.get("data", b"p" * 1023 + b"\x03") is None
    assert engine.get("data", b"p" * 1023 + b"\x09") is not None
    assert engine.count("data") == len(long_keys) + len(short_keys) - 1


async def test_full_storage_fails_the_batch_and_keeps_earlier_data(
    open_engine: OpenEngine,
) -> None:
    async with open_engine(full_at_bytes=1 << 20) as engine:
        await engine.update_many("data", [(b"early%d" % i, put(b"e" * 100)) for i in range(20)])
        with pytest.raises(StorageFull):
            await engine.update_many(
                "data", [(b"small", put(b"s")), (b"huge", put(b"h" * (4 << 20)))]
            )
        assert engine.get("data", b"small") is None
        assert engine.get("data", b"huge") is None
        assert all(engine.get("data", b"early%d" % i) == b"e" * 100 for i in range(20))
        assert engine.stats.failed_commits == 1
        # The engine keeps working: later writes that fit commit.
        assert await engine.update("data", b"later", put(b"l")) == b"l"
        assert engine.get("data", b"later") == b"l"
        assert engine.count("data") == 21


async def test_filling_storage_step_by_step(open_engine: OpenEngine) -> None:
    async with open_engine(full_at_bytes=256 * 1024) as engine:
        stored = 0
        with pytest.raises(StorageFull):
            for i in range(1000):
                await engine.update("data", b"fill%04d" % i, put(b"f" * 8000))
                stored = i + 1
        assert 0 < stored < 1000
        assert engine.count("data") == stored
        assert all(engine.get("data", b"fill%04d" % i) == b"f" * 8000 for i in range(stored))
        assert engine.get("data", b"fill%04d" % stored) is None


async def test_closed_engine_raises_storage_closed(open_engine: OpenEngine) -> None:
    async with open_engine() as engine:
        await engine.update("data", b"k", put(b"v"))
        await engine.aclose()
        await engine.aclose()  # idempotent
        with pytest.raises(StorageClosed):
            engine.get("data", b"k")
        with pytest.raises(StorageClosed):
            engine.scan("data")
        with pytest.raises(StorageClosed):
            engine.count("data")
        with pytest.raises(StorageClosed):
            await engine.update("data", b"k", put(b"w"))
        with pytest.raises(StorageClosed):
            await engine.update_many("data", [])


async def test_close_commits_what_was_queued(open_engine: OpenEngine) -> None:
    results: list[bytes | None] = []

    async def writer(engine: Engine, i: int) -> None:
        results.append(await engine.update("data", b"k%d" % i, put(b"v")))

    async with open_engine() as engine:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(writer, engine, i)
            await trio.testing.wait_all_tasks_blocked()
            await engine.aclose()
        assert results == [b"v"] * 20
        assert engine.stats.ops == 20


async def test_queue_is_bounded_and_applies_backpressure(open_engine: OpenEngine) -> None:
    config = CommitConfig(max_batch_ops=4, queue_ops=8)
    peak = 0
    async with open_engine(config=config) as engine:

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, engine._committer.queued_ops)  # type: ignore[attr-defined]
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as outer:
            outer.start_soon(watch)
            async with trio.open_nursery() as writers:
                for i in range(100):
                    writers.start_soon(engine.update, "data", b"k%d" % i, put(b"v"))
            outer.cancel_scope.cancel()
        assert engine.count("data") == 100
    assert 0 < peak <= 8
