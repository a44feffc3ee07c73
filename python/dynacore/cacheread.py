"""The embedded cache's read side: `LocalReader` (the fast path: a get with r=1 of a key this
member replicates, served from the local store in the calling thread, no event loop, no network)
and the resolution of a stored version set into the one value a get returns (tombstones, expiry,
counters merged, the resolver for sibling values). Also the read fence that lets fast-path reads
in other threads finish before the store closes.

`LocalReader.get` is the whole sync read of `Cache.get` (Cache inherits it), so that the common
case (one live value without expiry, in LMDB) costs one Python call; whatever the fast path
cannot serve goes to `_remote_get`, which Cache implements through its node's loop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from dynacore import objects
from dynacore._backend import localread, versions
from dynacore.cluster.antientropy import ObservedEngine
from dynacore.cluster.view import ClusterView
from dynacore.config import QuorumSpec, resolve_quorum
from dynacore.coordinator import Coordinator
from dynacore.counters import decode as decode_counter
from dynacore.counters import merge_all
from dynacore.errors import CacheClosed, KeyTooLarge, SerializationError, StorageClosed
from dynacore.membership import Membership
from dynacore.node import Node
from dynacore.serializers import TAG_BYTES, TAG_COUNTER, ValueCodec
from dynacore.storage import Engine, LmdbEngine

DATA_DB: Final = "data"
FENCE_TIMEOUT_S: Final = 10.0  # a read transaction takes microseconds; this is a safety net
_TAG_COUNTER_BYTE: Final = bytes((TAG_COUNTER,))

Resolver = Callable[[list[Any]], Any]
"""Picks (or merges) one value from the live siblings, given oldest write first."""


class _Sentinel(enum.Enum):
    MISSING = "missing"  # no live value
    REMOTE = "remote"  # the fast path does not apply: ask the coordinator


MISSING: Final = _Sentinel.MISSING
REMOTE: Final = _Sentinel.REMOTE


def _no_partition(_stored: bytes) -> int:
    return 0


def read_owners(view: Membership, partition: int, n: int) -> tuple[str, ...]:
    """Where reads of `partition` go in `view`: a gossiped view's read owners (nobody while
    it is unjoined), a static view's preference list."""
    if isinstance(view, ClusterView):
        state = view.state
        return () if state is None else state.read_owners(partition, min(n, state.n_val))
    return view.ring.preference_list(partition, n)


class Route(NamedTuple):
    """Where reads go under one cluster view: owned[p] is 1 when this member is a read owner of
    partition p, local[p] when it also serves such reads by itself (r resolves to 1 there);
    all_local and fast: every / some partition is local."""

    view: Membership | None
    all_local: bool
    fast: bool
    local: bytes
    partition_of: Callable[[bytes], int]
    owned: bytes


class ReadFence:
    """Lets fast-path reads in any thread finish before the store closes, and refuses new ones
    after: the LMDB store's `FencedReader` (localread) when the node's store is LMDB (`reader`),
    else nothing to fence (the memory engine's reads go through the engine, which refuses them
    once closed). `cut`: stored keys up to this size take the fast path (-1: none do)."""

    def __init__(self, engine: Engine, prefix: bytes, max_key_bytes: int) -> None:
        self.reader: localread.FencedReader | None = None
        self.cut = -1
        base = engine
        while isinstance(base, ObservedEngine):  # (anti-entropy watches writes; reads pass)
            base = base.inner
        if isinstance(base, LmdbEngine):
            env, dbi, cut = base.read_handle(DATA_DB)
            self.cut = min(cut, len(prefix) + max_key_bytes)
            self.reader = localread.FencedReader(
                env.begin, dbi, objects.HEADER_SIZE, TAG_BYTES, prefix, self.cut
            )

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close(FENCE_TIMEOUT_S)


class LocalReader:
    """Local reads and value resolution over one running node's store; safe from any thread."""

    def _init_reader(
        self,
        node: Node,
        *,
        namespace: str,
        r: QuorumSpec,
        resolver: Resolver | None,
        codec: ValueCodec,
        fence: ReadFence,
    ) -> None:
        self._node_id = node.node_id
        self._coordinator: Coordinator = node.coordinator
        self._engine = node.engine
        self._clock = node.clock
        self._max_key_bytes = node.config.limits.key_size_bytes
        self._namespace = namespace
        self._prefix = objects.object_key(namespace, b"")
        self._r = r
        self._resolver = resolver
        self._codec = codec
        self._values = versions.values
        self._route: Route = Route(None, False, False, b"", _no_partition, b"")
        self._fence = fence
        reader = fence.reader
        self._read = None if reader is None else reader.read
        self._read_key = None if reader is None else reader.read_key
        self._fast_max_bytes = fence.cut  # stored keys up to this size take the LMDB fast path

    @property
    def reads_lmdb_directly(self) -> bool:
        """True when local reads run their own LMDB read transaction in the calling thread (an
        LMDB store); False on the memory engine, where they go through the engine."""
        return self._read is not None

    def _remote_get(self, key: object, default: Any, r: QuorumSpec | None) -> Any:
        """What `get` returns when the fast path does not apply (here: REMOTE)."""
        return REMOTE

    # -- keys and views ----------------------------------------------------------------------------

    def key_bytes(self, key: object) -> bytes:
        """A key as bytes (str: UTF-8); SerializationError or KeyTooLarge when it cannot be."""
        if type(key) is bytes:
            raw = key
        elif isinstance(key, str):
            raw = key.encode("utf-8")
        elif isinstance(key, bytes | bytearray | memoryview):
            raw = bytes(key)
        else:
            raise SerializationError(f"a cache key is bytes or str, got {type(key).__name__}")
        if len(raw) > self._max_key_bytes:
            raise KeyTooLarge(f"key is {len(raw)} bytes; the limit is {self._max_key_bytes}")
        return raw

    def _refresh(self, view: Membership) -> Route:
        """Recompute which partitions this member serves reads of (the view changed): those it
        is a read owner of in the current cluster view (during a handoff, a new owner once its
        partition is confirmed, a leaving owner until then), never a stale static ring. The
        route is published as one object, so a reader in another thread never mixes two views."""
        n = view.n_for(self._namespace)
        owners = [read_owners(view, p, n) for p in range(view.ring.q)]
        owned = bytes(self._node_id in o for o in owners)
        local = bytes(
            bool(mine) and resolve_quorum(self._r, len(o)) == 1
            for mine, o in zip(owned, owners, strict=True)
        )
        route = Route(view, all(local), any(local), local, view.ring.partition_of, owned)
        self._route = route
        return route

    def _current_route(self) -> Route:
        route = self._route
        view = self._coordinator.membership
        return route if route.view is view else self._refresh(view)

    def replicates(self, key: bytes | str) -> bool:
        """True when this member is a read owner of `key` in the current cluster view (it holds
        a full replica; with r=1 its reads are local)."""
        route = self._current_route()
        return bool(route.owned[route.partition_of(self._prefix + self.key_bytes(key))])

    # -- the fast path -----------------------------------------------------------------------------

    def get(self, key: object, default: Any = None, *, r: QuorumSpec | None = None) -> Any:
        """The value of `key`, or `default` when it has none (absent, deleted or expired). With
        r=1 (the default) and a key this member replicates, served in this thread from the local
        store; otherwise by `_remote_get`."""
        if r is not None:
            return self._remote_get(key, default, r)
        route = self._route
        if route[0] is not self._coordinator.membership:
            route = self._refresh(self._coordinator.membership)
        if route[1] and self._read_key is not None:  # every read is local, the store is LMDB
            try:
                found = self._read_key(key)
            except StorageClosed:
                raise CacheClosed("the cache is closed") from None
            if type(found) is bytes:
                return found  # one live value of plain bytes: the common case
            if found is not False:
                return self._value_of(found, default)  # type: ignore[arg-type]
        return self._get_slow(key, default, route)

    def _get_slow(self, key: object, default: Any, route: Route) -> Any:
        """`get` of a key the one-call path does not take: not every read is local, the memory
        engine, a key of another type or past the LMDB cut."""
        raw = self.key_bytes(key)
        stored = self._prefix + raw
        if not route[1] and (not route[2] or not route[3][route[4](stored)]):
            return self._remote_get(key, default, None)
        if len(stored) <= self._fast_max_bytes:  # LMDB, a key within the limit and the cut
            try:
                found = self._read(stored)  # type: ignore[misc]  # (set with _fast_max_bytes)
            except StorageClosed:
                raise CacheClosed("the cache is closed") from None
        else:
            set_bytes = self._read_engine(raw, stored)
            if set_bytes is None:
                return default
            found = localread.classify(set_bytes, objects.HEADER_SIZE, TAG_BYTES)
        return self._value_of(found, default)

    def _value_of(self, found: bytes | list[bytes] | None, default: Any) -> Any:
        """What a get returns for what a local read found (localread: plain bytes, a set's
        values, or None)."""
        if type(found) is bytes:
            return found
        if found is None:
            return default
        value = self.resolve_values(found)  # type: ignore[arg-type]
        return default if value is MISSING else value

    def _read_engine(self, raw: bytes, stored: bytes) -> bytes | None:
        """The stored set through the engine (memory engine, or a key past the LMDB cut)."""
        self.key_bytes(raw)  # KeyTooLarge
        try:
            return self._engine.get(DATA_DB, stored)
        except StorageClosed:
            raise CacheClosed("the cache is closed") from None

    def lookup_local(self, key: object) -> Any:
        """The fast path alone: the value, MISSING (no live value), or REMOTE (it does not
        apply: r is not 1 or this member does not replicate the key)."""
        if not self._serves(self._prefix + self.key_bytes(key)):
            return REMOTE
        return LocalReader.get(self, key, MISSING)

    def _serves(self, stored: bytes) -> bool:
        """True when the fast path serves this stored key (r=1, a local replica)."""
        route = self._current_route()
        return route.all_local or (route.fast and bool(route.local[route.partition_of(stored)]))

    # -- resolution --------------------------------------------------------------------------------

    def resolve(self, set_bytes: bytes | None) -> Any:
        """The value a get returns for a stored version set (MISSING when none is live)."""
        if set_bytes is None:
            return MISSING
        return self.resolve_values(self._values(set_bytes))

    def resolve_values(self, raws: list[bytes]) -> Any:
        """resolve() of a set's values (its encoded envelopes)."""
        if len(raws) == 1:
            envelope = objects.decode_envelope(raws[0])
            if envelope.visible(self._clock.now_ms()):
                return self._codec.decode(envelope.data)
            return MISSING
        winner = self._winner_of(raws)
        return MISSING if winner is None else winner[1]

    def winner(self, set_bytes: bytes | None) -> tuple[bytes, Any] | None:
        """(stored data, value) of the resolved value; None when nothing is live."""
        return None if set_bytes is None else self._winner_of(self._values(set_bytes))

    def _winner_of(self, raws: list[bytes]) -> tuple[bytes, Any] | None:
        """The winner among encoded envelopes. With the default resolver a tombstone at least
        as new as every live value wins (the key is deleted)."""
        envelopes = [objects.decode_envelope(raw) for raw in raws]
        candidates = self._candidates(envelopes)
        if not candidates:
            return None
        if self._resolver is not None:
            value = self._resolver([value for _, _, value in candidates])
            return self._codec.encode(value, now_ms=self._clock.now_ms()), value
        ts, data, value = candidates[-1]
        if any(e.tombstone and e.timestamp_ms >= ts for e in envelopes):
            return None
        return data, value

    def _candidates(self, envelopes: list[objects.Envelope]) -> list[tuple[int, bytes, Any]]:
        """(timestamp_ms, stored data, value) of the live siblings, oldest first; counter
        siblings merged into one (at the newest of their timestamps)."""
        now_ms = self._clock.now_ms()
        live = [e for e in envelopes if e.visible(now_ms)]
        counters = [e for e in live if e.data[:1] == _TAG_COUNTER_BYTE]
        out: list[tuple[int, bytes, Any]] = [
            (e.timestamp_ms, e.data, MISSING) for e in live if e.data[:1] != _TAG_COUNTER_BYTE
        ]
        if counters:
            merged = merge_all([decode_counter(e.data[1:]) for e in counters])
            data = _TAG_COUNTER_BYTE + merged.encode()
            out.append((max(e.timestamp_ms for e in counters), data, merged.value))
        out.sort(key=lambda c: (c[0], c[1]))
        decode = self._codec.decode
        return [(ts, data, decode(data) if value is MISSING else value) for ts, data, value in out]


__all__ = ["MISSING", "REMOTE", "LocalReader", "ReadFence", "Resolver"]
