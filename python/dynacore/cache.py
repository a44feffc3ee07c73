"""The embedded replicated cache: `Cache` (sync, a MutableMapping, its node in a background thread
with its own trio.run) and `open_cache` (trio: `async with open_cache(...) as cache`, the node in
the caller's nursery, awaitable methods on `AsyncCache`).

The process embedding a cache is a cluster member: it runs a real node (node.open_node) that
replicates its share of the keys and answers its peers. Reads with r=1 of a key this member
replicates are served from the local store in the calling thread (no event loop, no network);
other reads go through the coordinator (r replies merged, read repair). Writes: `set`/`delete`/
`incr` replace what the coordinating replica holds (cachewrite.py) and return after w durable acks,
the local commit first (w=1: replication continues in the background); `add` and `set(...,
context=...)` are ordinary context puts, so concurrent adds from two members both win and become
siblings (this is an AP store). Siblings are resolved by the cache's resolver (newest write wins
by default, a delete included); counters (ints) merge instead. Values: bytes and str natively,
int as a counter, anything else through the serializer (msgpack by default, never pickle unless
asked), see serializers.py.

Membership: a cache is a full member that takes partitions. With `members=` it is one of a
static cluster (every member lists the same members). With `seeds=` it joins a running cluster
by gossip: its node starts unjoined, learns the cluster from a seed, has the claimant stage its
join and commit it (at once, with whatever else is staged there, like riak's one-step join),
and serves once the partitions it gains are handed off to it (bounded by `join_timeout_s`). A
member that restarts with its data_dir resumes from its persisted cluster state. Closing a
cache only stops it, like a node going down (hinted handoff and anti-entropy cover the gap);
`close(leave=True)` / `AsyncCache.leave()` first hands its partitions to the others. Local
reads follow the node's current cluster view (read owners during a handoff). Iteration, len
and clear cover the keys this member stores (all keys when it is alone or n covers every
member).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import logging
import random
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar, cast

import trio

from dynacore import cachewrite, objects
from dynacore._backend import versions
from dynacore.cacheread import DATA_DB, MISSING, REMOTE, LocalReader, ReadFence, Resolver
from dynacore.cachewrite import OP_DELETE, OP_INCR, OP_SET, WriteOutcome, WriteRequest
from dynacore.client import AsyncClient
from dynacore.cluster.service import ClusterService
from dynacore.cluster.state import ClusterState, Status
from dynacore.config import (
    DEFAULT_GOSSIP_INTERVAL_S,
    NodeConfig,
    QuorumSpec,
    check_quorum_spec,
    parse_members,
)
from dynacore.coordinator import Clock, exception_leaves
from dynacore.counters import fits as counter_fits
from dynacore.errors import (
    CacheClosed,
    ClusterError,
    ConfigError,
    ConnectionLost,
    RequestTimeout,
    SerializationError,
    StorageError,
    Unavailable,
)
from dynacore.limits import DEFAULT_N, DEFAULT_PARTITIONS, Limits
from dynacore.membership import Membership
from dynacore.net.transport import Transport
from dynacore.node import Node, open_node
from dynacore.serializers import Serializer, ValueCodec

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_CACHE_LISTEN: Final = "127.0.0.1:0"
STANDALONE_NODE_ID: Final = "cache"
MAX_TTL_S: Final = 10 * 365 * 24 * 3600.0
MAX_CONCURRENT_BATCH: Final = 64  # requests in flight for one get_many / set_many / clear
SCAN_CHUNK_KEYS: Final = 1024  # keys read per scan step of iteration and clear
MEMO_PREFIX: Final = b"memo:"
DEFAULT_JOIN_TIMEOUT_S: Final = 120.0  # joining by seeds, or leaving: handoff included
CALL_POLL_S: Final = 0.5  # a caller waiting on the loop checks this often that it still runs


class _Fallback(enum.Enum):
    FALLBACK = "fallback"  # a callback path could not start: take the task path


FALLBACK: Final = _Fallback.FALLBACK
MAX_JOIN_TIMEOUT_S: Final = 24 * 3600.0


@dataclass(frozen=True)
class Versions:
    """Every live sibling of a key, for callers who resolve conflicts themselves: `values[i]`
    was written at `timestamps_ms[i]` (oldest first). Write the merge back with
    `set(key, merged, context=versions.context)` to replace them. `siblings` counts every value
    of the merged version set, tombstones and expired values included."""

    values: list[Any]
    timestamps_ms: list[int]
    context: bytes
    siblings: int


@dataclass(frozen=True)
class CacheSettings:
    """A validated cache configuration (built in the caller's thread, used in the node's)."""

    config: NodeConfig
    seeds: tuple[str, ...]
    namespace: str
    r: QuorumSpec
    w: QuorumSpec
    resolver: Resolver | None
    codec: ValueCodec
    key_type: type[str] | type[bytes]
    clock: Clock | None
    transport: Transport | None
    rng: random.Random | None
    join_timeout_s: float

    @property
    def joins(self) -> bool:
        """True when the cache joins a running cluster by gossip (seeds, no static members)."""
        return bool(self.seeds) and not self.config.members


def cache_settings(
    data_dir: str | Path | None = None,
    listen: str = DEFAULT_CACHE_LISTEN,
    seeds: Sequence[str] | str = (),
    *,
    node_id: str | None = None,
    members: Sequence[tuple[str, str]] | str | None = None,
    n: int | None = None,
    r: QuorumSpec = 1,
    w: QuorumSpec = 1,
    partitions: int = DEFAULT_PARTITIONS,
    resolver: Resolver | None = None,
    serializer: Serializer | None = None,
    namespace: str = "",
    cluster_secret: str = "",
    sync: bool = True,
    limits: Limits | None = None,
    clock: Clock | None = None,
    key_type: type[str] | type[bytes] = str,
    transport: Transport | None = None,
    rng: random.Random | None = None,
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S,
    gossip_interval_s: float = DEFAULT_GOSSIP_INTERVAL_S,
) -> CacheSettings:
    """Check every option of Cache / open_cache; ConfigError (or SerializationError) when one is
    wrong. See `Cache` for their meaning."""
    seed_list = (seeds,) if isinstance(seeds, str) else tuple(seeds)
    member_list = _members(members)
    if node_id is None:
        if seed_list or member_list:
            raise ConfigError("a cache that joins a cluster needs its node_id (a cluster member)")
        node_id = STANDALONE_NODE_ID
    if n is None:
        n = min(DEFAULT_N, len(member_list)) if member_list else DEFAULT_N
    if resolver is not None and not callable(resolver):
        raise ConfigError(f"resolver must be callable, got {type(resolver).__name__}")
    if key_type not in (str, bytes):
        raise ConfigError(f"key_type is str or bytes, got {key_type!r}")
    _check_timeout("join_timeout_s", join_timeout_s)
    config = NodeConfig(
        node_id=node_id,
        listen=listen,
        data_dir=None if data_dir is None else Path(data_dir),
        seeds=seed_list,
        members=member_list,
        partitions=partitions,
        n=n,
        namespaces={namespace: n} if namespace else {},
        cluster_secret=cluster_secret,
        sync=sync,
        limits=limits if limits is not None else Limits(),
        gossip_interval_s=gossip_interval_s,
    )
    if namespace:
        objects.object_key(namespace, b"")  # ConfigError when too long
    return CacheSettings(
        config=config,
        seeds=seed_list,
        namespace=namespace,
        r=check_quorum_spec(r),
        w=check_quorum_spec(w),
        resolver=resolver,
        codec=ValueCodec(serializer),
        key_type=key_type,
        clock=clock,
        transport=transport,
        rng=rng,
        join_timeout_s=float(join_timeout_s),
    )


def _check_timeout(name: str, timeout_s: object) -> None:
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s <= MAX_JOIN_TIMEOUT_S
    ):
        raise ConfigError(
            f"{name} must be seconds in (0, {MAX_JOIN_TIMEOUT_S:.0f}], got {timeout_s!r}"
        )


def _members(members: Sequence[tuple[str, str]] | str | None) -> tuple[tuple[str, str], ...]:
    """The members as "id@host:port,..." or (id, "host:port") pairs, checked."""
    if members is None:
        return ()
    if isinstance(members, str):
        return parse_members(members)
    return parse_members([f"{node}@{address}" for node, address in members])


def _ttl_ms(ttl: float | None) -> int:
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_S:
        raise ConfigError(f"ttl must be a number of seconds in (0, {MAX_TTL_S:.0f}], got {ttl!r}")
    return max(1, round(ttl * 1000))


def _spec(spec: QuorumSpec | None, default: QuorumSpec) -> QuorumSpec:
    return default if spec is None else check_quorum_spec(spec)


class AsyncCache:
    """The cache's operations on a running node. Made by `open_cache`; valid inside its block.

    Every method is safe to call from the node's trio thread; `lookup_local` (the fast path) and
    `local_keys` are also safe from any thread.
    """

    def __init__(self, node: Node, settings: CacheSettings) -> None:
        self._node = node
        self._coordinator = node.coordinator
        self._engine = node.engine
        self._clock = node.clock
        self._limits = node.config.limits
        self._namespace = settings.namespace
        self._prefix = objects.object_key(settings.namespace, b"")
        self._r = settings.r
        self._w = settings.w
        self._codec = settings.codec
        self._key_type = settings.key_type
        self._join_timeout_s = settings.join_timeout_s
        self.fence = ReadFence(
            node.engine,
            objects.object_key(settings.namespace, b""),
            node.config.limits.key_size_bytes,
        )
        self.reader = LocalReader()
        self.reader._init_reader(
            node,
            namespace=settings.namespace,
            r=settings.r,
            resolver=settings.resolver,
            codec=settings.codec,
            fence=self.fence,
        )
        self._key = self.reader.key_bytes
        self._winner = self.reader.winner
        self.lookup_local = self.reader.lookup_local
        self.resolve = self.reader.resolve
        self.replicates = self.reader.replicates

    @property
    def node(self) -> Node:
        return self._node

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def address(self) -> str:
        """The "host:port" this member listens on."""
        return self._node.address

    async def leave(self, timeout_s: float | None = None) -> None:
        """Leave the cluster gracefully: this member's leave is staged and committed at the
        claimant, and this returns once its partitions are handed off to the remaining members
        (Unavailable after timeout_s, default join_timeout_s; ClusterError when it cannot
        leave, e.g. as the last member). The cache still answers, through the others, until
        the block ends."""
        timeout = self._join_timeout_s if timeout_s is None else timeout_s
        _check_timeout("timeout_s", timeout)
        await leave_cluster(self._node, timeout)

    # -- reads -------------------------------------------------------------------------------------

    async def _fetch(self, raw_key: bytes, r: QuorumSpec | None) -> bytes | None:
        """The merged version set of r replicas (through the coordinator)."""
        return await self._coordinator.get(self._namespace, raw_key, r=_spec(r, self._r))

    def fetch_soon(
        self,
        raw_key: bytes,
        r: QuorumSpec | None,
        on_done: Callable[[bytes | None, Exception | None], None],
    ) -> bool:
        """`_fetch` from a callback in the node's loop, without a task; False when it must
        take the task path (see Coordinator.get_soon)."""
        return self._coordinator.get_soon(self._namespace, raw_key, _spec(r, self._r), on_done)

    async def lookup(self, key: object, r: QuorumSpec | None = None) -> Any:
        """The resolved value, or MISSING."""
        if r is None:
            found = self.lookup_local(key)
            if found is not REMOTE:
                return found
        raw_key = self._key(key)
        winner = self._winner(await self._fetch(raw_key, r))
        return MISSING if winner is None else winner[1]

    async def get(self, key: object, default: Any = None, *, r: QuorumSpec | None = None) -> Any:
        """The value of `key`, or `default` when it has none (absent, deleted or expired)."""
        found = await self.lookup(key, r)
        return default if found is MISSING else found

    async def contains(self, key: object, *, r: QuorumSpec | None = None) -> bool:
        return await self.lookup(key, r) is not MISSING

    async def get_versions(self, key: object, *, r: QuorumSpec | None = None) -> Versions:
        """Every live sibling of `key` and the context to write their merge back with."""
        merged = await self._fetch(self._key(key), r)
        if merged is None:
            return Versions(values=[], timestamps_ms=[], context=b"", siblings=0)
        now_ms = self._clock.now_ms()
        envelopes = [objects.decode_envelope(raw) for raw in versions.values(merged)]
        live = sorted((e for e in envelopes if e.visible(now_ms)), key=_age)
        return Versions(
            values=[self._codec.decode(e.data) for e in live],
            timestamps_ms=[e.timestamp_ms for e in live],
            context=versions.join(merged),
            siblings=versions.size(merged),
        )

    async def get_many(
        self, keys: Iterable[object], *, r: QuorumSpec | None = None
    ) -> dict[Any, Any]:
        """{key: value} for the keys that have a value (keys as given)."""
        key_list = list(keys)
        found: list[Any] = [self.lookup_local(k) if r is None else REMOTE for k in key_list]
        remote = [i for i, value in enumerate(found) if value is REMOTE]
        if remote:
            limiter = trio.CapacityLimiter(MAX_CONCURRENT_BATCH)

            async def fetch(index: int) -> None:
                async with limiter:
                    found[index] = await self.lookup(key_list[index], r if r else self._r)

            async with trio.open_nursery() as nursery:
                for index in remote:
                    nursery.start_soon(fetch, index)
        return {k: v for k, v in zip(key_list, found, strict=True) if v is not MISSING}

    # -- writes ------------------------------------------------------------------------------------

    async def _write(self, request: WriteRequest, w: QuorumSpec | None) -> cachewrite.WriteOutcome:
        return await cachewrite.write(
            self._coordinator, self._clock, self._limits, request, w=_spec(w, self._w)
        )

    def write_soon(
        self,
        request: WriteRequest,
        w: QuorumSpec | None,
        on_done: Callable[[cachewrite.WriteOutcome | None, Exception | None], None],
    ) -> bool:
        """`_write` from a callback in the node's loop, without a task (see
        cachewrite.write_soon); False when it must take the task path."""
        return cachewrite.write_soon(
            self._coordinator, self._clock, self._limits, request, on_done, w=_spec(w, self._w)
        )

    def set_request(self, key: object, value: Any, ttl: float | None) -> WriteRequest:
        """The write a `set` without a context makes (any thread: key and value checks and
        encoding happen here)."""
        payload = self._codec.encode(value, now_ms=self._clock.now_ms())
        return WriteRequest(self._namespace, self._key(key), OP_SET, payload, 0, _ttl_ms(ttl))

    def delete_request(self, key: object) -> WriteRequest:
        return WriteRequest(self._namespace, self._key(key), OP_DELETE)

    def incr_request(self, key: object, delta: int) -> WriteRequest:
        if isinstance(delta, bool) or not isinstance(delta, int) or not counter_fits(delta):
            raise ConfigError(f"delta must be a signed 64-bit int, got {delta!r}")
        return WriteRequest(self._namespace, self._key(key), OP_INCR, delta=delta)

    async def set(
        self,
        key: object,
        value: Any,
        ttl: float | None = None,
        *,
        w: QuorumSpec | None = None,
        context: bytes | None = None,
    ) -> None:
        """Store `value` (ttl: seconds until it expires, None never). Without a context it
        replaces whatever the coordinating replica holds; with the context of a get_versions it
        replaces exactly the siblings that read saw (others stay siblings)."""
        request = self.set_request(key, value, ttl)
        if context is not None:
            if not isinstance(context, bytes):
                raise ConfigError(f"context must be bytes from get_versions, got {context!r}")
            await self._coordinator.put(
                self._namespace,
                request.key,
                request.payload,
                context,
                w=_spec(w, self._w),
                ttl_ms=request.ttl_ms,
            )
            return
        await self._write(request, w)

    async def add(
        self,
        key: object,
        value: Any,
        ttl: float | None = None,
        *,
        r: QuorumSpec | None = None,
        w: QuorumSpec | None = None,
    ) -> bool:
        """Store `value` only if no value is visible at the read quorum; True when stored.
        Two members adding the same key concurrently may both succeed: their values become
        siblings (resolved by the resolver, listed by get_versions), never a silent loss."""
        raw_key = self._key(key)
        payload = self._codec.encode(value, now_ms=self._clock.now_ms())
        ttl_ms = _ttl_ms(ttl)
        merged = await self._fetch(raw_key, r)
        if self._winner(merged) is not None:
            return False
        context = versions.join(merged) if merged is not None else b""
        await self._coordinator.put(
            self._namespace, raw_key, payload, context, w=_spec(w, self._w), ttl_ms=ttl_ms
        )
        return True

    async def delete(self, key: object, *, w: QuorumSpec | None = None) -> bool:
        """Delete `key` (a tombstone replacing what the coordinating replica holds); True when
        that replica had a live value."""
        return (await self._write(self.delete_request(key), w)).existed

    async def incr(self, key: object, delta: int = 1, *, w: QuorumSpec | None = None) -> int:
        """Add `delta` to the counter at `key` (absent: 0) and return the new value as the
        coordinating replica sees it. Never loses an increment under concurrency; WrongType
        when the key holds a value that is not an int."""
        return (await self._write(self.incr_request(key, delta), w)).value

    async def decr(self, key: object, delta: int = 1, *, w: QuorumSpec | None = None) -> int:
        """incr(key, -delta)."""
        if isinstance(delta, bool) or not isinstance(delta, int) or not counter_fits(-delta):
            raise ConfigError(f"delta must be a signed 64-bit int, got {delta!r}")
        return await self.incr(key, -delta, w=w)

    async def touch(
        self,
        key: object,
        ttl: float | None,
        *,
        r: QuorumSpec | None = None,
        w: QuorumSpec | None = None,
    ) -> bool:
        """Give the key's current value a new ttl (None: never expires); False when it has
        no value."""
        raw_key = self._key(key)
        ttl_ms = _ttl_ms(ttl)
        merged = await self._fetch(raw_key, r)
        winner = self._winner(merged)
        if winner is None or merged is None:
            return False
        await self._coordinator.put(
            self._namespace,
            raw_key,
            winner[0],
            versions.join(merged),
            w=_spec(w, self._w),
            ttl_ms=ttl_ms,
        )
        return True

    async def set_many(
        self,
        items: Mapping[Any, Any] | Iterable[tuple[Any, Any]],
        ttl: float | None = None,
        *,
        w: QuorumSpec | None = None,
    ) -> None:
        """set() of every (key, value), concurrently; the first error is raised."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        _ttl_ms(ttl)
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_BATCH)

        async def store(key: Any, value: Any) -> None:
            async with limiter:
                await self.set(key, value, ttl, w=w)

        async with trio.open_nursery() as nursery:
            for key, value in pairs:
                nursery.start_soon(store, key, value)

    # -- local keys --------------------------------------------------------------------------------

    def _scan_bounds(self) -> tuple[bytes, bytes | None]:
        return self._prefix, _next_prefix(self._prefix)

    def local_keys(self, after: bytes | None = None, limit: int = SCAN_CHUNK_KEYS) -> list[bytes]:
        """Up to `limit` raw keys with a live value that this member stores, in key order,
        starting after `after` (None: from the first)."""
        start, end = self._scan_bounds()
        if after is not None:
            start = start + after + b"\0"
        out: list[bytes] = []
        while len(out) < limit:
            chunk = self._engine.scan(DATA_DB, start, end, limit)
            for stored, set_bytes in chunk:
                if self.resolve(set_bytes) is not MISSING:
                    out.append(stored[len(self._prefix) :])
            if len(chunk) < limit:
                break
            start = chunk[-1][0] + b"\0"
        return out[:limit]

    def user_key(self, raw: bytes) -> Any:
        """A raw key as iteration yields it (str when key_type is str and it is UTF-8)."""
        if self._key_type is bytes:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw

    def local_count(self) -> int:
        """How many keys with a live value this member stores."""
        total, after = 0, None
        while True:
            chunk = self.local_keys(after)
            total += len(chunk)
            if len(chunk) < SCAN_CHUNK_KEYS:
                return total
            after = chunk[-1]

    async def clear(self, *, w: QuorumSpec | None = None) -> int:
        """Delete every key this member stores (replicated tombstones; keys held only by other
        members stay). The number of keys deleted."""
        deleted, after = 0, None
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_BATCH)

        async def drop(raw: bytes) -> None:
            nonlocal deleted
            async with limiter:
                if await self.delete(raw, w=w):
                    deleted += 1

        while True:
            chunk = self.local_keys(after)
            async with trio.open_nursery() as nursery:
                for raw in chunk:
                    nursery.start_soon(drop, raw)
            if len(chunk) < SCAN_CHUNK_KEYS:
                return deleted
            after = chunk[-1]

    # -- memoize -----------------------------------------------------------------------------------

    def memo_key(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """The key under which memoize stores fn(*args, **kwargs)."""
        try:
            encoded = self._codec.encode([list(args), sorted(kwargs.items())], now_ms=0)
        except SerializationError as exc:
            raise SerializationError(f"memoize cannot key arguments of {name}: {exc}") from exc
        digest = hashlib.blake2b(encoded, digest_size=20).hexdigest()
        key = MEMO_PREFIX + name.encode("utf-8") + b":" + digest.encode()
        if len(key) > self._limits.key_size_bytes:
            short = hashlib.blake2b(name.encode("utf-8"), digest_size=8).hexdigest()
            key = MEMO_PREFIX + short.encode() + b":" + digest.encode()
        return key

    def memoize(
        self, ttl: float | None = None, *, name: str | None = None
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
        """Decorate an async function so that its results are cached per arguments (which the
        serializer must encode) for `ttl` seconds (None: until evicted or deleted)."""
        _ttl_ms(ttl)

        def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
            label = name or f"{fn.__module__}.{fn.__qualname__}"

            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                key = self.memo_key(label, args, kwargs)
                found = await self.lookup(key)
                if found is not MISSING:
                    return cast(T, found)
                result = await fn(*args, **kwargs)
                await self.set(key, result, ttl)
                return result

            return wrapper

        return decorate


def _age(envelope: objects.Envelope) -> tuple[int, bytes]:
    return envelope.timestamp_ms, envelope.data


def _next_prefix(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


# -- running a cache -------------------------------------------------------------------------------


async def _cluster_view(settings: CacheSettings) -> Membership:
    """The view of the cluster at the seeds (RING_GET from the first that answers): its Q, n
    and namespaces, which this member adopts."""
    config = settings.config
    async with AsyncClient(
        list(settings.seeds),
        secret=config.cluster_secret,
        limits=config.limits,
        transport=settings.transport,
        client_id=config.node_id,
    ) as client:
        return client.membership


def _with_view(settings: CacheSettings, view: Membership) -> CacheSettings:
    """The settings with the Q, n and namespaces of the cluster this cache joins."""
    namespaces = dict(view.namespaces)
    if settings.namespace and settings.namespace not in namespaces:
        raise ConfigError(f"the cluster has no namespace {settings.namespace!r}")
    config = dataclasses.replace(
        settings.config, partitions=view.ring.q, n=view.n, namespaces=namespaces
    )
    return dataclasses.replace(settings, config=config)


# -- joining and leaving by gossip -------------------------------------------------------------
# A cache that joins runs the steps an operator would (join, commit, wait for the transfers);
# every wait is for a change of the gossiped state, so a handoff already in progress, or a
# concurrent change, only delays it. The caller bounds the whole with a timeout.

_UNREACHABLE: Final = (ConnectionLost, RequestTimeout, OSError, Unavailable)


def _placed(state: ClusterState | None, node_id: str) -> bool:
    """True when `node_id` is in the ring or in the pending ring of `state`."""
    if state is None:
        return False
    return node_id in state.ring.nodes or (
        state.pending is not None and node_id in state.pending.nodes
    )


def _joined(state: ClusterState | None, node_id: str) -> bool:
    """True once the partitions the join gives `node_id` are handed off to it."""
    if state is None:
        return False
    if state.pending is None:
        return node_id in state.ring.nodes
    if node_id not in state.pending.nodes:
        return False
    return all(t.confirmed for t in state.transfers() if node_id in t.targets)


def _leave_committed(state: ClusterState | None, node_id: str) -> bool:
    member = None if state is None else state.members.get(node_id)
    if state is None or member is None or node_id in state.staged_leaves:
        return False
    return member.status in (Status.LEAVING, Status.EXITING)


def _left(state: ClusterState | None, node_id: str) -> bool:
    member = None if state is None else state.members.get(node_id)
    return member is not None and member.status is Status.EXITING


async def _next_change(cluster: ClusterService) -> None:
    """Return at the next change of the gossiped state, or after one gossip interval."""
    with trio.move_on_after(cluster.config.gossip_interval_s):
        await cluster.gossiper.wait_changed()


async def _wait_for(cluster: ClusterService, done: Callable[[ClusterState | None], bool]) -> None:
    while not done(cluster.gossiper.state):
        await _next_change(cluster)


async def _stage_join(cluster: ClusterService, seeds: Sequence[str]) -> None:
    """Have the claimant stage this node's join, through the first seed that answers. A seed
    whose ring has this node already, at this node's address, is simply adopted (a member
    that restarted without its data resumes its place); at another address it is refused
    (ClusterError: the node id belongs to another member)."""
    errors: list[str] = []
    for seed in seeds:
        try:
            pulled = await cluster.gossiper.pull(seed)
            if pulled is None or not _placed(pulled, cluster.node_id):
                await cluster.join(seed)
                return
        except _UNREACHABLE as exc:
            errors.append(f"{seed}: {exc}")
            continue
        address = pulled.address_of(cluster.node_id)
        if address != cluster.gossiper.address:
            raise ClusterError(
                f"{cluster.node_id!r} is a ring member of the cluster at {seed} already, at "
                f"{address}: give this cache another node_id (or restart it at that address)"
            )
        await cluster.gossiper.adopt(pulled)
        return
    raise Unavailable(f"no seed took the join of {cluster.node_id}: {'; '.join(errors)}")


async def _retry_change(cluster: ClusterService, staged: Callable[[ClusterState], bool]) -> bool:
    """After a ClusterError from staging or committing: True when it came from a concurrent
    change (a handoff now pending, or our change still staged) and is worth another try."""
    if cluster.gossiper.state is None:
        return False
    state = await cluster.refresh_from_claimant()
    return state.pending is not None or staged(state)


async def _join_committed(cluster: ClusterService, seeds: Sequence[str]) -> None:
    """Stage this node's join and commit it, waiting out any handoff in progress."""
    me = cluster.node_id
    while not _placed(cluster.gossiper.state, me):
        state = cluster.gossiper.state
        if state is not None and state.pending is not None:
            await _next_change(cluster)  # changes wait for the handoff in progress
            continue
        try:
            await _stage_join(cluster, seeds)
            if not _placed(cluster.gossiper.state, me):
                await cluster.commit()
        except ClusterError as exc:
            if not await _retry_change(cluster, lambda s: me in s.staged_joins):
                raise
            log.info("%s: the join met another change (%s); trying again", me, exc)
            await _next_change(cluster)


async def _leave_committed_at_claimant(cluster: ClusterService) -> None:
    """Stage this node's leave and commit it, waiting out any handoff in progress."""
    me = cluster.node_id
    while not _leave_committed(cluster.gossiper.state, me):
        state = cluster.gossiper.state
        if state is not None and state.pending is not None:
            await _next_change(cluster)
            continue
        try:
            if me in (await cluster.stage_leave()).staged_leaves:
                await cluster.commit()
        except ClusterError as exc:
            if not await _retry_change(cluster, lambda s: me in s.staged_leaves):
                raise
            log.info("%s: the leave met another change (%s); trying again", me, exc)
            await _next_change(cluster)


async def join_by_seeds(node: Node, seeds: Sequence[str], timeout_s: float) -> None:
    """Make `node` a ring member of the cluster at `seeds` and return once the partitions it
    gains are handed off to it (at once when its persisted state has it placed already).
    Unavailable when no seed answers or the join does not finish within timeout_s (a join
    that was committed stays: restart this member to finish it, or make it leave)."""
    cluster = node.cluster
    assert cluster is not None, "a node always runs its cluster service"
    with trio.move_on_after(timeout_s):
        await _join_committed(cluster, seeds)
        await _wait_for(cluster, lambda state: _joined(state, cluster.node_id))
        log.info("%s joined the cluster at %s", cluster.node_id, list(seeds))
        return
    raise _join_timeout(cluster.node_id, seeds, timeout_s)


def _join_timeout(node_id: str, seeds: Sequence[str], timeout_s: float) -> Unavailable:
    return Unavailable(
        f"{node_id} did not finish joining the cluster at {list(seeds)} within {timeout_s} s "
        "(if the join was committed, restart this member to finish it)"
    )


async def _tell_everyone(cluster: ClusterService) -> None:
    """Push our state to every serving member until each has taken it: a leaver may hold the
    last confirmations of its handoff, which the cluster needs before the leaver stops."""
    while True:
        peers = sorted(node_id for node_id, _ in cluster.gossiper.peers())
        if await cluster.gossiper.announce() == peers:
            return
        await _next_change(cluster)


async def leave_cluster(node: Node, timeout_s: float) -> None:
    """Make `node` leave its cluster: stage and commit its leave, then return once its
    partitions are handed off to the remaining members. Unavailable after timeout_s;
    ClusterError when it cannot leave (e.g. it is the last member)."""
    cluster = node.cluster
    assert cluster is not None, "a node always runs its cluster service"
    with trio.move_on_after(timeout_s):
        await _leave_committed_at_claimant(cluster)
        await _wait_for(cluster, lambda state: _left(state, cluster.node_id))
        await _tell_everyone(cluster)
        log.info("%s left the cluster", cluster.node_id)
        return
    raise Unavailable(f"{cluster.node_id} did not finish leaving within {timeout_s} s")


@asynccontextmanager
async def open_cache_with(settings: CacheSettings) -> AsyncIterator[AsyncCache]:
    """Run a cache member for the duration of the block (open_cache with checked settings)."""
    data_dir = settings.config.data_dir
    if data_dir is not None:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the cache's data directory {data_dir}: {exc}"
            ) from exc
    deadline_s = trio.current_time() + settings.join_timeout_s
    if settings.joins:
        with trio.move_on_at(deadline_s):
            settings = _with_view(settings, await _cluster_view(settings))
        if trio.current_time() >= deadline_s:
            raise _join_timeout(settings.config.node_id, settings.seeds, settings.join_timeout_s)
    started = False
    try:
        async with open_node(
            settings.config,
            transport=settings.transport,
            clock=settings.clock,
            rng=settings.rng,
        ) as node:
            if settings.joins:
                remaining_s = max(0.0, deadline_s - trio.current_time())
                await join_by_seeds(node, settings.seeds, remaining_s)
            started = True
            cache = AsyncCache(node, settings)
            try:
                yield cache
            finally:
                cache.fence.close()  # fast-path reads end before the store closes
    except BaseExceptionGroup as group:
        leaves = exception_leaves(group)
        if started or len(leaves) != 1:
            raise
        raise leaves[0] from None  # a start-up failure escapes as itself, not in a group


@asynccontextmanager
async def open_cache(
    data_dir: str | Path | None = None,
    listen: str = DEFAULT_CACHE_LISTEN,
    seeds: Sequence[str] | str = (),
    **options: Any,
) -> AsyncIterator[AsyncCache]:
    """`async with open_cache(...) as cache:` runs a cache member in the caller's nursery; the
    same options as `Cache`, awaitable methods (see AsyncCache)."""
    async with open_cache_with(cache_settings(data_dir, listen, seeds, **options)) as cache:
        yield cache


class _LoopThread:
    """One background thread running trio.run with the cache's node; calls cross into it with
    trio.from_thread.run. close() stops the node and joins the thread."""

    def __init__(self, settings: CacheSettings) -> None:
        self._settings = settings
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self.cache: AsyncCache | None = None
        name = f"dynacore-cache-{settings.config.node_id}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the constructor, or to later calls
            if self._ready.is_set():
                log.error("dynacore cache thread failed: %r", exc)
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with open_cache_with(self._settings) as cache:
            self.cache = cache
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def _live_token(self) -> trio.lowlevel.TrioToken:
        """The loop's token; CacheClosed once the cache closed or its thread ended."""
        token = self._token
        if token is None or not self._thread.is_alive():
            raise CacheClosed("the cache is closed") from self._error
        return token

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run fn(*args, **kwargs) in the node's loop and return its result."""
        token = self._live_token()
        try:
            return trio.from_thread.run(functools.partial(fn, *args, **kwargs), trio_token=token)
        except trio.RunFinishedError:
            raise CacheClosed("the cache is closed") from self._error

    def call_soon(
        self, start: Callable[[Callable[[T | None, Exception | None], None]], bool]
    ) -> T | _Fallback:
        """Run `start(on_done)` in the node's loop by `run_sync_soon` (no task), wait for
        `on_done(result, error)` and return the result (raise the error); FALLBACK when `start`
        returns False (it did nothing: use `call`). The wait is bounded: a loop that ends
        without answering raises CacheClosed."""
        token = self._live_token()
        answered = threading.Lock()
        answered.acquire()
        box: list[tuple[Any, BaseException | None]] = []

        def on_done(result: T | None, error: Exception | None) -> None:
            box.append((result, error))
            answered.release()

        def begin() -> None:
            try:
                started = start(on_done)
            except Exception as exc:  # a check that failed before anything was done
                started = True
                on_done(None, exc)
            if not started:
                box.append((FALLBACK, None))
                answered.release()

        try:
            token.run_sync_soon(begin)
        except trio.RunFinishedError:
            raise CacheClosed("the cache is closed") from self._error
        while not answered.acquire(timeout=CALL_POLL_S):
            if not self._thread.is_alive():
                raise CacheClosed("the cache closed before answering") from self._error
        result, error = box[0]
        if error is not None:
            raise error
        return cast("T | _Fallback", result)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the sync fn(*args) in the node's loop thread."""
        token = self._live_token()
        try:
            return trio.from_thread.run_sync(functools.partial(fn, *args), trio_token=token)
        except trio.RunFinishedError:
            raise CacheClosed("the cache is closed") from self._error

    def close(self) -> None:
        """Stop the node (queued commits finish, the store closes) and join the thread."""
        token, stop = self._token, self._stop
        self._token = None
        if token is not None and stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        self._thread.join()


class Cache(LocalReader, MutableMapping[Any, Any]):
    """An embedded replicated cache: this process becomes a cluster member.

    Options (keyword-only after `seeds`):

    - data_dir: LMDB directory (None: the memory engine, gone with the process);
    - listen: "host:port" the member serves its peers on (port 0: any);
    - seeds: addresses of members of a running cluster to join by gossip (the cache takes
      its share of partitions, and the constructor returns once they are handed off to it,
      within join_timeout_s; Q, n and namespaces come from the cluster); members: a static
      member list "id@host:port,..." or (id, address) pairs instead; node_id: this member's
      id (required in a cluster; "cache" when alone); listen must be reachable by the peers;
    - join_timeout_s: bound on joining (and on `close(leave=True)`), default 120 s;
    - gossip_interval_s: the pace of this member's gossip, heartbeats and handoff checks;
    - n, partitions, namespace, cluster_secret, sync, limits: as for `dynacore serve`;
    - r, w: the default read and write quorums (1 and 1: local reads, writes acknowledged
      after the local durable commit with replication in the background);
    - resolver: picks one value from concurrent siblings (given oldest first); default:
      the newest write wins, a newer delete included;
    - serializer: for values that are not bytes, str or int (default msgpack; pickle only
      if you pass `PickleSerializer()`);
    - key_type: what iteration yields (str: keys decoded as UTF-8 where they are, or bytes);
    - clock, transport, rng: injected for tests and the simulator.

    Thread-safe; `get` with r=1 of a key this member replicates is served in the calling
    thread from the local store. `len`, iteration and `clear` cover only the keys this member
    stores (all keys when it is alone, or when n is at least the number of members).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        listen: str = DEFAULT_CACHE_LISTEN,
        seeds: Sequence[str] | str = (),
        **options: Any,
    ) -> None:
        settings = cache_settings(data_dir, listen, seeds, **options)
        self._loop = _LoopThread(settings)
        assert self._loop.cache is not None
        self._async: AsyncCache = self._loop.cache
        self._init_reader(
            self._async.node,
            namespace=settings.namespace,
            r=settings.r,
            resolver=settings.resolver,
            codec=settings.codec,
            fence=self._async.fence,
        )
        self._finalizer = weakref.finalize(self, self._loop.close)  # also at interpreter exit

    def _write(self, request: WriteRequest, w: QuorumSpec | None) -> WriteOutcome:
        """A cache write from this thread: one callback into the node's loop when the write's
        callback path is ready (no task, one thread hand-off each way), else the task path."""
        start: Callable[[Callable[[WriteOutcome | None, Exception | None], None]], bool]
        start = functools.partial(self._async.write_soon, request, w)
        found = self._loop.call_soon(start)
        if isinstance(found, _Fallback):
            return self._loop.call(self._async._write, request, w)
        assert isinstance(found, WriteOutcome)
        return found

    def _remote_get(self, key: object, default: Any, r: QuorumSpec | None) -> Any:
        """A get the local fast path does not serve: the replicas' sets gathered by one
        callback into the node's loop (`Coordinator.get_soon`) and resolved in this thread;
        the task path when the callback path cannot start."""
        start: Callable[[Callable[[bytes | None, Exception | None], None]], bool]
        start = functools.partial(self._async.fetch_soon, self.key_bytes(key), r)
        merged = self._loop.call_soon(start)
        if isinstance(merged, _Fallback):
            found = self._loop.call(self._async.lookup, key, r)
            return default if found is MISSING else found
        winner = self.winner(merged)
        return default if winner is None else winner[1]

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self, *, leave: bool = False, timeout_s: float | None = None) -> None:
        """Stop this member: its node, its thread, its store (idempotent). Writes already
        acknowledged are durable; replication still in flight is left to read repair. By
        default the member stays in the cluster, as a node that went down (its peers keep
        hints and anti-entropy catches up when it returns); with leave=True it first leaves
        gracefully, handing its partitions to the others (see AsyncCache.leave; the member
        stops even when that fails, and the error is raised)."""
        if leave and self._finalizer.alive:
            try:
                self._loop.call(self._async.leave, timeout_s)
            finally:
                self._finalizer()
        self._finalizer()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def node_id(self) -> str:
        return self._async.node_id

    @property
    def address(self) -> str:
        """The "host:port" this member listens on."""
        return self._async.address

    # -- reads (get, replicates and lookup_local come from LocalReader) ---------------------------

    def _lookup(self, key: object) -> Any:
        """The value or MISSING (r=1)."""
        return LocalReader.get(self, key, MISSING)

    def get_versions(self, key: object, *, r: QuorumSpec | None = None) -> Versions:
        """Every live sibling of `key` and the context to write their merge back with."""
        return self._loop.call(self._async.get_versions, key, r=r)

    def get_many(self, keys: Iterable[object], *, r: QuorumSpec | None = None) -> dict[Any, Any]:
        """{key: value} for the keys that have a value (local ones read in this thread, the
        others fetched concurrently in one crossing into the node's loop)."""
        key_list = list(keys)
        found = {k: self.lookup_local(k) if r is None else REMOTE for k in key_list}
        remote = [k for k, value in found.items() if value is REMOTE]
        if remote:
            found.update(self._loop.call(self._async.get_many, remote, r=r or self._r))
        return {k: v for k in key_list if (v := found[k]) is not MISSING and v is not REMOTE}

    # -- writes ------------------------------------------------------------------------------------

    def set(
        self,
        key: object,
        value: Any,
        ttl: float | None = None,
        *,
        w: QuorumSpec | None = None,
        context: bytes | None = None,
    ) -> None:
        """Store `value` (ttl in seconds; None: no expiry). See AsyncCache.set."""
        if context is not None:
            self._loop.call(self._async.set, key, value, ttl, w=w, context=context)
            return
        self._write(self._async.set_request(key, value, ttl), w)

    def add(
        self,
        key: object,
        value: Any,
        ttl: float | None = None,
        *,
        r: QuorumSpec | None = None,
        w: QuorumSpec | None = None,
    ) -> bool:
        """Store only if no value is visible at the read quorum; True when stored. Concurrent
        adds from two members may both succeed and become siblings (an AP store)."""
        return self._loop.call(self._async.add, key, value, ttl, r=r, w=w)

    def delete(self, key: object, *, w: QuorumSpec | None = None) -> bool:
        """Delete `key`; True when the coordinating replica had a live value."""
        return self._write(self._async.delete_request(key), w).existed

    def incr(self, key: object, delta: int = 1, *, w: QuorumSpec | None = None) -> int:
        """Add `delta` to the counter at `key`; the new value. Never loses an increment."""
        return self._write(self._async.incr_request(key, delta), w).value

    def decr(self, key: object, delta: int = 1, *, w: QuorumSpec | None = None) -> int:
        """Subtract `delta` from the counter at `key`; the new value."""
        return self._loop.call(self._async.decr, key, delta, w=w)

    def touch(
        self,
        key: object,
        ttl: float | None,
        *,
        r: QuorumSpec | None = None,
        w: QuorumSpec | None = None,
    ) -> bool:
        """Give the key's value a new ttl (None: no expiry); False when it has no value."""
        return self._loop.call(self._async.touch, key, ttl, r=r, w=w)

    def set_many(
        self,
        items: Mapping[Any, Any] | Iterable[tuple[Any, Any]],
        ttl: float | None = None,
        *,
        w: QuorumSpec | None = None,
    ) -> None:
        """set() of every (key, value), concurrently."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        self._loop.call(self._async.set_many, pairs, ttl, w=w)

    def clear(self, *, w: QuorumSpec | None = None) -> None:
        """Delete every key this member stores (replicated tombstones). Keys that only other
        members hold are not touched: clear is local in what it enumerates."""
        self._loop.call(self._async.clear, w=w)

    def memoize(
        self, ttl: float | None = None, *, name: str | None = None
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorate a function so that its results are cached per arguments (which the
        serializer must encode) for `ttl` seconds (None: until deleted)."""
        _ttl_ms(ttl)

        def decorate(fn: Callable[P, T]) -> Callable[P, T]:
            label = name or f"{fn.__module__}.{fn.__qualname__}"

            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                key = self._async.memo_key(label, args, kwargs)
                found = self._lookup(key)
                if found is not MISSING:
                    return cast(T, found)
                result = fn(*args, **kwargs)
                self.set(key, result, ttl)
                return result

            return wrapper

        return decorate

    # -- the MutableMapping contract ---------------------------------------------------------------

    def __getitem__(self, key: object) -> Any:
        found = self._lookup(key)
        if found is MISSING:
            raise KeyError(key)
        return found

    def __setitem__(self, key: object, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: object) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not MISSING

    def __iter__(self) -> Iterator[Any]:
        """The keys with a live value that this member stores, in key order (chunked scans:
        keys added or removed meanwhile may or may not be seen)."""
        after: bytes | None = None
        while True:
            chunk = self._loop.call_sync(self._async.local_keys, after)
            for raw in chunk:
                yield self._async.user_key(raw)
            if len(chunk) < SCAN_CHUNK_KEYS:
                return
            after = chunk[-1]

    def __len__(self) -> int:
        """How many keys with a live value this member stores."""
        return self._loop.call_sync(self._async.local_count)

    def __repr__(self) -> str:
        return f"<dynacore.Cache {self._async.node_id} at {self._async.address}>"
