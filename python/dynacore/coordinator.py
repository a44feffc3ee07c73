"""Dynamo's quorum logic over RPC: coordinated put/delete (new dot, local durable write, fan-out,
w acks), get (r replies merged, read repair in the background), forwarding to a preference-list
node, and the replica side (REPLICA_PUT / REPLICA_GET). The node wires it; everything it needs
(rpc, storage, membership, clock, actor id, limits, a nursery for background work) is handed in.

Fast paths: replica reads and writes go out by RPC callbacks (`_call_soon`) rather than one task
each, and `get_soon` / `put_soon` run a whole client request from callbacks (the node's deferred
handlers). Each falls back to the task path whenever a connection, a slot or the commit queue is
not ready, so both paths have the same outcomes.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from dynacore import messages, objects
from dynacore._backend import versions
from dynacore.config import QuorumSpec, resolve_quorum
from dynacore.errors import (
    AuthError,
    ConnectionLost,
    DynacoreError,
    ProtocolError,
    QuorumNotMet,
    RequestTimeout,
    TooManySiblings,
    Unavailable,
)
from dynacore.limits import Limits
from dynacore.membership import Membership
from dynacore.net.messages import Value
from dynacore.net.rpc import RpcClient
from dynacore.readbatch import ReadBatcher

log = logging.getLogger(__name__)

DATA_DB = "data"
READ_REPAIR_MAX_IN_FLIGHT = 256  # read repairs beyond this are skipped (anti-entropy catches up)
FRAME_HEADROOM_BYTES = 16 * 1024  # frame header and the other fields of a reply carrying a set
BACKGROUND_MAX_TASKS = 8192  # replica sends and read gathers in flight; more make callers wait
PEER_RETRY_AFTER_S = 2.0  # a peer marked down is tried again (first in line) after this long
FORWARD_TIMEOUT_FACTOR = 2.0  # a forwarded put waits for the remote coordinator's own timeout
UNREACHABLE = (ConnectionLost, RequestTimeout, OSError)  # the peer may be down: try another

Update = Callable[[bytes | None], bytes | None]
T = TypeVar("T")
_SET_OR_NONE = (bytes, type(None))  # a REPLICA_GET reply's field
Fallback = Callable[[str, bytes, bytes, set[str], bool], Awaitable[bool]]
"""Sloppy quorum (cluster/hints.py): (down replica, stored key, set, fallbacks used by this put,
whether the replica itself was tried) -> True when the write is durable on a node that counts
toward w (a fallback with a hint, or the replica after all)."""


class Clock(Protocol):
    """Wall-clock milliseconds for envelope timestamps and expiry (virtual in the simulator)."""

    def now_ms(self) -> int: ...


class Store(Protocol):
    """The part of storage.Engine the coordinator uses."""

    def get(self, db: str, key: bytes) -> bytes | None: ...

    def get_many(self, db: str, keys: Sequence[bytes]) -> list[bytes | None]: ...

    async def update(self, db: str, key: bytes, fn: Update) -> bytes | None: ...

    def update_soon(
        self,
        db: str,
        key: bytes,
        fn: Update,
        on_done: Callable[[bytes | None, Exception | None], None],
    ) -> bool: ...


class PeerHealth:
    """Up/down of peers as seen from recent RPC outcomes. Only steers routing, never ownership."""

    def __init__(self, retry_after_s: float = PEER_RETRY_AFTER_S) -> None:
        assert retry_after_s > 0
        self._retry_after_s = retry_after_s
        self._down_since: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._known: set[str] = set()

    def mark_ok(self, node: str) -> None:
        self._known.add(node)
        self._down_since.pop(node, None)
        self._retry_at.pop(node, None)

    def mark_failed(self, node: str) -> None:
        self._known.add(node)
        now = trio.current_time()
        self._down_since.setdefault(node, now)
        self._retry_at[node] = now + self._retry_after_s

    def is_up(self, node: str) -> bool:
        """False while a recent call to `node` failed; True again retry_after_s after the last
        failure."""
        retry_at = self._retry_at.get(node)
        return retry_at is None or trio.current_time() >= retry_at

    def try_probe(self, node: str) -> bool:
        """Whether a background request may go to `node` now: yes when it is up; when it is
        down, yes for one caller per retry_after_s (the probe), so that a stream of writes does
        not queue one doomed request per write behind a dead peer."""
        if not self.is_up(node):
            return False
        if node in self._down_since:
            self._retry_at[node] = trio.current_time() + self._retry_after_s
        return True

    def is_down(self, node: str) -> bool:
        return node in self._down_since

    def order(self, nodes: Sequence[str]) -> list[str]:
        """`nodes` with the ones believed up first, each group in its original order."""
        if not self._down_since:
            return list(nodes)
        return [n for n in nodes if self.is_up(n)] + [n for n in nodes if not self.is_up(n)]


@dataclass
class _Acks:
    """Durable acks of one put; `settled` fires once w is reached or every replica answered
    (so that a failure reports every ack that came in time)."""

    required: int
    pending: int
    count: int = 0
    settled: trio.Event = field(default_factory=trio.Event)
    on_settled: Callable[[], None] | None = None
    deadline_s: float = math.inf  # trio time by which the put answers
    fallbacks: set[str] = field(default_factory=set)  # nodes holding a hint of this put

    def add(self) -> None:
        self.count += 1
        self._step()

    def fail(self) -> None:
        self._step()

    def _step(self) -> None:
        self.pending -= 1
        assert self.pending >= 0
        if (self.count >= self.required or self.pending == 0) and not self.settled.is_set():
            self.settled.set()
            on_settled, self.on_settled = self.on_settled, None  # (it refers back: a cycle)
            if on_settled is not None:
                on_settled()

    def outcome(self) -> QuorumNotMet | None:
        """None once w acked; else the error that says how many did."""
        if self.count >= self.required:
            return None
        return QuorumNotMet(
            f"put: {self.count} of the {self.required} required replicas acknowledged in time",
            acked=self.count,
            required=self.required,
        )


@dataclass
class _Gather:
    """Replies of one read; `settled` fires once r replied or every replica answered, and
    `on_complete(replies)` runs once every replica answered or failed (read repair)."""

    required: int
    pending: int
    replies: dict[str, bytes | None] = field(default_factory=dict)
    settled: trio.Event = field(default_factory=trio.Event)
    on_settled: Callable[[], None] | None = None
    on_complete: Callable[[dict[str, bytes | None]], None] | None = None

    def reply(self, node: str, value: bytes | None) -> None:
        self.replies[node] = value
        self._step()

    def fail(self) -> None:
        self._step()

    def _step(self) -> None:
        self.pending -= 1
        assert self.pending >= 0
        settling = len(self.replies) >= self.required or self.pending == 0
        if settling and not self.settled.is_set():
            self.settled.set()
            on_settled, self.on_settled = self.on_settled, None  # (it refers back: a cycle)
            if on_settled is not None:
                on_settled()
        if self.pending == 0 and self.on_complete is not None:
            on_complete, self.on_complete = self.on_complete, None
            on_complete(self.replies)


def _report(
    on_done: Callable[[T, Exception | None], None],
    outcome: Callable[[], tuple[T, Exception | None]],
) -> None:
    """on_done(*outcome()), or on_done(None, error) when computing the outcome raised: a
    callback chain must always answer."""
    try:
        result, error = outcome()
    except Exception as exc:
        on_done(None, exc)  # type: ignore[arg-type]  # T is always an Optional here
        return
    on_done(result, error)


def _next_context(new_set: bytes, context: bytes) -> bytes:
    """The context a put returns: one covering the write, or the one sent when the write left
    siblings (read to see and resolve them)."""
    return versions.join(new_set) if versions.size(new_set) == 1 else context


def _read_outcome(gather: _Gather) -> tuple[bytes | None, QuorumNotMet | None]:
    """The merged set of a settled read, or the error when too few replicas answered."""
    replies = list(gather.replies.values())
    if len(replies) < gather.required:
        error = QuorumNotMet(
            f"get: {len(replies)} of the {gather.required} required replicas answered in time",
            acked=len(replies),
            required=gather.required,
        )
        return None, error
    return merge_sets(replies), None


def merge_sets(sets: Sequence[bytes | None]) -> bytes | None:
    """The sync of every present set, or None when all are absent."""
    present = [s for s in sets if s is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else versions.sync_many(present)


class Coordinator:
    """Quorum reads and writes for one node."""

    def __init__(
        self,
        *,
        node_id: str,
        actor_id: str,
        membership: Membership,
        rpc: RpcClient,
        store: Store,
        clock: Clock,
        limits: Limits,
        background: trio.Nursery,
        default_r: QuorumSpec = "quorum",
        default_w: QuorumSpec = "quorum",
        health: PeerHealth | None = None,
    ) -> None:
        self.node_id = node_id
        self.actor_id = actor_id
        self.membership = membership  # replaced as a whole when the view changes
        self._rpc = rpc
        self._store = store
        self._clock = clock
        self._limits = limits
        self._background = background
        self._default_r = default_r
        self._default_w = default_w
        self.health = health if health is not None else PeerHealth()
        self._repairs = trio.CapacityLimiter(READ_REPAIR_MAX_IN_FLIGHT)
        self._tasks = trio.CapacityLimiter(BACKGROUND_MAX_TASKS)
        # hooks of cluster/hints.py (sloppy quorum) and cluster/reaper.py (see counter_floor)
        self.fallback: Fallback | None = None
        # feat/perf: batches this node's replica reads per peer (readbatch.py; set by the node)
        self.read_batcher: ReadBatcher | None = None
        self.counter_floor: Callable[[], int] = lambda: 0

    @property
    def timeout_s(self) -> float:
        return self._limits.request_timeout_s

    # -- put / delete ----------------------------------------------------------------------------

    async def put(
        self,
        namespace: str,
        key: bytes,
        value: bytes | None,
        context: bytes,
        *,
        w: QuorumSpec | None = None,
        ttl_ms: int = 0,
        forwarded: bool = False,
    ) -> bytes:
        """Store `value` (None: a tombstone) with the client's context; the context to use next.

        The returned context covers the new write; when the write left siblings it is the
        context that was sent (read to see and resolve them), so that no sibling the client has
        not seen can be overwritten with it.
        """
        stored_key, pref, required = self._write_plan(namespace, key, value, context, w, ttl_ms)
        if self.node_id not in pref:
            if forwarded:
                raise Unavailable(f"{self.node_id} got a forwarded put it does not replicate")
            return await self._forward(pref, namespace, key, value, context, w, ttl_ms)
        put_fn = self._put_fn(context, self._envelope(value, ttl_ms))
        new_set = await self._store.update(DATA_DB, stored_key, put_fn)
        assert new_set is not None
        await self._replicate(stored_key, new_set, [p for p in pref if p != self.node_id], required)
        return _next_context(new_set, context)

    def put_soon(
        self,
        namespace: str,
        key: bytes,
        value: bytes | None,
        context: bytes,
        w: QuorumSpec | None,
        ttl_ms: int,
        on_done: Callable[[bytes | None, Exception | None], None],
    ) -> bool:
        """`put` without a task, when this node replicates the key, every other replica's
        connection is up and the commit queue has room: `on_done(next_context, error)` follows
        (error: what `put` would raise). False when it cannot start so (nothing was done)."""
        stored_key, pref, required = self._write_plan(namespace, key, value, context, w, ttl_ms)

        def settled(new_set: bytes | None, error: Exception | None) -> None:
            if new_set is None:
                on_done(None, error)
                return
            _report(on_done, lambda: (_next_context(new_set, context), error))

        put_fn = self._put_fn(context, self._envelope(value, ttl_ms))
        return self._write_soon(stored_key, pref, required, put_fn, settled)

    def apply_soon(
        self,
        namespace: str,
        key: bytes,
        fn: Update,
        w: QuorumSpec | None,
        on_done: Callable[[bytes | None, Exception | None], None],
    ) -> bool:
        """`apply` without a task, on the same conditions as `put_soon`: `on_done(new_set,
        error)` follows (error: what `apply` would raise). False when it cannot start so."""
        if not self.replicates(namespace, key, any_owner=True):
            return False
        stored_key = objects.object_key(namespace, key)
        n = self.membership.n_for(namespace)
        pref = self.membership.preference_list(stored_key, n)
        required = resolve_quorum(w, min(len(pref), n), default=self._default_w)
        return self._write_soon(stored_key, pref, required, fn, on_done)

    def _write_soon(
        self,
        stored_key: bytes,
        pref: Sequence[str],
        required: int,
        fn: Update,
        on_done: Callable[[bytes | None, Exception | None], None],
    ) -> bool:
        """Run `fn` on the stored set in the next group commit, then replicate the new set to
        the other replicas by `call_soon`; `on_done(new_set, error)` once `required` durable
        acks came in or every replica answered (new_set None when the local commit failed).
        False when it cannot start so: this node is not in `pref`, a peer's connection is not
        ready, or the commit queue is full (nothing was done)."""
        peers = [p for p in pref if p != self.node_id]
        if len(peers) == len(pref) or not all(self._can_call_soon(p) for p in peers):
            return False

        def committed(new_set: bytes | None, error: Exception | None) -> None:
            if error is not None:
                on_done(None, error)
                return
            assert new_set is not None, "a write leaves a version set"
            deadline_s = trio.current_time() + self.timeout_s
            acks = _Acks(required, len(peers) + 1, deadline_s=deadline_s)
            acks.on_settled = lambda: on_done(new_set, acks.outcome())
            acks.add()  # the local durable commit
            for peer in peers:
                try:
                    sent = self._replica_put_soon(peer, stored_key, new_set, acks)
                except DynacoreError as exc:  # e.g. the peer left the view meanwhile
                    log.warning("replica put to %s failed: %r", peer, exc)
                    acks.fail()
                    continue
                if not sent:
                    remote = self._replica_put_bounded
                    self._in_background(acks.fail, remote, peer, stored_key, new_set, acks)

        return self._store.update_soon(DATA_DB, stored_key, fn, committed)

    def _in_background(
        self, refused: Callable[[], None], fn: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        """Start fn(*args) (a replica request) in a background task, from a callback: no waiting
        for a task slot; when every slot is taken, `refused()` instead (the peer counts as
        failed; read repair and anti-entropy catch up)."""
        token = object()
        try:
            self._tasks.acquire_on_behalf_of_nowait(token)
        except trio.WouldBlock:
            log.warning("replica request skipped: %d tasks running", BACKGROUND_MAX_TASKS)
            refused()
            return
        self._background.start_soon(self._run_released, token, fn, *args)

    def _write_plan(
        self,
        namespace: str,
        key: bytes,
        value: bytes | None,
        context: bytes,
        w: QuorumSpec | None,
        ttl_ms: int,
    ) -> tuple[bytes, tuple[str, ...], int]:
        """Check a write; its stored key, preference list and required acks."""
        objects.check_sizes(key, value, self._limits)
        if ttl_ms < 0:
            raise ProtocolError(f"ttl must not be negative, got {ttl_ms} ms")
        if context:
            versions.vv_to(context)  # VersionError when malformed, before anything is written
        stored_key = objects.object_key(namespace, key)
        n = self.membership.n_for(namespace)
        pref = self.membership.preference_list(stored_key, n)  # + pending owners in a handoff
        required = resolve_quorum(w, min(len(pref), n), default=self._default_w)
        return stored_key, pref, required

    def _envelope(self, value: bytes | None, ttl_ms: int) -> bytes:
        now_ms = self._clock.now_ms()
        return objects.encode_envelope(
            value or b"",
            timestamp_ms=now_ms,
            expiry_ms=now_ms + ttl_ms if ttl_ms else 0,
            tombstone=value is None,
        )

    def _put_fn(self, context: bytes, envelope: bytes) -> Update:
        actor, limits, floor = self.actor_id, self._limits, self.counter_floor
        max_set_bytes = limits.frame_size_bytes - FRAME_HEADROOM_BYTES - limits.key_size_bytes

        def apply(old: bytes | None) -> bytes:
            base = old if old is not None else versions.empty()
            ctx = context or versions.vv_empty()
            if old is None and floor() > 0:  # never reissue a dot of a reaped object
                ctx = versions.vv_merge(ctx, versions.vv_from([(actor, floor())]))
            new = versions.update(base, ctx, envelope, actor)
            siblings = versions.size(new)
            if siblings > limits.siblings_max:
                raise TooManySiblings(
                    f"the write would leave {siblings} siblings (limit {limits.siblings_max}); "
                    "read the key and write back with its context to resolve them"
                )
            if len(new) > max_set_bytes:  # it could no longer travel in one frame
                raise TooManySiblings(
                    f"the write would leave {siblings} siblings of {len(new)} bytes in all, more "
                    f"than a frame carries ({max_set_bytes}); resolve them with the read context"
                )
            if siblings > limits.siblings_warn:
                log.warning("key has %d siblings (warn at %d)", siblings, limits.siblings_warn)
            return new

        return apply

    async def _replicate(
        self, stored_key: bytes, new_set: bytes, peers: list[str], required: int
    ) -> None:
        acks = _Acks(required, len(peers) + 1, deadline_s=trio.current_time() + self.timeout_s)
        acks.add()  # the local durable commit
        slow = [p for p in peers if not self._replica_put_soon(p, stored_key, new_set, acks)]
        with trio.move_on_at(acks.deadline_s):
            for peer in slow:
                await self._spawn(self._replica_put_remote, peer, stored_key, new_set, acks)
            await acks.settled.wait()
        error = acks.outcome()
        if error is not None:
            raise error

    def _replica_put_soon(self, peer: str, stored_key: bytes, new_set: bytes, acks: _Acks) -> bool:
        """REPLICA_PUT without a task when the peer's connection is up and the peer is not
        believed down (else False: `_replica_put_remote` probes it or takes a fallback). A
        failed send still gets its sloppy-quorum fallback, from a background task."""
        if self.fallback is not None and self.health.is_down(peer):
            return False

        def done(reply: list[Value] | None) -> None:
            if reply is not None:
                acks.add()
            elif self.fallback is not None:
                self._in_background(acks.fail, self._fallback_put, peer, stored_key, new_set, acks)
            else:
                acks.fail()

        return self._call_soon(peer, messages.REPLICA_PUT, [stored_key, new_set], done)

    async def _fallback_put(
        self, peer: str, stored_key: bytes, new_set: bytes, acks: _Acks
    ) -> None:
        """Background: the sloppy-quorum fallback of a replica put that failed, by the put's
        deadline (as inside `_replicate`'s scope), else the peer counts as failed."""
        assert self.fallback is not None
        stored = False
        with trio.move_on_at(acks.deadline_s):
            try:
                stored = await self.fallback(peer, stored_key, new_set, acks.fallbacks, True)
            except DynacoreError as exc:
                log.warning("fallback for %s failed: %r", peer, exc)
        if stored:
            acks.add()
        else:
            acks.fail()

    async def _replica_put_bounded(
        self, peer: str, stored_key: bytes, new_set: bytes, acks: _Acks
    ) -> None:
        """Background: `_replica_put_remote` by the put's deadline, else the peer counts as
        failed (so that a put answered from callbacks answers by its timeout)."""
        counted = False
        with trio.move_on_at(acks.deadline_s):
            await self._replica_put_remote(peer, stored_key, new_set, acks)
            counted = True  # it counted the peer in `acks` (no scheduling point since)
        if not counted:
            acks.fail()

    def _can_call_soon(self, peer: str) -> bool:
        """True when `_call_soon(peer, ...)` would send now."""
        address = self.membership.addresses.get(peer)
        return address is not None and self._rpc.can_call_soon(address)

    def _call_soon(
        self,
        peer: str,
        msg_type: int,
        fields: list[Value],
        done: Callable[[list[Value] | None], None],
    ) -> bool:
        """One RPC to a peer without a task, when its connection is up and has room (else
        False: use `_call` from a task). `done(reply)` follows, with None when the peer could
        not be reached or answered with an error (health updated as by `_call`)."""
        if peer == self.node_id or peer not in self.membership.addresses:
            return False

        def on_done(reply: list[Value] | None, error: DynacoreError | None) -> None:
            if error is None:
                self.health.mark_ok(peer)
            elif isinstance(error, (*UNREACHABLE, AuthError)):
                log.debug("%s -> %s type %d: %r", self.node_id, peer, msg_type, error)
                self.health.mark_failed(peer)
            else:
                log.warning("%s -> %s type %d failed: %r", self.node_id, peer, msg_type, error)
            done(reply)

        address = self.membership.addresses[peer]
        return self._rpc.call_soon(address, msg_type, fields, self.timeout_s, on_done)

    async def _replica_put_remote(
        self, peer: str, stored_key: bytes, new_set: bytes, acks: _Acks | None
    ) -> None:
        """Background: one REPLICA_PUT; a failure is logged (the peer is behind, not the write)."""
        tried = True
        try:
            if peer == self.node_id:
                await self.replica_put(stored_key, new_set)
                reply: list[Value] | None = []
            elif self.fallback is not None and acks is not None and not self.health.try_probe(peer):
                reply, tried = None, False  # believed down: straight to a sloppy-quorum fallback
            else:
                fields = [stored_key, new_set]
                reply = await self._call(peer, messages.REPLICA_PUT, fields, self.timeout_s)
        except DynacoreError as exc:
            log.warning("replica put to %s failed: %r", peer, exc)
            reply = None
        if acks is None:
            return
        if reply is None and self.fallback is not None:
            stored = await self.fallback(peer, stored_key, new_set, acks.fallbacks, tried)
            reply = [] if stored else None
        if reply is None:
            acks.fail()
        else:
            acks.add()

    async def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start fn(*args) in the node's background nursery; waits while BACKGROUND_MAX_TASKS
        are running (backpressure instead of unbounded growth behind a slow peer)."""
        token = object()
        await self._tasks.acquire_on_behalf_of(token)
        self._background.start_soon(self._run_released, token, fn, *args)

    async def _run_released(
        self, token: object, fn: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        try:
            await fn(*args)
        finally:
            self._tasks.release_on_behalf_of(token)

    async def _forward(
        self,
        pref: Sequence[str],
        namespace: str,
        key: bytes,
        value: bytes | None,
        context: bytes,
        w: QuorumSpec | None,
        ttl_ms: int,
    ) -> bytes:
        if value is None:
            msg_type = messages.CLIENT_DELETE
            fields: list[Value] = [namespace, key, context, w, True]
        else:
            msg_type = messages.CLIENT_PUT
            fields = [namespace, key, value, context, w, ttl_ms, True]
        timeout_s = self.timeout_s * FORWARD_TIMEOUT_FACTOR
        for peer in self.health.order(pref):
            reply = await self._call(peer, msg_type, fields, timeout_s)
            if reply is not None:
                return _single_bytes(reply, "put reply")
        raise Unavailable(f"no node of the preference list {list(pref)} could take the write")

    async def _call(
        self, peer: str, msg_type: int, fields: Sequence[Value], timeout_s: float
    ) -> list[Value] | None:
        """One RPC to a peer; None when the peer could not be reached (health updated).
        Typed errors from the peer (limits, quorum, storage) propagate."""
        try:
            reply = await self._rpc.call(
                self.membership.address_of(peer), msg_type, fields, timeout_s
            )
        except (*UNREACHABLE, AuthError) as exc:  # a peer with another secret counts as down
            log.debug("%s -> %s type %d: %r", self.node_id, peer, msg_type, exc)
            self.health.mark_failed(peer)
            return None
        self.health.mark_ok(peer)
        return reply

    # -- custom writes (the embedded cache's set/delete/incr, see cachewrite.py) -----------------

    def replicates(self, namespace: str, key: bytes, *, any_owner: bool = False) -> bool:
        """True when this node holds all of the key's partition: it is in the key's read list
        (during a handoff a new owner is not, until its partition is confirmed), so that a
        custom write applied here sees every value the key has. With any_owner, True for any
        node writes go to (a forwarded request: the sender's view may be a step ahead)."""
        stored_key = objects.object_key(namespace, key)
        n = self.membership.n_for(namespace)
        if any_owner:
            return self.node_id in self.membership.preference_list(stored_key, n)
        return self.node_id in self.membership.read_list(stored_key, n)

    async def apply(
        self, namespace: str, key: bytes, fn: Update, *, w: QuorumSpec | None = None
    ) -> bytes:
        """Run `fn` on the stored set of a key this node replicates, inside the write transaction,
        then replicate the new set as a put does (to the whole write list, w durable acks); the
        new set. Unavailable when this node is not among the key's owners (forward the request
        instead)."""
        if not self.replicates(namespace, key, any_owner=True):
            raise Unavailable(f"{self.node_id} does not replicate this key")
        stored_key = objects.object_key(namespace, key)
        n = self.membership.n_for(namespace)
        pref = self.membership.preference_list(stored_key, n)
        required = resolve_quorum(w, min(len(pref), n), default=self._default_w)
        new_set = await self._store.update(DATA_DB, stored_key, fn)
        assert new_set is not None, "a custom write must leave a version set"
        await self._replicate(stored_key, new_set, [p for p in pref if p != self.node_id], required)
        return new_set

    async def forward(
        self, namespace: str, key: bytes, msg_type: int, fields: Sequence[Value], *, retry: bool
    ) -> list[Value]:
        """Send a request to the key's read list (the nodes that replicate it, see
        `replicates`), healthy nodes first, until one answers. With retry=False (a request that
        must not run twice) only the first node is tried."""
        stored_key = objects.object_key(namespace, key)
        pref = self.membership.read_list(stored_key, self.membership.n_for(namespace))
        order = self.health.order(pref)
        for peer in order if retry else order[:1]:
            timeout_s = self.timeout_s * FORWARD_TIMEOUT_FACTOR
            reply = await self._call(peer, msg_type, fields, timeout_s)
            if reply is not None:
                return reply
        raise Unavailable(f"no node of the preference list {list(pref)} could take the request")

    # -- get ---------------------------------------------------------------------------------------

    async def get(self, namespace: str, key: bytes, *, r: QuorumSpec | None = None) -> bytes | None:
        """The merged version set of at least r replicas (None: absent everywhere that answered)."""
        stored_key, pref, gather = self._read_plan(namespace, key, r)
        # As in _replicate: only the reads that wait for a task need a cancel scope.
        slow = [node for node in pref if not self._read_one_soon(node, stored_key, gather)]
        if not slow:
            await gather.settled.wait()
        else:
            with trio.move_on_after(self.timeout_s):
                for node in slow:
                    await self._spawn(self._read_one, node, stored_key, gather)
                await gather.settled.wait()
        merged, error = _read_outcome(gather)
        if error is not None:
            raise error
        return merged

    def get_soon(
        self,
        namespace: str,
        key: bytes,
        r: QuorumSpec | None,
        on_done: Callable[[bytes | None, Exception | None], None],
    ) -> bool:
        """`get` without a task, when every remote replica's connection is up and has room:
        `on_done(merged, error)` follows (error: what `get` would raise). False when it
        cannot start so (nothing was sent: use `get`)."""
        stored_key, pref, gather = self._read_plan(namespace, key, r)
        for node in pref:
            if node != self.node_id and not self._can_call_soon(node):
                return False
        gather.on_settled = lambda: _report(on_done, lambda: _read_outcome(gather))
        for node in pref:
            sent = self._read_one_soon(node, stored_key, gather)
            assert sent, "checked just before, with no scheduling point in between"
        return True

    def _read_plan(
        self, namespace: str, key: bytes, r: QuorumSpec | None
    ) -> tuple[bytes, tuple[str, ...], _Gather]:
        """The stored key, the replicas to ask, and the gather of their replies."""
        objects.check_sizes(key, None, self._limits)
        stored_key = objects.object_key(namespace, key)
        pref = self.membership.read_list(stored_key, self.membership.n_for(namespace))
        required = resolve_quorum(r, len(pref), default=self._default_r)
        gather = _Gather(required=required, pending=len(pref))
        gather.on_complete = functools.partial(self._repair_if_stale, stored_key)
        return stored_key, pref, gather

    def _read_one_soon(self, node: str, stored_key: bytes, gather: _Gather) -> bool:
        """The local replica's set into `gather` at once, a remote one's by REPLICA_GET without
        a task when its connection is up; False when a task must do it (`_read_one`)."""
        if node == self.node_id:
            try:
                gather.reply(node, self.replica_get(stored_key))
            except DynacoreError as exc:
                log.warning("replica get from %s failed: %r", node, exc)
                gather.fail()
            return True

        def done(reply: list[Value] | None) -> None:
            if reply is None or len(reply) != 1 or not isinstance(reply[0], _SET_OR_NONE):
                gather.fail()
            else:
                gather.reply(node, reply[0])

        if self.read_batcher is not None and self._can_call_soon(node):
            self.read_batcher.add(node, stored_key, done)  # leaves with this tick's other reads
            return True
        return self._call_soon(node, messages.REPLICA_GET, [stored_key], done)

    def read_single(
        self, node: str, stored_key: bytes, done: Callable[[list[Value] | None], None]
    ) -> None:
        """One REPLICA_GET for a read a batch did not carry: by callback, else from a background
        task (`done(None)` when every task slot is taken)."""
        if self._call_soon(node, messages.REPLICA_GET, [stored_key], done):
            return
        self._in_background(lambda: done(None), self._read_single_task, node, stored_key, done)

    async def _read_single_task(
        self, node: str, stored_key: bytes, done: Callable[[list[Value] | None], None]
    ) -> None:
        try:
            reply = await self._call(node, messages.REPLICA_GET, [stored_key], self.timeout_s)
        except DynacoreError as exc:
            log.warning("replica get from %s failed: %r", node, exc)
            reply = None
        done(reply)

    async def _read_one(self, node: str, stored_key: bytes, gather: _Gather) -> None:
        """Background: one replica's stored set into `gather`; any failure counts as no reply."""
        try:
            if node == self.node_id:
                gather.reply(node, self.replica_get(stored_key))
                return
            reply = await self._call(node, messages.REPLICA_GET, [stored_key], self.timeout_s)
        except DynacoreError as exc:
            log.warning("replica get from %s failed: %r", node, exc)
            gather.fail()
            return
        if reply is None or len(reply) != 1 or not isinstance(reply[0], _SET_OR_NONE):
            gather.fail()
            return
        gather.reply(node, reply[0])

    def _repair_if_stale(self, stored_key: bytes, replies: dict[str, bytes | None]) -> None:
        """Once every replica answered (or failed): start a read repair of the stale ones."""
        merged = merge_sets(list(replies.values()))
        if merged is None:
            return
        stale = [node for node, value in replies.items() if value != merged]
        if not stale:
            return
        token = object()
        try:
            self._repairs.acquire_on_behalf_of_nowait(token)
        except trio.WouldBlock:
            log.info("read repair skipped: %d repairs in flight", READ_REPAIR_MAX_IN_FLIGHT)
            return
        self._background.start_soon(self._read_repair, stored_key, merged, stale, token)

    async def _read_repair(
        self, stored_key: bytes, merged: bytes, stale: list[str], token: object
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for node in stale:
                    nursery.start_soon(self._replica_put_remote, node, stored_key, merged, None)
        finally:
            self._repairs.release_on_behalf_of(token)

    # -- replica side ------------------------------------------------------------------------------

    async def replica_put(self, stored_key: bytes, incoming: bytes) -> None:
        """Merge an incoming set into the stored one; returns once durable."""
        await self._store.update(DATA_DB, stored_key, _merge_fn(incoming))

    def replica_put_soon(
        self, stored_key: bytes, incoming: bytes, on_done: Callable[[Exception | None], None]
    ) -> bool:
        """`replica_put` without a task when the commit queue has room (else False): on_done
        (None, or the error) once durable or failed."""
        merge = _merge_fn(incoming)
        return self._store.update_soon(
            DATA_DB, stored_key, merge, lambda _result, error: on_done(error)
        )

    def replica_get(self, stored_key: bytes) -> bytes | None:
        return self._store.get(DATA_DB, stored_key)

    def replica_get_many(self, stored_keys: Sequence[bytes]) -> list[bytes | None]:
        return self._store.get_many(DATA_DB, stored_keys)


def _merge_fn(incoming: bytes) -> Update:
    """The update that syncs an incoming set into the stored one; VersionError at once for a
    malformed set, before anything is written."""
    versions.size(incoming)

    def merge(old: bytes | None) -> bytes:
        return incoming if old is None else versions.sync(old, incoming)

    return merge


def exception_leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every non-group exception inside `group`, depth first (to unwrap a nursery's group
    that merely carries the caller's own error)."""
    out: list[BaseException] = []
    for inner in group.exceptions:
        out.extend(exception_leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return out


def _single_bytes(reply: Sequence[Value], what: str) -> bytes:
    if len(reply) != 1 or not isinstance(reply[0], bytes):
        raise ProtocolError(f"malformed {what}: {reply!r}")
    return reply[0]


__all__ = [
    "Clock",
    "Coordinator",
    "Fallback",
    "PeerHealth",
    "Store",
    "exception_leaves",
    "merge_sets",
]
