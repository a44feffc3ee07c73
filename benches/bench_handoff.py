"""Ownership-handoff throughput of one partition: the sender scans its LMDB data (holding the
partition and as much again of other partitions, which it skips), streams the partition in
bounded batches over RPC on TCP loopback to a receiver that merges each batch into its own LMDB
with one durable group commit per batch (as a node's HANDOFF_BATCH handler does), and returns
once every batch is acked. Figures: objects/s and MB/s (of keys + encoded version sets).

Beside it, the same stream with the receiver called in-process (no network, no framing): the
ceiling that scan + batching + durable merge allow. A fresh receiver database every round, so
that every round writes new keys.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from pytest_benchmark.fixture import BenchmarkFixture

from dynacore import objects
from dynacore._backend import ring as ring_mod
from dynacore._backend import versions
from dynacore.cluster import protocol
from dynacore.cluster.handoff import HandoffConfig, SendBatch, apply_batch, stream_partitions
from dynacore.limits import Limits
from dynacore.net.rpc import RpcServer, open_rpc_client
from dynacore.net.transport import TcpTransport
from dynacore.storage import Engine, open_lmdb_engine

Q = 64
PARTITION = 7
OBJECTS = 20_000  # in the partition handed off
OTHER_OBJECTS = 20_000  # of other partitions, scanned and skipped
VALUE_BYTES = 1000
ROUNDS = 3
MAP_SIZE_BYTES = 1 << 30
LIMITS = Limits(request_timeout_s=30.0)


def make_objects(count: int, in_partition: bool, seed: int) -> list[tuple[bytes, bytes]]:
    """`count` (stored key, encoded version set) pairs in PARTITION or outside it."""
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    i = 0
    while len(out) < count:
        key = objects.object_key("", b"key-%d-%d" % (seed, i))
        i += 1
        if (ring_mod.partition_of(key, Q) == PARTITION) != in_partition:
            continue
        envelope = objects.encode_envelope(rng.randbytes(VALUE_BYTES), timestamp_ms=1_700_000_000)
        out.append((key, versions.update(versions.empty(), b"", envelope, "n1.0000000000000001")))
    return out


async def fill(engine: Engine, pairs: list[tuple[bytes, bytes]]) -> None:
    def put(value: bytes) -> Callable[[bytes | None], bytes]:
        return lambda _old: value

    for start in range(0, len(pairs), 1000):
        chunk = pairs[start : start + 1000]
        await engine.update_many("data", [(key, put(value)) for key, value in chunk])


class Receiver:
    """A fresh LMDB per round; `send` merges a batch into it (over TCP or in-process)."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self.round = 0
        self.engine: Engine | None = None
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    async def _run(self, task_status: trio.TaskStatus[Engine]) -> None:
        done = self._done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                path = self._base / f"receiver-{self.round}"
                async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES) as engine:
                    task_status.started(engine)
                    await trio.sleep_forever()
        finally:
            done.set()

    async def fresh(self, nursery: trio.Nursery) -> None:
        if self._scope is not None and self._done is not None:
            self._scope.cancel()
            await self._done.wait()
        self.round += 1
        self.engine = await nursery.start(self._run)

    async def handle(self, msg_type: int, fields: list[object], _peer: str) -> list[object]:
        assert msg_type == protocol.HANDOFF_BATCH and self.engine is not None
        _partition, keys, sets = fields
        assert isinstance(keys, list) and isinstance(sets, list)
        return [await apply_batch(self.engine, keys, sets)]


def run_bench(
    benchmark: BenchmarkFixture,
    tmp_path: Path,
    make_send: Callable[[Receiver, trio.Nursery], Awaitable[SendBatch]],
) -> None:
    partition_pairs = make_objects(OBJECTS, True, 1)
    payload_bytes = sum(len(k) + len(v) for k, v in partition_pairs)
    config = HandoffConfig()
    ring = ring_mod.Ring.claim(Q, ["n1", "n2", "n3"])
    acked: list[int] = []

    async def main() -> None:
        async with open_lmdb_engine(tmp_path / "sender", map_size_bytes=MAP_SIZE_BYTES) as source:
            await fill(source, partition_pairs)
            await fill(source, make_objects(OTHER_OBJECTS, False, 2))
            receiver = Receiver(tmp_path)
            async with trio.open_nursery() as nursery:
                send = await make_send(receiver, nursery)

                async def one_round() -> None:
                    acked.clear()
                    await stream_partitions(
                        source,
                        ring,
                        {PARTITION: ["target"]},
                        send,
                        config,
                        lambda _t, counts: acked.append(counts[PARTITION][0]),
                    )
                    assert sum(acked) == OBJECTS
                    assert receiver.engine is not None
                    assert receiver.engine.count("data") == OBJECTS

                def run() -> None:
                    benchmark.pedantic(  # type: ignore[no-untyped-call]
                        lambda: trio.from_thread.run(one_round),
                        setup=lambda: trio.from_thread.run(receiver.fresh, nursery),
                        rounds=ROUNDS,
                        iterations=1,
                    )

                await trio.to_thread.run_sync(run)
                nursery.cancel_scope.cancel()

    trio.run(main)
    stats = benchmark.stats
    assert stats is not None
    median_s = statistics.median(stats.stats.data)
    benchmark.extra_info["objects"] = OBJECTS
    benchmark.extra_info["objects_per_s"] = round(OBJECTS / median_s)
    benchmark.extra_info["mb_per_s"] = round(payload_bytes / 1e6 / median_s, 1)
    print(f"\n{benchmark.extra_info}")


def test_handoff_one_partition_over_tcp(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    benchmark.group = "handoff.partition"
    benchmark.extra_info["impl"] = "tcp"

    async def make_send(receiver: Receiver, nursery: trio.Nursery) -> SendBatch:
        transport = TcpTransport(LIMITS)
        server = RpcServer(server_id="target", secret=b"s")
        address = await nursery.start(server.serve, transport, "127.0.0.1:0", receiver.handle)
        rpc = await nursery.start(_rpc_client, transport)

        async def send(_target: str, partition: int, keys: list[bytes], sets: list[bytes]) -> None:
            fields: list[object] = [partition, keys, sets]
            reply = await rpc.call(address, protocol.HANDOFF_BATCH, fields, 30.0)
            assert reply == [len(keys)]

        return send

    run_bench(benchmark, tmp_path, make_send)


async def _rpc_client(transport: TcpTransport, task_status: trio.TaskStatus[object]) -> None:
    async with open_rpc_client(
        transport, client_id="sender", rng=random.Random(1), secret=b"s", limits=LIMITS
    ) as rpc:
        task_status.started(rpc)
        await trio.sleep_forever()


def test_handoff_one_partition_in_process(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    """The ceiling: the receiver's apply_batch called directly (no RPC, no wire codec)."""
    benchmark.group = "handoff.partition"
    benchmark.extra_info["impl"] = "in-process"

    async def make_send(receiver: Receiver, _nursery: trio.Nursery) -> SendBatch:
        async def send(_target: str, _partition: int, keys: list[bytes], sets: list[bytes]) -> None:
            assert receiver.engine is not None
            assert await apply_batch(receiver.engine, keys, sets) == len(keys)

        return send

    run_bench(benchmark, tmp_path, make_send)
