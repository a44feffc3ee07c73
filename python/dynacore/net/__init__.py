"""The network layer: message types, transports (trio TCP and the simulated network) and RPC."""

from __future__ import annotations

from dynacore.net.config import NetConfig
from dynacore.net.messages import Message, MsgType, Value
from dynacore.net.rpc import Handler, RpcClient, RpcServer, open_rpc_client
from dynacore.net.simnet import (
    SimChannel,
    SimFaults,
    SimNetwork,
    SimTransport,
    deterministic_scheduling,
)
from dynacore.net.transport import Channel, TcpTransport, Transport, WireCodec

__all__ = [
    "Channel",
    "Handler",
    "Message",
    "MsgType",
    "NetConfig",
    "RpcClient",
    "RpcServer",
    "SimChannel",
    "SimFaults",
    "SimNetwork",
    "SimTransport",
    "TcpTransport",
    "Transport",
    "Value",
    "WireCodec",
    "deterministic_scheduling",
    "open_rpc_client",
]
