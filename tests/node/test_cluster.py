"""Three in-process nodes on real TCP and LMDB: replication, routing, siblings, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dynacore import objects
from dynacore._backend import versions
from dynacore.client import AsyncClient, GetResult, resolve_lww, resolve_with
from dynacore.config import NodeConfig
from dynacore.errors import KeyTooLarge, QuorumNotMet, TooManySiblings, ValueTooLarge
from dynacore.limits import Limits
from dynacore.messages import NodeStatus
from dynacore.node import open_node

from .conftest import SETTLE_TIMEOUT_S, Cluster, ManualClock, open_cluster, wait_until


def sk(key: bytes) -> bytes:
    return objects.object_key("", key)


def holders(cluster: Cluster, key: bytes) -> set[str]:
    return {node_id for node_id in cluster.nodes if cluster.stored(node_id, sk(key)) is not None}


async def get_once_all_reachable(client: AsyncClient, key: bytes) -> GetResult:
    """A get at r=3, retried while the coordinators' reconnect backoff to a restarted node
    still refuses (bounded by SETTLE_TIMEOUT_S)."""
    with trio.fail_after(SETTLE_TIMEOUT_S):
        while True:
            try:
                return await client.get(key, r=3)
            except QuorumNotMet:
                await trio.sleep(0.1)


async def test_1000_keys_w2_r2_each_replica_holds_its_keys(tmp_path: Path) -> None:
    keys = [f"key-{i:04d}".encode() for i in range(1000)]
    async with open_cluster(tmp_path, n=2) as cluster, cluster.client() as client:
        await client.put_many([(k, b"value-" + k) for k in keys], w=2)
        # read back through one node that is not a replica of most keys: it coordinates anyway
        reader = cluster.nodes["n3"].coordinator
        for key in keys:
            merged = await reader.get("", key, r=2)
            assert objects.visible_values(merged, cluster.clock.now_ms()) == [b"value-" + key]
        results = await client.get_many(keys, r=2)
        assert [r.values for r in results] == [[b"value-" + k] for k in keys]
        expected = {node_id: set() for node_id in cluster.ids}  # type: dict[str, set[bytes]]
        for key in keys:
            for node_id in cluster.replicas(sk(key)):
                expected[node_id].add(sk(key))
        assert all(len(v) > 0 for v in expected.values())
        await wait_until(lambda: all(cluster.stored_keys(i) == expected[i] for i in cluster.ids))


async def test_concurrent_writes_via_different_coordinators_are_siblings(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster, cluster.client() as a, cluster.client() as b:
        key = b"shared"
        await a.put(key, b"v0")
        seen_a, seen_b = await a.get(key), await b.get(key)
        assert seen_a.context == seen_b.context and seen_a.values == [b"v0"]
        first, second = cluster.replicas(sk(key))[:2]
        cluster.clock.advance(5)
        await cluster.nodes[first].coordinator.put("", key, b"from-a", seen_a.context, w="all")
        cluster.clock.advance(5)
        await cluster.nodes[second].coordinator.put("", key, b"from-b", seen_b.context, w="all")
        both = await a.get(key, r="all")
        assert sorted(both.values) == [b"from-a", b"from-b"] and both.siblings == 2
        assert resolve_lww(both) == b"from-b"  # the later write
        merged = resolve_with(both, lambda values: b"+".join(sorted(values)))
        assert merged == b"from-a+from-b"
        await b.put(key, merged, both.context)
        after = await a.get(key, r="all")
        assert after.values == [b"from-a+from-b"] and after.siblings == 1


async def test_blind_and_same_context_writes_through_one_coordinator(tmp_path: Path) -> None:
    """DVV sets keep both of two same-context writes even through the same coordinator."""
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        ctx = await client.put("k", "one")
        await client.put("k", "two", ctx)
        await client.put("k", "three", ctx)
        result = await client.get("k")
        assert sorted(result.values) == [b"three", b"two"]
        new_ctx = await client.put("k", "final", result.context)
        result = await client.get("k")
        assert result.values == [b"final"]
        assert new_ctx == result.context  # a single value: the returned context is the current


async def test_replica_down_writes_succeed_then_read_repair(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        before = {f"before-{i}".encode(): f"b{i}".encode() for i in range(50)}
        await client.put_many(before, w="all")
        await cluster.stop("n3")
        during = {f"during-{i}".encode(): f"d{i}".encode() for i in range(50)}
        await client.put_many(during, w=2)  # n=3: two replicas are up
        assert [r.values for r in await client.get_many(during, r=2)] == [
            [v] for v in during.values()
        ]
        await cluster.start("n3")
        assert {sk(k) for k in before} <= cluster.stored_keys("n3")  # intact after restart
        missed = [k for k in during if cluster.stored("n3", sk(k)) is None]
        assert len(missed) == len(during)  # every key has n3 as a replica when n = nodes = 3
        result = await get_once_all_reachable(client, missed[0])
        assert result.values == [during[missed[0]]]
        await wait_until(lambda: cluster.stored("n3", sk(missed[0])) is not None)
        assert cluster.stored("n3", sk(missed[0])) == cluster.stored("n1", sk(missed[0]))
        for key in missed[1:]:  # every missed key is repaired by a read at r=3
            await get_once_all_reachable(client, key)
        await wait_until(lambda: {sk(k) for k in during} <= cluster.stored_keys("n3"))


async def test_quorum_not_met_reports_acks(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        await cluster.stop("n2")
        with pytest.raises(QuorumNotMet) as info:
            await client.put("k", "v", w=3)
        assert info.value.acked == 2 and info.value.required == 3
        with pytest.raises(QuorumNotMet):
            await client.get("k", r="all")
        assert (await client.get("k", r=2)).values == [b"v"]  # the write is there, unacked


async def test_limits_are_typed_errors_and_the_node_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(key_size_bytes=64, value_size_bytes=1024, siblings_max=3, siblings_warn=2)
    async with open_cluster(tmp_path, limits=limits) as cluster, cluster.client() as client:
        with pytest.raises(KeyTooLarge):
            await client.put(b"k" * 65, b"v")
        with pytest.raises(ValueTooLarge):
            await client.put(b"k", b"v" * 1025)
        # a client with larger limits than the cluster's: the node refuses, typed
        loose = Limits(key_size_bytes=4096, value_size_bytes=4096, request_timeout_s=2.0)
        async with cluster.client(limits=loose) as big:
            with pytest.raises(KeyTooLarge):
                await big.put(b"k" * 65, b"v")
            with pytest.raises(ValueTooLarge):
                await big.put(b"k", b"v" * 1025)
            with pytest.raises(KeyTooLarge):
                await big.get(b"k" * 65)
        assert all(not cluster.stored_keys(node_id) for node_id in cluster.ids)  # no half-write
        for i in range(3):
            await client.put(b"busy", f"v{i}")  # blind writes: siblings
        assert "3 siblings (warn at 2)" in caplog.text  # warned before refusing
        with pytest.raises(TooManySiblings):
            await client.put(b"busy", b"one too many")
        result = await client.get(b"busy")
        assert len(result.values) == 3
        await client.put(b"busy", b"resolved", result.context)  # resolution is always allowed
        assert (await client.get(b"busy")).values == [b"resolved"]
        with pytest.raises(TypeError, match="key must be bytes or str"):
            await client.put(3, b"v")  # type: ignore[arg-type]


async def test_siblings_that_would_not_fit_a_frame_are_refused(tmp_path: Path) -> None:
    kib = 1024
    limits = Limits(value_size_bytes=40 * kib, frame_size_bytes=110 * kib, request_timeout_s=2.0)
    async with open_cluster(tmp_path, limits=limits) as cluster, cluster.client() as client:
        await client.put("big", b"a" * 40 * kib)
        await client.put("big", b"b" * 40 * kib)  # blind: two siblings, about 80 KiB
        with pytest.raises(TooManySiblings, match="more than a frame carries"):
            await client.put("big", b"c" * 40 * kib)
        result = await client.get("big", r="all")  # still readable in one frame
        assert len(result.values) == 2
        await client.put("big", b"c" * 40 * kib, result.context)  # resolving always fits
        assert (await client.get("big")).values == [b"c" * 40 * kib]


async def test_replication_is_never_refused_for_siblings(tmp_path: Path) -> None:
    limits = Limits(siblings_max=2, siblings_warn=1, request_timeout_s=2.0)
    async with open_cluster(tmp_path, limits=limits) as cluster:
        key = b"k"
        replicas = cluster.replicas(sk(key))
        for node_id in replicas:  # each replica coordinates blind writes: 3 siblings in all
            await cluster.nodes[node_id].coordinator.put("", key, node_id.encode(), b"", w=1)
        merged = await cluster.nodes[replicas[0]].coordinator.get("", key, r="all")
        assert merged is not None and versions.size(merged) == 3


async def test_delete_and_ttl(tmp_path: Path) -> None:
    clock = ManualClock()
    async with open_cluster(tmp_path, clock=clock) as cluster, cluster.client() as client:
        ctx = await client.put("gone", "soon")
        await client.delete("gone", ctx)
        result = await client.get("gone")
        assert result.values == [] and result.siblings == 1  # the tombstone
        await client.put("gone", "back", result.context)
        assert (await client.get("gone")).values == [b"back"]

        await client.put("ttl", "short", ttl=1.5)
        assert (await client.get("ttl")).values == [b"short"]
        clock.advance(1499)
        assert (await client.get("ttl")).values == [b"short"]
        clock.advance(1)
        assert (await client.get("ttl")).values == []

        absent = await client.get("never-written")
        assert absent == GetResult(values=[], context=b"", siblings=0, timestamps_ms=[])


async def test_status_and_ring(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, partitions=16) as cluster, cluster.client() as client:
        await client.put_many({f"s{i}": "v" for i in range(20)}, w="all")
        view = await client.ring()
        assert view.nodes == cluster.ids and view.ring.q == 16
        status = await client.status(cluster.nodes["n1"].address)
        assert isinstance(status, NodeStatus)
        assert status.node_id == "n1" and status.address == cluster.nodes["n1"].address
        assert status.key_count == 20  # n = 3 on 3 nodes: every node holds every key
        assert sum(p.partitions_owned for p in status.peers) == 16
        assert all(p.up for p in status.peers)
        assert status.pending_hints == 0
        await cluster.stop("n2")
        await client.put("after", "v", w=2)
        coordinator = next(i for i in cluster.replicas(sk(b"after")) if i != "n2")
        await wait_until(lambda: cluster.nodes[coordinator].coordinator.health.is_down("n2"))
        seen = await client.status(cluster.nodes[coordinator].address)
        assert {p.node_id: p.up for p in seen.peers} == {"n1": True, "n2": False, "n3": True}


async def test_stopping_a_node_closes_its_store_cleanly(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        await client.put_many({f"p{i}": f"v{i}" for i in range(100)}, w="all")
        await cluster.stop("n1")
        await cluster.start("n1")
        assert len(cluster.stored_keys("n1")) == 100
        with trio.fail_after(10):
            results = await client.get_many([f"p{i}" for i in range(100)], r="all")
        assert [r.values for r in results] == [[f"v{i}".encode()] for i in range(100)]


async def test_a_callers_error_escapes_open_node_as_itself(tmp_path: Path) -> None:
    config = NodeConfig(node_id="solo", listen="127.0.0.1:0")
    with pytest.raises(KeyError, match="mine"):
        async with open_node(config):
            raise KeyError("mine")
    async with open_node(config) as node:  # and a clean exit stays clean
        assert node.address.startswith("127.0.0.1:")
