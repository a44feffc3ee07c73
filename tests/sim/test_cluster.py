"""The simulation harness on its own: crash keeps what was committed, a wipe makes a new actor,
partitions carry clients with their home node, skew and slow disks reach the nodes, liveness
helpers repair and the Merkle roots see the difference."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from dynacore import objects
from dynacore._backend import versions
from dynacore.errors import ConfigError, DynacoreError
from dynacore.net.simnet import SimNetwork
from dynacore.sim.cluster import (
    CALM,
    EPOCH_MS,
    ClusterConfig,
    SimCluster,
    address_of,
    open_sim_cluster,
)
from dynacore.storage import read_node_meta

CONFIG = ClusterConfig(nodes=3, n=3, partitions=8)
KEY = b"set0"


def actor_of(cluster: SimCluster, node_id: str) -> str:
    engine = cluster.nodes[node_id].engine
    assert engine is not None
    meta = read_node_meta(engine)
    assert meta is not None
    return meta.actor_id


async def test_crash_keeps_commits_and_a_wipe_starts_a_new_epoch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(1), faults=CALM)
    async with open_sim_cluster(CONFIG, network, random.Random(2)) as cluster:
        async with cluster.client("c1", "n1") as client:
            await client.put(KEY, b"a", w="all")
        victim = "n2"
        actor = actor_of(cluster, victim)
        before = cluster.stored(victim, KEY)
        assert before is not None
        await cluster.crash(victim)
        assert not cluster.nodes[victim].up and not network.is_up(address_of(victim))
        await cluster.crash(victim)  # a second crash of a down node is a no-op
        await cluster.restart(victim, wipe=False)
        assert cluster.stored(victim, KEY) == before
        assert actor_of(cluster, victim) == actor
        await cluster.restart(victim, wipe=False)  # up already: no-op
        await cluster.restart(victim, wipe=True)  # crashes it first
        assert cluster.stored(victim, KEY) is None
        assert actor_of(cluster, victim) != actor
        assert cluster.nodes[victim].wipes == 1 and cluster.crashes == 2


async def test_liveness_reads_repair_a_wiped_replica_and_merkle_roots_agree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(1), faults=CALM)
    async with open_sim_cluster(CONFIG, network, random.Random(2)) as cluster:
        async with cluster.client("c1", "n1") as client:
            await client.put(KEY, b"a b", w="all")
        roots = cluster.merkle_roots()
        assert len(roots) == CONFIG.partitions
        assert all(len(by_node) == CONFIG.n for by_node in roots.values())
        assert all(len(set(by_node.values())) == 1 for by_node in roots.values())
        await cluster.restart("n3", wipe=True)
        assert not cluster.converged([KEY])
        partition = cluster.membership.ring.partition_of(objects.object_key("", KEY))
        assert len(set(cluster.merkle_roots()[partition].values())) == 2
        assert await cluster.read_all([KEY]) == 0
        await trio.sleep(1.0)  # the repair lands in the background
        assert cluster.converged([KEY])
        states = cluster.replica_states(KEY)
        assert [s.node for s in states] == list(cluster.preference_list(KEY))
        assert all(s.elements == {b"a", b"b"} and s.siblings == 1 for s in states)
        assert all(len(set(r.values())) == 1 for r in cluster.merkle_roots().values())


async def test_a_partition_carries_clients_with_their_home(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(1), faults=CALM)
    async with open_sim_cluster(CONFIG, network, random.Random(2)) as cluster:
        async with cluster.client("c1", "n1") as client:
            cluster.partition(["n1"], ["n2", "n3"])
            assert not network.link_open("c1:1", "n2:7000")
            assert network.link_open("c1:1", "n1:7000")
            with pytest.raises(DynacoreError):  # n1 alone cannot reach a quorum
                await client.put(KEY, b"x", w="quorum")
            cluster.heal()
            cluster.partition_one_way(["n2"], ["n1"])
            assert not network.link_open("n2:7000", "c1:1")
            assert network.link_open("c1:1", "n2:7000")


async def test_skew_and_slow_disk_reach_the_running_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = SimNetwork(random.Random(1), faults=CALM)
    async with open_sim_cluster(CONFIG, network, random.Random(2)) as cluster:
        node = cluster.nodes["n1"]
        cluster.set_skew("n1", -60_000)
        assert node.clock.now_ms() == EPOCH_MS - 60_000 + int(trio.current_time() * 1000)
        cluster.set_disk_delay("n1", 0.25)
        assert node.engine is not None and node.engine.commit_delay_s == 0.25
        await cluster.crash("n1")
        await cluster.restart("n1", wipe=False)
        assert node.engine is not None and node.engine.commit_delay_s == 0.25  # the disk stays slow
        started_s = trio.current_time()
        assert node.node is not None
        await node.node.coordinator.replica_put(objects.object_key("", KEY), _one_value_set())
        assert trio.current_time() - started_s >= 0.25
        await cluster.heal_all()
        assert node.engine.commit_delay_s == 0.0 and node.clock.offset_ms == 0


def _one_value_set() -> bytes:
    envelope = objects.encode_envelope(b"z", timestamp_ms=EPOCH_MS)
    return versions.update(versions.empty(), versions.vv_empty(), envelope, "x.1")


def test_bad_cluster_config() -> None:
    with pytest.raises(ConfigError):
        ClusterConfig(nodes=0)
    with pytest.raises(ConfigError):
        ClusterConfig(nodes=2, n=3)
    with pytest.raises(ConfigError):
        ClusterConfig(partitions=12)
    with pytest.raises(ConfigError):
        ClusterConfig(request_timeout_s=0.0)
    with pytest.raises(ConfigError):
        ClusterConfig(siblings_max=0)
    with pytest.raises(ConfigError):
        ClusterConfig(unsynced_batches=0)
