"""Several cache members (async API) in one trio.run over the simulated network: replication,
quorum reads, local reads without the network, forwarding to the replicas, siblings from
concurrent adds, counters that lose no increment, a cache joining plain nodes by gossip (and
its bounds and refusals), local reads that follow a leave's handoff, and sync caches that join by
a seed and leave on close over TCP."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dynacore import AsyncClient, Cache, objects, open_cache
from dynacore.cache import REMOTE, AsyncCache
from dynacore.cluster.state import ClusterState, Status
from dynacore.errors import (
    CacheClosed,
    ClusterError,
    ConfigError,
    QuorumNotMet,
    Unavailable,
    WrongType,
)
from dynacore.node import Node
from dynacore.serializers import decode_value, encode_value

from .conftest import (
    SETTLE_TIMEOUT_S,
    SIM_LIMITS,
    ManualClock,
    retry_quorum,
    sim_caches,
    wait_until,
)


def key_owned_by(cache: AsyncCache, owner: bool, prefix: str = "k") -> str:
    """A key that `cache` replicates (owner=True) or does not."""
    for i in range(10_000):
        key = f"{prefix}{i}"
        if cache.replicates(key) == owner:
            return key
    raise AssertionError("no such key")


async def test_a_write_in_one_member_is_readable_in_the_others() -> None:
    async with sim_caches(["a", "b", "c"], n=3) as (_sim, caches, _):
        a, b, c = caches["a"], caches["b"], caches["c"]
        await a.set("k", {"v": 1}, w=3)
        assert await b.get("k", r=2) == {"v": 1}
        assert await c.get("k") == {"v": 1}  # r=1, local: the w=3 write is everywhere
        await b.set("k", "second", w=2)
        assert await a.get("k", r=3) == "second"
        assert await c.delete("k", w=3)
        for member in (a, b, c):
            assert await member.get("k", r=3) is None


async def test_members_that_do_not_replicate_a_key_forward_writes_and_read_remotely() -> None:
    async with sim_caches(["a", "b", "c"], n=1) as (_sim, caches, _):
        a = caches["a"]
        key = key_owned_by(a, owner=False)
        owner = next(m for m in caches.values() if m.replicates(key))
        assert a.lookup_local(key) is REMOTE  # the fast path declines
        await a.set(key, "forwarded")
        assert owner.lookup_local(key) == "forwarded"
        assert await a.get(key) == "forwarded"
        assert await a.incr("counter-" + key) == 1
        assert await a.incr(key + "-n", 5) == 5
        assert await a.decr(key + "-n", 2) == 3
        assert await a.delete(key)
        assert await a.get(key) is None
        await a.set(key, "text")
        with pytest.raises(WrongType):
            await a.incr(key)  # the remote coordinator's typed error travels back


async def test_local_reads_need_no_network(clock: ManualClock) -> None:
    async with sim_caches(["a", "b"], n=2, clock=clock) as (sim, caches, _):
        a, b = caches["a"], caches["b"]
        await a.set("k", "v", w=2)
        sim.partition(["a:7000"], ["b:7000"])
        assert await b.get("k") == "v"  # r=1 and b replicates every key: served locally
        assert b.lookup_local("k") == "v"
        with pytest.raises(QuorumNotMet):
            await b.get("k", r=2)
        # TTLs expire on every member
        await b.set("t", "x", ttl=5)
        sim.heal()
        await a.set("t2", "y", ttl=5, w=2)
        assert await b.get("t2") == "y"
        clock.advance(5000)
        assert await a.get("t2") is None
        assert await b.get("t2") is None


async def test_concurrent_adds_from_two_members_become_siblings(clock: ManualClock) -> None:
    async with sim_caches(["a", "b"], n=2, clock=clock) as (sim, caches, _):
        a, b = caches["a"], caches["b"]
        sim.partition(["a:7000"], ["b:7000"])
        assert await a.add("lock", "owner-a")  # each side sees no value: both adds win
        clock.advance(1)
        assert await b.add("lock", "owner-b")
        sim.heal()
        versions = await retry_quorum(a.get_versions, "lock", r=2)
        assert sorted(versions.values) == ["owner-a", "owner-b"]  # nothing silently lost
        assert await a.get("lock", r=2) == "owner-b"  # the newest wins a get
        assert not await a.add("lock", "late")
        await a.set("lock", "resolved", context=versions.context, w=2)
        assert (await b.get_versions("lock", r=2)).values == ["resolved"]


async def test_no_increment_is_lost_across_members() -> None:
    async with sim_caches(["a", "b", "c"], n=3) as (_sim, caches, _):
        per_task = 25

        async def bump(member: AsyncCache) -> None:
            for _ in range(per_task):
                await member.incr("hits")

        async with trio.open_nursery() as nursery:
            for member in caches.values():
                for _ in range(4):
                    nursery.start_soon(bump, member)
        total = 3 * 4 * per_task
        for member in caches.values():
            assert await member.get("hits", r=3) == total


async def test_increments_on_both_sides_of_a_partition_merge(clock: ManualClock) -> None:
    async with sim_caches(["a", "b"], n=2, clock=clock) as (sim, caches, _):
        a, b = caches["a"], caches["b"]
        await a.set("c", 100, w=2)
        sim.partition(["a:7000"], ["b:7000"])
        for _ in range(3):
            await a.incr("c")
        for _ in range(5):
            await b.decr("c")
        assert await a.get("c") == 103
        assert await b.get("c") == 95
        sim.heal()
        assert await retry_quorum(a.get, "c", r=2) == 98
        await wait_until(lambda: a.lookup_local("c") == b.lookup_local("c") == 98)
        assert await b.incr("c") == 99


def cluster_state(cache: AsyncCache) -> ClusterState:
    cluster = cache.node.cluster
    assert cluster is not None and cluster.gossiper.state is not None
    return cluster.gossiper.state


def partition(cache: AsyncCache, key: str) -> int:
    return cluster_state(cache).ring.partition_of(objects.object_key("", key.encode()))


def node_state(node: Node) -> ClusterState | None:
    assert node.cluster is not None
    return node.cluster.gossiper.state


async def test_a_cache_joins_plain_nodes_by_seed(
    autojump_clock: trio.testing.MockClock, clock: ManualClock
) -> None:
    async with (
        sim_caches([], n=2, clock=clock, servers=("s1", "s2")) as (sim, _, nodes),
        AsyncClient(["s2:7000"], transport=sim.transport("cli:1")) as client,
    ):
        before = {f"before-{i}": i for i in range(64)}
        for key, value in before.items():
            await client.put(key, encode_value(value), w=2)
        async with open_cache(
            None,
            "c1:7000",
            ["s1:7000"],
            node_id="c1",
            transport=sim.transport("c1:7000"),
            clock=clock,
            limits=SIM_LIMITS,
            w=2,
        ) as cache:
            # a ring member with its share of the partitions, handed off before it serves
            state = cluster_state(cache)
            assert state.pending is None and state.ring.nodes == ["c1", "s1", "s2"]
            assert state.members["c1"].status is Status.VALID
            assert len(state.ring.partitions_owned("c1")) == 16 // 3
            assert (state.n_val, cache.node.config.n) == (2, 2)  # learned from the cluster
            await wait_until(lambda: {node_state(n) for n in nodes.values()} == {state})
            mine = [key for key in before if cache.replicates(key)]
            others = [key for key in before if not cache.replicates(key)]
            assert mine and others
            for key in before:  # the fast path follows the gossiped ring
                assert cache.replicates(key) == (
                    "c1" in state.read_owners(partition(cache, key), 2)
                )
            sim.partition(["c1:7000"], ["s1:7000", "s2:7000"])
            assert {key: cache.lookup_local(key) for key in mine} == {k: before[k] for k in mine}
            assert all(cache.lookup_local(key) is REMOTE for key in others)
            sim.heal()
            assert [await cache.get(key) for key in others] == [before[k] for k in others]
            await cache.set(others[0], [1, 2])
            await cache.set(mine[0], "here")
            assert await cache.incr("n", 7) == 7
            assert cache.lookup_local(mine[0]) == "here"
            result = await client.get(others[0], r=2)
            assert [decode_value(v) for v in result.values] == [[1, 2]]
        # closed without leaving: still a member, like a node that went down
        assert all("c1" in state.ring.nodes for state in map(node_state, nodes.values()) if state)


async def test_a_cache_join_is_bounded_and_refusals_are_typed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_caches([], n=2, servers=("s1", "s2")) as (sim, _, _nodes):

        def joiner(node_id: str, listen: str, seeds: list[str], **options: Any) -> Any:
            transport = sim.transport(listen)
            return open_cache(
                None,
                listen,
                seeds,
                node_id=node_id,
                transport=transport,
                limits=SIM_LIMITS,
                **options,
            )

        with pytest.raises(Unavailable):
            async with joiner("x", "x:7000", ["nowhere:7000"]):
                pass
        with pytest.raises(Unavailable, match="did not finish joining"):
            async with joiner("y", "y:7000", ["s1:7000"], join_timeout_s=0.001):
                pass
        with pytest.raises(ClusterError, match="ring member of the cluster"):
            async with joiner("s2", "z:7000", ["s1:7000"]):
                pass
        with pytest.raises(ConfigError, match="join_timeout_s"):
            async with joiner("w", "w:7000", ["s1:7000"], join_timeout_s=0):
                pass


async def test_a_membership_change_moves_the_fast_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_caches(["a", "b", "c"], n=1) as (sim, caches, _):
        a, b, c = caches["a"], caches["b"], caches["c"]
        keys = [f"k{i}" for i in range(200)]
        for key in keys:
            await a.set(key, key)
        from_b = [key for key in keys if b.replicates(key)]
        assert from_b and all(b.lookup_local(key) == key for key in from_b)
        assert all(a.lookup_local(key) is REMOTE for key in from_b)
        sim.partition(["b:7000"], ["c:7000"])  # b's transfers to c cannot finish yet
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.leave)
            await wait_until(lambda: cluster_state(a).pending is not None)
            await trio.sleep(30)  # b streams to a meanwhile, but confirms nothing while c is cut
            assert cluster_state(a).pending is not None and not cluster_state(a).confirmed
            assert all(b.lookup_local(key) == key for key in from_b)  # b serves until then
            assert all(a.lookup_local(key) is REMOTE for key in from_b)  # a only after
            to_a = [k for k in from_b if "a" in cluster_state(a).owners_for(partition(a, k), 1)]
            assert to_a  # writes go to a already; cache writes are coordinated by b until then
            coordinator = a.node.coordinator
            assert not any(coordinator.replicates("", k.encode()) for k in to_a)
            assert all(coordinator.replicates("", k.encode(), any_owner=True) for k in to_a)
            sim.heal()
        await wait_until(lambda: len({cluster_state(m) for m in (a, b, c)}) == 1)
        final = cluster_state(a)
        assert final.pending is None and final.members["b"].status is Status.EXITING
        for key in from_b:
            new_owner = a if a.replicates(key) else c
            assert new_owner.replicates(key) and not b.replicates(key)
            assert new_owner.lookup_local(key) == key  # handed off, and read locally there
            assert b.lookup_local(key) is REMOTE
            assert await b.get(key) == key  # b still answers, through the new owner


def test_sync_caches_join_by_seed_resume_and_leave_on_close(tmp_path: Path) -> None:
    with Cache(node_id="a", n=1, gossip_interval_s=0.05) as a:
        options: dict[str, Any] = {"node_id": "b", "gossip_interval_s": 0.05, "sync": False}
        b = Cache(tmp_path / "b", seeds=[a.address], **options)
        try:
            keys = [f"k{i}" for i in range(100)]
            for key in keys:
                b[key] = key
            mine = [key for key in keys if b.replicates(key)]
            assert 0 < len(mine) < len(keys)  # b took a share of the partitions
            assert all(b.lookup_local(key) == key for key in mine)
            assert all(a.lookup_local(key) is REMOTE for key in mine)
            assert [a[key] for key in keys] == keys
            b.close()  # stops only: b stays a member, and resumes from its persisted state
            b = Cache(tmp_path / "b", seeds=[a.address], **options)
            assert [b.lookup_local(key) for key in mine] == mine
        finally:
            b.close(leave=True)
        settle(lambda: all(a.replicates(key) for key in keys))
        assert [a.lookup_local(key) for key in keys] == keys  # b handed its keys back to a
        with pytest.raises(CacheClosed):
            b.set("late", 1)


def settle(predicate: Callable[[], bool], timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Poll `predicate()` (another thread's loop makes it true); fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the cluster did not settle"
        time.sleep(0.01)


async def test_open_cache_errors_escape_as_themselves() -> None:
    with pytest.raises(ConfigError):
        async with open_cache(partitions=3):
            pass

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with open_cache() as cache:
            await cache.set("k", 1)
            raise Boom


async def test_async_memoize_and_batches(clock: ManualClock) -> None:
    async with open_cache(clock=clock) as cache:
        calls: list[int] = []

        @cache.memoize(ttl=1)
        async def double(x: int) -> int:
            calls.append(x)
            return 2 * x

        assert [await double(2), await double(2), await double(3)] == [4, 4, 6]
        assert calls == [2, 3]
        clock.advance(1000)
        assert await double(2) == 4
        assert calls == [2, 3, 2]
        await cache.set_many({"a": 1, "b": 2}, ttl=10)
        assert await cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert await cache.contains("a")
        assert await cache.touch("a", None)
        assert cache.local_count() >= 2
        assert await cache.clear() >= 2
        assert cache.local_count() == 0
