"""merkle: the per-partition Merkle tree over key segments (BLAKE3), pure-Python twin.

This module owns the segment rule, the hash layout and the lazy (dirty-tracked) hashing of
`MerkleTree`; native/src/merkle.rs and the Cython build of this file (dynacore._cy.merkle) give
exactly the same roots, levels, diffs and errors (docs/contracts.md, section `merkle`).

Layout: segments = fanout ** depth leaves; a key falls in segment `xxh3_64(key) & (segments - 1)`.
A segment hashes to BLAKE3 over its (key, digest) pairs sorted by key, each encoded as
`len(key) as u32 BE ‖ key ‖ digest`, or to 32 zero bytes when empty. An inner node hashes to BLAKE3
over its children's hashes concatenated, or to 32 zero bytes when every child is zero.

Cython compiles this file with annotation_typing=False, so the code is plain Python; the checks
are explicit so that every backend raises MerkleError for the same bad input.
"""

from __future__ import annotations

from collections.abc import Iterable
from struct import Struct

import blake3 as _blake3
import xxhash

from dynacore.errors import MerkleError
from dynacore.limits import DEFAULT_KEY_SIZE_BYTES

DIGEST_SIZE_BYTES = 32
MIN_FANOUT = 2
MAX_FANOUT = 256
MIN_DEPTH = 1
MAX_DEPTH = 6
MAX_SEGMENTS = 1 << 20
# The longest key the `u32` length prefix of a record can encode.
MAX_KEY_SIZE_BYTES = (1 << 32) - 1
ZERO_HASH = bytes(DIGEST_SIZE_BYTES)

_xxh3 = xxhash.xxh3_64_intdigest
_hasher = _blake3.blake3
_pack_u32_be = Struct(">I").pack
# The `len(key) as u32 BE` prefixes of every key up to the default key size, made once.
_LEN_PREFIXES = tuple(_pack_u32_be(n) for n in range(DEFAULT_KEY_SIZE_BYTES + 1))
_LONGEST_PREFIXED = DEFAULT_KEY_SIZE_BYTES

__all__ = [
    "DIGEST_SIZE_BYTES",
    "MAX_DEPTH",
    "MAX_FANOUT",
    "MAX_KEY_SIZE_BYTES",
    "MAX_SEGMENTS",
    "MIN_DEPTH",
    "MIN_FANOUT",
    "ZERO_HASH",
    "MerkleTree",
    "digest",
]


def digest(data: bytes) -> bytes:
    """BLAKE3-256 of `data` (32 bytes)."""
    if not isinstance(data, bytes):
        raise MerkleError(f"digest() needs bytes, got {type(data).__name__}")
    return _hasher(data).digest()


def _check_key(key: object) -> None:
    if not isinstance(key, bytes):
        raise MerkleError(f"a key must be bytes, got {type(key).__name__}")
    if len(key) > MAX_KEY_SIZE_BYTES:
        raise MerkleError(f"a key must be at most {MAX_KEY_SIZE_BYTES} bytes, got {len(key)}")


def _check_digest(value: object) -> None:
    if not isinstance(value, bytes):
        raise MerkleError(f"a digest must be bytes, got {type(value).__name__}")
    if len(value) != DIGEST_SIZE_BYTES:
        raise MerkleError(f"a digest must be {DIGEST_SIZE_BYTES} bytes, got {len(value)}")


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int):
        raise MerkleError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise MerkleError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def _pair_error(pair: object) -> MerkleError:
    """The MerkleError that names what is wrong with one (key, digest) pair."""
    if not isinstance(pair, tuple) or len(pair) != 2:
        return MerkleError(f"each pair must be a (key, digest) tuple, got {type(pair).__name__}")
    try:
        _check_key(pair[0])
        _check_digest(pair[1])
    except MerkleError as exc:
        return exc
    raise AssertionError("_pair_error() called on a good pair")


def _listed(pairs: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    try:
        return list(pairs)
    except TypeError:
        raise MerkleError(f"pairs must be iterable, got {type(pairs).__name__}") from None


def _group(pairs: Iterable[tuple[bytes, bytes]], mask: int) -> dict[int, dict[bytes, bytes]]:
    """Check every pair and group them by segment: {index: {key: digest}}, later pairs win."""
    xxh3 = _xxh3
    digest_size = DIGEST_SIZE_BYTES
    longest = MAX_KEY_SIZE_BYTES
    segs: dict[int, dict[bytes, bytes]] = {}
    for pair in _listed(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise _pair_error(pair)
        key, value = pair
        if (
            not isinstance(key, bytes)
            or not isinstance(value, bytes)
            or len(value) != digest_size
            or len(key) > longest
        ):
            raise _pair_error(pair)
        index = xxh3(key) & mask
        seg = segs.get(index)
        if seg is None:
            segs[index] = {key: value}
        else:
            seg[key] = value
    return segs


def _hash_segment(seg: dict[bytes, bytes]) -> bytes:
    """BLAKE3 over the sorted `len(key) u32 BE ‖ key ‖ digest` records of one segment."""
    prefixes = _LEN_PREFIXES
    longest = _LONGEST_PREFIXED
    parts: list[bytes] = []
    for key in sorted(seg):
        size = len(key)
        parts += (prefixes[size] if size <= longest else _pack_u32_be(size), key, seg[key])
    return _hasher(b"".join(parts)).digest()


class MerkleTree:
    """A Merkle tree over fanout ** depth key segments, hashed lazily (dirty tracking)."""

    def __init__(self, fanout: int = 16, depth: int = 3) -> None:
        fanout = _check_int("fanout", fanout, MIN_FANOUT, MAX_FANOUT)
        depth = _check_int("depth", depth, MIN_DEPTH, MAX_DEPTH)
        if fanout & (fanout - 1):
            raise MerkleError(f"fanout must be a power of two, got {fanout}")
        bits = fanout.bit_length() - 1
        segments = 1 << (bits * depth)
        if segments > MAX_SEGMENTS:
            raise MerkleError(f"fanout ** depth = {segments} exceeds {MAX_SEGMENTS} segments")
        self._fanout = fanout
        self._depth = depth
        self._bits = bits
        self._segments = segments
        self._mask = segments - 1
        self._zero_block = ZERO_HASH * fanout
        # _segs holds only non-empty segments: index -> {key: digest}.
        self._segs: dict[int, dict[bytes, bytes]] = {}
        self._size = 0
        # _levels[d] holds the fanout ** d hashes at depth d; they are exact for every segment
        # not in _dirty, and _flush() brings the rest (and their ancestors) up to date.
        self._levels: list[list[bytes]] = [
            [ZERO_HASH] * (1 << (bits * d)) for d in range(depth + 1)
        ]
        self._dirty: set[int] = set()

    # -- shape ----------------------------------------------------------------------------------

    @property
    def fanout(self) -> int:
        return self._fanout

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def segments(self) -> int:
        return self._segments

    @property
    def size(self) -> int:
        return self._size

    def segment_of(self, key: bytes) -> int:
        _check_key(key)
        return int(_xxh3(key) & self._mask)

    # -- writes -----------------------------------------------------------------------------------

    def update(self, key: bytes, digest: bytes) -> None:
        """Insert or replace the digest of `key`."""
        _check_key(key)
        _check_digest(digest)
        self._put(key, digest)

    def remove(self, key: bytes) -> None:
        """Forget `key`; an absent key is a no-op."""
        _check_key(key)
        index = _xxh3(key) & self._mask
        seg = self._segs.get(index)
        if seg is None or key not in seg:
            return
        del seg[key]
        if not seg:
            del self._segs[index]
        self._size -= 1
        self._dirty.add(index)

    def update_many(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """update() each pair in order; a bad pair raises before any pair is applied."""
        for index, updates in _group(pairs, self._mask).items():
            seg = self._segs.get(index)
            if seg is None:
                self._segs[index] = updates
                self._size += len(updates)
                self._dirty.add(index)
                continue
            changed = False
            for key, value in updates.items():
                old = seg.get(key)
                if old != value:
                    if old is None:
                        self._size += 1
                    seg[key] = value
                    changed = True
            if changed:
                self._dirty.add(index)

    def rebuild(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the whole content by `pairs` (a later duplicate key wins)."""
        segs = _group(pairs, self._mask)
        self._dirty.update(self._segs)
        self._dirty.update(segs)
        self._segs = segs
        self._size = sum(len(seg) for seg in segs.values())

    def _put(self, key: bytes, value: bytes) -> None:
        index = _xxh3(key) & self._mask
        seg = self._segs.get(index)
        if seg is None:
            self._segs[index] = {key: value}
        else:
            old = seg.get(key)
            if old == value:
                return
            if old is None:
                self._size += 1
            seg[key] = value
            self._dirty.add(index)
            return
        self._size += 1
        self._dirty.add(index)

    # -- reads ------------------------------------------------------------------------------------

    def root(self) -> bytes:
        self._flush()
        return self._levels[0][0]

    def level(self, depth: int) -> list[bytes]:
        """All fanout ** depth hashes at `depth` (0 is the root, self.depth the segments)."""
        depth = _check_int("depth", depth, 0, self._depth)
        self._flush()
        return list(self._levels[depth])

    def hashes(self, depth: int, indexes: Iterable[int]) -> list[bytes]:
        """The hashes at `depth` of the nodes `indexes`, in the order asked."""
        depth = _check_int("depth", depth, 0, self._depth)
        high = len(self._levels[depth]) - 1
        try:
            wanted = [_check_int("index", i, 0, high) for i in indexes]
        except TypeError:
            raise MerkleError(f"indexes must be iterable, got {type(indexes).__name__}") from None
        self._flush()
        hashes = self._levels[depth]
        return [hashes[i] for i in wanted]

    def segment(self, index: int) -> list[tuple[bytes, bytes]]:
        """The (key, digest) pairs of segment `index`, sorted by key."""
        index = _check_int("index", index, 0, self._mask)
        seg = self._segs.get(index)
        if seg is None:
            return []
        return sorted(seg.items())

    def diff(self, other: MerkleTree) -> list[int]:
        """The sorted indexes of the segments whose contents differ between the two trees."""
        if not isinstance(other, MerkleTree):
            raise MerkleError(f"diff() needs a MerkleTree, got {type(other).__name__}")
        if other._fanout != self._fanout or other._depth != self._depth:
            raise MerkleError(
                f"trees of different shape: fanout/depth {self._fanout}/{self._depth} "
                f"vs {other._fanout}/{other._depth}"
            )
        self._flush()
        other._flush()
        fanout = self._fanout
        ours = self._levels
        theirs = other._levels
        nodes = [0] if ours[0][0] != theirs[0][0] else []
        for depth in range(1, self._depth + 1):
            mine = ours[depth]
            other_level = theirs[depth]
            nodes = [
                child
                for node in nodes
                for child in range(node * fanout, node * fanout + fanout)
                if mine[child] != other_level[child]
            ]
        return nodes

    # -- hashing ----------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Rehash the dirty segments and their ancestors, level by level up to the root."""
        dirty = self._dirty
        if not dirty:
            return
        segs = self._segs
        leaves = self._levels[self._depth]
        for index in dirty:
            seg = segs.get(index)
            leaves[index] = ZERO_HASH if seg is None else _hash_segment(seg)
        bits = self._bits
        fanout = self._fanout
        zero_block = self._zero_block
        nodes: set[int] = dirty
        for depth in range(self._depth - 1, -1, -1):
            children = self._levels[depth + 1]
            level = self._levels[depth]
            nodes = {node >> bits for node in nodes}
            for node in nodes:
                start = node << bits
                block = b"".join(children[start : start + fanout])
                level[node] = ZERO_HASH if block == zero_block else _hasher(block).digest()
        self._dirty = set()

    # -- comparison -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleTree):
            return NotImplemented
        return (
            self._fanout == other._fanout
            and self._depth == other._depth
            and self._size == other._size
            and self._segs == other._segs
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: never a dict key

    def __repr__(self) -> str:
        return f"MerkleTree(fanout={self._fanout}, depth={self._depth}, size={self._size})"
