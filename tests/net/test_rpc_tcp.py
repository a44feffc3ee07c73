"""RpcClient and RpcServer over real TCP on 127.0.0.1 (port 0)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest
import trio

from dynacore.errors import (
    AuthError,
    ConnectionLost,
    EncodeError,
    FrameTooLarge,
    KeyTooLarge,
    LimitExceeded,
    ProtocolError,
    QuorumNotMet,
    RemoteError,
    RequestTimeout,
)
from dynacore.net import Channel, Message, TcpTransport, Value, open_rpc_client

from .conftest import FAST_CONFIG, SMALL_LIMITS, start_server

ECHO = 40


async def test_call_reply_round_trip(nursery: trio.Nursery, tcp: TcpTransport) -> None:
    server, address = await start_server(nursery, tcp)
    fields: list[Value] = [b"key", -7, "text", None, True, 1.5, [b"a", [2]]]
    async with open_rpc_client(tcp, client_id="client-1", rng=random.Random(1)) as rpc:
        reply = await rpc.call(address, ECHO, fields, timeout_s=5)
        assert reply == [ECHO, *fields, "client-1"]
        assert rpc.connected(address)
    assert server.stats.connections == 1
    assert server.stats.requests == 1


async def test_ping_is_answered_without_the_handler(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    calls = 0

    async def handler(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        nonlocal calls
        calls += 1
        return []

    _, address = await start_server(nursery, tcp, handler)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        await rpc.ping(address, timeout_s=5)
    assert calls == 0


class CountingTransport:
    """Wraps a transport and counts the sends of the channels it connects."""

    def __init__(self, inner: TcpTransport) -> None:
        self.inner = inner
        self.sends = 0
        self.messages = 0

    async def serve(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError

    async def connect(self, address: str, timeout_s: float) -> Channel:
        channel = await self.inner.connect(address, timeout_s)
        outer = self

        class Counting:
            peer = channel.peer

            async def send(self, messages: Sequence[Message]) -> None:
                outer.sends += 1
                outer.messages += len(messages)
                await channel.send(messages)

            async def receive(self) -> Message:
                return await channel.receive()

            async def aclose(self) -> None:
                await channel.aclose()

        return Counting()


async def test_thousand_concurrent_calls_share_one_connection(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    async def double(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        (n,) = fields
        assert isinstance(n, int)
        await trio.sleep(0)
        return [n, n * 2]

    server, address = await start_server(nursery, tcp, double)
    counting = CountingTransport(tcp)
    replies: dict[int, list[Value]] = {}

    async with open_rpc_client(counting, client_id="c", rng=random.Random(1)) as rpc:

        async def one(i: int) -> None:
            replies[i] = await rpc.call(address, ECHO, [i], timeout_s=30)

        async with trio.open_nursery() as calls:
            for i in range(1000):
                calls.start_soon(one, i)
        assert rpc.stats.connects == 1

    assert replies == {i: [i, 2 * i] for i in range(1000)}
    assert server.stats.connections == 1
    assert server.stats.requests == 1000
    # handshake AUTH + 1000 requests, coalesced into far fewer sends than messages
    assert counting.messages == 1001
    assert counting.sends < 100


async def test_in_flight_bound_per_peer_holds(nursery: trio.Nursery, tcp: TcpTransport) -> None:
    active = 0
    peak = 0

    async def slow(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.01)
        active -= 1
        return []

    _, address = await start_server(nursery, tcp, slow)
    limits = dataclasses.replace(SMALL_LIMITS, in_flight_per_peer=4)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1), limits=limits) as rpc:
        async with trio.open_nursery() as calls:
            for _ in range(40):
                calls.start_soon(rpc.call, address, ECHO, [], 30)
    assert peak == 4


async def test_timeout_raises_and_the_connection_stays_usable(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    release = trio.Event()

    async def handler(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        if msg_type == 41:
            await release.wait()
            return [b"late"]
        return [b"fast"]

    server, address = await start_server(nursery, tcp, handler)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        assert await rpc.call(address, ECHO, [], timeout_s=5) == [b"fast"]  # connected
        with pytest.raises(RequestTimeout):
            await rpc.call(address, 41, [], timeout_s=0.05)
        assert await rpc.call(address, ECHO, [], timeout_s=5) == [b"fast"]
        release.set()
        # The late reply arrives on the same connection and is dropped as stale.
        for _ in range(500):
            if rpc.stats.stale_replies:
                break
            await trio.sleep(0.01)
        assert rpc.stats.stale_replies == 1
        assert await rpc.call(address, ECHO, [], timeout_s=5) == [b"fast"]
        assert rpc.stats.timeouts == 1
        assert rpc.stats.connects == 1
    assert server.stats.connections == 1


async def test_handler_errors_arrive_typed(nursery: trio.Nursery, tcp: TcpTransport) -> None:
    async def handler(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        if msg_type == 50:
            raise QuorumNotMet("2 of 3 needed", acked=1, required=2)
        if msg_type == 51:
            raise KeyTooLarge("key of 2000 bytes")
        if msg_type == 52:
            raise KeyError("boom")
        if msg_type == 53:
            return "not a list"  # type: ignore[return-value]
        if msg_type == 54:
            return [{"a": 1}]  # type: ignore[list-item]
        return [b"ok"]

    server, address = await start_server(nursery, tcp, handler)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        with pytest.raises(QuorumNotMet, match="2 of 3 needed") as quorum:
            await rpc.call(address, 50, [], timeout_s=5)
        assert (quorum.value.acked, quorum.value.required) == (1, 2)
        with pytest.raises(KeyTooLarge, match="2000"):
            await rpc.call(address, 51, [], timeout_s=5)
        with pytest.raises(RemoteError, match="KeyError"):
            await rpc.call(address, 52, [], timeout_s=5)
        with pytest.raises(RemoteError, match="not a list"):
            await rpc.call(address, 53, [], timeout_s=5)
        with pytest.raises(EncodeError):
            await rpc.call(address, 54, [], timeout_s=5)
        assert await rpc.call(address, ECHO, [], timeout_s=5) == [b"ok"]
        assert rpc.stats.connects == 1
    assert server.stats.handler_errors == 5


async def test_unknown_message_type_gets_protocol_error_and_connection_stays(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    server, address = await start_server(nursery, tcp)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        for msg_type in (0, 8, 31, 128, 255):
            with pytest.raises(ProtocolError, match=f"type {msg_type}"):
                await rpc.call(address, msg_type, [], timeout_s=5)
        assert await rpc.call(address, ECHO, [1], timeout_s=5) == [ECHO, 1, "c"]
        assert rpc.stats.connects == 1
        with pytest.raises(ProtocolError):
            await rpc.call(address, 4, [], timeout_s=5)  # REPLY is not a request
        with pytest.raises(ProtocolError):
            await rpc.call(address, 256, [], timeout_s=5)
    assert server.stats.protocol_errors == 5


async def test_oversized_or_unencodable_request_fails_alone(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    _, address = await start_server(nursery, tcp)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        with pytest.raises(FrameTooLarge):
            await rpc.call(address, ECHO, [b"x" * SMALL_LIMITS.frame_size_bytes], timeout_s=5)
        with pytest.raises(EncodeError):
            await rpc.call(address, ECHO, [1 << 70], timeout_s=5)
        assert await rpc.call(address, ECHO, [], timeout_s=5) == [ECHO, "c"]
        assert rpc.stats.connects == 1


@pytest.mark.parametrize(
    ("server_secret", "client_secret", "ok"),
    [
        (b"", b"", True),
        (b"s3cret", b"s3cret", True),
        (b"s3cret", b"wrong", False),
        (b"s3cret", b"", False),
        (b"", b"x", False),
    ],
)
async def test_cluster_secret(
    nursery: trio.Nursery, tcp: TcpTransport, server_secret: bytes, client_secret: bytes, ok: bool
) -> None:
    server, address = await start_server(nursery, tcp, secret=server_secret)
    async with open_rpc_client(
        tcp, client_id="c", rng=random.Random(1), secret=client_secret
    ) as rpc:
        if ok:
            assert await rpc.call(address, ECHO, [], timeout_s=5) == [ECHO, "c"]
            assert server.stats.auth_failures == 0
        else:
            with pytest.raises(AuthError, match="wrong cluster secret"):
                await rpc.call(address, ECHO, [], timeout_s=5)
            assert server.stats.auth_failures == 1
            assert server.stats.requests == 0
            assert not rpc.connected(address)


async def test_reconnect_after_server_restart(nursery: trio.Nursery, tcp: TcpTransport) -> None:
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        async with trio.open_nursery() as first:
            _, address = await start_server(first, tcp)
            assert await rpc.call(address, ECHO, [1], timeout_s=5) == [ECHO, 1, "c"]
            first.cancel_scope.cancel()
        # The server is gone: the connection breaks and reconnecting is refused.
        with pytest.raises(ConnectionLost):
            await rpc.call(address, ECHO, [2], timeout_s=5)
        with pytest.raises(ConnectionLost):
            await rpc.call(address, ECHO, [2], timeout_s=5)
        assert not rpc.connected(address)
        failures = rpc.stats.connect_failures
        assert failures >= 1
        async with trio.open_nursery() as second:
            await start_server(second, tcp, address=address)
            # Waits out the (short, jittered) backoff, then reconnects.
            assert await rpc.call(address, ECHO, [3], timeout_s=5) == [ECHO, 3, "c"]
            assert rpc.stats.connects == 2
            second.cancel_scope.cancel()


async def test_closed_client_refuses_calls(nursery: trio.Nursery, tcp: TcpTransport) -> None:
    _, address = await start_server(nursery, tcp)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        assert await rpc.call(address, ECHO, [], timeout_s=5) == [ECHO, "c"]
        await rpc.aclose()
        with pytest.raises(ConnectionLost, match="client closed"):
            await rpc.call(address, ECHO, [], timeout_s=5)


async def test_connect_refused_is_connection_lost(tcp: TcpTransport) -> None:
    # Bind then close a listener to find a port where nothing listens.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    slow_retry = dataclasses.replace(FAST_CONFIG, backoff_initial_s=5.0, backoff_max_s=5.0)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1), config=slow_retry) as rpc:
        with pytest.raises(ConnectionLost, match="cannot connect"):
            await rpc.call(f"127.0.0.1:{port}", ECHO, [], timeout_s=5)
        # Within the backoff window a second call fails fast without connecting.
        with pytest.raises(ConnectionLost, match="unreachable"):
            await rpc.call(f"127.0.0.1:{port}", ECHO, [], timeout_s=1)
        assert rpc.stats.connect_failures == 1


async def test_server_id_and_client_config_are_checked(tcp: TcpTransport) -> None:
    from dynacore.errors import ConfigError
    from dynacore.net import RpcServer

    with pytest.raises(ConfigError):
        RpcServer(server_id="")
    with pytest.raises(ConfigError):
        async with open_rpc_client(tcp, client_id="x" * 300, rng=random.Random(1)):
            pass
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        with pytest.raises(ConfigError):
            await rpc.call("no-port", ECHO, [], timeout_s=1)
        with pytest.raises(ConfigError):
            await rpc.call("127.0.0.1:1", ECHO, [], timeout_s=0)
    assert FAST_CONFIG.backoff_initial_s == 0.01


async def test_server_handler_concurrency_per_connection_holds(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    active = 0
    peak = 0

    async def slow(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.01)
        active -= 1
        return []

    config = dataclasses.replace(FAST_CONFIG, handler_concurrency_per_connection=3)
    _, address = await start_server(nursery, tcp, slow, config=config)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        async with trio.open_nursery() as calls:
            for _ in range(30):
                calls.start_soon(rpc.call, address, ECHO, [], 30)
    assert peak == 3


async def test_server_connection_limit(nursery: trio.Nursery, tcp: TcpTransport) -> None:
    config = dataclasses.replace(FAST_CONFIG, max_connections=1)
    server, address = await start_server(nursery, tcp, config=config)
    async with (
        open_rpc_client(tcp, client_id="one", rng=random.Random(1)) as first,
        open_rpc_client(tcp, client_id="two", rng=random.Random(1)) as second,
    ):
        assert await first.call(address, ECHO, [], timeout_s=5) == [ECHO, "one"]
        with pytest.raises(LimitExceeded, match="connections"):
            await second.call(address, ECHO, [], timeout_s=5)
        assert await first.call(address, ECHO, [], timeout_s=5) == [ECHO, "one"]
    assert server.stats.refused == 1
