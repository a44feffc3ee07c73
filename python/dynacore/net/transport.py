"""The message-level transport abstraction (Transport, Channel) and its real one, TcpTransport.

A Transport serves an address (calling a handler per accepted Channel) and connects to one. A
Channel carries whole messages `(msg_type, request_id, fields)`: `send` takes several and writes
them with one `send_all` (coalescing), `receive` returns the next one. The simulated transport
(same protocols) is in simnet.py. Frames are the wire codec's (docs/contracts.md `wire`), checked
against `limits.frame_size_bytes` on both sides: a malformed frame closes that connection only.
A TcpChannel drives its socket itself (non-blocking calls, trio's readiness waits only when the
kernel would block): one system call per send or receive, no scheduling point per call.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

import trio

from dynacore.errors import ConfigError, ConnectionLost, FrameError, FrameTooLarge, RequestTimeout
from dynacore.limits import Limits
from dynacore.net.config import NetConfig
from dynacore.net.messages import Message, Value

log = logging.getLogger(__name__)


class FrameDecoder(Protocol):
    """An incremental frame decoder (`wire.FrameDecoder`)."""

    def feed(self, data: bytes) -> list[tuple[int, int, list[Value]]]: ...

    @property
    def pending_bytes(self) -> int: ...


class WireCodec(Protocol):
    """The frame functions of a wire module (any backend's `wire`)."""

    def encode_frame(self, msg_type: int, request_id: int, fields: Sequence[Value]) -> bytes: ...

    def decode_frame(self, frame: bytes, max_frame_bytes: int) -> tuple[int, int, list[Value]]: ...

    def FrameDecoder(self, max_frame_bytes: int) -> FrameDecoder: ...


class Channel(Protocol):
    """One connection, message by message. One task receives; any number may send."""

    @property
    def peer(self) -> str:
        """The remote address ("host:port")."""
        ...

    async def send(self, messages: Sequence[Message]) -> None:
        """Encode and write `messages` together. An unencodable or oversized message raises
        EncodeError / FrameTooLarge before anything is written (the channel stays usable);
        a closed connection raises ConnectionLost."""
        ...

    async def receive(self) -> Message:
        """The next message; ConnectionLost once the connection is closed or broken."""
        ...

    async def aclose(self) -> None: ...


ChannelHandler = Callable[[Channel], Awaitable[None]]


class Transport(Protocol):
    """Serves and connects channels; TcpTransport and the simulated transport implement it."""

    async def serve(
        self,
        address: str,
        handler: ChannelHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind `address` (port 0 picks one), report the bound "host:port" through
        `task_status.started`, and run `handler(channel)` per accepted connection until
        cancelled. The channel is closed when its handler returns; handler errors are logged
        and end that connection only."""
        ...

    async def connect(self, address: str, timeout_s: float) -> Channel:
        """A channel to `address`; ConnectionLost if refused, RequestTimeout after timeout_s."""
        ...


def default_codec() -> WireCodec:
    """The selected backend's wire module."""
    from dynacore._backend import wire

    return cast(WireCodec, wire)


def parse_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" (IPv6 as "[::1]:port"); ConfigError when malformed."""
    if not isinstance(address, str) or ":" not in address:
        raise ConfigError(f"address must be 'host:port', got {address!r}")
    host, _, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"address must be 'host:port' with a port in [0, 65535], got {address!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def encode_messages(
    codec: WireCodec, messages: Sequence[Message], max_frame_bytes: int
) -> list[bytes]:
    """The frames of `messages`; EncodeError / FrameTooLarge for the first bad one."""
    frames = []
    for msg_type, request_id, fields in messages:
        frame = codec.encode_frame(msg_type, request_id, fields)
        if len(frame) > max_frame_bytes:
            raise FrameTooLarge(
                f"message type {msg_type} needs {len(frame)} bytes, frame limit {max_frame_bytes}"
            )
        frames.append(frame)
    return frames


async def close_quietly(channel: Channel) -> None:
    """Close a channel at once, even from a cancelled scope, swallowing close errors."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await channel.aclose()
        except (ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def run_channel_handler(handler: ChannelHandler, channel: Channel) -> None:
    """Run one connection's handler: its errors end that connection, never the server."""
    try:
        await handler(channel)
    except ConnectionLost:
        pass
    except Exception:
        log.exception("connection handler for %s failed", channel.peer)
    finally:
        await close_quietly(channel)


class TcpChannel:
    """A Channel over one connected, non-blocking stdlib socket, driven by trio's I/O waits.

    A send or receive goes straight to the socket and waits for readiness only when the kernel
    says it would block: no scheduling point per call beyond one per fresh read (fairness), so
    that the messages of a busy connection cost a system call each and nothing more.
    """

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        codec: WireCodec,
        limits: Limits,
        config: NetConfig,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._peer = peer
        self._codec = codec
        self._max_frame_bytes = limits.frame_size_bytes
        self._config = config
        self._decoder = codec.FrameDecoder(limits.frame_size_bytes)
        # Bounded: holds what one receive chunk decoded to.
        self._ready: deque[Message] = deque()
        self._sending = False  # one sender at a time (a flag: no scheduling point to take it)
        self._send_done = trio.Event()
        self._broken: str | None = None
        self._closed = False

    @property
    def peer(self) -> str:
        return self._peer

    async def send(self, messages: Sequence[Message]) -> None:
        frames = encode_messages(self._codec, messages, self._max_frame_bytes)
        while self._sending:
            await self._send_done.wait()
        if self._broken is not None:
            raise ConnectionLost(f"{self._peer}: {self._broken}")
        self._sending = True
        try:
            for chunk in _chunks(frames, self._config.write_chunk_bytes):
                await self._send_all(chunk)
        except OSError as exc:
            self._broken = "connection closed"
            raise ConnectionLost(f"{self._peer}: connection closed ({exc})") from exc
        except BaseException:
            # Cancelled mid-write: part of a frame may be out; the stream is unusable.
            self._broken = "a send was interrupted"
            await close_quietly(self)
            raise
        finally:
            self._sending = False
            self._send_done.set()
            self._send_done = trio.Event()

    async def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_writable)
                continue
            view = view[sent:]
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        """Wait for readiness; ConnectionLost once the channel is closed meanwhile."""
        try:
            await wait(self._sock)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            reason = self._broken or "closed"
            raise ConnectionLost(f"{self._peer}: {reason}") from exc

    async def receive(self) -> Message:
        while not self._ready:
            await self._fill()
        return self._ready.popleft()

    async def _fill(self) -> None:
        waited = False
        while True:
            if self._broken is not None:
                raise ConnectionLost(f"{self._peer}: {self._broken}")
            try:
                data = self._sock.recv(self._config.receive_chunk_bytes)
                break
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable)
                waited = True
            except OSError as exc:
                self._broken = "connection closed"
                raise ConnectionLost(f"{self._peer}: connection closed ({exc})") from exc
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()  # a busy peer cannot starve others
        if not data:
            pending = self._decoder.pending_bytes
            self._broken = "closed by peer" + (f" mid-frame ({pending} bytes)" if pending else "")
            raise ConnectionLost(f"{self._peer}: {self._broken}")
        try:
            self._ready.extend(self._decoder.feed(data))
        except FrameError as exc:
            self._broken = f"malformed frame ({type(exc).__name__}: {exc})"
            await close_quietly(self)
            raise ConnectionLost(f"{self._peer}: {self._broken}") from exc

    async def aclose(self) -> None:
        if self._broken is None:
            self._broken = "closed"
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)  # wakes any task waiting on it
            self._sock.close()
        await trio.lowlevel.checkpoint()


def _chunks(frames: list[bytes], chunk_bytes: int) -> list[bytes]:
    """Join frames into writes of about chunk_bytes (a single frame may exceed it)."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for frame in frames:
        if current and size + len(frame) > chunk_bytes:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(frame)
        size += len(frame)
    if current:
        chunks.append(b"".join(current))
    return chunks


class TcpTransport:
    """trio TCP with TCP_NODELAY; frames from the wire codec, bounded by limits.frame_size_bytes."""

    def __init__(
        self,
        limits: Limits,
        *,
        config: NetConfig | None = None,
        codec: WireCodec | None = None,
    ) -> None:
        self._limits = limits
        self._config = config if config is not None else NetConfig()
        self._codec = codec if codec is not None else default_codec()

    def _channel(self, stream: trio.SocketStream, peer: str) -> TcpChannel:
        """Take the stream's socket over (trio keeps no state for it once detached)."""
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        trio_socket = stream.socket
        family, kind, proto = trio_socket.family, trio_socket.type, trio_socket.proto
        sock = socket.socket(family, kind, proto, fileno=trio_socket.detach())
        return TcpChannel(sock, peer, self._codec, self._limits, self._config)

    async def serve(
        self,
        address: str,
        handler: ChannelHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = parse_address(address)
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0:
            # Several addresses (e.g. "localhost") would each get their own random port.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        bound_port = listeners[0].socket.getsockname()[1]

        async def accept(stream: trio.SocketStream) -> None:
            try:
                peer_host, peer_port = stream.socket.getpeername()[:2]
                channel = self._channel(stream, format_address(peer_host, peer_port))
            except OSError:
                await trio.aclose_forcefully(stream)
                return
            await run_channel_handler(handler, channel)

        async with trio.open_nursery() as nursery:
            task_status.started(format_address(host, bound_port))
            await trio.serve_listeners(accept, listeners, handler_nursery=nursery)

    async def connect(self, address: str, timeout_s: float) -> Channel:
        host, port = parse_address(address)
        if port == 0:
            raise ConfigError(f"cannot connect to port 0 ({address!r})")
        with trio.move_on_after(timeout_s) as scope:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise ConnectionLost(f"{address}: cannot connect ({exc})") from exc
            try:
                return self._channel(stream, address)
            except OSError as exc:
                await trio.aclose_forcefully(stream)
                raise ConnectionLost(f"{address}: cannot connect ({exc})") from exc
        assert scope.cancelled_caught
        raise RequestTimeout(f"{address}: connect took longer than {timeout_s} s")
