"""The TCP server against a raw socket: bad bytes close that connection only."""

from __future__ import annotations

import random
from collections import deque

import pytest
import trio

from dynacore.errors import AuthError, ProtocolError
from dynacore.net import Message, MsgType, NetConfig, TcpTransport, WireCodec, open_rpc_client
from dynacore.net import messages as m
from dynacore.net.transport import parse_address

from .conftest import SMALL_LIMITS, start_server

ECHO = 40
GUARD_S = 10  # hang guard only: every wait below ends long before it unless something is broken


class RawPeer:
    """A bare TCP socket that speaks frames by hand."""

    def __init__(self, stream: trio.SocketStream, codec: WireCodec) -> None:
        self.stream = stream
        self.codec = codec
        self.decoder = codec.FrameDecoder(SMALL_LIMITS.frame_size_bytes)
        self.ready: deque[Message] = deque()

    @classmethod
    async def connect(cls, address: str, codec: WireCodec) -> RawPeer:
        host, port = parse_address(address)
        return cls(await trio.open_tcp_stream(host, port), codec)

    async def send(self, msg_type: int, request_id: int, fields: list[m.Value]) -> None:
        await self.stream.send_all(self.codec.encode_frame(msg_type, request_id, fields))

    async def receive(self) -> Message:
        with trio.fail_after(GUARD_S):
            while not self.ready:
                data = await self.stream.receive_some(65536)
                assert data, "the server closed the connection"
                self.ready.extend(self.decoder.feed(data))
        return self.ready.popleft()

    async def handshake(self, secret: bytes = b"") -> None:
        nonce = m.parse_challenge(await self.receive())
        await self.send(MsgType.AUTH, 0, [m.auth_mac(secret, nonce), "raw"])
        assert m.parse_hello(await self.receive()) == "server-1"

    async def messages_until_closed(self) -> list[Message]:
        """Everything the server still sends, until it closes the connection."""
        received = list(self.ready)
        with trio.fail_after(GUARD_S):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:  # closed with a reset
                    return received
                if not data:
                    return received
                received.extend(self.decoder.feed(data))


@pytest.mark.parametrize("after_auth", [False, True])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "oversized", "closed_mid_frame"])
async def test_bad_bytes_close_that_connection_only(
    nursery: trio.Nursery, tcp: TcpTransport, codec: WireCodec, damage: str, after_auth: bool
) -> None:
    server, address = await start_server(nursery, tcp)
    async with open_rpc_client(tcp, client_id="good", rng=random.Random(1)) as rpc:
        assert await rpc.call(address, ECHO, [1], timeout_s=5) == [ECHO, 1, "good"]
        raw = await RawPeer.connect(address, codec)
        if after_auth:
            await raw.handshake()  # else the CHALLENGE is read with whatever follows it
        frame = codec.encode_frame(ECHO, 7, [b"v" * 1000])
        if damage == "garbage":
            await raw.stream.send_all(b"\xde\xad\xbe\xef not a frame " * 64)
        elif damage == "truncated":
            await raw.stream.send_all(frame[: len(frame) // 2])
            await raw.stream.send_eof()
        elif damage == "oversized":
            big = codec.encode_frame(ECHO, 7, [b"x" * (2 * SMALL_LIMITS.frame_size_bytes)])
            await raw.stream.send_all(big[:1024])  # the server must not wait for the rest
        else:
            await raw.stream.send_all(frame[: len(frame) // 2])
            await raw.stream.aclose()

        if damage != "closed_mid_frame":
            received = await raw.messages_until_closed()
            # At most the CHALLENGE: no reply to the damaged request.
            assert all(msg[0] == MsgType.CHALLENGE for msg in received)
            await raw.stream.aclose()
        with trio.fail_after(GUARD_S):
            while server.stats.active_connections != 1:
                await trio.sleep(0.005)
        # The other connection is untouched.
        assert await rpc.call(address, ECHO, [2], timeout_s=5) == [ECHO, 2, "good"]
        assert rpc.stats.connects == 1
    assert server.stats.connections == 2


async def test_request_before_auth_is_refused(
    nursery: trio.Nursery, tcp: TcpTransport, codec: WireCodec
) -> None:
    server, address = await start_server(nursery, tcp)
    raw = await RawPeer.connect(address, codec)
    m.parse_challenge(await raw.receive())
    await raw.send(ECHO, 1, [b"sneaky"])
    received = await raw.messages_until_closed()
    assert [msg[:2] for msg in received] == [(MsgType.ERROR, 1)]
    assert isinstance(m.exception_from_error(received[0][2]), AuthError)
    assert server.stats.auth_failures == 1
    assert server.stats.requests == 0


async def test_malformed_auth_is_a_protocol_error(
    nursery: trio.Nursery, tcp: TcpTransport, codec: WireCodec
) -> None:
    _, address = await start_server(nursery, tcp)
    raw = await RawPeer.connect(address, codec)
    m.parse_challenge(await raw.receive())
    await raw.send(MsgType.AUTH, 0, [b"short mac", "raw"])
    received = await raw.messages_until_closed()
    assert len(received) == 1
    assert isinstance(m.exception_from_error(received[0][2]), ProtocolError)


async def test_silent_client_is_dropped_after_the_handshake_timeout(
    nursery: trio.Nursery, codec: WireCodec
) -> None:
    config = NetConfig(handshake_timeout_s=0.05)
    transport = TcpTransport(SMALL_LIMITS, config=config, codec=codec)
    server, address = await start_server(nursery, transport, config=config)
    raw = await RawPeer.connect(address, codec)
    received = await raw.messages_until_closed()
    assert [msg[0] for msg in received] == [MsgType.CHALLENGE]
    assert server.stats.auth_failures == 1


async def test_unknown_type_on_a_raw_connection_keeps_it_open(
    nursery: trio.Nursery, tcp: TcpTransport, codec: WireCodec
) -> None:
    _, address = await start_server(nursery, tcp)
    raw = await RawPeer.connect(address, codec)
    await raw.handshake()
    # Several messages in one write, answered by request id.
    await raw.stream.send_all(
        codec.encode_frame(200, 5, [])
        + codec.encode_frame(MsgType.PING, 6, [])
        + codec.encode_frame(MsgType.HELLO, 7, [])
        + codec.encode_frame(ECHO, 8, [b"x"])
    )
    replies = {}
    for _ in range(4):
        msg_type, request_id, fields = await raw.receive()
        replies[request_id] = (msg_type, fields)
    assert replies[5][0] == MsgType.ERROR
    assert isinstance(m.exception_from_error(replies[5][1]), ProtocolError)
    assert replies[6] == (MsgType.PONG, [])
    assert replies[7][0] == MsgType.ERROR
    assert replies[8] == (MsgType.REPLY, [ECHO, b"x", "raw"])
