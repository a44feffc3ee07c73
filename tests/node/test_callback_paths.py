"""The node's callback paths (CLIENT_GET/PUT from callbacks, replica requests by `call_soon`,
reads batched per peer) keep the task path's outcomes: a put answers by its timeout whatever a
sloppy-quorum fallback does, typed replica errors count as missing acks, and batched reads
return what single reads would."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from dynacore import objects
from dynacore.errors import QuorumNotMet, StorageError
from dynacore.limits import Limits

from .conftest import open_cluster


def sk(key: bytes) -> bytes:
    return objects.object_key("", key)


async def test_a_put_answers_by_its_timeout_when_a_fallback_hangs(tmp_path: Path) -> None:
    limits = Limits(request_timeout_s=0.5)
    async with open_cluster(tmp_path, limits=limits) as cluster, cluster.client() as client:
        keys = [b"k%d" % i for i in range(1000)]
        for coordinator in ("n1", "n2", "n3"):  # every node connects to its peers
            warm = next(k for k in keys if cluster.replicas(sk(k))[0] == coordinator)
            await client.put(warm, "up", w=3)
        key = next(k for k in reversed(keys) if cluster.replicas(sk(k))[0] == "n1")
        n1 = cluster.nodes["n1"]
        peers = [a for node, a in n1.membership.addresses.items() if node != "n1"]
        assert all(n1.coordinator._rpc.can_call_soon(a) for a in peers), "the callback path"

        async def hanging(*_args: object) -> bool:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        def refuse(stored_key: bytes, incoming: bytes, on_done: Callable[..., None]) -> bool:
            raise StorageError("disk trouble")

        for node in cluster.nodes.values():
            node.coordinator.fallback = hanging
        cluster.nodes["n3"].coordinator.replica_put_soon = refuse  # type: ignore[method-assign]
        with pytest.raises(QuorumNotMet) as info:  # not the client's RequestTimeout
            await client.put(key, "v", w=3)
        assert (info.value.acked, info.value.required) == (2, 3)
        assert (await client.get(key, r=2)).values == [b"v"]


async def test_batched_reads_return_every_replica_answer(tmp_path: Path) -> None:
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        items = {b"b%03d" % i: b"v%d" % i for i in range(200)}
        await client.put_many(items, w=3)
        results = await client.get_many([*items, b"absent"], r=3)
        assert [r.values for r in results] == [[v] for v in items.values()] + [[]]
        batchers = [node.coordinator.read_batcher for node in cluster.nodes.values()]
        assert all(b is not None for b in batchers)
        # concurrent gets shared REPLICA_GET_MANY messages
        assert sum(b.batched_reads for b in batchers if b is not None) > sum(
            b.batches for b in batchers if b is not None
        )


async def test_requests_leave_no_reference_cycles(tmp_path: Path) -> None:
    """A get or put on the callback paths frees its bookkeeping by reference counting: cyclic
    garbage per request would make the collector's full passes frequent, and each one stalls
    every request in flight (they were the nodes' latency tail)."""
    async with open_cluster(tmp_path) as cluster, cluster.client() as client:
        items = {b"c%03d" % i: b"v%d" % i for i in range(100)}
        await client.put_many(items, w=3)
        for key in items:  # warm every path (connections, batchers)
            await client.get(key, r=2)
        gc.collect()
        gc.disable()
        try:
            for round_ in range(3):
                for key, value in items.items():
                    assert (await client.get(key, r=2)).values == [value]
                await client.put_many({b"%d%s" % (round_, k): v for k, v in items.items()}, w=2)
            unreachable = gc.collect()
        finally:
            gc.enable()
        requests = 3 * 2 * len(items)
        assert unreachable <= requests // 20, f"{unreachable} cyclic objects, {requests} requests"
