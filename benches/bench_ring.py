"""ring benchmarks: every operation on every built backend, beside a plain-Python baseline.

The outside baseline (`bisect-tokens`) is the textbook consistent-hash ring: sorted xxh3 tokens,
`bisect` to find the key's token, and a preference list precomputed per token. It has as many
tokens as the dynacore rings have partitions, so both do the same work per key.
Run: .venv/bin/python -m pytest benches/bench_ring.py --benchmark-columns=median,ops -q
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import xxhash

from dynacore import _backend

Q = 1024
N = 3
NODES = [f"node-{i:02d}" for i in range(8)]
BATCH = 10_000
BASELINE = "bisect-tokens (plain Python)"


class BisectRing:
    """Consistent hashing the usual way: tokens on the xxh3 circle, bisect, precomputed lists."""

    def __init__(self, nodes: Sequence[str], tokens: int, n: int) -> None:
        per_node = tokens // len(nodes)
        points = sorted(
            (xxhash.xxh3_64_intdigest(f"{node}#{i}".encode()), node)
            for node in nodes
            for i in range(per_node)
        )
        self.tokens = [token for token, _ in points]
        owners = [node for _, node in points]
        self.prefs = [self._walk(owners, start, n) for start in range(len(owners))]

    @staticmethod
    def _walk(owners: list[str], start: int, n: int) -> tuple[str, ...]:
        found: list[str] = []
        for step in range(len(owners)):
            node = owners[(start + step) % len(owners)]
            if node not in found:
                found.append(node)
                if len(found) == n:
                    break
        return tuple(found)

    def lookup(self, key: bytes) -> tuple[str, ...]:
        index = bisect.bisect_left(self.tokens, xxhash.xxh3_64_intdigest(key))
        return self.prefs[index % len(self.tokens)]

    def lookup_many(self, keys: Sequence[bytes]) -> list[tuple[str, ...]]:
        tokens, prefs, size = self.tokens, self.prefs, len(self.tokens)
        find, digest = bisect.bisect_left, xxhash.xxh3_64_intdigest
        return [prefs[find(tokens, digest(key)) % size] for key in keys]


@pytest.fixture(scope="module")
def keys() -> list[bytes]:
    rng = random.Random(20240601)
    return [rng.randbytes(16) for _ in range(BATCH)]


@pytest.fixture(scope="module")
def baseline() -> BisectRing:
    return BisectRing(NODES, Q, N)


def _ring(backend: _backend.Backend) -> Any:
    ring = backend.ring.Ring.claim(Q, NODES)
    ring.lookup(b"warm up the preference table", N)
    return ring


def _run(benchmark: Any, group: str, impl: str, fn: Callable[..., Any], *args: Any) -> Any:
    benchmark.group = f"ring.{group}"
    benchmark.extra_info["impl"] = impl
    return benchmark(fn, *args)


# -- lookups ---------------------------------------------------------------------------------------


def test_lookup(benchmark: Any, backend: _backend.Backend, keys: list[bytes]) -> None:
    ring = _ring(backend)
    result = _run(benchmark, "lookup", backend.name, ring.lookup, keys[0], N)
    assert len(result) == N


def test_lookup_baseline(benchmark: Any, baseline: BisectRing, keys: list[bytes]) -> None:
    result = _run(benchmark, "lookup", BASELINE, baseline.lookup, keys[0])
    assert len(result) == N


def test_lookup_many(benchmark: Any, backend: _backend.Backend, keys: list[bytes]) -> None:
    ring = _ring(backend)
    result = _run(benchmark, "lookup_many", backend.name, ring.lookup_many, keys, N)
    assert len(result) == BATCH


def test_lookup_many_baseline(benchmark: Any, baseline: BisectRing, keys: list[bytes]) -> None:
    result = _run(benchmark, "lookup_many", BASELINE, baseline.lookup_many, keys)
    assert len(result) == BATCH


def test_partition_of(benchmark: Any, backend: _backend.Backend, keys: list[bytes]) -> None:
    ring = _ring(backend)
    assert 0 <= _run(benchmark, "partition_of", backend.name, ring.partition_of, keys[0]) < Q


def test_partitions_of(benchmark: Any, backend: _backend.Backend, keys: list[bytes]) -> None:
    ring = _ring(backend)
    assert len(_run(benchmark, "partitions_of", backend.name, ring.partitions_of, keys)) == BATCH


def test_preference_list(benchmark: Any, backend: _backend.Backend) -> None:
    ring = _ring(backend)
    result = _run(benchmark, "preference_list", backend.name, ring.preference_list, 77, N)
    assert len(result) == N


def test_extended_list(benchmark: Any, backend: _backend.Backend) -> None:
    ring = _ring(backend)
    result = _run(benchmark, "extended_list", backend.name, ring.extended_list, 77, N)
    assert len(result) == len(NODES) - N


# -- membership and encoding -----------------------------------------------------------------------


def test_claim(benchmark: Any, backend: _backend.Backend) -> None:
    ring = _run(benchmark, "claim", backend.name, backend.ring.Ring.claim, Q, NODES)
    assert ring.q == Q


def test_with_node(benchmark: Any, backend: _backend.Backend) -> None:
    ring = _ring(backend)
    assert len(_run(benchmark, "with_node", backend.name, ring.with_node, "node-new").nodes) == 9


def test_without_node(benchmark: Any, backend: _backend.Backend) -> None:
    ring = _ring(backend)
    assert (
        len(_run(benchmark, "without_node", backend.name, ring.without_node, NODES[3]).nodes) == 7
    )


def test_first_lookup_builds_table(benchmark: Any, backend: _backend.Backend) -> None:
    ring = _ring(backend)
    owners = ring.owners

    def fresh_lookup() -> tuple[str, ...]:
        result: tuple[str, ...] = backend.ring.Ring(owners).lookup(b"k", N)
        return result

    assert len(_run(benchmark, "new_ring_first_lookup", backend.name, fresh_lookup)) == N


def test_encode(benchmark: Any, backend: _backend.Backend) -> None:
    ring = _ring(backend)
    assert _run(benchmark, "encode", backend.name, ring.encode)[:4] == b"DRNG"


def test_decode(benchmark: Any, backend: _backend.Backend) -> None:
    data = _ring(backend).encode()
    assert _run(benchmark, "decode", backend.name, backend.ring.Ring.decode, data).q == Q
