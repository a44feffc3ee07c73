"""Batched replica reads (readbatch.py): the replica's answer within its reply budget, and the
coordinator's batcher against a real peer — batches, prefixes and peers that refuse them."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import pytest
import trio

from dynacore import messages
from dynacore.errors import LimitExceeded, ProtocolError
from dynacore.limits import Limits
from dynacore.net import NetConfig, RpcServer, TcpTransport, Value, open_rpc_client
from dynacore.readbatch import BATCH_MAX_KEYS, Done, ReadBatcher, answer_many

LIMITS = Limits(key_size_bytes=1024, value_size_bytes=16 * 1024, frame_size_bytes=128 * 1024)
CONFIG = NetConfig(connect_timeout_s=2.0, handshake_timeout_s=2.0)
STORE = {b"k%03d" % i: b"v" * i for i in range(0, 300, 2)}  # even keys present, odd absent


def many(store: dict[bytes, bytes]) -> Callable[[list[bytes]], list[bytes | None]]:
    return lambda keys: [store.get(key) for key in keys]


def test_answer_many_reads_every_key_in_order() -> None:
    keys: list[Value] = [b"k002", b"k003", b"k004"]
    assert answer_many([keys], many(STORE), LIMITS) == [[b"v" * 2, None, b"v" * 4]]


def test_answer_many_stops_at_the_reply_budget_but_answers_one() -> None:
    big = {b"a": b"x" * 20_000, b"b": b"y" * 20_000, b"c": b"z" * 20_000}
    limits = Limits(key_size_bytes=1024, value_size_bytes=16 * 1024, frame_size_bytes=100_000)
    (sets,) = answer_many([[b"a", b"b", b"c"]], many(big), limits)  # budget 25,000 bytes
    assert sets == [b"x" * 20_000]
    (sets,) = answer_many([[b"c"]], many({b"c": b"z" * 90_000}), limits)
    assert sets == [b"z" * 90_000]


def test_answer_many_refuses_bad_requests() -> None:
    with pytest.raises(ProtocolError):
        answer_many([b"not a list"], many(STORE), LIMITS)
    with pytest.raises(ProtocolError):
        answer_many([[b"k002", 7]], many(STORE), LIMITS)
    with pytest.raises(LimitExceeded):
        answer_many([[b"k"] * (BATCH_MAX_KEYS + 1)], many(STORE), LIMITS)


class Health:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0

    def mark_ok(self, node: str) -> None:
        self.ok += 1

    def mark_failed(self, node: str) -> None:
        self.failed += 1


async def serve_store(
    nursery: trio.Nursery, tcp: TcpTransport, *, batches: bool
) -> tuple[str, list[int]]:
    """A peer answering REPLICA_GET, and REPLICA_GET_MANY when `batches`, from STORE."""
    seen: list[int] = []

    async def handler(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        seen.append(msg_type)
        if msg_type == messages.REPLICA_GET:
            key = fields[0]
            assert isinstance(key, bytes)
            return [STORE.get(key)]
        if msg_type == messages.REPLICA_GET_MANY and batches:
            return answer_many(fields, many(STORE), LIMITS)
        raise ProtocolError(f"unknown message type {msg_type}")

    server = RpcServer(server_id="peer", config=CONFIG)
    address = await nursery.start(server.serve, tcp, "127.0.0.1:0", handler)
    assert isinstance(address, str)
    return address, seen


@pytest.mark.parametrize("peer_batches", [True, False])
async def test_batcher_reads_through_a_peer(nursery: trio.Nursery, peer_batches: bool) -> None:
    tcp = TcpTransport(LIMITS, config=CONFIG)
    address, seen = await serve_store(nursery, tcp, batches=peer_batches)
    health = Health()
    results: dict[bytes, list[Value] | None] = {}
    all_in = trio.Event()
    keys = [b"k%03d" % i for i in range(20)]

    def done(key: bytes, reply: list[Value] | None) -> None:
        results[key] = reply
        if len(results) == len(keys):
            all_in.set()

    async with open_rpc_client(tcp, client_id="coord", rng=random.Random(1)) as rpc:
        singles: list[bytes] = []

        def single(peer: str, key: bytes, on_done: Done) -> None:
            singles.append(key)

            def back(result: list[Value] | None, error: Exception | None) -> None:
                on_done(result)

            assert rpc.call_soon(address, messages.REPLICA_GET, [key], 5.0, back)

        batcher = ReadBatcher(rpc, health, lambda _peer: address, lambda: 5.0, single)
        nursery.start_soon(batcher.run)
        await rpc.ping(address)
        for key in keys:
            batcher.add("peer", key, functools.partial(done, key))
        with trio.fail_after(5):
            await all_in.wait()
    assert all(results[k] == [STORE.get(k)] for k in keys)
    assert messages.REPLICA_GET_MANY in seen  # one batch went out
    if peer_batches:
        assert (batcher.batches, batcher.batched_reads, singles) == (1, 20, [])
        assert seen.count(messages.REPLICA_GET) == 0
    else:  # refused: every read again by itself
        assert sorted(singles) == keys
        assert seen.count(messages.REPLICA_GET) == 20
    assert health.failed == 0


async def test_batcher_reads_fail_when_the_peer_goes_or_fall_back_when_unconnected(
    nursery: trio.Nursery,
) -> None:
    tcp = TcpTransport(LIMITS, config=CONFIG)
    health = Health()
    outcomes: list[list[Value] | None] = []
    singles: list[bytes] = []

    def single(peer: str, key: bytes, on_done: Done) -> None:
        singles.append(key)

    async def hang(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with open_rpc_client(tcp, client_id="coord", rng=random.Random(1)) as rpc:
        async with trio.open_nursery() as peer_nursery:
            server = RpcServer(server_id="peer", config=CONFIG)
            address = await peer_nursery.start(server.serve, tcp, "127.0.0.1:0", hang)
            batcher = ReadBatcher(rpc, health, lambda _peer: address, lambda: 30.0, single)
            await rpc.ping(address)
            for i in range(3):
                batcher.add("peer", b"k%03d" % i, outcomes.append)
            batcher.flush()  # sent; the peer never answers
            await trio.sleep(0.05)
            peer_nursery.cancel_scope.cancel()  # ... and goes away
        with trio.fail_after(5):
            while len(outcomes) < 3:
                await trio.sleep(0.01)
        assert outcomes == [None] * 3 and health.failed == 1 and singles == []
        with trio.fail_after(5):
            while rpc.connected(address):
                await trio.sleep(0.01)
        for i in range(3):
            batcher.add("peer", b"k%03d" % i, outcomes.append)
        batcher.flush()  # no connection now: each read goes its own way
        assert singles == [b"k000", b"k001", b"k002"]
