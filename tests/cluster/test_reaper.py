"""TTL and tombstone reaping on in-process nodes (real TCP, memory engines, a manual clock), the
counter floor that keeps reaping from reissuing dots, and the reaper's handlers."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_aae_support import (
    Cluster,
    ManualClock,
    healing,
    healing_cluster,
    keys_where,
    sk,
    wait_until,
)

from dynacore import objects
from dynacore._backend import versions
from dynacore.cluster.reaper import (
    EXPIRED,
    NOT_REAPABLE,
    REAP_CHECK,
    REAP_DELETE,
    TOMBSTONE,
    classify,
)
from dynacore.errors import ProtocolError, VersionError

GRACE_S = 10.0


def a_set(*envelopes: bytes) -> bytes:
    out = versions.empty()
    for i, envelope in enumerate(envelopes):
        out = versions.sync(
            out, versions.update(versions.empty(), versions.vv_empty(), envelope, f"n{i}")
        )
    return out


def env(ts_ms: int, *, expiry_ms: int = 0, tombstone: bool = False) -> bytes:
    return objects.encode_envelope(
        b"v", timestamp_ms=ts_ms, expiry_ms=expiry_ms, tombstone=tombstone
    )


def test_classify() -> None:
    grace_ms = 1000
    assert classify(a_set(env(10)), 5000, grace_ms) == NOT_REAPABLE
    assert classify(a_set(env(10, expiry_ms=20)), 19, grace_ms) == NOT_REAPABLE
    assert classify(a_set(env(10, expiry_ms=20)), 20, grace_ms) == EXPIRED
    assert classify(a_set(env(10, expiry_ms=20), env(11, expiry_ms=30)), 25, grace_ms) == (
        NOT_REAPABLE
    )
    assert classify(a_set(env(10, tombstone=True)), 1009, grace_ms) == NOT_REAPABLE
    assert classify(a_set(env(10, tombstone=True)), 1010, grace_ms) == TOMBSTONE
    mixed = a_set(env(10, expiry_ms=20), env(500, tombstone=True))
    assert classify(mixed, 1499, grace_ms) == NOT_REAPABLE  # the newest write sets the grace
    assert classify(mixed, 1500, grace_ms) == TOMBSTONE
    assert classify(a_set(env(10), env(11, tombstone=True)), 10**6, grace_ms) == NOT_REAPABLE
    assert classify(b"garbage", 10**6, grace_ms) == NOT_REAPABLE


async def reap_everywhere(cluster: Cluster) -> int:
    return sum([await healing(cluster, node).reaper.reap_round() for node in cluster.nodes])


def holders(cluster: Cluster, key: bytes) -> list[str]:
    return [node for node in cluster.nodes if cluster.stored(node, sk(key)) is not None]


async def test_expired_keys_are_invisible_then_reaped_everywhere(tmp_path: Path) -> None:
    clock = ManualClock()
    async with healing_cluster(tmp_path, clock=clock) as cluster, cluster.client() as client:
        await client.put(b"short", b"lived", w=3, ttl=2)
        await client.put(b"long", b"lived", w=3)
        assert await reap_everywhere(cluster) == 0
        clock.advance(2000)
        assert (await client.get(b"short", r=3)).values == []
        assert holders(cluster, b"short") == ["n1", "n2", "n3"]  # invisible, not yet reaped
        assert await reap_everywhere(cluster) == 3
        assert holders(cluster, b"short") == []
        assert holders(cluster, b"long") == ["n1", "n2", "n3"]
        assert (await client.get(b"long", r=3)).values == [b"lived"]


async def test_a_tombstone_is_reaped_after_the_grace_period_on_every_replica(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with (
        healing_cluster(tmp_path, clock=clock, tombstone_grace_s=GRACE_S) as cluster,
        cluster.client() as client,
    ):
        context = await client.put(b"doomed", b"v", w=3)
        await client.delete(b"doomed", context, w=3)
        clock.advance(int(GRACE_S * 1000) - 1)
        assert await reap_everywhere(cluster) == 0
        clock.advance(1)
        assert await reap_everywhere(cluster) == 1  # counted once, by the primary
        assert holders(cluster, b"doomed") == []
        assert (await client.get(b"doomed", r=3)).values == []


async def test_a_tombstone_waits_for_a_replica_that_missed_it_and_for_its_hints(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with (
        healing_cluster(tmp_path, clock=clock, tombstone_grace_s=GRACE_S) as cluster,
        cluster.client() as client,
    ):
        (key,) = keys_where(cluster, lambda pref: pref[0] == "n1" and pref[2] == "n3")
        context = await client.put(key, b"old", w=3)
        await cluster.stop("n3")
        await client.delete(key, context, w=2)  # n1 keeps a hint for n3
        clock.advance(int(GRACE_S * 1000) * 2)
        assert await reap_everywhere(cluster) == 0  # n3 does not answer: nothing is reaped
        await cluster.start("n3")  # still holding the live value
        assert await reap_everywhere(cluster) == 0  # n3 disagrees
        partition = cluster.membership.ring.partition_of(sk(key))  # type: ignore[union-attr]
        await healing(cluster, "n1").aae.repair_partition(partition)
        assert cluster.stored("n3", sk(key)) == cluster.stored("n1", sk(key))
        assert await reap_everywhere(cluster) == 0  # n1 still holds a hint for the key
        await wait_until(lambda: cluster.nodes["n1"].coordinator.health.is_up("n3"))  # gossip
        await healing(cluster, "n1").handoff.deliver_round()
        assert cluster.nodes["n1"].engine.count("hints") == 0
        assert await reap_everywhere(cluster) == 1
        assert holders(cluster, key) == []
        for node in cluster.ids:  # anti-entropy has nothing left to bring back
            await healing(cluster, node).aae.repair_partition(partition)
        assert holders(cluster, key) == []
        assert (await client.get(key, r=3)).values == []


async def test_the_counter_floor_keeps_a_rewrite_after_reaping_from_losing(
    tmp_path: Path,
) -> None:
    """n1 reaps an expired object on its own; n2 still holds it. The wall clock then steps
    back, and a blind write of the key through n1 must still win over the dead value on n2
    (without the floor it would reuse the dead value's dot, and the older-looking new value
    would lose the tie to the dead one, which is no longer expired at the new clock)."""
    clock = ManualClock()
    async with (
        healing_cluster(tmp_path, count=2, n=2, clock=clock) as cluster,
        cluster.client() as client,
    ):
        (key,) = keys_where(cluster, lambda pref: pref[0] == "n1")
        await client.put(key, b"dead", w=2, ttl=1)
        clock.advance(1000)
        assert await healing(cluster, "n1").reaper.reap_round() == 1
        assert holders(cluster, key) == ["n2"]
        floor = healing(cluster, "n1").floor()
        assert floor == 1
        clock.advance(-5000)  # an NTP step back
        context = await client.put(key, b"reborn", w=2)
        assert (await client.get(key, r=2)).values == [b"reborn"]
        for node in ("n1", "n2"):
            stored = cluster.stored(node, sk(key))
            assert objects.visible_values(stored, clock.now_ms()) == [b"reborn"], node
        counters = dict(versions.vv_to(context))
        assert counters[cluster.nodes["n1"].coordinator.actor_id] == floor + 1

        await cluster.stop("n1")
        await cluster.start("n1")
        assert healing(cluster, "n1").floor() == floor  # durable


async def test_reap_handlers_refuse_bad_input_and_never_delete_live_values(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    async with healing_cluster(tmp_path, clock=clock) as cluster, cluster.client() as client:
        await client.put(b"alive", b"v", w=3)
        handlers = healing(cluster, "n1").handlers()
        stored = cluster.stored("n1", sk(b"alive"))
        assert stored is not None
        assert await handlers[REAP_DELETE]([[[sk(b"alive"), stored]]]) == [0]
        assert cluster.stored("n1", sk(b"alive")) == stored
        assert await handlers[REAP_CHECK]([[sk(b"alive"), sk(b"absent")]]) == [
            [[stored, False], [None, False]]
        ]
        with pytest.raises(ProtocolError):
            await handlers[REAP_CHECK]([[b""]])
        with pytest.raises(ProtocolError):
            await handlers[REAP_CHECK]([[1]])
        with pytest.raises(ProtocolError):
            await handlers[REAP_DELETE]([[[sk(b"alive")]]])
        with pytest.raises(VersionError):
            await handlers[REAP_DELETE]([[[sk(b"alive"), b"junk"]]])
