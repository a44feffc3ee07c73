"""The node on the simulated network under virtual time: timeouts, partitions, forwarding."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from dynacore import objects
from dynacore.errors import QuorumNotMet, Unavailable
from dynacore.limits import Limits
from dynacore.net.simnet import SimNetwork
from dynacore.node import SystemClock, TrioClock

from .conftest import open_cluster, wait_until

TIMEOUT_S = 2.0


def sk(key: bytes) -> bytes:
    return objects.object_key("", key)


async def test_partitioned_replica_times_out_then_read_repair(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim = SimNetwork(random.Random(7))
    limits = Limits(request_timeout_s=TIMEOUT_S)
    async with open_cluster(tmp_path, sim=sim, limits=limits) as cluster:
        async with cluster.client() as client:
            lost = "n3:7000"
            sim.partition_one_way(["n1:7000", "n2:7000"], [lost])  # n3 hears nothing
            started = trio.current_time()
            key = next(
                k
                for k in (f"k{i}".encode() for i in range(100))
                if cluster.replicas(sk(k))[0] != "n3"
            )
            with pytest.raises(QuorumNotMet) as info:
                await client.put(key, b"v", w="all")
            assert (info.value.acked, info.value.required) == (2, 3)
            assert trio.current_time() - started >= TIMEOUT_S  # it waited for the silent one
            assert cluster.stored("n3", sk(key)) is None
            assert (await client.get(key, r=2)).values == [b"v"]
            sim.heal()
            with trio.fail_after(60):  # until the reconnect backoff lets an r=3 read through
                while True:
                    try:
                        assert (await client.get(key, r=3)).values == [b"v"]
                        break
                    except QuorumNotMet:
                        await trio.sleep(0.5)
            await wait_until(lambda: cluster.stored("n3", sk(key)) is not None)
            assert cluster.stored("n3", sk(key)) == cluster.stored("n1", sk(key))


async def test_put_is_forwarded_to_the_preference_list(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim = SimNetwork(random.Random(3))
    limits = Limits(request_timeout_s=TIMEOUT_S)
    async with open_cluster(tmp_path, sim=sim, limits=limits, n=1) as cluster:
        key = b"forward-me"
        (owner,) = cluster.replicas(sk(key))
        outsider = next(i for i in cluster.ids if i != owner)
        await cluster.nodes[outsider].coordinator.put("", key, b"v", b"", w=1)
        assert {i for i in cluster.ids if cluster.stored(i, sk(key))} == {owner}
        merged = await cluster.nodes[outsider].coordinator.get("", key, r=1)
        assert objects.visible_values(merged, cluster.clock.now_ms()) == [b"v"]
        sim.crash(f"{owner}:7000")
        with pytest.raises(Unavailable):
            await cluster.nodes[outsider].coordinator.put("", key, b"w", b"", w=1)


async def test_forward_skips_a_crashed_replica(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim = SimNetwork(random.Random(5))
    limits = Limits(request_timeout_s=TIMEOUT_S)
    async with open_cluster(tmp_path, sim=sim, limits=limits, n=2) as cluster:
        key = b"k"
        first, second = cluster.replicas(sk(key))
        outsider = next(i for i in cluster.ids if i not in (first, second))
        sim.crash(f"{first}:7000")
        await cluster.nodes[outsider].coordinator.put("", key, b"v", b"", w=1)
        assert cluster.stored(second, sk(key)) is not None
        assert cluster.stored(first, sk(key)) is None
        assert cluster.nodes[outsider].coordinator.health.is_down(first)


async def test_trio_clock_follows_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    clock = TrioClock(offset_ms=1_000)
    before = clock.now_ms()
    await trio.sleep(2.5)
    assert clock.now_ms() - before == 2500
    assert SystemClock().now_ms() > 1_600_000_000_000  # wall milliseconds since the epoch
