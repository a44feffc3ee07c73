"""Dynamo's quorum logic over RPC: coordinated put/delete (new dot, local durable write, fan-out,
w acks), get (r replies merged, read repair in the background), forwarding to a preference-list
node, and the replica side (REPLICA_PUT / REPLICA_GET). The node wires it; everything it needs
(rpc, storage, membership, clock, actor id, limits, a nursery for background work) is handed in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

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

log = logging.getLogger(__name__)

DATA_DB = "data"
READ_REPAIR_MAX_IN_FLIGHT = 256  # read repairs beyond this are skipped (anti-entropy catches up)
FRAME_HEADROOM_BYTES = 16 * 1024  # frame header and the other fields of a reply carrying a set
BACKGROUND_MAX_TASKS = 8192  # replica sends and read gathers in flight; more make callers wait
PEER_RETRY_AFTER_S = 2.0  # a peer marked down is tried again (first in line) after this long
FORWARD_TIMEOUT_FACTOR = 2.0  # a forwarded put waits for the remote coordinator's own timeout
UNREACHABLE = (ConnectionLost, RequestTimeout, OSError)  # the peer may be down: try another

Update = Callable[[bytes | None], bytes | None]
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

    async def update(self, db: str, key: bytes, fn: Update) -> bytes | None: ...


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
        return [n for n in nodes if self.is_up(n)] + [n for n in nodes if not self.is_up(n)]


@dataclass
class _Acks:
    """Durable acks of one put; `settled` fires once w is reached or every replica answered
    (so that a failure reports every ack that came in time)."""

    required: int
    pending: int
    count: int = 0
    settled: trio.Event = field(default_factory=trio.Event)
    fallbacks: set[str] = field(default_factory=set)  # nodes holding a hint of this put

    def add(self) -> None:
        self.count += 1
        self._step()

    def fail(self) -> None:
        self._step()

    def _step(self) -> None:
        self.pending -= 1
        assert self.pending >= 0
        if self.count >= self.required or self.pending == 0:
            self.settled.set()


@dataclass
class _Gather:
    required: int
    pending: int
    replies: dict[str, bytes | None] = field(default_factory=dict)
    settled: trio.Event = field(default_factory=trio.Event)

    def reply(self, node: str, value: bytes | None) -> None:
        self.replies[node] = value
        self._step()

    def fail(self) -> None:
        self._step()

    def _step(self) -> None:
        self.pending -= 1
        assert self.pending >= 0
        if len(self.replies) >= self.required or self.pending == 0:
            self.settled.set()


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
        objects.check_sizes(key, value, self._limits)
        if ttl_ms < 0:
            raise ProtocolError(f"ttl must not be negative, got {ttl_ms} ms")
        if context:
            versions.vv_to(context)  # VersionError when malformed, before anything is written
        stored_key = objects.object_key(namespace, key)
        n = self.membership.n_for(namespace)
        pref = self.membership.preference_list(stored_key, n)  # + pending owners in a handoff
        required = resolve_quorum(w, min(len(pref), n), default=self._default_w)
        if self.node_id not in pref:
            if forwarded:
                raise Unavailable(f"{self.node_id} got a forwarded put it does not replicate")
            return await self._forward(pref, namespace, key, value, context, w, ttl_ms)
        now_ms = self._clock.now_ms()
        envelope = objects.encode_envelope(
            value or b"",
            timestamp_ms=now_ms,
            expiry_ms=now_ms + ttl_ms if ttl_ms else 0,
            tombstone=value is None,
        )
        new_set = await self._store.update(DATA_DB, stored_key, self._put_fn(context, envelope))
        assert new_set is not None
        await self._replicate(stored_key, new_set, [p for p in pref if p != self.node_id], required)
        if versions.size(new_set) == 1:
            return versions.join(new_set)
        return context

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
        acks = _Acks(required=required, pending=len(peers) + 1)
        acks.add()  # the local durable commit
        with trio.move_on_after(self.timeout_s):
            for peer in peers:
                await self._spawn(self._replica_put_remote, peer, stored_key, new_set, acks)
            await acks.settled.wait()
        if acks.count < required:
            raise QuorumNotMet(
                f"put: {acks.count} of the {required} required replicas acknowledged in time",
                acked=acks.count,
                required=required,
            )

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
        objects.check_sizes(key, None, self._limits)
        stored_key = objects.object_key(namespace, key)
        pref = self.membership.read_list(stored_key, self.membership.n_for(namespace))
        required = resolve_quorum(r, len(pref), default=self._default_r)
        gather = _Gather(required=required, pending=len(pref))
        with trio.move_on_after(self.timeout_s):
            await self._spawn(self._gather_and_repair, stored_key, pref, gather)
            await gather.settled.wait()
        replies = list(gather.replies.values())
        if len(replies) < required:
            raise QuorumNotMet(
                f"get: {len(replies)} of the {required} required replicas answered in time",
                acked=len(replies),
                required=required,
            )
        return merge_sets(replies)

    async def _gather_and_repair(
        self, stored_key: bytes, pref: Sequence[str], gather: _Gather
    ) -> None:
        with trio.move_on_after(self.timeout_s):
            async with trio.open_nursery() as nursery:
                for node in pref:
                    nursery.start_soon(self._read_one, node, stored_key, gather)
        gather.settled.set()
        await self._read_repair(stored_key, dict(gather.replies))

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
        if reply is None or len(reply) != 1 or not isinstance(reply[0], bytes | None):
            gather.fail()
            return
        gather.reply(node, reply[0])

    async def _read_repair(self, stored_key: bytes, replies: dict[str, bytes | None]) -> None:
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
        try:
            async with trio.open_nursery() as nursery:
                for node in stale:
                    nursery.start_soon(self._replica_put_remote, node, stored_key, merged, None)
        finally:
            self._repairs.release_on_behalf_of(token)

    # -- replica side ------------------------------------------------------------------------------

    async def replica_put(self, stored_key: bytes, incoming: bytes) -> None:
        """Merge an incoming set into the stored one; returns once durable."""
        versions.size(incoming)  # VersionError for a malformed set, before the write

        def merge(old: bytes | None) -> bytes:
            return incoming if old is None else versions.sync(old, incoming)

        await self._store.update(DATA_DB, stored_key, merge)

    def replica_get(self, stored_key: bytes) -> bytes | None:
        return self._store.get(DATA_DB, stored_key)


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
