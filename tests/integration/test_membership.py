"""Membership with real processes on 127.0.0.1 through the CLI: a 4th node joins a 3-node cluster
under a steady write load, then a node leaves; after each handoff every acknowledged key is on
exactly its N owners (read from each node's LMDB after stopping it). Five nodes started with one
seed each converge to one ring."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dynacore import Client, objects
from dynacore._backend import versions
from dynacore.cluster import ClusterState
from dynacore.cluster.admin import AdminClient, ClusterProgress
from dynacore.errors import DynacoreError
from dynacore.localcluster import LocalCluster, LocalNode
from dynacore.storage.lmdb_engine import open_lmdb_engine
from dynacore.storage.meta import get_cluster_state

GOSSIP_ENV = {"DYNACORE_GOSSIP_INTERVAL_S": "0.2"}
Q = 32
N = 3
SETTLE_TIMEOUT_S = 120.0


def cli(*args: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynacore", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "COLUMNS": "200"},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


class Writer:
    """A steady write load from a thread: new keys, w=2; remembers every acknowledged one."""

    def __init__(self, seeds: list[str], prefix: str) -> None:
        self.acked: list[str] = []
        self.failed = 0
        self._seeds = seeds
        self._prefix = prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Client(self._seeds) as client:
            i = 0
            while not self._stop.is_set():
                key = f"{self._prefix}-{i}"
                try:
                    client.put(key, f"value-of-{key}", w=2)
                    self.acked.append(key)
                except DynacoreError:
                    self.failed += 1
                i += 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def progress(seeds: list[str]) -> ClusterProgress:
    async def fetch() -> ClusterProgress:
        async with AdminClient(seeds) as admin:
            return await admin.transfers()

    return trio.run(fetch)


def wait_settled(seeds: list[str], ring_nodes: set[str]) -> ClusterProgress:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        current = progress(seeds)
        if current.done() and set(current.state.ring.nodes) == ring_nodes:
            return current
        assert time.monotonic() < deadline, f"not settled: {current.state!r}"
        time.sleep(0.3)


def read_store(data_dir: Path) -> tuple[dict[bytes, bytes], ClusterState | None]:
    async def scan() -> tuple[dict[bytes, bytes], ClusterState | None]:
        async with open_lmdb_engine(data_dir) as engine:
            raw = get_cluster_state(engine)
            return dict(engine.scan("data")), ClusterState.decode(raw) if raw else None

    return trio.run(scan)


def check_placement(nodes: list[LocalNode], acked: list[str]) -> ClusterState:
    """Every acked key is on exactly its N owners of the final ring, with its value; no node
    holds anything else. Nodes must be stopped."""
    stores = {node.node_id: read_store(node.data_dir) for node in nodes}
    states = {node_id: state for node_id, (_data, state) in stores.items()}
    final = next(iter(states.values()))
    assert final is not None and all(state == final for state in states.values())
    expected: dict[str, set[bytes]] = {node.node_id: set() for node in nodes}
    for key in acked:
        stored_key = objects.object_key("", key.encode())
        partition = final.ring.partition_of(stored_key)
        owners = final.ring.preference_list(partition, N)
        assert len(owners) == N
        for owner in owners:
            expected[owner].add(stored_key)
            stored = stores[owner][0].get(stored_key)
            assert stored is not None, f"{key} missing on {owner}"
            values = [objects.decode_envelope(v).data for v in versions.values(stored)]
            assert f"value-of-{key}".encode() in values, (key, owner)
    for node_id, (data, _state) in stores.items():
        assert set(data) == expected[node_id], node_id
    return final


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path / "cluster", nodes_count=3, partitions=Q, n=N, env=GOSSIP_ENV)
    with local:
        yield local


def test_join_then_leave_under_load_keeps_every_acked_write(cluster: LocalCluster) -> None:
    seeds = ",".join(cluster.addresses)
    acked: list[str] = []
    newcomer = cluster.add_node([cluster.addresses[1]])
    cluster.restart(newcomer)
    with Writer(cluster.addresses, "join") as writer:
        time.sleep(1.0)  # some data before the join
        joined = ok(cli("join", cluster.addresses[1], "--node", newcomer.address, "--seeds", seeds))
        assert "claimant n1" in joined
        planned = ok(cli("plan", "--seeds", seeds))
        assert "n4" in planned and "join" in planned and "streams to" in planned
        committed = ok(cli("commit", "--wait", "--timeout", "120", "--seeds", seeds))
        assert "no handoff pending" in committed and "n4" in committed
        time.sleep(0.5)
    acked += writer.acked
    assert len(writer.acked) > 100
    addresses = [node.address for node in cluster.nodes]
    after_join = wait_settled(addresses, {"n1", "n2", "n3", "n4"})
    assert after_join.state.epoch == 2
    rows = after_join.rows
    assert rows and all(row.status == "sent" and row.target == "n4" for row in rows)
    assert sum(row.objects for row in rows) > 0

    transfers = ok(cli("transfers", "--seeds", seeds))
    assert "→ n4" in transfers and "sent" in transfers
    members = ok(cli("members", "--seeds", seeds))
    assert members.count("valid") == 4

    with Writer(addresses, "leave") as writer:
        time.sleep(0.5)
        ok(cli("leave", "--node", "n2", "--seeds", seeds))
        ok(cli("commit", "--wait", "--timeout", "120", "--seeds", seeds))
        time.sleep(0.5)
    acked += writer.acked
    assert len(writer.acked) > 100
    wait_settled(addresses, {"n1", "n3", "n4"})
    status = ok(cli("status", "--seeds", cluster.addresses[0]))
    assert "n4" in status and "n2" not in status  # n2 exited: it serves no more

    cluster.stop()
    final = check_placement(cluster.nodes, acked)
    assert final.members["n2"].status.value == "exiting"
    assert read_store(cluster.nodes[1].data_dir)[0] == {}  # the leaver holds nothing


def test_five_nodes_with_one_seed_each_converge_to_one_ring(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "gossip", nodes_count=1, partitions=Q, n=N, env=GOSSIP_ENV)
    with local:
        for _ in range(4):
            node = local.add_node([local.nodes[-1].address])  # a chain: each knows one node
            local.restart(node)
        addresses = [node.address for node in local.nodes]
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while len({digest_at(address) for address in addresses}) != 1:  # learned by gossip
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for previous, node in zip(local.nodes, local.nodes[1:], strict=False):
            ok(cli("join", previous.address, "--node", node.address, "--seeds", node.address))
        ok(cli("commit", "--wait", "--timeout", "120", "--seeds", addresses[-1]))
        settled = wait_settled(addresses, {f"n{i}" for i in range(1, 6)})
        again = cli("commit", "--seeds", addresses[1])
        assert again.returncode == 1 and "nothing is staged" in again.stdout
        watched = ok(cli("transfers", "--watch", "--timeout", "60", "--seeds", addresses[0]))
        assert "no handoff pending (ring epoch 2)" in watched
        assert len({digest_at(address) for address in addresses}) == 1
        assert settled.state.epoch == 2
        status = ok(cli("status", "--seeds", addresses[2]))
        for node in local.nodes:
            line = next(line for line in status.splitlines() if node.address in line)
            assert "up" in line


def digest_at(address: str) -> bytes:
    async def fetch() -> bytes:
        async with AdminClient([address]) as admin:
            try:
                return (await admin.state()).digest()
            except DynacoreError:
                return b""

    return trio.run(fetch)
