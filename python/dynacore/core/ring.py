"""ring: Dynamo partitioning (strategy 3) — key hashing, partition owners, preference lists,
the balanced claim, joins and leaves, and the ring's binary encoding. Pure-Python twin.

Hashing. A key's hash is xxh3-64 (seed 0) of its bytes; Q partitions (a power of two,
1 <= Q <= 65536) split the hash space equally: partition = hash >> (64 - log2 Q).

Preference lists. Walk the owners clockwise from partition p (p, p+1, ... mod Q): the first n
distinct nodes are the preference list, the remaining distinct nodes in walk order are the
extended list (sloppy quorum). Tables of the preference lists for n <= 16 are built on first use
and cached, so that a lookup is hash + shift + index.

Claim algorithm (identical on every backend; "node i" is the i-th node in sorted order; a node
is *spaced* at p when it owns none of the partitions p-2, p-1, p+1, p+2, mod Q, other than p):

- fresh claim(Q, nodes): the distinct nodes are sorted; S = their number (1 <= S <= Q).
  1. Round robin: partition p goes to node p mod S (balanced: counts differ by at most one).
  2. Repair of the wrap-around, only when S >= 3: for p = 0 .. Q-1, if owner[p] is not spaced
     at p, swap it with the first partition r (r = 0 .. Q-1) whose owner differs, such that after
     the swap both owners are spaced at their new places; if no r works, leave p as it is.
     Swaps keep the counts, and each accepted swap removes a spacing violation without creating
     one, so any 3 consecutive partitions have distinct owners wherever the repair can manage.
- join (with_node): the new node takes t = Q div (S+1) partitions, the fewest that restore
  balance of a balanced ring; every move goes to the new node.
  1. Donor levels: h is the smallest level with sum(max(0, c - h)) <= t over the old nodes'
     counts c; a donor must give c - h, and e = t - sum(max(0, c - h)) of the donors with
     c >= h may give one more (an "extra"): the counts of taking from the most loaded each time.
  2. Pass 1, p = 0 .. Q-1: take p when its owner is eligible (a give is left, or extras are left
     and it has not given its extra) and the new node is spaced at p. Pass 2, p = 0 .. Q-1: take
     p when its owner is eligible (spacing given up). Gives are spent before the extra.
- leave (without_node): only the leaver's partitions move.
  1. Receiver levels: l is the largest level with sum(max(0, l - c)) <= k over the other nodes'
     counts c, k the leaver's partition count; a receiver must get l - c, and e = k - that sum
     of the nodes with c <= l may get one more (the counts of giving to the least loaded).
  2. The leaver's partitions are first marked unowned; then, in ascending order, each goes to the
     lowest eligible node (a gift is left, or extras are left and it has not had its extra) that
     is spaced at it, else to the lowest eligible node. Gifts are spent before the extra.
- Balance is kept, not created: on a balanced ring (max - min <= 1) join and leave give a
  balanced ring; on an unbalanced one they still move only the partitions described above.

Encoding (canonical: equal rings, equal bytes; all integers big-endian):
magic b"DRNG" | version u8 = 1 | log2 Q u8 | S u32 | S x (len u8, UTF-8 node id), nodes strictly
ascending | Q x u16 owner index into the node table | xxh3-64 of all preceding bytes (u64).
Every node of the table owns at least one partition.

Arguments: keys are bytes (not bytearray or str); node ids are str of 1..255 UTF-8 bytes;
integers (q, n, partitions) are read as operator.index reads them, so bool counts as an int and
float does not; sequences may be any iterable except a str. claim() takes the set of its nodes
(duplicates collapse) and needs S <= Q, as does with_node(); n larger than S means all S nodes.
Errors: RingError for every bad argument (Q not a power of two or out of range, no nodes, more
nodes than partitions, malformed node ids, joining a member, removing a non-member or the last
node, n < 1, partition out of range, non-bytes keys, bad encoding), on every backend.
This module is also compiled by Cython as dynacore._cy.ring (typed by ring.pxd when found).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn

import xxhash

from dynacore.errors import RingError
from dynacore.limits import MAX_N, MAX_PARTITIONS

_NODE_ID_MAX_BYTES = 255  # a node id is 1..255 UTF-8 bytes (docs/contracts.md)
_SPACING = 3  # the claim tries to give any _SPACING consecutive partitions distinct owners
_CACHED_N_MAX = MAX_N  # preference tables are cached for n up to this (16, as in ring.rs)
_MAGIC = b"DRNG"
_VERSION = 1
_HEADER = struct.Struct(">4sBBI")  # magic, version, log2 Q, node count
_CHECKSUM = struct.Struct(">Q")

_xxh3 = xxhash.xxh3_64_intdigest

# -- argument checks -------------------------------------------------------------------------------


def _bad_key(key: object) -> NoReturn:
    raise RingError(f"a key must be bytes, got {type(key).__name__}")


def _as_int(value: object, what: str) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise RingError(f"{what} must be an integer, got {type(value).__name__}") from None


def _log2_partitions(q: object) -> int:
    count = _as_int(q, "the partition count")
    if count < 1 or count > MAX_PARTITIONS or count & (count - 1):
        raise RingError(f"the partition count must be a power of two in [1, 65536], got {count}")
    return count.bit_length() - 1


def _check_n(n: object) -> int:
    count = _as_int(n, "n")
    if count < 1:
        raise RingError(f"n must be at least 1, got {count}")
    return count


def _not_a_node(node: object) -> NoReturn:
    raise RingError(f"a node id must be a str, got {type(node).__name__}")


def _check_node(node: object) -> str:
    if not isinstance(node, str):
        _not_a_node(node)
    try:
        size_bytes = len(node.encode("utf-8"))
    except UnicodeEncodeError:
        raise RingError(f"node id {node!r} is not encodable as UTF-8") from None
    if size_bytes < 1 or size_bytes > _NODE_ID_MAX_BYTES:
        raise RingError(f"a node id must be 1..255 UTF-8 bytes, got {size_bytes}")
    return node


def _iterate(items: object, what: str) -> Iterator[object]:
    if isinstance(items, str):
        raise RingError(f"{what} must be a sequence, not a str")
    try:
        return iter(items)  # type: ignore[call-overload, no-any-return]
    except TypeError:
        raise RingError(f"{what} must be a sequence, got {type(items).__name__}") from None


def _node_list(nodes: object, what: str) -> list[str]:
    return [_check_node(node) for node in _iterate(nodes, what)]


# -- hashing ---------------------------------------------------------------------------------------


def key_hash(key: bytes) -> int:
    """xxh3-64 (seed 0) of the key bytes."""
    if not isinstance(key, bytes):
        _bad_key(key)
    return _xxh3(key)


def partition_of(key: bytes, q: int) -> int:
    """The partition of `key` in a ring of `q` partitions."""
    shift = 64 - _log2_partitions(q)
    return key_hash(key) >> shift


# -- the algorithms, over owner indexes into the sorted node table --------------------------------


def _spaced(owners: list[int], p: int, node: int) -> bool:
    q = len(owners)
    for d in range(1, _SPACING):
        before = (p - d) % q
        after = (p + d) % q
        if before != p and owners[before] == node:
            return False
        if after != p and owners[after] == node:
            return False
    return True


def _claim_indexes(q: int, s: int) -> list[int]:
    assert 1 <= s <= q
    owners = [p % s for p in range(q)]
    if s >= _SPACING:
        _repair_spacing(owners)
    return owners


def _repair_spacing(owners: list[int]) -> None:
    q = len(owners)
    for p in range(q):
        node = owners[p]
        if _spaced(owners, p, node):
            continue
        for r in range(q):
            other = owners[r]
            if other == node:
                continue
            owners[p] = other
            owners[r] = node
            if _spaced(owners, p, other) and _spaced(owners, r, node):
                break
            owners[p] = node
            owners[r] = other


def _counts(owners: list[int], s: int) -> list[int]:
    counts = [0] * s
    for node in owners:
        counts[node] += 1
    return counts


def _drain_level(counts: list[int], take: int) -> tuple[int, int]:
    """Smallest level h with sum(max(0, c - h)) <= take, and the takes left over at h."""
    low = max(0, max(counts) - take)
    high = max(counts)
    while low < high:  # invariant: the answer lies in [low, high]
        mid = (low + high) // 2
        if sum(c - mid for c in counts if c > mid) <= take:
            high = mid
        else:
            low = mid + 1
    return low, take - sum(c - low for c in counts if c > low)


def _fill_level(counts: list[int], give: int) -> tuple[int, int]:
    """Largest level l with sum(max(0, l - c)) <= give, and the gifts left over at l."""
    low = min(counts)
    high = low + give
    while low < high:  # invariant: the answer lies in [low, high]
        mid = (low + high + 1) // 2
        if sum(mid - c for c in counts if c < mid) <= give:
            low = mid
        else:
            high = mid - 1
    return low, give - sum(low - c for c in counts if c < low)


def _join_indexes(owners: list[int], s: int, new: int) -> list[int]:
    q = len(owners)
    take = q // s
    counts = _counts(owners, s)
    del counts[new]  # the donors, indexed as in the old table: skip the new node's slot
    level, extras = _drain_level(counts, take)
    counts.insert(new, 0)
    # a donor must give counts - level; `extras` donors at the level may give one more
    need = [max(0, c - level) for c in counts]
    may_extra = [c >= level and node != new for node, c in enumerate(counts)]
    result = list(owners)
    taken = 0
    for spaced_only in (True, False):
        for p in range(q):
            if taken == take:
                break
            donor = result[p]
            if donor == new or not (need[donor] > 0 or (extras > 0 and may_extra[donor])):
                continue
            if spaced_only and not _spaced(result, p, new):
                continue
            result[p] = new
            taken += 1
            if need[donor] > 0:
                need[donor] -= 1
            else:
                extras -= 1
                may_extra[donor] = False
    assert taken == take
    return result


def _leave_indexes(owners: list[int], s: int, leaver: int) -> list[int]:
    """Owners over the old node table, with the leaver's partitions given to the others."""
    counts = _counts(owners, s)
    orphans = [p for p, node in enumerate(owners) if node == leaver]
    del counts[leaver]
    level, extras = _fill_level(counts, len(orphans))
    counts.insert(leaver, level + 1)  # never a receiver
    # a receiver must get level - counts; `extras` receivers at the level may get one more
    need = [max(0, level - c) for c in counts]
    may_extra = [c <= level for c in counts]
    pool = [node for node in range(s - 1, -1, -1) if counts[node] <= level]  # lowest last
    result = list(owners)
    for p in orphans:
        result[p] = -1
    for p in orphans:
        node = _pick_receiver(result, p, pool, need, may_extra, extras > 0)
        result[p] = node
        if need[node] > 0:
            need[node] -= 1
        else:
            extras -= 1
            may_extra[node] = False
    return result


def _pick_receiver(
    owners: list[int],
    p: int,
    pool: list[int],
    need: list[int],
    may_extra: list[bool],
    extras_left: bool,
) -> int:
    """The lowest eligible pool node spaced at p, else the lowest eligible one.

    `pool` is in descending order; nodes that can never be eligible again are dropped from it.
    At most 4 eligible nodes are not spaced at p (the owners of p-2, p-1, p+1, p+2), so the scan
    stops after at most 5 eligible nodes.
    """
    fallback = -1
    j = len(pool) - 1
    while j >= 0:
        node = pool[j]
        if need[node] == 0 and not (extras_left and may_extra[node]):
            del pool[j]  # need and extra are spent, or no extras remain: never eligible again
            j -= 1
            continue
        if _spaced(owners, p, node):
            return node
        if fallback < 0:
            fallback = node
        j -= 1
    assert fallback >= 0, "a leave always has an eligible receiver"
    return fallback


def _walk(owners: list[str], start: int, limit: int) -> list[str]:
    """The first `limit` distinct owners clockwise from `start` (fewer if the ring has fewer)."""
    q = len(owners)
    seen: set[str] = set()
    found: list[str] = []
    for step in range(q):
        node = owners[(start + step) % q]
        if node not in seen:
            seen.add(node)
            found.append(node)
            if len(found) == limit:
                break
    return found


def _build_table(owners: list[str], n_eff: int) -> list[tuple[str, ...]]:
    """Preference lists of every partition for one n (at most the node count): O(Q * n)."""
    q = len(owners)
    interned: dict[tuple[str, ...], tuple[str, ...]] = {}
    table: list[tuple[str, ...]] = [()] * q
    following = tuple(_walk(owners, q - 1, n_eff))
    table[q - 1] = following
    interned[following] = following
    for p in range(q - 2, -1, -1):
        node = owners[p]
        if following[0] != node:
            rest = [other for other in following if other != node]
            fresh = (node, *rest[: n_eff - 1])
            following = interned.setdefault(fresh, fresh)
        table[p] = following
    return table


# -- the encoding ----------------------------------------------------------------------------------


def _encode(log2q: int, nodes: list[str], owners: Iterable[int]) -> bytes:
    parts = [_HEADER.pack(_MAGIC, _VERSION, log2q, len(nodes))]
    for node in nodes:
        raw = node.encode("utf-8")
        parts.append(bytes((len(raw),)))
        parts.append(raw)
    parts.append(struct.pack(f">{1 << log2q}H", *owners))
    body = b"".join(parts)
    return body + _CHECKSUM.pack(_xxh3(body))


def _decode(data: object) -> tuple[list[str], list[int]]:
    if not isinstance(data, bytes):
        raise RingError(f"an encoded ring must be bytes, got {type(data).__name__}")
    size = len(data)
    if size < _HEADER.size + _CHECKSUM.size:
        raise RingError("encoded ring truncated")
    end = size - _CHECKSUM.size
    if _CHECKSUM.unpack_from(data, end)[0] != _xxh3(data[:end]):
        raise RingError("encoded ring checksum mismatch")
    magic, version, log2q, count = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC or version != _VERSION:
        raise RingError("not an encoded ring (bad magic or version)")
    if log2q > 16:
        raise RingError(f"encoded ring has log2 Q = {log2q} > 16")
    q = 1 << log2q
    if count < 1 or count > q:
        raise RingError(f"encoded ring has {count} nodes for {q} partitions")
    nodes, offset = _decode_nodes(data, _HEADER.size, end, count)
    if end - offset != 2 * q:
        raise RingError("encoded ring has the wrong owner table size")
    owners = list(struct.unpack_from(f">{q}H", data, offset))
    if max(owners) >= count:
        raise RingError("encoded ring has an owner index out of range")
    if len(set(owners)) != count:
        raise RingError("encoded ring lists a node that owns no partition")
    return nodes, owners


def _decode_nodes(data: bytes, offset: int, end: int, count: int) -> tuple[list[str], int]:
    nodes: list[str] = []
    for _ in range(count):
        if offset >= end:
            raise RingError("encoded ring truncated in its node table")
        length = data[offset]
        offset += 1
        if length < 1 or offset + length > end:
            raise RingError("encoded ring has a bad node id length")
        try:
            node = data[offset : offset + length].decode("utf-8")
        except UnicodeDecodeError:
            raise RingError("encoded ring has a node id that is not UTF-8") from None
        if nodes and node <= nodes[-1]:
            raise RingError("encoded ring nodes are not strictly ascending")
        nodes.append(node)
        offset += length
    return nodes, offset


# -- the ring --------------------------------------------------------------------------------------


class Ring:
    """An immutable assignment of Q partitions to owner nodes (owners[p] owns partition p)."""

    __slots__ = ("_log2q", "_lookup_shift", "_nodes", "_owners", "_shift", "_tables")

    def __init__(self, owners: Sequence[str]) -> None:
        owner_list = [
            node if isinstance(node, str) else _not_a_node(node)
            for node in _iterate(owners, "owners")
        ]
        for node in set(owner_list):  # each distinct id once
            _check_node(node)
        self._setup(owner_list, _log2_partitions(len(owner_list)))

    def _setup(self, owners: list[str], log2q: int) -> None:
        assert len(owners) == 1 << log2q
        self._log2q = log2q
        self._shift = 64 - log2q
        # The shift of the cached-table path, below 64 so that the Cython build (ring.pxd) can
        # shift a C integer: a one-partition ring has no tables and never uses it.
        self._lookup_shift = min(self._shift, 63)
        self._owners = owners
        self._nodes = sorted(set(owners))
        # _tables[n] is the preference table for n (1 <= n <= _CACHED_N_MAX), built on first use
        self._tables: list[list[tuple[str, ...]] | None] = [None] * (_CACHED_N_MAX + 1)

    @staticmethod
    def claim(q: int, nodes: Sequence[str]) -> Ring:
        """A fresh balanced claim of `q` partitions by `nodes` (deterministic; see the module)."""
        log2q = _log2_partitions(q)
        names = sorted(set(_node_list(nodes, "nodes")))
        if not names:
            raise RingError("cannot claim a ring with no nodes")
        if len(names) > 1 << log2q:
            raise RingError(f"{len(names)} nodes cannot each own one of {1 << log2q} partitions")
        return _trusted([names[i] for i in _claim_indexes(1 << log2q, len(names))])

    # -- properties --------------------------------------------------------------------------------

    @property
    def q(self) -> int:
        """The number of partitions."""
        return 1 << self._log2q

    @property
    def owners(self) -> list[str]:
        """owners[p] owns partition p (a copy)."""
        return list(self._owners)

    @property
    def nodes(self) -> list[str]:
        """The distinct owners, sorted."""
        return list(self._nodes)

    # -- lookups -----------------------------------------------------------------------------------

    def partition_of(self, key: bytes) -> int:
        if not isinstance(key, bytes):
            _bad_key(key)
        return _xxh3(key) >> self._shift

    def partitions_of(self, keys: Sequence[bytes]) -> list[int]:
        shift = self._shift
        return [
            _xxh3(key) >> shift if isinstance(key, bytes) else _bad_key(key)
            for key in _iterate(keys, "keys")
        ]

    def owner(self, partition: int) -> str:
        return self._owners[self._check_partition(partition)]

    def preference_list(self, partition: int, n: int) -> tuple[str, ...]:
        try:  # fast path: a cached table and an in-range partition; anything else is checked
            table = self._tables[n]
            if table is not None and n > 0 and partition >= 0:
                return table[partition]
        except (IndexError, TypeError):
            pass
        p = self._check_partition(partition)
        table = self._table(n)
        if table is None:
            return tuple(_walk(self._owners, p, _check_n(n)))
        return table[p]

    def extended_list(self, partition: int, n: int) -> tuple[str, ...]:
        p = self._check_partition(partition)
        n_eff = min(_check_n(n), len(self._nodes))
        return tuple(_walk(self._owners, p, len(self._nodes))[n_eff:])

    def lookup(self, key: bytes, n: int) -> tuple[str, ...]:
        """The preference list of the key's partition."""
        if not isinstance(key, bytes):
            _bad_key(key)
        try:
            table = self._tables[n]
            if n < 1:
                table = None
        except (IndexError, TypeError):
            table = None
        h = _xxh3(key)
        p = h >> self._lookup_shift
        if table is None:
            return self.preference_list(self.partition_of(key), n)
        return table[p]

    def lookup_many(self, keys: Sequence[bytes], n: int) -> list[tuple[str, ...]]:
        """[lookup(key, n) for key in keys], in one call."""
        table = self._table(n)
        if table is None:
            return [self.preference_list(p, n) for p in self.partitions_of(keys)]
        shift = self._lookup_shift
        return [
            table[_xxh3(key) >> shift] if isinstance(key, bytes) else _bad_key(key)
            for key in _iterate(keys, "keys")
        ]

    def partitions_owned(self, node: str) -> list[int]:
        name = self._check_member(node)
        return [p for p, owner in enumerate(self._owners) if owner == name]

    # -- membership changes ------------------------------------------------------------------------

    def with_node(self, node: str) -> Ring:
        """The ring after `node` joins: it takes Q div (S+1) partitions (see the module)."""
        name = _check_node(node)
        if name in self._nodes:
            raise RingError(f"node {name!r} is already a member of the ring")
        if len(self._nodes) >= self.q:
            raise RingError(f"a ring of {self.q} partitions has no room for another node")
        names = sorted([*self._nodes, name])
        index = {n: i for i, n in enumerate(names)}
        owners = _join_indexes([index[o] for o in self._owners], len(names), index[name])
        return _trusted([names[i] for i in owners])

    def without_node(self, node: str) -> Ring:
        """The ring after `node` leaves: only its partitions move (see the module)."""
        name = self._check_member(node)
        if len(self._nodes) == 1:
            raise RingError(f"node {name!r} is the last node of the ring")
        index = {n: i for i, n in enumerate(self._nodes)}
        owners = [index[o] for o in self._owners]
        result = _leave_indexes(owners, len(self._nodes), index[name])
        return _trusted([self._nodes[i] for i in result])

    def moves(self, other: Ring) -> list[tuple[int, str, str]]:
        """(partition, from, to) for each partition whose owner differs in `other`."""
        if not isinstance(other, Ring):
            raise RingError(f"moves() needs a Ring, got {type(other).__name__}")
        if other._log2q != self._log2q:
            raise RingError(f"rings of {self.q} and {other.q} partitions cannot be compared")
        return [
            (p, mine, theirs)
            for p, (mine, theirs) in enumerate(zip(self._owners, other._owners, strict=True))
            if mine != theirs
        ]

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self) -> bytes:
        index = {n: i for i, n in enumerate(self._nodes)}
        return _encode(self._log2q, self._nodes, map(index.__getitem__, self._owners))

    @staticmethod
    def decode(data: bytes) -> Ring:
        nodes, owners = _decode(data)
        return _trusted([nodes[i] for i in owners])

    # -- dunders -----------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._owners == other._owners

    def __hash__(self) -> int:
        return hash(tuple(self._owners))

    def __repr__(self) -> str:
        return f"Ring(q={self.q}, nodes={self._nodes!r})"

    # -- helpers -----------------------------------------------------------------------------------

    def _check_partition(self, partition: object) -> int:
        p = _as_int(partition, "a partition")
        if p < 0 or p >= 1 << self._log2q:
            raise RingError(f"partition {p} is out of range [0, {self.q})")
        return p

    def _check_member(self, node: object) -> str:
        name = _check_node(node)
        if name not in self._nodes:
            raise RingError(f"node {name!r} is not a member of the ring")
        return name

    def _table(self, n: object) -> list[tuple[str, ...]] | None:
        """The cached preference table for n; None when n is too large to cache or Q == 1."""
        count = _check_n(n)
        n_eff = min(count, len(self._nodes))
        if n_eff > _CACHED_N_MAX or self._log2q == 0:
            return None
        table = self._tables[n_eff]
        if table is None:
            table = _build_table(self._owners, n_eff)
            self._tables[n_eff] = table
        if count <= _CACHED_N_MAX:
            self._tables[count] = table
        return table


def _trusted(owners: list[str]) -> Ring:
    """A ring from owners that an algorithm here produced or decoded (already valid)."""
    ring = Ring.__new__(Ring)
    ring._setup(owners, len(owners).bit_length() - 1)
    return ring
