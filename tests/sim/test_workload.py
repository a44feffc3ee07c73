"""The set workload against in-memory single-replica stores: a faithful one (DVV sets, so the
checker finds nothing) and a last-write-wins one (the checker must find lost writes, as Jepsen
found in Riak with allow_mult=false)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from dynacore._backend import versions
from dynacore.errors import ConfigError, RequestTimeout, TooManySiblings
from dynacore.sim.checker import FinalState, History, OpKind, Outcome, ReplicaState, check
from dynacore.sim.workload import (
    ONCE_PREFIX,
    SetWorkload,
    WorkloadConfig,
    decode_set,
    encode_set,
    union_of,
)

LATENCY_S = 0.01


@dataclass(frozen=True)
class Read:
    values: list[bytes]
    context: bytes
    siblings: int


class DvvStore:
    """One replica that keeps concurrent writes as siblings (dynacore's semantics)."""

    def __init__(self, siblings_max: int = 1000) -> None:
        self.sets: dict[bytes, bytes] = {}
        self.siblings_max = siblings_max

    async def get(self, key: bytes, r: str | int | None = None) -> Read:
        await trio.sleep(LATENCY_S)
        stored = self.sets.get(key, versions.empty())
        return Read(versions.values(stored), versions.join(stored), versions.size(stored))

    async def put(
        self,
        key: bytes,
        value: bytes,
        context: bytes | None = None,
        w: str | int | None = None,
        ttl: float | None = None,
    ) -> bytes:
        await trio.sleep(LATENCY_S)
        stored = self.sets.get(key, versions.empty())
        new = versions.update(stored, context or versions.vv_empty(), value, "n1")
        if versions.size(new) > self.siblings_max:
            raise TooManySiblings("too many")
        self.sets[key] = new
        return versions.join(new)


class LwwStore(DvvStore):
    """One replica that keeps only the last write, whatever its context."""

    async def put(
        self,
        key: bytes,
        value: bytes,
        context: bytes | None = None,
        w: str | int | None = None,
        ttl: float | None = None,
    ) -> bytes:
        await trio.sleep(LATENCY_S)
        self.sets[key] = versions.update(versions.empty(), versions.vv_empty(), value, "n1")
        return versions.join(self.sets[key])


def written_keys(workload: SetWorkload) -> list[bytes]:
    return sorted({op.key for op in workload.history.ops} | set(workload.config.key_names()))


def final_of(store: DvvStore, keys: list[bytes]) -> FinalState:
    reads: dict[bytes, frozenset[bytes] | None] = {}
    copies: dict[bytes, list[ReplicaState]] = {}
    for key in keys:
        stored = store.sets.get(key)
        elements = union_of(versions.values(stored)) if stored else frozenset()
        reads[key] = elements
        size = versions.size(stored) if stored else 0
        copies[key] = [ReplicaState("n1", stored, size, elements)]
    return FinalState(reads, copies, siblings_limit=store.siblings_max)


async def run_clients(store: DvvStore, config: WorkloadConfig, seconds: float) -> SetWorkload:
    workload = SetWorkload(config, History(), random.Random(5))
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(workload.run_client, f"c{i}", store)
    return workload


def test_set_encoding_round_trips() -> None:
    elements = {b"c1.3", b"c0.1", b"c2.10"}
    assert encode_set(elements) == b"c0.1 c1.3 c2.10"
    assert decode_set(encode_set(elements)) == elements
    assert decode_set(b"") == frozenset()
    assert union_of([b"a b", b"b c", b""]) == {b"a", b"b", b"c"}


async def test_dvv_store_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    store = DvvStore()
    config = WorkloadConfig(keys=2, blind_fraction=0.3, think_max_s=0.02)
    workload = await run_clients(store, config, 5.0)
    ops = workload.history.ops
    kinds = {op.kind for op in ops}
    assert kinds == {OpKind.ADD, OpKind.BLIND}
    assert any(op.key.startswith(ONCE_PREFIX) for op in ops)
    result = check(ops, final_of(store, written_keys(workload)))
    assert result.ok, result.problems()
    assert result.acknowledged >= 200
    assert workload.stats.max_siblings_seen >= 2  # concurrent writes did make siblings


async def test_lww_store_loses_acknowledged_adds(autojump_clock: trio.testing.MockClock) -> None:
    store = LwwStore()
    config = WorkloadConfig(keys=2, blind_fraction=0.3, think_max_s=0.02)
    workload = await run_clients(store, config, 5.0)
    result = check(workload.history.ops, final_of(store, written_keys(workload)))
    assert not result.ok
    assert len(result.lost) > result.acknowledged // 4  # Jepsen: most of them


async def test_outcomes_follow_the_error_class(autojump_clock: trio.testing.MockClock) -> None:
    class Failing(DvvStore):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

        async def put(self, key: bytes, value: bytes, *args: object, **kw: object) -> bytes:
            raise self.error

    history = History()
    workload = SetWorkload(WorkloadConfig(), history, random.Random(1))
    await workload.add("c", Failing(TooManySiblings("x")), b"set0")
    await workload.add("c", Failing(RequestTimeout("x")), b"set0")
    await workload.blind_write("c", DvvStore(), b"set1")
    assert [(op.outcome, op.error) for op in history.ops] == [
        (Outcome.FAIL, "TooManySiblings"),
        (Outcome.UNKNOWN, "RequestTimeout"),
        (Outcome.OK, ""),
    ]


async def test_a_failed_read_writes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    class Unreadable(DvvStore):
        async def get(self, key: bytes, r: str | int | None = None) -> Read:
            raise RequestTimeout("no")

    workload = SetWorkload(WorkloadConfig(), History(), random.Random(1))
    await workload.add("c", Unreadable(), b"set0")
    assert len(workload.history) == 0 and workload.stats.read_failures == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keys": 0},
        {"blind_fraction": 1.5},
        {"once_fraction": -0.1},
        {"blind_fraction": 0.6, "once_fraction": 0.5},
        {"think_max_s": -1.0},
    ],
)
def test_bad_config_is_a_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        WorkloadConfig(**kwargs)  # type: ignore[arg-type]


async def test_bad_client_name_is_a_config_error() -> None:
    workload = SetWorkload(WorkloadConfig(), History(), random.Random(1))
    with pytest.raises(ConfigError):
        await workload.run_client("a b", DvvStore())
