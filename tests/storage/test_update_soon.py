"""`Engine.update_soon` on both engines: an update queued without a waiting task, reported by a
callback once durable (or failed), sharing group commits with `update`."""

from __future__ import annotations

import pytest
import trio

from dynacore.errors import ConfigError, StorageClosed, StorageFull
from dynacore.storage import CommitConfig, Engine, Update
from dynacore.storage.engine import Done

from .conftest import OpenEngine

Outcome = tuple[bytes | None, Exception | None]


class Outcomes:
    """The callbacks' outcomes by key; `all_in` fires once `expected` arrived."""

    def __init__(self, expected: int) -> None:
        self.by_key: dict[bytes, Outcome] = {}
        self.expected = expected
        self.all_in = trio.Event()

    def callback(self, key: bytes) -> Done:
        def on_done(result: bytes | None, error: Exception | None) -> None:
            assert key not in self.by_key, "called back twice"
            self.by_key[key] = (result, error)
            if len(self.by_key) == self.expected:
                self.all_in.set()

        return on_done


def put(value: bytes | None) -> Update:
    return lambda _old: value


async def test_update_soon_reports_the_result_once_durable(engine: Engine) -> None:
    outcomes = Outcomes(50)
    for i in range(50):
        key = b"k%03d" % i
        assert engine.update_soon("data", key, put(b"v%d" % i), outcomes.callback(key))
    assert engine.get("data", b"k000") is None  # queued, not committed: nothing waited yet
    with trio.fail_after(10):
        await outcomes.all_in.wait()
    assert outcomes.by_key[b"k007"] == (b"v7", None)
    assert all(engine.get("data", b"k%03d" % i) == b"v%d" % i for i in range(50))
    assert engine.stats.ops == 50
    assert engine.stats.commits < 50  # the queued updates shared commits


async def test_update_soon_sees_earlier_updates_of_the_same_key_in_order(engine: Engine) -> None:
    outcomes = Outcomes(10)

    def append(suffix: bytes) -> Update:
        return lambda old: (old or b"") + suffix

    for i in range(10):
        tag = b"%d" % i
        assert engine.update_soon("data", b"key", append(tag), outcomes.callback(tag))
    with trio.fail_after(10):
        await outcomes.all_in.wait()
    assert engine.get("data", b"key") == b"0123456789"
    assert outcomes.by_key[b"4"] == (b"01234", None)


async def test_a_raising_function_fails_only_its_own_callback(engine: Engine) -> None:
    outcomes = Outcomes(2)

    def boom(_old: bytes | None) -> bytes:
        raise ValueError("bad update")

    assert engine.update_soon("data", b"bad", boom, outcomes.callback(b"bad"))
    assert engine.update_soon("data", b"good", put(b"g"), outcomes.callback(b"good"))
    with trio.fail_after(10):
        await outcomes.all_in.wait()
    result, error = outcomes.by_key[b"bad"]
    assert result is None and isinstance(error, ValueError)
    assert outcomes.by_key[b"good"] == (b"g", None)


async def test_full_queue_or_closed_engine_refuses_and_queues_nothing(
    open_engine: OpenEngine,
) -> None:
    config = CommitConfig(max_batch_ops=4, queue_ops=4)
    async with open_engine(config=config) as engine:
        outcomes = Outcomes(4)
        accepted = [
            engine.update_soon("data", b"q%d" % i, put(b"v"), outcomes.callback(b"q%d" % i))
            for i in range(6)
        ]
        assert accepted == [True] * 4 + [False] * 2
        with trio.fail_after(10):
            await outcomes.all_in.wait()
        assert engine.get("data", b"q5") is None
        await engine.aclose()
        assert not engine.update_soon("data", b"late", put(b"v"), outcomes.callback(b"late"))


async def test_bad_arguments_raise_at_once(engine: Engine) -> None:
    def never(result: bytes | None, error: Exception | None) -> None:
        raise AssertionError("no callback for a refused update")

    with pytest.raises(ConfigError):
        engine.update_soon("nope", b"k", put(b"v"), never)
    with pytest.raises(ConfigError):
        engine.update_soon("data", b"k", b"not callable", never)  # type: ignore[arg-type]


async def test_full_storage_reaches_the_callback(open_engine: OpenEngine) -> None:
    async with open_engine(full_at_bytes=1 << 20) as engine:
        outcomes = Outcomes(1)
        assert engine.update_soon("data", b"huge", put(b"h" * (4 << 20)), outcomes.callback(b"h"))
        with trio.fail_after(10):
            await outcomes.all_in.wait()
        result, error = outcomes.by_key[b"h"]
        assert result is None and isinstance(error, StorageFull)
        assert await engine.update("data", b"small", put(b"s")) == b"s"


async def test_close_reports_queued_updates_committed_or_closed(open_engine: OpenEngine) -> None:
    async with open_engine() as engine:
        outcomes = Outcomes(20)
        for i in range(20):
            key = b"c%02d" % i
            assert engine.update_soon("data", key, put(b"v"), outcomes.callback(key))
        await engine.aclose()
        with trio.fail_after(10):
            await outcomes.all_in.wait()
        for result, error in outcomes.by_key.values():
            assert (result, error) == (b"v", None) or isinstance(error, StorageClosed)


async def test_get_many_reads_like_get_in_order(engine: Engine) -> None:
    long_key = b"L" * 900  # past LMDB's 511-byte key limit: a long-key bucket
    for key in (b"a", b"c", long_key):
        await engine.update("data", key, put(b"v:" + key[:3]))
    keys = [b"c", b"b", long_key, b"a", b"c"]
    assert engine.get_many("data", keys) == [engine.get("data", k) for k in keys]
    assert engine.get_many("data", keys) == [b"v:c", None, b"v:LLL", b"v:a", b"v:c"]
    assert engine.get_many("data", []) == []
    with pytest.raises(ConfigError):
        engine.get_many("nope", [b"a"])
    with pytest.raises(ConfigError):
        engine.get_many("data", [b"a", "str"])  # type: ignore[list-item]
