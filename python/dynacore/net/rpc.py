"""Request/response over a Transport: RpcClient (one multiplexed, authenticated connection per
peer, request ids, in-flight bound, timeouts, coalescing sender, reconnect with backoff) and
RpcServer (handshake, bounded handler concurrency per connection, errors as ERROR replies).

Nodes and clients both use it. All tasks live in a nursery the owner hands in (or that
`open_rpc_client` owns); every wait is bounded by a timeout or by that owner's cancellation.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dynacore.errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    DynacoreError,
    EncodeError,
    LimitExceeded,
    ProtocolError,
    RemoteError,
    RequestTimeout,
)
from dynacore.limits import Limits
from dynacore.net import messages as m
from dynacore.net.config import NetConfig
from dynacore.net.messages import Message, MsgType, Value
from dynacore.net.transport import Channel, Transport, close_quietly, parse_address

log = logging.getLogger(__name__)

# handler(msg_type, fields, peer_id) -> reply fields; peer_id is the client id the peer
# authenticated with.
Handler = Callable[[int, list[Value], str], Awaitable[list[Value]]]
# Called with a message the channel refused to encode; may return a message to send instead.
Rejected = Callable[[Message, DynacoreError], Message | None]


# -- the coalescing sender, shared by both sides ------------------------------------------------

# What encoding a message may raise: EncodeError / FrameTooLarge by contract (both ValueErrors);
# TypeError and OverflowError too, so that a codec breaking its contract fails one request only.
_UNENCODABLE = (ValueError, TypeError, OverflowError)


class _Outbox:
    """A bounded queue of outgoing messages; `run` sends whatever has queued up in one send."""

    def __init__(self, capacity: int, batch_max_messages: int) -> None:
        self._in, self._out = trio.open_memory_channel[Message](capacity)
        self._batch_max = batch_max_messages

    async def put(self, message: Message) -> None:
        """Queue a message (waits while the queue is full); ConnectionLost once closed."""
        try:
            await self._in.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise ConnectionLost("connection closed") from exc

    def close(self) -> None:
        self._in.close()

    async def run(self, channel: Channel, on_rejected: Rejected) -> None:
        """Send until the outbox is closed; ConnectionLost when the channel breaks."""
        async for first in self._out:
            # Let the tasks that are runnable now queue their messages too, then take them all.
            await trio.lowlevel.cancel_shielded_checkpoint()
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._out.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await _send_batch(channel, batch, on_rejected)


async def _send_batch(channel: Channel, batch: list[Message], on_rejected: Rejected) -> None:
    try:
        await channel.send(batch)
        return
    except _UNENCODABLE:
        pass  # find the bad message(s): the channel wrote nothing
    for message in batch:
        try:
            await channel.send([message])
        except _UNENCODABLE as exc:
            problem = exc if isinstance(exc, DynacoreError) else EncodeError(str(exc))
            replacement = on_rejected(message, problem)
            if replacement is not None:
                await channel.send([replacement])


# -- client -------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    result: list[Value] | None = None
    error: DynacoreError | None = None

    def resolve(self, result: list[Value]) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()

    def fail(self, error: DynacoreError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass(slots=True)
class ClientStats:
    connects: int = 0
    connect_failures: int = 0
    calls: int = 0
    timeouts: int = 0
    stale_replies: int = 0  # replies whose caller had given up (timeout) or unknown ids
    silent_drops: int = 0  # connections closed as half-open (see RpcClient._drop_if_silent)


class _ClientConnection:
    """One authenticated channel to a peer with its pending requests."""

    def __init__(
        self,
        channel: Channel,
        address: str,
        server_id: str,
        limits: Limits,
        config: NetConfig,
        stats: ClientStats,
    ) -> None:
        self.channel = channel
        self.address = address
        self.server_id = server_id
        self.alive = True
        self._outbox = _Outbox(limits.in_flight_per_peer, config.batch_max_messages)
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._stats = stats
        self._reason: str | None = None  # why the connection ended (the first reason wins)
        self.last_receive_s = trio.current_time()

    async def request(self, msg_type: int, fields: list[Value]) -> list[Value]:
        if not self.alive:
            raise ConnectionLost(f"{self.address}: {self._reason or 'connection closed'}")
        request_id = self._next_id
        self._next_id += 1
        assert request_id <= m.REQUEST_ID_MAX, "request ids are u64"
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            await self._outbox.put((msg_type, request_id, fields))
            await pending.done.wait()
        finally:
            del self._pending[request_id]
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def run(self) -> None:
        """The connection's reader and sender; returns when the connection is gone."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_task, nursery.cancel_scope)
                await self._receive_loop()
                nursery.cancel_scope.cancel()
        except Exception:
            # A bug (or a codec breaking its contract) ends this connection, not the owner.
            log.exception("connection to %s failed", self.address)
            self._note_reason("internal error")
        finally:
            self._shutdown()
            await close_quietly(self.channel)

    def _note_reason(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    async def _send_task(self, scope: trio.CancelScope) -> None:
        try:
            await self._outbox.run(self.channel, self._reject)
        except ConnectionLost as exc:
            self._note_reason(str(exc))
        finally:
            scope.cancel()

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.channel.receive()
            except ConnectionLost as exc:
                self._note_reason(str(exc))
                return
            self.last_receive_s = trio.current_time()
            self._dispatch(message)

    def _dispatch(self, message: Message) -> None:
        msg_type, request_id, fields = message
        pending = self._pending.get(request_id)
        if pending is None:
            self._stats.stale_replies += 1
            return
        if msg_type == MsgType.REPLY:
            pending.resolve(fields)
        elif msg_type == MsgType.ERROR:
            pending.fail(m.exception_from_error(fields))
        elif msg_type == MsgType.PONG:
            pending.resolve([])
        else:
            pending.fail(ProtocolError(f"{self.address}: reply of unexpected type {msg_type}"))

    def _reject(self, message: Message, exc: DynacoreError) -> None:
        pending = self._pending.get(message[1])
        if pending is not None:
            pending.fail(exc)

    def _shutdown(self) -> None:
        self.alive = False
        self._outbox.close()
        reason = self._reason or "connection closed"
        for pending in self._pending.values():
            pending.fail(ConnectionLost(f"{self.address}: {reason}"))

    async def aclose(self, reason: str = "client closed") -> None:
        self.alive = False
        self._note_reason(reason)
        await close_quietly(self.channel)


@dataclass(slots=True, eq=False)
class _Peer:
    address: str
    slots: trio.Semaphore
    connecting: trio.Event | None = None  # set when the attempt in progress ends
    conn: _ClientConnection | None = None
    failures: int = 0
    retry_at_s: float = -math.inf
    last_error: str = ""


class RpcClient:
    """Calls to peers over one multiplexed connection per peer address."""

    def __init__(
        self,
        transport: Transport,
        nursery: trio.Nursery,
        *,
        client_id: str,
        rng: random.Random,
        secret: bytes = b"",
        limits: Limits | None = None,
        config: NetConfig | None = None,
    ) -> None:
        _check_identity(client_id, secret)
        self._transport = transport
        self._nursery = nursery
        self._client_id = client_id
        self._rng = rng
        self._secret = secret
        self._limits = limits if limits is not None else Limits()
        self._config = config if config is not None else NetConfig()
        self._peers: dict[str, _Peer] = {}
        self._closed = False
        self.stats = ClientStats()

    async def call(
        self, address: str, msg_type: int, fields: Sequence[Value], timeout_s: float | None = None
    ) -> list[Value]:
        """Send one request and return the reply's fields.

        Raises RequestTimeout (no reply within timeout_s, default limits.request_timeout_s; the
        connection stays up), ConnectionLost (unreachable, or the connection broke before the
        reply), the dynacore.errors class an ERROR reply names (else RemoteError), or
        EncodeError / FrameTooLarge for fields the wire cannot carry.
        """
        m.check_request_type(msg_type)
        timeout = self._limits.request_timeout_s if timeout_s is None else timeout_s
        if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise ConfigError(f"timeout_s must be in (0, 3600], got {timeout_s!r}")
        peer = self._peer(address)
        self.stats.calls += 1
        with trio.move_on_after(timeout):
            async with peer.slots:
                conn = await self._connection(peer)
                return await conn.request(msg_type, list(fields))
        self.stats.timeouts += 1
        await self._drop_if_silent(peer)
        raise RequestTimeout(f"{address}: no reply to message type {msg_type} within {timeout} s")

    async def ping(self, address: str, timeout_s: float | None = None) -> None:
        """A PING answered by the peer's transport layer (no handler involved)."""
        await self.call(address, MsgType.PING, [], timeout_s)

    async def _drop_if_silent(self, peer: _Peer) -> None:
        """After a timeout: a connection that has received nothing for config.silent_connection_s
        is presumed half-open (peer host gone, replies lost) and closed; the next call
        reconnects."""
        conn = peer.conn
        if conn is None or not conn.alive:
            return
        if trio.current_time() - conn.last_receive_s >= self._config.silent_connection_s:
            self.stats.silent_drops += 1
            await conn.aclose(f"nothing received for {self._config.silent_connection_s} s")

    def connected(self, address: str) -> bool:
        peer = self._peers.get(address)
        return peer is not None and peer.conn is not None and peer.conn.alive

    async def aclose(self) -> None:
        """Close every connection; pending calls fail with ConnectionLost, later calls too."""
        self._closed = True
        for peer in self._peers.values():
            if peer.conn is not None:
                await peer.conn.aclose()

    def _peer(self, address: str) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            parse_address(address)
            if len(self._peers) >= self._config.max_peers:
                raise LimitExceeded(f"more than {self._config.max_peers} peer addresses")
            peer = _Peer(address, trio.Semaphore(self._limits.in_flight_per_peer))
            self._peers[address] = peer
        return peer

    async def _connection(self, peer: _Peer) -> _ClientConnection:
        """The peer's live connection; the first caller connects, the others wait for it."""
        if self._closed:
            raise ConnectionLost(f"{peer.address}: client closed")
        if peer.conn is not None and peer.conn.alive:
            return peer.conn
        if peer.connecting is not None:
            # Everyone waiting wakes at once when the attempt ends, which lets their requests
            # coalesce into the first sends; a failed attempt fails them all (no stampede).
            await peer.connecting.wait()
            if peer.conn is not None and peer.conn.alive:
                return peer.conn
            raise ConnectionLost(f"{peer.address}: unreachable ({peer.last_error})")
        attempt = peer.connecting = trio.Event()
        try:
            return await self._connect_peer(peer)
        finally:
            peer.connecting = None
            attempt.set()

    async def _connect_peer(self, peer: _Peer) -> _ClientConnection:
        await self._wait_backoff(peer)
        try:
            conn = await self._open(peer.address)
        except DynacoreError as exc:
            self._note_failure(peer, exc)
            raise
        if self._closed:
            await close_quietly(conn.channel)
            raise ConnectionLost(f"{peer.address}: client closed")
        peer.failures = 0
        peer.conn = conn
        self.stats.connects += 1
        self._nursery.start_soon(conn.run)
        return conn

    def _note_failure(self, peer: _Peer, exc: DynacoreError) -> None:
        self.stats.connect_failures += 1
        peer.failures += 1
        peer.last_error = f"{type(exc).__name__}: {exc}"
        exponent = min(peer.failures - 1, 32)
        cap_s = min(self._config.backoff_max_s, self._config.backoff_initial_s * 2**exponent)
        peer.retry_at_s = trio.current_time() + cap_s * self._rng.uniform(0.5, 1.0)

    async def _wait_backoff(self, peer: _Peer) -> None:
        """Wait for the peer's next connection attempt, or fail now if it is past our deadline."""
        if trio.current_time() >= peer.retry_at_s:
            return
        if peer.retry_at_s > trio.current_effective_deadline():
            wait_s = peer.retry_at_s - trio.current_time()
            raise ConnectionLost(
                f"{peer.address}: unreachable after {peer.failures} attempts "
                f"({peer.last_error}); next attempt in {wait_s:.3f} s"
            )
        await trio.sleep_until(peer.retry_at_s)

    async def _open(self, address: str) -> _ClientConnection:
        """Connect and authenticate: CHALLENGE in, AUTH out, HELLO (or ERROR) in."""
        try:
            channel = await self._transport.connect(address, self._config.connect_timeout_s)
        except RequestTimeout as exc:
            raise ConnectionLost(f"{address}: {exc}") from exc
        try:
            with trio.fail_after(self._config.handshake_timeout_s):
                nonce = m.parse_challenge(await channel.receive())
                await channel.send([m.auth(m.auth_mac(self._secret, nonce), self._client_id)])
                reply = await channel.receive()
                while reply[0] == MsgType.CHALLENGE:  # a duplicate (the simulated network)
                    reply = await channel.receive()
                server_id = m.parse_hello(reply)
        except trio.TooSlowError as exc:
            await close_quietly(channel)
            raise ConnectionLost(f"{address}: handshake timed out") from exc
        except BaseException:
            await close_quietly(channel)
            raise
        return _ClientConnection(
            channel, address, server_id, self._limits, self._config, self.stats
        )


def _check_identity(node_id: str, secret: bytes) -> None:
    """ConfigError unless the id is a valid client/server id and the secret is bytes."""
    try:
        m.check_client_id(node_id)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    if not isinstance(secret, bytes):
        raise ConfigError("the cluster secret must be bytes")


@asynccontextmanager
async def open_rpc_client(
    transport: Transport,
    *,
    client_id: str,
    rng: random.Random,
    secret: bytes = b"",
    limits: Limits | None = None,
    config: NetConfig | None = None,
) -> AsyncIterator[RpcClient]:
    """An RpcClient whose tasks live in a nursery this context owns."""
    _check_identity(client_id, secret)
    async with trio.open_nursery() as nursery:
        client = RpcClient(
            transport,
            nursery,
            client_id=client_id,
            rng=rng,
            secret=secret,
            limits=limits,
            config=config,
        )
        try:
            yield client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


# -- server -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ServerStats:
    connections: int = 0  # accepted, ever
    open_connections: int = 0  # now, handshaking or authenticated
    active_connections: int = 0  # now, authenticated
    refused: int = 0  # over config.max_connections
    auth_failures: int = 0
    requests: int = 0
    handler_errors: int = 0
    protocol_errors: int = 0


class _ServerConnection:
    """One authenticated connection: a reader, a sender and up to N handler tasks."""

    def __init__(
        self,
        channel: Channel,
        peer_id: str,
        handler: Handler,
        config: NetConfig,
        stats: ServerStats,
    ) -> None:
        concurrency = config.handler_concurrency_per_connection
        self._channel = channel
        self._peer_id = peer_id
        self._handler = handler
        self._stats = stats
        self._slots = trio.Semaphore(concurrency)
        self._outbox = _Outbox(concurrency + 1, config.batch_max_messages)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_task, nursery.cancel_scope)
            try:
                await self._receive_loop(nursery)
            except ConnectionLost:
                pass
            finally:
                nursery.cancel_scope.cancel()

    async def _send_task(self, scope: trio.CancelScope) -> None:
        try:
            await self._outbox.run(self._channel, self._error_instead)
        except ConnectionLost:
            pass
        finally:
            scope.cancel()

    async def _receive_loop(self, nursery: trio.Nursery) -> None:
        while True:
            msg_type, request_id, fields = await self._channel.receive()
            self._stats.requests += 1
            if m.is_node_type(msg_type):
                await self._slots.acquire()
                nursery.start_soon(self._handle, msg_type, request_id, fields)
            elif msg_type == MsgType.AUTH and request_id == m.HANDSHAKE_REQUEST_ID:
                pass  # a duplicate of the accepted AUTH (the simulated network duplicates)
            elif msg_type == MsgType.PING:
                await self._outbox.put(m.pong(request_id))
            else:
                self._stats.protocol_errors += 1
                problem = ProtocolError(f"unexpected message type {msg_type}")
                await self._outbox.put(m.error(request_id, problem))

    async def _handle(self, msg_type: int, request_id: int, fields: list[Value]) -> None:
        try:
            await self._outbox.put(await self._reply(msg_type, request_id, fields))
        finally:
            self._slots.release()

    async def _reply(self, msg_type: int, request_id: int, fields: list[Value]) -> Message:
        try:
            result = await self._handler(msg_type, fields, self._peer_id)
        except DynacoreError as exc:
            self._stats.handler_errors += 1
            return m.error(request_id, exc)
        except Exception as exc:
            self._stats.handler_errors += 1
            log.exception("handler failed on message type %d from %s", msg_type, self._peer_id)
            return m.error(request_id, exc)
        if not isinstance(result, list):
            self._stats.handler_errors += 1
            problem = RemoteError(f"handler returned {type(result).__name__}, not a list")
            return m.error(request_id, problem)
        return m.reply(request_id, result)

    def _error_instead(self, message: Message, exc: DynacoreError) -> Message:
        """A reply the wire could not carry (the handler's fault) becomes an ERROR naming why."""
        self._stats.handler_errors += 1
        return m.error(message[1], exc)


class RpcServer:
    """Serves requests on a Transport: handshake, then `handler` per request."""

    def __init__(
        self,
        *,
        server_id: str,
        secret: bytes = b"",
        config: NetConfig | None = None,
        nonce_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        _check_identity(server_id, secret)
        self._server_id = server_id
        self._secret = secret
        self._config = config if config is not None else NetConfig()
        self._nonce_source = nonce_source
        self.stats = ServerStats()

    async def serve(
        self,
        transport: Transport,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; `task_status.started(bound_address)` once listening."""

        async def on_channel(channel: Channel) -> None:
            await self._serve_connection(channel, handler)

        await transport.serve(address, on_channel, task_status=task_status)

    async def _serve_connection(self, channel: Channel, handler: Handler) -> None:
        self.stats.connections += 1
        if self.stats.open_connections >= self._config.max_connections:
            self.stats.refused += 1
            too_many = LimitExceeded(f"more than {self._config.max_connections} connections")
            await channel.send([m.error(m.HANDSHAKE_REQUEST_ID, too_many)])
            return
        self.stats.open_connections += 1
        try:
            peer_id = await self._handshake(channel)
            if peer_id is None:
                return
            self.stats.active_connections += 1
            try:
                await _ServerConnection(channel, peer_id, handler, self._config, self.stats).run()
            finally:
                self.stats.active_connections -= 1
        finally:
            self.stats.open_connections -= 1

    async def _handshake(self, channel: Channel) -> str | None:
        """The peer's client id once it proved the secret; None (after an ERROR) otherwise."""
        nonce = self._nonce_source(m.NONCE_SIZE_BYTES)
        await channel.send([m.challenge(nonce)])
        with trio.move_on_after(self._config.handshake_timeout_s):
            message = await channel.receive()
            msg_type, request_id, _ = message
            if msg_type != MsgType.AUTH:
                await self._refuse(channel, request_id, AuthError("authenticate first"))
                return None
            try:
                mac, client_id = m.parse_auth(message)
            except ProtocolError as exc:
                await self._refuse(channel, request_id, exc)
                return None
            if not m.mac_matches(self._secret, nonce, mac):
                await self._refuse(channel, request_id, AuthError("wrong cluster secret"))
                return None
            await channel.send([m.hello(self._server_id)])
            return client_id
        self.stats.auth_failures += 1
        return None

    async def _refuse(self, channel: Channel, request_id: int, exc: DynacoreError) -> None:
        self.stats.auth_failures += 1
        await channel.send([m.error(request_id, exc)])
