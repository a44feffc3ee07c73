"""What failing seeds found, pinned down as deterministic scenarios.

A seed's path changes whenever the node code changes, so a failure found by a seed is kept here
as the smallest scenario that reproduces it on the simulation harness (virtual time, fixed
seeds), with the seed and options that first found it. A bug whose fix has not landed is a
strict xfail naming it: it turns into a failure, and must become a plain test, the moment the fix
lands (as the client bug below did, fixed in client.py by 7373bf8).

Found by `python -m dynacore.sim --seeds 10 --first-seed 6000 --nodes 3 --keys 1 --clients 8
--blind-fraction 0.5 --siblings-max 5 --safety-s 20` (before the write-once keys existed):

- seeds 6004, 6009: "failed yet present" — the client bug below (fixed);
- seeds 6000, 6002, 6008: 6 to 9 siblings with a limit of 5 — replicas that filled up to the
  limit apart merge into more. That is the design (replication never refuses), so the
  checker's bound became n x siblings_max (ClusterConfig.siblings_bound).
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from dynacore import objects
from dynacore._backend import versions
from dynacore.errors import DynacoreError, LimitExceeded, TooManySiblings
from dynacore.net.simnet import SimNetwork
from dynacore.sim.checker import FinalState, check
from dynacore.sim.cluster import (
    CALM,
    EPOCH_MS,
    ClusterConfig,
    SimCluster,
    address_of,
    open_sim_cluster,
)

KEY = b"crowded"
SETTLE_S = 30.0

CLIENT_RETRY_BUG = (  # the bug the scenario below pins down (fixed)
    "client.py: AsyncClient._route retries a put on the next node after ConnectionLost, and when "
    "that retry fails with a definite error (TooManySiblings) it reports that error, although "
    "the first attempt reached a node that stored the write before it crashed; the write is "
    "then present though the client was told it was refused. After an ambiguous attempt, the "
    "client must report the put as ambiguous (e.g. re-raise the ConnectionLost)."
)


def siblings(count: int) -> bytes:
    """A version set of `count` concurrent values (one per actor)."""
    stored = versions.empty()
    for i in range(count):
        envelope = objects.encode_envelope(f"v{i}".encode(), timestamp_ms=EPOCH_MS)
        stored = versions.sync(
            stored, versions.update(versions.empty(), versions.vv_empty(), envelope, f"old.{i}")
        )
    return stored


async def put_after_a_crash_mid_write(cluster: SimCluster) -> tuple[DynacoreError, bytes | None]:
    """The client's put reaches the first replica A, which stores it and then crashes before it
    answers (its replication is cut); the client retries on B, whose copy of the key is at the
    sibling limit. Returns the error the client raised and what A's disk holds."""
    a, b, c = cluster.preference_list(KEY)
    limit = cluster.config.siblings_max
    node_b = cluster.nodes[b].node
    assert node_b is not None
    await node_b.coordinator.replica_put(objects.object_key("", KEY), siblings(limit))
    async with cluster.client("c1", b) as client:
        await client.get(b"warm-up")  # connected to every replica before the cut
        cluster.network.partition_one_way([address_of(a)], [address_of(b), address_of(c)])

        async def crash_a_soon() -> None:
            await trio.sleep(cluster.config.request_timeout_s / 2)
            await cluster.crash(a)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_a_soon)
            with pytest.raises(DynacoreError) as info:
                await client.put(KEY, b"x", w=2)
    cluster.network.heal()
    await cluster.restart(a, wipe=False)
    return info.value, cluster.stored(a, KEY)


CRASH_CONFIG = ClusterConfig(nodes=3, n=3, partitions=8, siblings_max=3)


async def test_the_crashed_first_attempt_was_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(1), faults=CALM)
    async with open_sim_cluster(CRASH_CONFIG, network, random.Random(2)) as cluster:
        error, at_a = await put_after_a_crash_mid_write(cluster)
    assert at_a is not None and b"x" in objects.visible_values(at_a, EPOCH_MS)
    assert isinstance(error, DynacoreError)


async def test_a_refused_retry_after_a_lost_connection_is_not_a_definite_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(1), faults=CALM)
    async with open_sim_cluster(CRASH_CONFIG, network, random.Random(2)) as cluster:
        error, _ = await put_after_a_crash_mid_write(cluster)
    assert not isinstance(error, LimitExceeded), f"a definite refusal: {error!r}"


async def test_replicas_filled_apart_merge_above_the_per_write_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ClusterConfig(nodes=3, n=3, partitions=8, siblings_max=3)
    network = SimNetwork(random.Random(1), faults=CALM)
    async with open_sim_cluster(config, network, random.Random(2)) as cluster:
        a, b, _c = cluster.preference_list(KEY)
        cluster.partition([a], [n for n in cluster.nodes if n != a])
        for side in (a, b):
            node = cluster.nodes[side].node
            assert node is not None
            for i in range(config.siblings_max):
                await node.coordinator.put("", KEY, f"{side}.{i}".encode(), b"", w=1)
            with pytest.raises(TooManySiblings):
                await node.coordinator.put("", KEY, b"one too many", b"", w=1)
        cluster.heal()
        with trio.fail_after(SETTLE_S):
            while not cluster.healed([KEY]):
                await trio.sleep(1.0)
        states = cluster.replica_states(KEY)
        assert {s.siblings for s in states} == {2 * config.siblings_max}
        final = FinalState({KEY: states[0].elements}, {KEY: states}, config.siblings_bound())
    result = check([], final)
    assert result.max_siblings > config.siblings_max and result.siblings_ok
