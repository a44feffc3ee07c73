"""Several cache members (async API) in one trio.run over the simulated network: replication,
quorum reads, local reads without the network, forwarding to the replicas, siblings from
concurrent adds, counters that lose no increment, and a cache joining plain nodes by a seed."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from dynacore import AsyncClient, open_cache
from dynacore.cache import MISSING, REMOTE, AsyncCache
from dynacore.errors import ConfigError, QuorumNotMet, WrongType
from dynacore.membership import Membership
from dynacore.serializers import decode_value

from .conftest import SIM_LIMITS, ManualClock, retry_quorum, sim_caches, wait_until


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


async def test_a_cache_joins_plain_nodes_by_seed(clock: ManualClock) -> None:
    async with sim_caches([], n=2, clock=clock, servers=("s1", "s2")) as (sim, _, nodes):
        # the servers' static member list names the cache "c1" (gossip membership will lift this)
        view = Membership.static(
            [("c1", "c1:7000"), ("s1", "s1:7000"), ("s2", "s2:7000")], partitions=16, n=2
        )
        for node in nodes.values():
            node.set_membership(view)
        async with open_cache(
            seeds=["s1:7000"],
            node_id="c1",
            transport=sim.transport("c1:7000"),
            clock=clock,
            limits=SIM_LIMITS,
            w=2,
        ) as cache:
            assert cache.address == "c1:7000"
            remote_key = key_owned_by(cache, owner=False)
            local_key = key_owned_by(cache, owner=True)
            await cache.set(remote_key, [1, 2])
            await cache.set(local_key, "here")
            assert await cache.incr("n", 7) == 7
            assert await cache.get(remote_key) == [1, 2]
            assert cache.lookup_local(local_key) == "here"
            async with AsyncClient(["s2:7000"], transport=sim.transport("cli:1")) as client:
                result = await client.get(remote_key, r=2)
                assert [decode_value(v) for v in result.values] == [[1, 2]]
        with pytest.raises(ConfigError, match="not a member"):
            async with open_cache(
                seeds=["s1:7000"],
                node_id="stranger",
                transport=sim.transport("x:7000"),
                limits=SIM_LIMITS,
            ):
                pass


async def test_a_membership_change_moves_the_fast_path() -> None:
    async with sim_caches(["a", "b"], n=1) as (_sim, caches, _):
        a = caches["a"]
        key = key_owned_by(a, owner=False)
        await a.set(key, "v")
        assert not a.replicates(key)
        assert a.lookup_local(key) is REMOTE
        view = a.node.membership
        alone = Membership.static([("a", "a:7000")], partitions=16, n=1)
        a.node.set_membership(dataclasses.replace(alone, addresses=view.addresses))
        assert a.replicates(key)
        assert a.lookup_local(key) is MISSING  # local now, and a never stored it


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
