"""The bounds of the network layer (timeouts, backoff, batch and queue sizes), units in the names.

`dynacore.limits.Limits` holds the bounds shared with other layers (frame size, requests in flight
per peer, request timeout); `NetConfig` holds the ones only net/ uses. Both are handed in; nothing
reads a global.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynacore.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Network-layer bounds for one node or client."""

    connect_timeout_s: float = 5.0
    handshake_timeout_s: float = 5.0
    # Reconnect backoff: initial * 2**(failures - 1), capped at max, times a jitter in [0.5, 1].
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    # Client: after a request timeout, a connection that has received nothing for this long is
    # taken for half-open (the peer's host vanished) and closed, so the next call reconnects.
    silent_connection_s: float = 10.0
    # Server: requests of one connection whose handler runs at the same time.
    handler_concurrency_per_connection: int = 256
    # Messages coalesced into one send; bytes written per send_all call.
    batch_max_messages: int = 256
    write_chunk_bytes: int = 1 * MIB
    receive_chunk_bytes: int = 64 * KIB
    # Distinct peer addresses one RpcClient keeps state for.
    max_peers: int = 4096
    # Connections one RpcServer holds open at once (handshaking or authenticated).
    max_connections: int = 4096
    # SimNetwork: messages queued towards one channel end (in flight or unread); more are dropped.
    sim_inbox_messages: int = 65536
    # SimNetwork: how many trace lines are kept (the running digest covers all of them).
    sim_trace_lines: int = 10_000

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout_s",
            "handshake_timeout_s",
            "backoff_initial_s",
            "silent_connection_s",
        ):
            _check_seconds(name, getattr(self, name))
        _check_seconds("backoff_max_s", self.backoff_max_s)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("backoff_max_s must be at least backoff_initial_s")
        _check_count("handler_concurrency_per_connection", self.handler_concurrency_per_connection)
        _check_count("batch_max_messages", self.batch_max_messages)
        _check_count("write_chunk_bytes", self.write_chunk_bytes)
        _check_count("receive_chunk_bytes", self.receive_chunk_bytes)
        _check_count("max_peers", self.max_peers)
        _check_count("max_connections", self.max_connections)
        _check_count("sim_inbox_messages", self.sim_inbox_messages)
        _check_count("sim_trace_lines", self.sim_trace_lines)


def _check_seconds(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 3600:
        raise ConfigError(f"{name} must be in (0, 3600] seconds, got {value!r}")


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 30:
        raise ConfigError(f"{name} must be an integer in [1, 2**30], got {value!r}")
