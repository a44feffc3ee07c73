"""versions benchmarks: every operation on every backend, plus a dict-based version vector baseline.

Groups are `versions.<op>`; each backend run is tagged `extra_info["impl"] = backend.name`, the
baseline `extra_info["impl"] = "baseline:dict-vv"` (a plain dict version vector in Python, the
obvious thing one would write without this module). Inputs are the typical shapes on the request
path: sets with 3 entries (N = 3 coordinators), 64-byte values, two concurrent siblings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dynacore import _backend

BASELINE = "baseline:dict-vv"
VALUE = bytes(range(64))
pytestmark = pytest.mark.benchmark(max_time=0.25, min_rounds=5)


def fixture_sets(v: Any) -> dict[str, bytes]:
    """Two concurrent 3-entry sets (a sibling each), their contexts, and a 3-entry vv."""
    base = v.empty()
    for node in ("node-a", "node-b", "node-c"):
        base = v.update(base, v.join(base), VALUE, node)
    left = v.update(base, v.join(base), VALUE + b"L", "node-a")
    right = v.update(base, v.join(base), VALUE + b"R", "node-b")
    both = v.sync(left, right)
    return {
        "left": left,
        "right": right,
        "both": both,
        "context": v.join(both),
        "vv_a": v.vv_from([("node-a", 7), ("node-b", 3), ("node-c", 5)]),
        "vv_b": v.vv_from([("node-a", 6), ("node-b", 4), ("node-c", 5)]),
    }


def run(benchmark: Any, backend: _backend.Backend, op: str, fn: Callable[[], object]) -> None:
    benchmark.group = f"versions.{op}"
    benchmark.extra_info["impl"] = backend.name
    benchmark(fn)


def test_sync(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "sync", lambda: v.sync(d["left"], d["right"]))


def test_sync_many(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    replies = [d["left"], d["right"], d["both"]]
    run(benchmark, backend, "sync_many", lambda: v.sync_many(replies))


def test_update(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "update", lambda: v.update(d["both"], d["context"], VALUE, "node-c"))


def test_join(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "join", lambda: v.join(d["both"]))


def test_values(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "values", lambda: v.values(d["both"]))


def test_size(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "size", lambda: v.size(d["both"]))


def test_ids(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "ids", lambda: v.ids(d["both"]))


def test_lww(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "lww", lambda: v.lww(d["both"]))


def test_reconcile(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "reconcile", lambda: v.reconcile(d["both"], max, "node-a"))


def test_less(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "less", lambda: v.less(d["left"], d["both"]))


def test_equal(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "equal", lambda: v.equal(d["left"], d["both"]))


def test_covers(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "covers", lambda: v.covers(d["context"], d["both"]))


def test_new(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    run(benchmark, backend, "new", lambda: v.new(VALUE))


def test_vv_descends(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "vv_descends", lambda: v.vv_descends(d["vv_a"], d["vv_b"]))


def test_vv_concurrent(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "vv_concurrent", lambda: v.vv_concurrent(d["vv_a"], d["vv_b"]))


def test_vv_equal(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "vv_equal", lambda: v.vv_equal(d["vv_a"], d["vv_b"]))


def test_vv_merge(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "vv_merge", lambda: v.vv_merge(d["vv_a"], d["vv_b"]))


def test_vv_increment(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "vv_increment", lambda: v.vv_increment(d["vv_a"], "node-b"))


def test_vv_from(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    pairs = [("node-a", 7), ("node-b", 3), ("node-c", 5)]
    run(benchmark, backend, "vv_from", lambda: v.vv_from(pairs))


def test_vv_to(benchmark: Any, backend: _backend.Backend) -> None:
    v = backend.versions
    d = fixture_sets(v)
    run(benchmark, backend, "vv_to", lambda: v.vv_to(d["vv_a"]))


# -- the outside baseline: a plain dict version vector --------------------------------------------

DICT_A = {"node-a": 7, "node-b": 3, "node-c": 5}
DICT_B = {"node-a": 6, "node-b": 4, "node-c": 5}


def dict_descends(a: dict[str, int], b: dict[str, int]) -> bool:
    return all(a.get(node, 0) >= counter for node, counter in b.items())


def dict_concurrent(a: dict[str, int], b: dict[str, int]) -> bool:
    return not dict_descends(a, b) and not dict_descends(b, a)


def dict_merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for node, counter in b.items():
        if counter > out.get(node, 0):
            out[node] = counter
    return out


def dict_increment(a: dict[str, int], node: str) -> dict[str, int]:
    out = dict(a)
    out[node] = out.get(node, 0) + 1
    return out


@pytest.mark.parametrize(
    ("op", "fn"),
    [
        ("vv_descends", lambda: dict_descends(DICT_A, DICT_B)),
        ("vv_concurrent", lambda: dict_concurrent(DICT_A, DICT_B)),
        ("vv_equal", lambda: DICT_A == DICT_B),
        ("vv_merge", lambda: dict_merge(DICT_A, DICT_B)),
        ("vv_increment", lambda: dict_increment(DICT_A, "node-b")),
    ],
)
def test_baseline_dict_vv(benchmark: Any, op: str, fn: Callable[[], object]) -> None:
    assert dict_merge(DICT_A, DICT_B) == {"node-a": 7, "node-b": 4, "node-c": 5}
    benchmark.group = f"versions.{op}"
    benchmark.extra_info["impl"] = BASELINE
    benchmark(fn)
