"""Merkle anti-entropy without a network: trees kept current by ObservedEngine, the exchange
protocol between two replicas (through the wire codec, handlers called in-process), bad input."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacore import objects
from dynacore._backend import merkle, versions, wire
from dynacore.cluster.antientropy import (
    AAE_HASHES,
    AAE_SEGMENTS,
    DIRTY_MAX_KEYS,
    SETS_GET,
    FieldsRemote,
    ObservedEngine,
    Replica,
    Trees,
    direct_send,
    exchange,
)
from dynacore.cluster.hints import SETS_PUT
from dynacore.errors import MerkleError, ProtocolError, Unavailable, VersionError
from dynacore.limits import MIB
from dynacore.membership import Membership
from dynacore.storage import open_memory_engine

FRAME_BYTES = 4 * MIB
VIEW = Membership.static([("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")], partitions=4, n=2)


def key(i: int) -> bytes:
    return objects.object_key("", f"key-{i:06d}".encode())


def value_set(text: str, actor: str = "a", ts_ms: int = 1) -> bytes:
    envelope = objects.encode_envelope(text.encode(), timestamp_ms=ts_ms)
    return versions.update(versions.empty(), versions.vv_empty(), envelope, actor)


@dataclass
class Side:
    store: ObservedEngine
    trees: Trees
    replica: Replica

    async def put(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for start in range(0, len(pairs), 1000):
            ops = [(k, _const(v)) for k, v in pairs[start : start + 1000]]
            await self.store.update_many("data", ops)

    def data(self) -> dict[bytes, bytes]:
        return dict(self.store.scan("data"))


def _const(value: bytes | None):  # type: ignore[no-untyped-def]
    return lambda _old: value


@asynccontextmanager
async def open_side() -> AsyncIterator[Side]:
    async with open_memory_engine() as engine:
        store = ObservedEngine(engine)
        trees = Trees(store, lambda: VIEW)
        store.observers.append(trees.mark)
        await trees.build()
        yield Side(store, trees, Replica(store, trees, FRAME_BYTES - 16 * 1024))


@asynccontextmanager
async def open_pair() -> AsyncIterator[tuple[Side, Side]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_side())
        b = await stack.enter_async_context(open_side())
        yield a, b


def remote_of(side: Side) -> FieldsRemote:
    send = direct_send(side.replica.handlers(), FRAME_BYTES)
    return FieldsRemote(send, (side.trees.fanout, side.trees.depth), FRAME_BYTES // 2)


def rebuilt(side: Side) -> dict[tuple[int, int], bytes]:
    """The roots of trees built from scratch over the side's store."""
    roots: dict[tuple[int, int], bytes] = {}
    by_tid: dict[tuple[int, int], list[tuple[bytes, bytes]]] = {}
    for k, s in side.store.scan("data"):
        by_tid.setdefault(side.trees.tree_id(k), []).append((k, objects.object_digest(s)))
    for tid, pairs in by_tid.items():
        tree = merkle.MerkleTree(side.trees.fanout, side.trees.depth)
        tree.rebuild(pairs)
        roots[tid] = tree.root()
    return roots


def roots(side: Side) -> dict[tuple[int, int], bytes]:
    return {
        tid: side.trees.get(tid).root() for tid in side.trees.ids() if side.trees.get(tid).size > 0
    }


async def exchange_all(a: Side, b: Side) -> tuple[int, int]:
    """Exchange every tree either side has; (keys repaired, bytes on the wire)."""
    repaired = sent = 0
    for tid in sorted(set(a.trees.ids()) | set(b.trees.ids())):
        result = await exchange(a.replica, remote_of(b), tid)
        repaired += result.keys_repaired
        sent += result.bytes_sent
    return repaired, sent


# -- trees -----------------------------------------------------------------------------------------


async def test_trees_follow_every_kind_of_data_write() -> None:
    async with open_side() as side:
        await side.put([(key(i), value_set(f"v{i}")) for i in range(200)])
        await side.store.update("data", key(3), _const(value_set("changed")))
        await side.store.update("data", key(4), _const(None))  # a delete
        await side.store.update_many("data", [(key(5), _const(None)), (key(6), _const(None))])
        await side.store.update("hints", b"\x01x" + key(7), _const(value_set("hint")))
        assert roots(side) == rebuilt(side)
        assert sum(side.trees.size(tid) for tid in side.trees.ids()) == 197


async def test_the_dirty_backlog_stays_bounded_under_a_stream_of_writes() -> None:
    async with open_side() as side:
        for start in range(0, 6000, 500):
            await side.put([(key(i), value_set(f"v{i}")) for i in range(start, start + 500)])
            assert side.trees.backlog <= DIRTY_MAX_KEYS + 1
        assert roots(side) == rebuilt(side)
        assert side.trees.backlog == 0


async def test_trees_built_at_start_match_the_store() -> None:
    async with open_memory_engine() as engine:
        await engine.update_many("data", [(key(i), _const(value_set(f"v{i}"))) for i in range(900)])
        store = ObservedEngine(engine)
        trees = Trees(store, lambda: VIEW)
        store.observers.append(trees.mark)
        assert not trees.ready.is_set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trees.build)
            await store.update("data", key(1), _const(None))  # a write during the build
        side = Side(store, trees, Replica(store, trees, FRAME_BYTES))
        assert trees.ready.is_set()
        assert roots(side) == rebuilt(side)
        assert len(roots(side)) == 4  # one tree per partition (n is the same everywhere)


async def test_keys_without_a_well_formed_namespace_are_kept_in_a_tree_too() -> None:
    async with open_side() as side:
        odd = [b"\x05ab", b"\x02\xff\xfex", b"\x00plain"]
        await side.put([(k, value_set("v")) for k in odd])
        assert roots(side) == rebuilt(side)
        assert sum(side.trees.size(tid) for tid in side.trees.ids()) == 3


async def test_a_failed_write_leaves_the_tree_equal_to_the_store() -> None:
    async with open_side() as side:
        await side.put([(key(1), value_set("v"))])

        def boom(_old: bytes | None) -> bytes:
            raise VersionError("refused")

        with pytest.raises(VersionError):
            await side.store.update("data", key(1), boom)
        assert roots(side) == rebuilt(side)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.integers(0, 40), st.one_of(st.none(), st.text(max_size=5)))))
def test_trees_equal_a_rebuild_after_any_writes(ops: list[tuple[int, str | None]]) -> None:
    async def main() -> None:
        async with open_side() as side:
            for i, text in ops:
                new = None if text is None else value_set(text)
                await side.store.update("data", key(i), _const(new))
            assert roots(side) == rebuilt(side)

    trio.run(main)


# -- exchange --------------------------------------------------------------------------------------


async def test_exchange_repairs_only_the_differing_keys_both_ways() -> None:
    async with open_pair() as (a, b):
        common = [(key(i), value_set(f"v{i}")) for i in range(2000)]
        await a.put(common)
        await b.put(common)
        await a.put([(key(i), value_set(f"a-only{i}")) for i in range(5000, 5010)])
        await b.put([(key(i), value_set(f"b-only{i}")) for i in range(6000, 6007)])
        # concurrent writes of one key on each side: both must survive as siblings
        await a.put([(key(7), value_set("from a", actor="a"))])
        await b.put([(key(7), value_set("from b", actor="b"))])

        repaired, sent = await exchange_all(a, b)

        assert repaired == 10 + 7 + 1
        assert a.data() == b.data()
        assert len(a.data()) == 2017
        assert sorted(objects.visible_values(a.data()[key(7)], 0)) == [b"from a", b"from b"]
        assert roots(a) == roots(b) == rebuilt(a)
        assert sent > 0
        assert await exchange_all(a, b) == (0, await _roots_only_bytes(a, b))


async def _roots_only_bytes(a: Side, b: Side) -> int:
    """Bytes of an exchange of equal trees: one root request and reply per tree."""
    total = 0
    for tid in sorted(set(a.trees.ids()) | set(b.trees.ids())):
        fields = [*tid, a.trees.fanout, a.trees.depth, 0, []]
        total += len(wire.encode_frame(AAE_HASHES, 0, fields))
        total += len(wire.encode_frame(AAE_HASHES, 0, [a.trees.get(tid).root()]))
    return total


async def test_exchange_with_an_empty_replica_copies_everything() -> None:
    async with open_pair() as (a, b):
        await a.put([(key(i), value_set(f"v{i}")) for i in range(3000)])
        repaired, _ = await exchange_all(b, a)  # the empty side starts it
        assert repaired == 3000
        assert a.data() == b.data()


async def test_exchange_keeps_the_newer_version_of_one_writer() -> None:
    async with open_pair() as (a, b):
        old = value_set("old")
        context = versions.join(old)
        newer = versions.update(old, context, objects.encode_envelope(b"new", timestamp_ms=2), "a")
        await a.put([(key(1), old)])
        await b.put([(key(1), newer)])
        await exchange_all(a, b)
        assert objects.visible_values(a.data()[key(1)], 0) == [b"new"]
        assert a.data() == b.data()


async def test_exchange_ignores_keys_of_another_tree() -> None:
    async with open_pair() as (a, b):
        await b.put([(key(i), value_set(f"v{i}")) for i in range(50)])
        tid = b.trees.tree_id(key(0))
        foreign = [k for k, _ in b.data().items() if b.trees.tree_id(k) != tid]
        assert foreign
        from dynacore.cluster.antientropy import sync_keys

        await sync_keys(a.replica, remote_of(b), tid, foreign)
        assert a.data() == {}


async def test_exchange_bytes_are_a_small_fraction_of_a_full_transfer() -> None:
    rng = random.Random(7)
    async with open_pair() as (a, b):
        pairs = [(key(i), value_set(f"value-{i}-" + "x" * 40)) for i in range(20_000)]
        await a.put(pairs)
        await b.put(pairs)
        for i in rng.sample(range(20_000), 20):
            await b.put([(key(i), value_set("changed", actor="b"))])
        repaired, sent = await exchange_all(a, b)
        assert repaired == 20
        full_transfer = sum(len(wire.encode_frame(SETS_PUT, 0, [[[k, s]]])) for k, s in pairs)
        assert sent <= full_transfer * 0.05, (sent, full_transfer)


# -- the handlers' bad input -----------------------------------------------------------------------


async def test_handlers_refuse_bad_requests_with_typed_errors() -> None:
    async with open_side() as side:
        handlers = side.replica.handlers()
        f, d = side.trees.fanout, side.trees.depth
        with pytest.raises(ProtocolError):
            await handlers[AAE_HASHES]([0, 2, f, d + 1, 0, []])  # another shape
        with pytest.raises(ProtocolError):
            await handlers[AAE_HASHES]([99, 2, f, d, 0, []])  # no such partition
        with pytest.raises(ProtocolError):
            await handlers[AAE_HASHES]([0, 2, f, d, 1, [b"x"]])
        with pytest.raises(ProtocolError):
            await handlers[AAE_HASHES]([0, 2, f, d])
        with pytest.raises(ProtocolError):
            await handlers[AAE_HASHES]([0, 2, f, d, 0, [0]])  # the root has no parent
        with pytest.raises(ProtocolError):
            await handlers[AAE_HASHES]([0, 2, f, d, 1, list(range(10_000))])  # too many
        with pytest.raises(MerkleError):
            await handlers[AAE_HASHES]([0, 2, f, d, 1, [1]])  # no such parent at level 0
        with pytest.raises(MerkleError):
            await handlers[AAE_HASHES]([0, 2, f, d, d + 1, [0]])  # no such level
        with pytest.raises(MerkleError):
            await handlers[AAE_SEGMENTS]([0, 2, f, d, [-1]])
        with pytest.raises(ProtocolError):
            await handlers[SETS_GET]([[1, 2]])
        with pytest.raises(ProtocolError):
            await handlers[SETS_PUT]([[[b"k"]]])
        with pytest.raises(VersionError):
            await handlers[SETS_PUT]([[[b"k", b"not a set"]]])
        assert side.data() == {}


async def test_hashes_are_unavailable_until_the_trees_are_built() -> None:
    async with open_memory_engine() as engine:
        trees = Trees(engine, lambda: VIEW)
        replica = Replica(engine, trees, FRAME_BYTES)
        with pytest.raises(Unavailable):
            await replica.handlers()[AAE_HASHES]([0, 2, trees.fanout, trees.depth, 0, []])


async def test_replies_are_cut_to_fit_and_the_caller_asks_again() -> None:
    async with open_pair() as (a, b):
        big = [(key(i), value_set("x" * 20_000 + str(i))) for i in range(60)]
        await b.put(big)
        small = Replica(b.store, b.trees, 100_000)  # replies of at most ~100 kB
        send = direct_send(small.handlers(), FRAME_BYTES)
        remote = FieldsRemote(send, (b.trees.fanout, b.trees.depth), 100_000)
        for tid in b.trees.ids():
            await exchange(a.replica, remote, tid)
        assert a.data() == b.data()
