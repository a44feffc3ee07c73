"""Fixtures of the network tests: the wire codec in use, small limits, server/client helpers."""

from __future__ import annotations

import random

import pytest
import trio

from dynacore import _backend
from dynacore.limits import Limits
from dynacore.net import NetConfig, RpcServer, TcpTransport, Value, WireCodec
from dynacore.net.rpc import Handler
from dynacore.net.transport import default_codec

from . import _standin_wire

# Small frames so that "oversized" is cheap to produce; still above value + key + 64 KiB.
SMALL_LIMITS = Limits(key_size_bytes=1024, value_size_bytes=16 * 1024, frame_size_bytes=128 * 1024)
FAST_CONFIG = NetConfig(
    connect_timeout_s=2.0, handshake_timeout_s=2.0, backoff_initial_s=0.01, backoff_max_s=0.1
)


def codec_in_use() -> WireCodec:
    """The selected backend's wire codec, or the test stand-in until core/wire.py lands."""
    if hasattr(_backend.wire, "encode_frame"):
        return default_codec()
    return _standin_wire


@pytest.fixture
def codec() -> WireCodec:
    return codec_in_use()


@pytest.fixture
def tcp(codec: WireCodec) -> TcpTransport:
    return TcpTransport(SMALL_LIMITS, config=FAST_CONFIG, codec=codec)


async def echo_handler(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
    return [msg_type, *fields, peer]


async def start_server(
    nursery: trio.Nursery,
    transport: TcpTransport,
    handler: Handler = echo_handler,
    *,
    secret: bytes = b"",
    address: str = "127.0.0.1:0",
    config: NetConfig = FAST_CONFIG,
) -> tuple[RpcServer, str]:
    server = RpcServer(server_id="server-1", secret=secret, config=config)
    bound = await nursery.start(server.serve, transport, address, handler)
    assert isinstance(bound, str)
    return server, bound


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)
