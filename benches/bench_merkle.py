"""Benchmarks of the merkle primitive: every operation on every built backend, beside an outside
baseline (a straightforward Merkle tree written with the `blake3` package) where it does the same
work.

Groups are `merkle.<op>`; `extra_info["impl"]` names the backend or the baseline. Run with
`.venv/bin/python -m pytest benches/bench_merkle.py --benchmark-columns=median,ops -q`.
The tree is the default shape (16 ** 3 = 4096 segments) over 2 ** 16 keys: one partition's worth.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from itertools import cycle
from typing import Any

import blake3
import pytest
import xxhash

from dynacore import _backend

KEYS = 1 << 16
FANOUT = 16
DEPTH = 3
BASELINE = "blake3-baseline (outside: plain Merkle tree on the blake3 package)"

Pairs = list[tuple[bytes, bytes]]


def make_pairs(salt: bytes) -> Pairs:
    """2 ** 16 (key, digest) pairs: keys as an application writes them, BLAKE3 digests."""
    return [(b"user:%08d" % i, blake3.blake3(salt + b"%d" % i).digest()) for i in range(KEYS)]


PAIRS_A = make_pairs(b"a")
PAIRS_B = make_pairs(b"b")  # same keys, every digest different
# The same pairs out of key order (as from a hash map rather than a storage scan).
SHUFFLED_A = sorted(PAIRS_A, key=lambda pair: pair[1])
SHUFFLED_B = sorted(PAIRS_B, key=lambda pair: pair[1])


class Blake3Baseline:
    """The straightforward Merkle tree: segments as dicts, every hash recomputed eagerly."""

    def __init__(self, fanout: int = FANOUT, depth: int = DEPTH) -> None:
        self.fanout = fanout
        self.depth = depth
        self.mask = fanout**depth - 1
        self.segs: list[dict[bytes, bytes]] = [{} for _ in range(fanout**depth)]
        self.levels: list[list[bytes]] = [[bytes(32)] * fanout**d for d in range(depth + 1)]

    def rebuild(self, pairs: Pairs) -> None:
        self.segs = [{} for _ in range(self.fanout**self.depth)]
        for key, value in pairs:
            self.segs[xxhash.xxh3_64_intdigest(key) & self.mask][key] = value
        self.levels[self.depth] = [self._segment_hash(seg) for seg in self.segs]
        for d in range(self.depth - 1, -1, -1):
            children = self.levels[d + 1]
            self.levels[d] = [
                self._node_hash(children[i : i + self.fanout])
                for i in range(0, len(children), self.fanout)
            ]

    def update(self, key: bytes, value: bytes) -> None:
        index = xxhash.xxh3_64_intdigest(key) & self.mask
        self.segs[index][key] = value
        self.levels[self.depth][index] = self._segment_hash(self.segs[index])
        for d in range(self.depth - 1, -1, -1):
            index //= self.fanout
            start = index * self.fanout
            self.levels[d][index] = self._node_hash(self.levels[d + 1][start : start + self.fanout])

    def root(self) -> bytes:
        return self.levels[0][0]

    @staticmethod
    def _segment_hash(seg: dict[bytes, bytes]) -> bytes:
        if not seg:
            return bytes(32)
        hasher = blake3.blake3()
        for key in sorted(seg):
            hasher.update(len(key).to_bytes(4, "big") + key + seg[key])
        return hasher.digest()

    @staticmethod
    def _node_hash(children: list[bytes]) -> bytes:
        block = b"".join(children)
        return bytes(32) if not any(block) else blake3.blake3(block).digest()


def alternating_rebuild(tree: Any, shuffled: bool = False) -> Callable[[], bytes]:
    """rebuild + root, switching between two pair sets so that every segment really changes."""
    pair_sets = cycle([SHUFFLED_A, SHUFFLED_B] if shuffled else [PAIRS_A, PAIRS_B])

    def run() -> bytes:
        tree.rebuild(next(pair_sets))
        root: bytes = tree.root()
        return root

    return run


def alternating_update(tree: Any) -> Callable[[], bytes]:
    """update of one existing key + root, switching its digest each time."""
    values = cycle([PAIRS_B[4321][1], PAIRS_A[4321][1]])
    key = PAIRS_A[4321][0]

    def run() -> bytes:
        tree.update(key, next(values))
        root: bytes = tree.root()
        return root

    return run


@cache
def expected_roots() -> set[bytes]:
    """The roots of PAIRS_A and PAIRS_B, by the pure twin: every benchmarked tree must agree."""
    roots = set()
    for pairs in (PAIRS_A, PAIRS_B):
        tree = _backend.load("python").merkle.MerkleTree(FANOUT, DEPTH)
        tree.rebuild(pairs)
        roots.add(tree.root())
    return roots


def loaded(backend: _backend.Backend) -> Any:
    tree = backend.merkle.MerkleTree(FANOUT, DEPTH)
    tree.rebuild(PAIRS_A)
    return tree


def label(benchmark: Any, group: str, impl: str) -> None:
    benchmark.group = f"merkle.{group}"
    benchmark.extra_info["impl"] = impl


# -- rebuild: 2 ** 16 pairs in key order (as a storage scan gives them), then the root -------------


def test_rebuild(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "rebuild", backend.name)
    tree = backend.merkle.MerkleTree(FANOUT, DEPTH)
    assert benchmark(alternating_rebuild(tree)) in expected_roots()


def test_rebuild_baseline(benchmark: Any) -> None:
    label(benchmark, "rebuild", BASELINE)
    tree = Blake3Baseline()
    # The baseline does the same work: it finds the same roots.
    assert benchmark(alternating_rebuild(tree)) in expected_roots()


def test_rebuild_shuffled(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "rebuild_shuffled", backend.name)
    tree = backend.merkle.MerkleTree(FANOUT, DEPTH)
    assert benchmark(alternating_rebuild(tree, shuffled=True)) in expected_roots()


def test_rebuild_shuffled_baseline(benchmark: Any) -> None:
    label(benchmark, "rebuild_shuffled", BASELINE)
    tree = Blake3Baseline()
    assert benchmark(alternating_rebuild(tree, shuffled=True)) in expected_roots()


# -- one update, then the root ---------------------------------------------------------------------


def test_update_root(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "update_root", backend.name)
    benchmark(alternating_update(loaded(backend)))


def test_update_root_baseline(benchmark: Any) -> None:
    label(benchmark, "update_root", BASELINE)
    tree = Blake3Baseline()
    tree.rebuild(PAIRS_A)
    benchmark(alternating_update(tree))


# -- the other operations, on a tree of 2 ** 16 keys -----------------------------------------------


def test_update_many_1024(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "update_many_1024_root", backend.name)
    tree = loaded(backend)
    batches = cycle([PAIRS_B[:1024], PAIRS_A[:1024]])

    def run() -> bytes:
        tree.update_many(next(batches))
        root: bytes = tree.root()
        return root

    benchmark(run)


def test_remove_update(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "remove_update", backend.name)
    tree = loaded(backend)
    key, value = PAIRS_A[99]

    def run() -> None:
        tree.remove(key)
        tree.update(key, value)

    benchmark(run)


def test_diff_64_changed(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "diff_64_changed", backend.name)
    ours = loaded(backend)
    theirs = loaded(backend)
    theirs.update_many(PAIRS_B[:: KEYS // 64])
    differing = benchmark(ours.diff, theirs)
    assert 0 < len(differing) <= 64


def test_level_segments(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "level_segments", backend.name)
    tree = loaded(backend)
    assert len(benchmark(tree.level, DEPTH)) == FANOUT**DEPTH


def test_hashes_256(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "hashes_256", backend.name)
    tree = loaded(backend)
    wanted = list(range(0, FANOUT**DEPTH, 16))
    assert len(benchmark(tree.hashes, DEPTH, wanted)) == 256


def test_segment(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "segment", backend.name)
    tree = loaded(backend)
    assert len(benchmark(tree.segment, 7)) > 0


def test_segment_of(benchmark: Any, backend: _backend.Backend) -> None:
    label(benchmark, "segment_of", backend.name)
    tree = loaded(backend)
    benchmark(tree.segment_of, b"user:00001234")


@pytest.mark.parametrize("size_bytes", [64, 4096])
def test_digest(benchmark: Any, backend: _backend.Backend, size_bytes: int) -> None:
    label(benchmark, f"digest_{size_bytes}", backend.name)
    data = bytes(range(256)) * (size_bytes // 256) or bytes(size_bytes)
    assert benchmark(backend.merkle.digest, data) == blake3.blake3(data).digest()


@pytest.mark.parametrize("size_bytes", [64, 4096])
def test_digest_baseline(benchmark: Any, size_bytes: int) -> None:
    label(benchmark, f"digest_{size_bytes}", "blake3 package (outside)")
    data = bytes(range(256)) * (size_bytes // 256) or bytes(size_bytes)
    benchmark(lambda: blake3.blake3(data).digest())
