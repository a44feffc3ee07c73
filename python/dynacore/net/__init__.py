"""The network layer: message types, transports (trio TCP and the simulated network) and RPC.

- messages.py: transport-level message types 1-7 (HELLO, CHALLENGE, AUTH, REPLY, ERROR, PING,
  PONG) and their layouts; 32-127 are the node's own types, handed to the server handler.
- transport.py: the `Transport` / `Channel` protocols and `TcpTransport(limits)`.
- simnet.py: `SimNetwork(rng)` and its per-node `SimTransport`s (faults, partitions, crashes,
  trace) plus `deterministic_scheduling(seed)` for exact replays under MockClock.
- rpc.py: `RpcClient` / `open_rpc_client` (`await rpc.call(address, msg_type, fields, timeout_s)`)
  and `RpcServer` (`await server.serve(transport, address, handler)` with
  `handler(msg_type, fields, peer_id) -> list`).
- config.py: `NetConfig`, the bounds only this layer uses.
"""

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
