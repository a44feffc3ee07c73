"""Request/response over a Transport: RpcClient (one multiplexed, authenticated connection per
peer, request ids, in-flight bound, timeouts, coalescing sender, reconnect with backoff) and
RpcServer (handshake, bounded handler concurrency per connection, errors as ERROR replies).

Nodes and clients both use it. All tasks live in a nursery the owner hands in (or that
`open_rpc_client` owns); every wait is bounded by a timeout or by that owner's cancellation.

The request path is built to cost no task and no cancel scope per request (see benches/README.md,
"Data path profile"): a request's deadline goes on its connection's heap, which one timer task
per connection enforces; `call_soon` sends with a callback instead of a waiting caller; the
server answers `inline_handlers` in the connection's reader and lets `deferred_handlers` answer
later from a callback. Replies and requests queued while a task runs leave in one send.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

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
# An inline handler: (fields, peer_id) -> reply fields, run by the connection's reader itself
# (no task): for requests answered at once, without I/O or waiting.
InlineHandler = Callable[[list[Value], str], list[Value]]
# How a deferred handler answers: the reply fields, or the exception to answer with.
Respond = Callable[[list[Value] | Exception], None]
# A deferred handler: (fields, peer_id, respond) -> started. It starts the work without a task
# and calls `respond` exactly once, now or later (from a callback); or it returns False having
# started nothing, and the request goes to the task handler instead.
DeferredHandler = Callable[[list[Value], str, Respond], bool]
# Called with a message the channel refused to encode; may return a message to send instead.
Rejected = Callable[[Message, DynacoreError], Message | None]


# -- the coalescing sender, shared by both sides ------------------------------------------------

# What encoding a message may raise: EncodeError / FrameTooLarge by contract (both ValueErrors);
# TypeError and OverflowError too, so that a codec breaking its contract fails one request only.
_UNENCODABLE = (ValueError, TypeError, OverflowError)


class _Outbox:
    """A bounded queue of outgoing messages; `run` sends whatever has queued up in one send.

    `put` returns at once while there is room (no scheduling point), so that a task can queue
    several messages, or a receive loop reply inline, and they leave together.
    """

    def __init__(self, capacity: int, batch_max_messages: int) -> None:
        assert capacity >= 1 and batch_max_messages >= 1
        self._queue: deque[Message] = deque()
        self._capacity = capacity
        self._batch_max = batch_max_messages
        self._closed = False
        self._ready = trio.Event()  # set when a message is queued (or the outbox closes)
        self._room = trio.Event()  # set when a batch leaves the queue

    def __len__(self) -> int:
        return len(self._queue)

    async def put(self, message: Message) -> None:
        """Queue a message (waits while the queue is full); ConnectionLost once closed."""
        while len(self._queue) >= self._capacity and not self._closed:
            await self._room.wait()
        if self._closed:
            raise ConnectionLost("connection closed")
        self._queue.append(message)
        self._ready.set()

    def put_nowait(self, message: Message, *, force: bool = False) -> bool:
        """Queue a message if there is room (or `force`: the caller bounds its messages
        itself); False when the queue is full or closed."""
        if self._closed or (len(self._queue) >= self._capacity and not force):
            return False
        self._queue.append(message)
        self._ready.set()
        return True

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        self._room.set()

    async def run(self, channel: Channel, on_rejected: Rejected) -> None:
        """Send until the outbox is closed and drained; ConnectionLost when the channel breaks."""
        queue = self._queue
        while True:
            if not queue:
                if self._closed:
                    return
                self._ready = trio.Event()
                await self._ready.wait()
                continue
            # Let the tasks that are runnable now queue their messages too, then take them all.
            await trio.lowlevel.cancel_shielded_checkpoint()
            count = min(len(queue), self._batch_max)
            batch = [queue.popleft() for _ in range(count)]
            self._room.set()
            self._room = trio.Event()
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

Callback = Callable[[list[Value] | None, DynacoreError | None], None]
"""on_done(result, error) of `RpcClient.call_soon`: exactly one of the two is None."""

# The deadline heap of a connection is rebuilt from its pending requests when stale entries
# (requests answered before their deadline) outnumber live ones by this factor.
_HEAP_SLACK_FACTOR = 4
_HEAP_SLACK_MIN = 1024


class _Pending:
    """One request awaiting its reply: a caller waiting on `done`, or a callback."""

    __slots__ = ("callback", "deadline_s", "done", "error", "msg_type", "result", "slots")

    def __init__(
        self,
        msg_type: int,
        deadline_s: float,
        callback: Callback | None = None,
        slots: _Slots | None = None,
    ) -> None:
        self.msg_type = msg_type
        self.deadline_s = deadline_s
        self.callback = callback
        self.slots = slots  # released when a callback request finishes
        self.done: trio.Event | None = trio.Event() if callback is None else None
        self.result: list[Value] | None = None
        self.error: DynacoreError | None = None

    def resolve(self, result: list[Value]) -> None:
        self._finish(result, None)

    def fail(self, error: DynacoreError) -> None:
        self._finish(None, error)

    def _finish(self, result: list[Value] | None, error: DynacoreError | None) -> None:
        """Called once per request: its connection removes it from `pending` first."""
        self.result, self.error = result, error
        if self.done is not None:
            self.done.set()
            return
        if self.slots is not None:
            self.slots.release()
        assert self.callback is not None
        try:
            self.callback(result, error)
        except Exception:
            log.exception("an RPC callback failed (message type %d)", self.msg_type)


class _Slots:
    """Requests in flight to one peer: `try_acquire` is free of scheduling points; `acquire`
    waits while `limit` are in flight."""

    __slots__ = ("_freed", "_waiting", "limit", "used")

    def __init__(self, limit: int) -> None:
        assert limit >= 1
        self.limit = limit
        self.used = 0
        self._waiting = 0
        self._freed = trio.Event()

    def try_acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    async def acquire(self) -> None:
        while not self.try_acquire():
            self._waiting += 1
            try:
                await self._freed.wait()
            finally:
                self._waiting -= 1

    def release(self) -> None:
        assert self.used > 0, "a slot released twice"
        self.used -= 1
        if self._waiting:
            self._freed.set()
            self._freed = trio.Event()


@dataclass(slots=True)
class ClientStats:
    connects: int = 0
    connect_failures: int = 0
    calls: int = 0
    timeouts: int = 0
    stale_replies: int = 0  # replies whose caller had given up (timeout) or unknown ids
    silent_drops: int = 0  # connections closed as half-open (see RpcClient._drop_if_silent)


class _ClientConnection:
    """One authenticated channel to a peer with its pending requests and their deadlines.

    A request costs no task and no cancel scope: its deadline goes on the connection's heap,
    and one timer task per connection fails the requests whose deadline has passed.
    """

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
        self._config = config
        self._outbox = _Outbox(limits.in_flight_per_peer, config.batch_max_messages)
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int]] = []  # a heap of (deadline_s, request id)
        self._timer: trio.CancelScope | None = None
        self._next_id = 1
        self._stats = stats
        self._reason: str | None = None  # why the connection ended (the first reason wins)
        self.last_receive_s = trio.current_time()

    def send_request(self, msg_type: int, fields: list[Value], pending: _Pending) -> int:
        """Queue a request (the caller holds one of the peer's slots); its request id."""
        if not self.alive:
            raise ConnectionLost(f"{self.address}: {self._reason or 'connection closed'}")
        request_id = self._next_id
        self._next_id += 1
        assert request_id <= m.REQUEST_ID_MAX, "request ids are u64"
        queued = self._outbox.put_nowait((msg_type, request_id, fields))
        assert queued, "the peer's slots bound the outbox"
        self._pending[request_id] = pending
        deadline_s = pending.deadline_s
        heapq.heappush(self._deadlines, (deadline_s, request_id))
        if len(self._deadlines) > _HEAP_SLACK_FACTOR * len(self._pending) + _HEAP_SLACK_MIN:
            self._deadlines = [(p.deadline_s, rid) for rid, p in self._pending.items()]
            heapq.heapify(self._deadlines)
        timer = self._timer
        if timer is not None and deadline_s < timer.deadline:
            timer.deadline = deadline_s
        return request_id

    def forget(self, request_id: int) -> None:
        """The caller stopped waiting (cancelled): a late reply counts as stale."""
        self._pending.pop(request_id, None)

    async def run(self) -> None:
        """The connection's reader, sender and timer; returns when the connection is gone."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_task, nursery.cancel_scope)
                nursery.start_soon(self._timer_task)
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

    async def _timer_task(self) -> None:
        """Sleep until the earliest deadline of a request still waiting (send_request moves
        it earlier), then expire. Entries of answered requests are dropped from the top first,
        so that the timer wakes for live deadlines only, not once per answered request."""
        while True:
            heap = self._deadlines
            while heap and heap[0][1] not in self._pending:
                heapq.heappop(heap)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            await self._expire(trio.current_time())

    async def _expire(self, now_s: float) -> None:
        """Fail every request whose deadline has passed; close a connection gone silent."""
        heap = self._deadlines
        expired = 0
        while heap and heap[0][0] <= now_s:
            _, request_id = heapq.heappop(heap)
            pending = self._pending.pop(request_id, None)
            if pending is None:
                continue  # answered (or given up) before its deadline
            expired += 1
            self._stats.timeouts += 1
            pending.fail(
                RequestTimeout(
                    f"{self.address}: no reply to message type {pending.msg_type} in time"
                )
            )
        silent_s = self._config.silent_connection_s
        if expired and self.alive and now_s - self.last_receive_s >= silent_s:
            self._stats.silent_drops += 1
            await self.aclose(f"nothing received for {silent_s} s")

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
        pending = self._pending.pop(request_id, None)
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
        pending = self._pending.pop(message[1], None)
        if pending is not None:
            pending.fail(exc)

    def _shutdown(self) -> None:
        self.alive = False
        self._outbox.close()
        reason = self._reason or "connection closed"
        pending, self._pending = self._pending, {}
        self._deadlines = []
        for request in pending.values():
            request.fail(ConnectionLost(f"{self.address}: {reason}"))

    async def aclose(self, reason: str = "client closed") -> None:
        self.alive = False
        self._note_reason(reason)
        await close_quietly(self.channel)


@dataclass(slots=True, eq=False)
class _Peer:
    address: str
    slots: _Slots
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

    def _check_timeout(self, timeout_s: float | None) -> float:
        if timeout_s is None or timeout_s == self._limits.request_timeout_s:
            return self._limits.request_timeout_s  # checked by Limits (the common case)
        timeout = timeout_s
        if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise ConfigError(f"timeout_s must be in (0, 3600], got {timeout_s!r}")
        return timeout

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
        timeout = self._check_timeout(timeout_s)
        peer = self._peer(address)
        self.stats.calls += 1
        deadline_s = trio.current_time() + timeout
        conn = peer.conn
        if conn is None or not conn.alive or not peer.slots.try_acquire():
            conn = await self._slot_and_connection(peer, deadline_s, msg_type, timeout)
        try:
            pending = _Pending(msg_type, deadline_s)
            assert pending.done is not None
            request_id = conn.send_request(msg_type, list(fields), pending)
            try:
                await pending.done.wait()
            finally:
                conn.forget(request_id)
        finally:
            peer.slots.release()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def call_soon(
        self,
        address: str,
        msg_type: int,
        fields: Sequence[Value],
        timeout_s: float | None,
        on_done: Callback,
    ) -> bool:
        """Send one request without waiting, when the peer's connection is up and one of its
        slots is free: `on_done(result, error)` is then called exactly once, later, from this
        client's tasks (the error as `call` would raise it). False when it cannot send now
        (nothing was sent; `call` from a task connects and waits)."""
        m.check_request_type(msg_type)
        timeout = self._check_timeout(timeout_s)
        peer = self._peers.get(address)
        if self._closed or peer is None:
            return False
        conn = peer.conn
        if conn is None or not conn.alive or not peer.slots.try_acquire():
            return False
        self.stats.calls += 1
        pending = _Pending(msg_type, trio.current_time() + timeout, on_done, peer.slots)
        try:
            conn.send_request(msg_type, list(fields), pending)
        except BaseException:
            peer.slots.release()
            raise
        return True

    async def _slot_and_connection(
        self, peer: _Peer, deadline_s: float, msg_type: int, timeout_s: float
    ) -> _ClientConnection:
        """The slow path of `call`: wait for a slot and a connection until the deadline."""
        with trio.move_on_at(deadline_s):
            await peer.slots.acquire()
            try:
                return await self._connection(peer)
            except BaseException:
                peer.slots.release()
                raise
        self.stats.timeouts += 1
        await self._drop_if_silent(peer)
        raise RequestTimeout(
            f"{peer.address}: no reply to message type {msg_type} within {timeout_s} s"
        )

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

    def can_call_soon(self, address: str) -> bool:
        """True when `call_soon(address, ...)` would send now (connected, a slot free)."""
        peer = self._peers.get(address)
        if self._closed or peer is None or peer.conn is None or not peer.conn.alive:
            return False
        return peer.slots.used < peer.slots.limit

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
            peer = _Peer(address, _Slots(self._limits.in_flight_per_peer))
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
    """One authenticated connection: a reader (which runs inline handlers itself), a sender
    and up to N handler tasks."""

    def __init__(
        self,
        channel: Channel,
        peer_id: str,
        handler: Handler,
        inline: Mapping[int, InlineHandler],
        deferred: Mapping[int, DeferredHandler],
        config: NetConfig,
        stats: ServerStats,
    ) -> None:
        concurrency = config.handler_concurrency_per_connection
        self._channel = channel
        self._peer_id = peer_id
        self._handler = handler
        self._inline = inline
        self._deferred = deferred
        self._stats = stats
        self._slots = _Slots(concurrency)
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
            inline = self._inline.get(msg_type)
            if inline is not None:
                reply = self._inline_reply(inline, msg_type, request_id, fields)
                if not self._outbox.put_nowait(reply):
                    await self._outbox.put(reply)
            elif m.is_node_type(msg_type):
                if not self._slots.try_acquire():
                    await self._slots.acquire()
                deferred = self._deferred.get(msg_type)
                if deferred is None or not self._start_deferred(
                    deferred, msg_type, request_id, fields
                ):
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
        except Exception as exc:
            return self._handler_error(msg_type, request_id, exc)
        return self._result(request_id, result)

    def _start_deferred(
        self, deferred: DeferredHandler, msg_type: int, request_id: int, fields: list[Value]
    ) -> bool:
        """Start a deferred handler (holding one handler slot until it responds)."""
        answered = False

        def respond(outcome: list[Value] | Exception) -> None:
            nonlocal answered
            assert not answered, "a deferred handler responded twice"
            answered = True
            self._slots.release()
            if isinstance(outcome, Exception):
                message = self._handler_error(msg_type, request_id, outcome)
            else:
                message = self._result(request_id, outcome)
            # The slots bound these replies; a closed connection drops them.
            self._outbox.put_nowait(message, force=True)

        try:
            started = deferred(fields, self._peer_id, respond)
        except Exception as exc:
            if not answered:
                respond(exc)
            return True
        assert started or not answered, "a deferred handler responded but said it had not started"
        return started

    def _inline_reply(
        self, inline: InlineHandler, msg_type: int, request_id: int, fields: list[Value]
    ) -> Message:
        try:
            result = inline(fields, self._peer_id)
        except Exception as exc:
            return self._handler_error(msg_type, request_id, exc)
        return self._result(request_id, result)

    def _handler_error(self, msg_type: int, request_id: int, exc: Exception) -> Message:
        self._stats.handler_errors += 1
        if not isinstance(exc, DynacoreError):
            log.error(
                "handler failed on message type %d from %s",
                msg_type,
                self._peer_id,
                exc_info=exc,
            )
        return m.error(request_id, exc)

    def _result(self, request_id: int, result: object) -> Message:
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
        inline_handlers: Mapping[int, InlineHandler] | None = None,
        deferred_handlers: Mapping[int, DeferredHandler] | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; `task_status.started(bound_address)` once listening.

        `inline_handlers[msg_type]` answers that type in the connection's reader, without a
        task (for quick synchronous answers); `deferred_handlers[msg_type]` may start answering
        that type without a task (see DeferredHandler); every other goes to `handler`.
        """
        inline = dict(inline_handlers or {})
        deferred = dict(deferred_handlers or {})
        for msg_type in [*inline, *deferred]:
            if not m.is_node_type(msg_type):
                raise ConfigError(f"a fast handler for {msg_type}, not a node message type")

        async def on_channel(channel: Channel) -> None:
            await self._serve_connection(channel, handler, inline, deferred)

        await transport.serve(address, on_channel, task_status=task_status)

    async def _serve_connection(
        self,
        channel: Channel,
        handler: Handler,
        inline: Mapping[int, InlineHandler],
        deferred: Mapping[int, DeferredHandler],
    ) -> None:
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
                connection = _ServerConnection(
                    channel, peer_id, handler, inline, deferred, self._config, self.stats
                )
                await connection.run()
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
