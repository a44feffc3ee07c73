"""Active anti-entropy: the Merkle trees of one node (one per (partition, n) over its keys in the
data db, kept current through `ObservedEngine`), the exchange protocol between two replicas
(roots, then only the differing inner nodes, then the differing segments' (key, digest) lists,
then a two-way version-set merge of only the differing keys), the periodic exchange task, and
`SelfHealing`, which composes hinted handoff, anti-entropy and the reaper for the node.

Trees are kept lazily exact: a data write marks its key dirty; before any tree is read the dirty
keys are re-read from the store and re-hashed (so concurrent commits, whatever order their
waiters wake in, always leave the tree equal to the store). An exchange never trusts the tree
alone: it compares the sets themselves before it writes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from dynacore import objects
from dynacore._backend import merkle, wire
from dynacore.cluster.hints import (
    DATA_DB,
    SETS_PUT,
    SETS_PUT_MAX_PAIRS,
    UNREACHABLE,
    Handler,
    Health,
    HintedHandoff,
    Peers,
    check_pairs,
    merge_into,
    merged,
    n_for_key,
)
from dynacore.cluster.reaper import CounterFloor, Reaper
from dynacore.config import NodeConfig
from dynacore.errors import ConnectionLost, DynacoreError, ProtocolError, Unavailable
from dynacore.limits import MAX_N
from dynacore.membership import Membership
from dynacore.messages import RING_GET, expect
from dynacore.net.messages import Value
from dynacore.net.rpc import RpcClient
from dynacore.storage import Engine, EngineStats, Update
from dynacore.storage.engine import Done

log = logging.getLogger(__name__)

# -- messages (the self-healing range is 80–95; hints.py and reaper.py hold the others) ------------

AAE_HASHES: Final = 82
"""[partition, n, fanout, depth, level, parents: list[int]] -> [hashes: bytes]  the hashes at
`level` of every child of each parent (at level - 1), in order, as one blob of 32-byte hashes;
level 0 (parents []) is the root."""

AAE_SEGMENTS: Final = 83
"""[partition, n, fanout, depth, indexes: list[int]] -> [segments: list[list[[key, digest]]]]
(the segments of a prefix of `indexes`, as many as fit in one reply; the caller asks again)"""

SETS_GET: Final = 84
"""[keys: list[bytes]] -> [sets: list[bytes | None]]  (a prefix of `keys`, as for AAE_SEGMENTS)"""

AAE_REPAIR: Final = 87
"""[partition] -> [keys_repaired, exchanges, bytes]  a full exchange of the partition now"""

AAE_STATUS: Final = 88
"""[] -> [interval_s: float, trees: list[[partition, n, keys, last_exchange_ms, exchanges,
keys_repaired, last_peer]], hints: list[[target, count]]]"""

# -- bounds ----------------------------------------------------------------------------------------

HASH_BYTES = 32
TREE_FANOUT = 16
TREE_DEPTH = 3  # 4096 segments per tree
BUILD_CHUNK_KEYS = 1024  # keys read per step of the start-up build (a checkpoint in between)
DIRTY_MAX_KEYS = 2048  # beyond this backlog of dirty keys, each write hashes a few of them
DIRTY_STEP_KEYS = 2  # (so the backlog stays bounded with no pause of the event loop)
HASHES_PER_REQUEST = 8192  # inner-node hashes asked in one AAE_HASHES
SEGMENTS_PER_REQUEST = 1024
SYNC_BATCH_KEYS = 256  # differing keys fetched and merged per step
MAX_LIST_ITEMS = 1 << 16  # any list in a request
REPAIR_TIMEOUT_FACTOR = 60.0  # AAE_REPAIR may take this many request timeouts

TreeId = tuple[int, int]
"""(partition, n): the keys of one partition whose namespace replicates to n nodes."""


# -- the storage hook ------------------------------------------------------------------------------


class ObservedEngine:
    """An Engine that tells its observers the key of every data write once it has settled
    (committed, failed or cancelled: observers re-read the store, so they need no value)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.observers: list[Callable[[bytes], None]] = []

    @property
    def stats(self) -> EngineStats:
        return self.inner.stats

    def get(self, db: str, key: bytes) -> bytes | None:
        return self.inner.get(db, key)

    def get_many(self, db: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.inner.get_many(db, keys)

    def scan(
        self, db: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(db, start, end, limit)

    def count(self, db: str) -> int:
        return self.inner.count(db)

    async def update(self, db: str, key: bytes, fn: Update) -> bytes | None:
        try:
            return await self.inner.update(db, key, fn)
        finally:
            if db == DATA_DB:
                self._notify([key])

    def update_soon(self, db: str, key: bytes, fn: Update, on_done: Done) -> bool:
        if db != DATA_DB:
            return self.inner.update_soon(db, key, fn, on_done)

        def settled(result: bytes | None, error: Exception | None) -> None:
            self._notify([key])
            on_done(result, error)

        return self.inner.update_soon(db, key, fn, settled)

    async def update_many(self, db: str, ops: Sequence[tuple[bytes, Update]]) -> list[bytes | None]:
        try:
            return await self.inner.update_many(db, ops)
        finally:
            if db == DATA_DB:
                self._notify([key for key, _ in ops])

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _notify(self, keys: list[bytes]) -> None:
        for observer in self.observers:
            for key in keys:
                observer(key)

    def __getattr__(self, name: str) -> Any:  # engine-specific extras (MemoryEngine.crash, ...)
        return getattr(self.inner, name)


# -- the trees -------------------------------------------------------------------------------------


@dataclass
class TreeStats:
    """What aae-status shows for one tree."""

    last_exchange_ms: int = 0
    exchanges: int = 0
    keys_repaired: int = 0
    last_peer: str = ""


class Trees:
    """The Merkle trees of one node over its data db, one per TreeId, made on first use."""

    def __init__(
        self,
        store: Engine,
        view: Callable[[], Membership],
        *,
        fanout: int = TREE_FANOUT,
        depth: int = TREE_DEPTH,
    ) -> None:
        self._store = store
        self._view = view
        self.fanout = fanout
        self.depth = depth
        self._trees: dict[TreeId, merkle.MerkleTree] = {}
        self._empty = merkle.MerkleTree(fanout, depth)
        self._dirty: set[bytes] = set()
        self.ready = trio.Event()  # set once the start-up build is done

    def tree_id(self, key: bytes) -> TreeId:
        view = self._view()
        return view.ring.partition_of(key), n_for_key(view, key)

    @property
    def partitions(self) -> int:
        return self._view().ring.q

    def ids(self) -> list[TreeId]:
        """The trees that exist (a tree is made by the first key it holds)."""
        self.flush()
        return sorted(self._trees)

    def mark(self, key: bytes) -> None:
        """A data write of `key` settled: re-hash it before the next read of the trees."""
        self._dirty.add(key)
        if len(self._dirty) > DIRTY_MAX_KEYS:
            for _ in range(DIRTY_STEP_KEYS):
                dirty = self._dirty.pop()
                self._apply(dirty, self._store.get(DATA_DB, dirty))

    @property
    def backlog(self) -> int:
        """Keys written since the trees last saw them."""
        return len(self._dirty)

    def flush(self) -> None:
        """Bring every tree up to date with the store for the keys marked dirty (at most
        DIRTY_MAX_KEYS + 1 of them)."""
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            self._apply(key, self._store.get(DATA_DB, key))

    def _apply(self, key: bytes, set_bytes: bytes | None) -> None:
        tid = self.tree_id(key)
        if set_bytes is None:
            tree = self._trees.get(tid)
            if tree is not None:
                tree.remove(key)
            return
        self._tree(tid).update(key, objects.object_digest(set_bytes))

    def _tree(self, tid: TreeId) -> merkle.MerkleTree:
        tree = self._trees.get(tid)
        if tree is None:
            tree = self._trees[tid] = merkle.MerkleTree(self.fanout, self.depth)
        return tree

    def get(self, tid: TreeId) -> merkle.MerkleTree:
        """The up-to-date tree of `tid` (an empty one when this node holds no such key)."""
        self.flush()
        return self._trees.get(tid, self._empty)

    def size(self, tid: TreeId) -> int:
        self.flush()
        tree = self._trees.get(tid)
        return 0 if tree is None else tree.size

    async def build(self) -> None:
        """Hash the whole data db into the trees, a chunk at a time; then `ready` is set."""
        start = b""
        while True:
            rows = self._store.scan(DATA_DB, start, None, limit=BUILD_CHUNK_KEYS)
            grouped: dict[TreeId, list[tuple[bytes, bytes]]] = {}
            for key, set_bytes in rows:
                pair = (key, objects.object_digest(set_bytes))
                grouped.setdefault(self.tree_id(key), []).append(pair)
            for tid, pairs in grouped.items():
                self._tree(tid).update_many(pairs)
            if len(rows) < BUILD_CHUNK_KEYS:
                break
            start = rows[-1][0] + b"\x00"
            await trio.sleep(0)
        self.flush()
        self.ready.set()


# -- one replica's side of an exchange -------------------------------------------------------------


class Replica:
    """What an exchange reads and writes on one node: its trees and its data db. The AAE
    handlers answer a remote exchange with these same methods."""

    def __init__(self, store: Engine, trees: Trees, max_reply_bytes: int) -> None:
        self.store = store
        self.trees = trees
        self.max_reply_bytes = max_reply_bytes

    def check_tid(self, partition: int, n: int, fanout: int, depth: int) -> TreeId:
        """The TreeId a request names; ProtocolError for a bad one or another tree shape,
        Unavailable while the trees are still being built."""
        if not 0 <= partition < self.trees.partitions or not 1 <= n <= MAX_N:
            raise ProtocolError(f"no tree ({partition}, {n}) in a ring of {self.trees.partitions}")
        if (fanout, depth) != (self.trees.fanout, self.trees.depth):
            raise ProtocolError(
                f"tree shape {fanout}/{depth} differs from this node's "
                f"{self.trees.fanout}/{self.trees.depth}"
            )
        if not self.trees.ready.is_set():
            raise Unavailable("the Merkle trees are still being built")
        return partition, n

    def hashes(self, tid: TreeId, level: int, indexes: Sequence[int]) -> list[bytes]:
        return self.trees.get(tid).hashes(level, indexes)

    def children(self, tid: TreeId, level: int, parents: Sequence[int]) -> list[bytes]:
        """The hashes at `level` of the children of `parents` (level 0: the root)."""
        if level == 0:
            return self.hashes(tid, 0, [0])
        return self.hashes(tid, level, _children(parents, self.trees.fanout))

    def segments(self, tid: TreeId, indexes: Sequence[int]) -> list[list[tuple[bytes, bytes]]]:
        """The (key, digest) lists of a prefix of `indexes` that fits in one reply."""
        tree = self.trees.get(tid)
        out: list[list[tuple[bytes, bytes]]] = []
        size_bytes = 0
        for index in indexes:
            pairs = tree.segment(index)
            size_bytes += sum(len(key) + 40 for key, _ in pairs) + 8
            if out and size_bytes > self.max_reply_bytes:
                break
            out.append(pairs)
        return out

    def get_sets(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The stored sets of a prefix of `keys` that fits in one reply."""
        out: list[bytes | None] = []
        size_bytes = 0
        for key in keys:
            value = self.store.get(DATA_DB, key)
            size_bytes += (len(value) if value is not None else 0) + 8
            if out and size_bytes > self.max_reply_bytes:
                break
            out.append(value)
        return out

    async def put_sets(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        await merge_into(self.store, DATA_DB, pairs)

    # -- handlers (the remote side of an exchange, and hint delivery) ------------------------------

    def handlers(self) -> dict[int, Handler]:
        return {
            AAE_HASHES: self.handle_hashes,
            AAE_SEGMENTS: self.handle_segments,
            SETS_GET: self.handle_sets_get,
            SETS_PUT: self.handle_sets_put,
        }

    async def handle_hashes(self, fields: list[Any]) -> list[Any]:
        partition, n, fanout, depth, level, parents = expect(
            fields, (int, int, int, int, int, list), "AAE_HASHES"
        )
        tid = self.check_tid(partition, n, fanout, depth)
        _check_list(parents, int, "AAE_HASHES parents")
        if len(parents) * fanout > HASHES_PER_REQUEST or (level == 0) != (not parents):
            raise ProtocolError(f"AAE_HASHES: level {level} with {len(parents)} parents")
        return [b"".join(self.children(tid, level, parents))]

    async def handle_segments(self, fields: list[Any]) -> list[Any]:
        partition, n, fanout, depth, indexes = expect(
            fields, (int, int, int, int, list), "AAE_SEGMENTS"
        )
        tid = self.check_tid(partition, n, fanout, depth)
        _check_list(indexes, int, "AAE_SEGMENTS indexes")
        return [[[[key, digest] for key, digest in seg] for seg in self.segments(tid, indexes)]]

    async def handle_sets_get(self, fields: list[Any]) -> list[Any]:
        (keys,) = expect(fields, (list,), "SETS_GET")
        _check_list(keys, bytes, "SETS_GET keys")
        return [self.get_sets(keys)]

    async def handle_sets_put(self, fields: list[Any]) -> list[Any]:
        (items,) = expect(fields, (list,), "SETS_PUT")
        await self.put_sets(check_pairs(items, "SETS_PUT", SETS_PUT_MAX_PAIRS))
        return []


class Remote(Protocol):
    """The other replica of an exchange."""

    bytes_sent: int  # requests and replies, as encoded frames

    async def children(self, tid: TreeId, level: int, parents: list[int]) -> list[bytes]: ...

    async def segments(
        self, tid: TreeId, indexes: list[int]
    ) -> list[list[tuple[bytes, bytes]]]: ...

    async def get_sets(self, keys: list[bytes]) -> list[bytes | None]: ...

    async def put_sets(self, pairs: list[tuple[bytes, bytes]]) -> None: ...


Send = Callable[[int, list[Value]], Awaitable[list[Value]]]


class FieldsRemote:
    """A Remote over request/reply field lists (`send`: an RPC, or a direct handler call in
    tests and benches); counts the bytes of every request and reply as wire frames."""

    def __init__(self, send: Send, shape: tuple[int, int], max_request_bytes: int) -> None:
        self._send = send
        self._fanout, self._depth = shape
        self._max_request_bytes = max_request_bytes
        self.bytes_sent = 0

    async def _call(self, msg_type: int, fields: list[Value]) -> list[Value]:
        self.bytes_sent += len(wire.encode_frame(msg_type, 0, fields))
        reply = await self._send(msg_type, fields)
        self.bytes_sent += len(wire.encode_frame(msg_type, 0, reply))
        return reply

    async def children(self, tid: TreeId, level: int, parents: list[int]) -> list[bytes]:
        out: list[bytes] = []
        step = HASHES_PER_REQUEST // self._fanout
        for start in range(0, max(len(parents), 1), step):
            chunk: list[Value] = list(parents[start : start + step])
            fields: list[Value] = [*tid, self._fanout, self._depth, level, chunk]
            (blob,) = expect(await self._call(AAE_HASHES, fields), (bytes,), "AAE_HASHES reply")
            expected = HASH_BYTES * (len(chunk) * self._fanout if level else 1)
            if len(blob) != expected:
                raise ProtocolError("AAE_HASHES reply does not match the request")
            out.extend(blob[i : i + HASH_BYTES] for i in range(0, len(blob), HASH_BYTES))
        return out

    async def segments(self, tid: TreeId, indexes: list[int]) -> list[list[tuple[bytes, bytes]]]:
        out: list[list[tuple[bytes, bytes]]] = []
        while len(out) < len(indexes):
            chunk: list[Value] = list(indexes[len(out) : len(out) + SEGMENTS_PER_REQUEST])
            fields: list[Value] = [*tid, self._fanout, self._depth, chunk]
            (segs,) = expect(await self._call(AAE_SEGMENTS, fields), (list,), "AAE_SEGMENTS reply")
            if not 1 <= len(segs) <= len(chunk):
                raise ProtocolError("AAE_SEGMENTS reply does not match the request")
            out.extend(_parse_segment(seg) for seg in segs)
        return out

    async def get_sets(self, keys: list[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = []
        while len(out) < len(keys):
            chunk: list[Value] = list(keys[len(out) : len(out) + SYNC_BATCH_KEYS])
            (sets,) = expect(await self._call(SETS_GET, [chunk]), (list,), "SETS_GET reply")
            if not 1 <= len(sets) <= len(chunk):
                raise ProtocolError("SETS_GET reply does not match the request")
            if not all(s is None or isinstance(s, bytes) for s in sets):
                raise ProtocolError("SETS_GET reply holds something other than sets")
            out.extend(sets)
        return out

    async def put_sets(self, pairs: list[tuple[bytes, bytes]]) -> None:
        batch: list[Value] = []
        size_bytes = 0
        for key, set_bytes in pairs:
            size_bytes += len(key) + len(set_bytes) + 16
            if batch and size_bytes > self._max_request_bytes:
                await self._call(SETS_PUT, [batch])
                batch, size_bytes = [], len(key) + len(set_bytes) + 16
            batch.append([key, set_bytes])
        if batch:
            await self._call(SETS_PUT, [batch])


def direct_send(handlers: dict[int, Handler], max_frame_bytes: int) -> Send:
    """A Send that calls `handlers` in this process, with every request and reply going
    through the wire codec as over a connection (tests and benches)."""

    async def send(msg_type: int, fields: list[Value]) -> list[Value]:
        frame = wire.encode_frame(msg_type, 1, fields)
        _type, _id, decoded = wire.decode_frame(frame, max_frame_bytes)
        reply = await handlers[msg_type](decoded)
        return wire.decode_frame(wire.encode_frame(msg_type, 1, reply), max_frame_bytes)[2]

    return send


def _parse_segment(seg: object) -> list[tuple[bytes, bytes]]:
    if not isinstance(seg, list):
        raise ProtocolError("a segment is a list of [key, digest]")
    out: list[tuple[bytes, bytes]] = []
    for pair in seg:
        if not isinstance(pair, list):
            raise ProtocolError("a segment entry is a [key, digest] list")
        key, digest = expect(pair, (bytes, bytes), "segment entry")
        out.append((key, digest))
    return out


# -- the exchange ----------------------------------------------------------------------------------


@dataclass
class ExchangeResult:
    """What one exchange found and did."""

    segments_differing: int = 0
    keys_differing: int = 0
    keys_repaired: int = 0  # keys written on either side
    bytes_sent: int = 0


async def exchange(local: Replica, remote: Remote, tid: TreeId) -> ExchangeResult:
    """Compare the trees of `tid` on both replicas and merge only the differing keys, both ways."""
    result = ExchangeResult()
    segments = await _differing_segments(local, remote, tid)
    result.segments_differing = len(segments)
    if segments:
        keys = await _differing_keys(local, remote, tid, segments)
        result.keys_differing = len(keys)
        result.keys_repaired = await sync_keys(local, remote, tid, keys)
    result.bytes_sent = remote.bytes_sent
    return result


async def _differing_segments(local: Replica, remote: Remote, tid: TreeId) -> list[int]:
    """Descend from the roots into the inner nodes that differ; the differing segments."""
    fanout = local.trees.fanout
    parents: list[int] = []
    for level in range(local.trees.depth + 1):
        theirs = await remote.children(tid, level, parents)
        ours = local.children(tid, level, parents)
        indexes = _children(parents, fanout) if level else [0]
        parents = [i for i, a, b in zip(indexes, ours, theirs, strict=True) if a != b]
        if not parents:
            break
    return parents


def _children(parents: Sequence[int], fanout: int) -> list[int]:
    return [child for i in parents for child in range(i * fanout, (i + 1) * fanout)]


async def _differing_keys(
    local: Replica, remote: Remote, tid: TreeId, segments: list[int]
) -> list[bytes]:
    theirs = await remote.segments(tid, segments)
    tree = local.trees.get(tid)
    keys: list[bytes] = []
    for index, remote_pairs in zip(segments, theirs, strict=True):
        ours = dict(tree.segment(index))
        other = dict(remote_pairs)
        keys.extend(k for k in sorted(ours.keys() | other.keys()) if ours.get(k) != other.get(k))
    return keys


async def sync_keys(local: Replica, remote: Remote, tid: TreeId, keys: list[bytes]) -> int:
    """Merge the sets of `keys` on both replicas; how many keys were written on either side.
    Keys that do not belong to `tid` (a confused peer) are ignored."""
    keys = [key for key in keys if local.trees.tree_id(key) == tid]
    repaired = 0
    for start in range(0, len(keys), SYNC_BATCH_KEYS):
        chunk = keys[start : start + SYNC_BATCH_KEYS]
        theirs = await remote.get_sets(chunk)
        to_local: list[tuple[bytes, bytes]] = []
        to_remote: list[tuple[bytes, bytes]] = []
        for key, remote_set in zip(chunk, theirs, strict=True):
            local_set = local.store.get(DATA_DB, key)
            both = merged([local_set, remote_set])
            if both is None:
                continue
            if both != local_set:
                to_local.append((key, both))
            if both != remote_set:
                to_remote.append((key, both))
            repaired += both != local_set or both != remote_set
        for key in chunk:  # a tree entry that drifted from the store heals here
            local.trees.mark(key)
        if to_local:
            await local.put_sets(to_local)
        if to_remote:
            await remote.put_sets(to_remote)
    return repaired


# -- the service -----------------------------------------------------------------------------------


class AntiEntropy:
    """The trees, the AAE handlers and the periodic exchange task of one node."""

    def __init__(
        self,
        *,
        node_id: str,
        replica: Replica,
        peers: Peers,
        clock_ms: Callable[[], int],
        interval_s: float,
    ) -> None:
        assert interval_s >= 0
        self.node_id = node_id
        self.replica = replica
        self.trees = replica.trees
        self._peers = peers
        self._clock_ms = clock_ms
        self._interval_s = interval_s
        self._lock = trio.Lock()  # one exchange at a time
        self._cursor = 0
        self.stats: dict[TreeId, TreeStats] = {}

    # -- schedule ----------------------------------------------------------------------------------

    def schedule(self) -> list[tuple[TreeId, str]]:
        """Every (tree, peer) pair this node exchanges: its partitions, with each co-replica."""
        view = self._peers.view()
        pairs: list[tuple[TreeId, str]] = []
        for n in sorted({view.n, *view.namespaces.values()}):
            for partition in range(view.ring.q):
                replicas = view.ring.preference_list(partition, n)
                if self.node_id in replicas:
                    pairs.extend(((partition, n), p) for p in replicas if p != self.node_id)
        return pairs

    async def run(self) -> None:
        """Build the trees, then exchange one (tree, peer) pair every interval_s (0: never)."""
        await self.trees.build()
        if self._interval_s <= 0:
            return
        while True:
            await trio.sleep(self._interval_s)
            pair = self._next_pair()
            if pair is not None:
                await self._exchange_quietly(*pair)

    def _next_pair(self) -> tuple[TreeId, str] | None:
        pairs = self.schedule()
        for _ in range(len(pairs)):
            self._cursor = (self._cursor + 1) % len(pairs)
            tid, peer = pairs[self._cursor]
            if self._peers.health.is_up(peer):
                return tid, peer
        return None

    async def _exchange_quietly(self, tid: TreeId, peer: str) -> ExchangeResult | None:
        try:
            return await self.exchange_with(peer, tid)
        except DynacoreError as exc:  # unreachable, still building, a bad answer: next time
            log.info("exchange of %s with %s stopped: %r", tid, peer, exc)
            return None

    async def exchange_with(self, peer: str, tid: TreeId) -> ExchangeResult:
        """One exchange of tree `tid` with `peer`, now (after any exchange in progress)."""
        async with self._lock:
            await self.trees.ready.wait()
            remote = FieldsRemote(
                self._rpc_send(peer),
                (self.trees.fanout, self.trees.depth),
                self.replica.max_reply_bytes,
            )
            result = await exchange(self.replica, remote, tid)
        stats = self.stats.setdefault(tid, TreeStats())
        stats.last_exchange_ms = self._clock_ms()
        stats.exchanges += 1
        stats.keys_repaired += result.keys_repaired
        stats.last_peer = peer
        if result.keys_repaired:
            log.info("exchange of %s with %s repaired %d keys", tid, peer, result.keys_repaired)
        return result

    def _rpc_send(self, peer: str) -> Send:
        async def send(msg_type: int, fields: list[Value]) -> list[Value]:
            reply = await self._peers.call(peer, msg_type, fields)
            if reply is None:
                raise ConnectionLost(f"{peer} is unreachable")
            return reply

        return send

    async def repair_partition(self, partition: int) -> tuple[int, int, int]:
        """Exchange every tree of `partition` with each co-replica, twice round, so that all
        replicas end up with the merge of all: (keys repaired, exchanges, bytes sent)."""
        view = self._peers.view()
        if not 0 <= partition < view.ring.q:
            raise ProtocolError(f"partition {partition} is not in [0, {view.ring.q})")
        repaired = exchanges = sent = 0
        for tid in sorted({tid for tid, _ in self.schedule() if tid[0] == partition}):
            others = [x for x in view.ring.preference_list(*tid) if x != self.node_id]
            for peer in others + others[:-1]:
                result = await self._exchange_quietly(tid, peer)
                if result is not None:
                    repaired += result.keys_repaired
                    exchanges += 1
                    sent += result.bytes_sent
        return repaired, exchanges, sent

    # -- handlers ----------------------------------------------------------------------------------

    def handlers(self) -> dict[int, Handler]:
        return {**self.replica.handlers(), AAE_REPAIR: self.handle_repair}

    async def handle_repair(self, fields: list[Any]) -> list[Any]:
        (partition,) = expect(fields, (int,), "AAE_REPAIR")
        return list(await self.repair_partition(partition))

    def status_fields(self) -> list[Value]:
        rows: list[Value] = []
        for tid in sorted(set(self.trees.ids()) | set(self.stats)):
            stats = self.stats.get(tid, TreeStats())
            rows.append(
                [
                    *tid,
                    self.trees.size(tid),
                    stats.last_exchange_ms,
                    stats.exchanges,
                    stats.keys_repaired,
                    stats.last_peer,
                ]
            )
        return [float(self._interval_s), rows]


def _check_list(items: list[Any], kind: type, what: str) -> None:
    if len(items) > MAX_LIST_ITEMS:
        raise ProtocolError(f"{what}: {len(items)} items, at most {MAX_LIST_ITEMS}")
    if not all(isinstance(item, kind) and not isinstance(item, bool) for item in items):
        raise ProtocolError(f"{what}: every item must be {kind.__name__}")


# -- the admin side (dynacore repair, dynacore aae-status) ----------------------------------------


@dataclass(frozen=True)
class TreeStatus:
    """One tree of one node, as AAE_STATUS reports it."""

    partition: int
    n: int
    keys: int
    last_exchange_ms: int  # 0: never
    exchanges: int
    keys_repaired: int
    last_peer: str


@dataclass(frozen=True)
class NodeAaeStatus:
    """A node's AAE_STATUS reply."""

    node_id: str
    interval_s: float
    trees: tuple[TreeStatus, ...]
    hints: tuple[tuple[str, int], ...]  # (target, pending hints)

    @classmethod
    def from_fields(cls, node_id: str, fields: Sequence[object]) -> NodeAaeStatus:
        interval_s, rows, hints = expect(fields, (float, list, list), "AAE_STATUS reply")
        trees = []
        for row in rows:
            if not isinstance(row, list):
                raise ProtocolError("malformed AAE_STATUS tree row")
            kinds = (int, int, int, int, int, int, str)
            trees.append(TreeStatus(*expect(row, kinds, "AAE_STATUS tree row")))
        pending = []
        for hint in hints:
            if not isinstance(hint, list):
                raise ProtocolError("malformed AAE_STATUS hint row")
            target, count = expect(hint, (str, int), "AAE_STATUS hint row")
            pending.append((target, count))
        return cls(node_id, interval_s, tuple(trees), tuple(pending))


@dataclass
class RepairReport:
    """What `dynacore repair` did."""

    partitions: int = 0
    exchanges: int = 0
    keys_repaired: int = 0
    bytes_sent: int = 0
    failed: list[int] = field(default_factory=list)  # partitions no replica could repair


Call = Callable[[str, int, list[Value], float], Awaitable[list[Value]]]
"""(address, message type, fields, timeout_s) -> reply fields: an RpcClient's call."""


async def fetch_view(call: Call, seeds: Sequence[str], timeout_s: float) -> Membership:
    """The cluster view from the first seed that answers; Unavailable if none does."""
    for seed in seeds:
        try:
            return Membership.from_fields(await call(seed, RING_GET, [], timeout_s))
        except UNREACHABLE:
            continue
    raise Unavailable(f"no seed answered: {list(seeds)}")


async def repair_cluster(
    call: Call,
    view: Membership,
    partitions: Sequence[int],
    timeout_s: float,
    on_partition: Callable[[int, RepairReport], None],
) -> RepairReport:
    """A full exchange of each partition now, run by its first replica that answers."""
    report = RepairReport()
    widest = max({view.n, *view.namespaces.values()})
    for partition in partitions:
        done = False
        for node in view.ring.preference_list(partition, widest):
            try:
                reply = await call(view.address_of(node), AAE_REPAIR, [partition], timeout_s)
            except UNREACHABLE:
                continue
            repaired, exchanges, sent = expect(reply, (int, int, int), "AAE_REPAIR reply")
            report.keys_repaired += repaired
            report.exchanges += exchanges
            report.bytes_sent += sent
            done = True
            break
        report.partitions += 1
        if not done:
            report.failed.append(partition)
        on_partition(partition, report)
    return report


async def fetch_aae_status(
    call: Call, view: Membership, timeout_s: float
) -> list[tuple[str, NodeAaeStatus | None]]:
    """Every member's AAE_STATUS (None for a node that did not answer)."""
    out: list[tuple[str, NodeAaeStatus | None]] = []
    for node in view.nodes:
        try:
            reply = await call(view.address_of(node), AAE_STATUS, [], timeout_s)
        except UNREACHABLE:
            out.append((node, None))
            continue
        out.append((node, NodeAaeStatus.from_fields(node, reply)))
    return out


# -- composition -----------------------------------------------------------------------------------


class SelfHealing:
    """Hinted handoff, active anti-entropy and the reaper of one node, wired to its store.

    The node hands in the observed store (every data write marks a Merkle leaf dirty), its RPC
    client, the current cluster view and peer health. `start` runs the background tasks in the
    node's nursery; `handlers` are the node messages 80–95; the coordinator's hooks are
    `handoff.fallback` (sloppy quorum) and `floor` (the counter floor after reaping).
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        actor_id: str,
        store: ObservedEngine,
        rpc: RpcClient,
        view: Callable[[], Membership],
        health: Health,
        clock_ms: Callable[[], int],
    ) -> None:
        self.peers = Peers(rpc, view, health, config.limits)
        self.trees = Trees(store, view)
        store.observers.append(self.trees.mark)
        self.handoff = HintedHandoff(
            node_id=config.node_id, store=store, peers=self.peers, interval_s=config.hint_interval_s
        )
        self.aae = AntiEntropy(
            node_id=config.node_id,
            replica=Replica(store, self.trees, self.peers.max_reply_bytes),
            peers=self.peers,
            clock_ms=clock_ms,
            interval_s=config.aae_interval_s,
        )
        self.floor = CounterFloor(store, actor_id)
        self.reaper = Reaper(
            node_id=config.node_id,
            store=store,
            peers=self.peers,
            clock_ms=clock_ms,
            floor=self.floor,
            interval_s=config.reap_interval_s,
            grace_s=config.tombstone_grace_s,
        )

    async def start(self, nursery: trio.Nursery) -> None:
        """Load the counter floor, then start hint delivery, tree build + exchanges, reaping."""
        await self.floor.load()
        nursery.start_soon(self.handoff.run)
        nursery.start_soon(self.aae.run)
        nursery.start_soon(self.reaper.run)

    def handlers(self) -> dict[int, Handler]:
        return {
            **self.handoff.handlers(),
            **self.aae.handlers(),
            **self.reaper.handlers(),
            AAE_STATUS: self.handle_status,
        }

    async def handle_status(self, fields: list[Any]) -> list[Any]:
        expect(fields, (), "AAE_STATUS")
        hints = [
            [target, count] for target, count in sorted(self.handoff.hints.by_target().items())
        ]
        return [*self.aae.status_fields(), hints]


__all__ = [
    "AAE_HASHES",
    "AAE_REPAIR",
    "AAE_SEGMENTS",
    "AAE_STATUS",
    "SETS_GET",
    "AntiEntropy",
    "ExchangeResult",
    "FieldsRemote",
    "NodeAaeStatus",
    "ObservedEngine",
    "Remote",
    "RepairReport",
    "Replica",
    "SelfHealing",
    "TreeStatus",
    "Trees",
    "direct_send",
    "exchange",
    "fetch_aae_status",
    "fetch_view",
    "repair_cluster",
    "sync_keys",
]
