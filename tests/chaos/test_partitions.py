"""Real-process chaos, part 2: partitions between `dynacore serve` processes.

Each node reaches each other node through a TCP proxy of its own link (tests/chaos/harness.py),
so a partition is a set of proxies that stop carrying bytes: symmetric (one node isolated) or
one-way. Clients live beside a home node and reach the others through its links, so clients on
a minority side keep writing there, as in Jepsen. After the partition episodes the network heals
and the same checker as the simulator's must find 0 acknowledged writes lost and converged
replicas.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from dynacore.client import AsyncClient
from dynacore.sim.checker import History, check
from dynacore.sim.workload import SetWorkload, WorkloadConfig

from .harness import (
    LIMITS,
    SECRET,
    ProxiedCluster,
    converge_and_read,
    open_proxied_cluster,
    replica_reader,
)

pytestmark = pytest.mark.slow

SEED = 5150
EPISODES = 5
WORKLOAD = WorkloadConfig(keys=3, blind_fraction=0.2, think_max_s=0.01)


async def test_partitions_between_processes_lose_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    history = History()
    workload = SetWorkload(WORKLOAD, history, random.Random(rng.getrandbits(64)))
    async with open_proxied_cluster(tmp_path, 3) as cluster:
        async with trio.open_nursery() as nursery:
            for node_id in cluster.ids:
                nursery.start_soon(run_client, workload, f"c-{node_id}", cluster, node_id)
            episodes = await partition_episodes(cluster, rng)
            nursery.cancel_scope.cancel()
        addresses = {node_id: node.address for node_id, node in cluster.nodes.items()}
        keys = sorted({op.key for op in history.ops} | set(WORKLOAD.key_names()))
        seeds = list(addresses.values())
        async with AsyncClient(seeds, secret=SECRET, limits=LIMITS) as client:
            async with replica_reader() as rpc:
                final, rounds = await converge_and_read(
                    client, rpc, addresses, keys, LIMITS.siblings_max,
                    workload.stats.max_siblings_seen,
                )  # fmt: skip
    result = check(history.ops, final)
    carried = sum(p.carried_bytes for p in cluster.proxies.values())
    dropped = sum(p.dropped_bytes for p in cluster.proxies.values())
    print(
        f"partitions: {', '.join(episodes)}; acknowledged {result.acknowledged} of "
        f"{result.attempted}, lost {len(result.lost)}, unacked-present {result.unacked_present}, "
        f"converged after {rounds} rounds; proxies carried {carried} bytes, dropped {dropped}"
    )
    assert result.ok, result.problems()
    assert result.acknowledged >= 100
    assert dropped > 0, "the proxies must have lost bytes"


async def partition_episodes(cluster: ProxiedCluster, rng: random.Random) -> list[str]:
    """Alternate calm spells and partitions (isolate one node, or cut one way); heal at the end."""
    done: list[str] = []
    for _ in range(EPISODES):
        await trio.sleep(rng.uniform(0.5, 1.0))
        ids = list(cluster.ids)
        rng.shuffle(ids)
        if rng.random() < 0.5:
            cluster.partition(ids[:1], ids[1:])
            done.append(f"isolate {ids[0]}")
        else:
            cluster.cut(ids[:1], ids[1:])
            done.append(f"one-way {ids[0]}->{'+'.join(ids[1:])}")
        await trio.sleep(rng.uniform(2.0, 4.0))
        cluster.heal()
    await trio.sleep(1.0)
    return done


async def run_client(workload: SetWorkload, name: str, cluster: ProxiedCluster, home: str) -> None:
    """A client beside `home`: it learns home's view of the cluster, so it reaches the other
    nodes through home's links."""
    seed = cluster.nodes[home].address
    async with AsyncClient([seed], secret=SECRET, limits=LIMITS, client_id=name) as client:
        await workload.run_client(name, client)
