"""Real-process chaos, part 1: a kill -9 loop.

Three `dynacore serve` processes (LMDB, sync on) take the set workload at w=2 over TCP while
20 times a random node gets SIGKILL and is restarted on its data directory. Then: every node
served again within 5 s of its restart, 0 acknowledged writes were lost, the replicas
converged, and after a clean stop every node's LMDB directory reopens and holds exactly what
the node served.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from dynacore.client import AsyncClient
from dynacore.localcluster import LocalCluster
from dynacore.sim.checker import History, check
from dynacore.sim.workload import SetWorkload, WorkloadConfig

from .harness import (
    FIRST_START_TIMEOUT_S,
    LIMITS,
    PARTITIONS,
    READY_TIMEOUT_S,
    SECRET,
    converge_and_read,
    kill_node,
    replica_reader,
    restart_node,
    stop_nodes,
    stored_on_disk,
    wait_ready,
)

pytestmark = pytest.mark.slow

ROUNDS = 20
SEED = 20240
WORKLOAD = WorkloadConfig(keys=3, blind_fraction=0.2, think_max_s=0.01, w=2)
CLIENTS = 3


async def test_kill9_loop_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    cluster = LocalCluster(tmp_path, nodes_count=3, partitions=PARTITIONS, n=3, secret=SECRET)
    for node in cluster.nodes:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.start(cluster._env())
    try:
        for node in cluster.nodes:
            await wait_ready(node, FIRST_START_TIMEOUT_S)
        history = History()
        workload = SetWorkload(WORKLOAD, history, random.Random(rng.getrandbits(64)))
        restarts_s: list[float] = []
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(run_client, workload, f"c{i + 1}", cluster.addresses)
            for _ in range(ROUNDS):
                await trio.sleep(rng.uniform(0.2, 0.6))
                victim = rng.choice(cluster.nodes)
                await kill_node(victim)
                assert not victim.running
                restarts_s.append(await restart_node(victim, READY_TIMEOUT_S))
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        assert len(restarts_s) == ROUNDS and max(restarts_s) <= READY_TIMEOUT_S
        addresses = {node.node_id: node.address for node in cluster.nodes}
        keys = sorted({op.key for op in history.ops} | set(WORKLOAD.key_names()))
        async with AsyncClient(cluster.addresses, secret=SECRET, limits=LIMITS) as client:
            async with replica_reader() as rpc:
                final, _rounds = await converge_and_read(
                    client, rpc, addresses, keys, LIMITS.siblings_max,
                    workload.stats.max_siblings_seen,
                )  # fmt: skip
        result = check(history.ops, final)
        print(
            f"kill -9 loop: {ROUNDS} kills, acknowledged {result.acknowledged} of "
            f"{result.attempted}, lost {len(result.lost)}, unacked-present "
            f"{result.unacked_present}, slowest restart {max(restarts_s):.2f} s"
        )
        assert result.ok, result.problems()
        assert result.acknowledged >= 100, "the loop must have written under fire"
    finally:
        codes = await stop_nodes(cluster.nodes)
    assert codes == [0, 0, 0], "a clean stop after the chaos"
    for node in cluster.nodes:
        on_disk = await stored_on_disk(node.data_dir, keys)
        for key, states in final.replicas.items():
            served = {s.node: s.raw for s in states}
            if node.node_id in served:
                assert on_disk[key] == served[node.node_id]


async def run_client(workload: SetWorkload, name: str, seeds: list[str]) -> None:
    async with AsyncClient(seeds, secret=SECRET, limits=LIMITS, client_id=name) as client:
        await workload.run_client(name, client)
