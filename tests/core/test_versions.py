"""versions on every backend: examples, the DVV laws (hypothesis), parity, malformed input.

Every test takes the `backend` fixture, so it runs on rust, cython and python. Parity tests compare
the backend under test with the pure twin on random (also malformed) input: same bytes, same
exception classes. Sets are built either through the API (histories of writes and syncs between
replicas) or straight from the documented encoding (`encode_set`, written here from the module
docstring), so that the tests also pin the format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacore import _backend
from dynacore.errors import DynacoreError, VersionError

MAX = (1 << 64) - 1
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PURE = _backend.load("python").versions


# -- a reference encoder written from the format documentation ------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def blob(data: bytes) -> bytes:
    return varint(len(data)) + data


Entries = list[tuple[str, int, list[bytes]]]


def encode_set(entries: Entries, anon: Sequence[bytes] = ()) -> bytes:
    rows = sorted(entries, key=lambda e: e[0].encode())
    out = b"\x11" + varint(len(rows))
    for node, counter, vals in rows:
        out += blob(node.encode()) + varint(counter) + varint(len(vals))
        out += b"".join(blob(v) for v in vals)
    anon_sorted = sorted(set(anon))
    return out + varint(len(anon_sorted)) + b"".join(blob(v) for v in anon_sorted)


def encode_vv(pairs: list[tuple[str, int]]) -> bytes:
    rows = sorted(pairs, key=lambda p: p[0].encode())
    return b"\x21" + varint(len(rows)) + b"".join(blob(n.encode()) + varint(c) for n, c in rows)


# -- strategies -----------------------------------------------------------------------------------

NODES = ["a", "b", "c", "d", "é", "日本", "z" * 200]
nodes = st.sampled_from(NODES)
small_values = st.sampled_from([b"", b"a", b"b", b"ab", b"\xff", b"zz"]) | st.binary(max_size=6)
counters = st.integers(1, 6) | st.integers(MAX - 2, MAX)


@dataclass(frozen=True)
class Shape:
    """A set as the tests see it: its bytes and its structure."""

    encoded: bytes
    entries: Entries
    anon: list[bytes]

    def dots(self) -> list[tuple[str, int, bytes]]:
        return [(n, c - i, v) for n, c, vals in self.entries for i, v in enumerate(vals)]


@st.composite
def shapes(draw: st.DrawFn, anon: bool = True) -> Shape:
    names = draw(st.lists(nodes, unique=True, max_size=4))
    entries: Entries = []
    for name in names:
        counter = draw(counters)
        vals = draw(st.lists(small_values, max_size=min(counter, 3)))
        entries.append((name, counter, vals))
    entries.sort(key=lambda e: e[0].encode())
    anon_values = sorted(set(draw(st.lists(small_values, max_size=3)))) if anon else []
    return Shape(encode_set(entries, anon_values), entries, anon_values)


sets = shapes().map(lambda s: s.encoded)
dotted_sets = shapes(anon=False).map(lambda s: s.encoded)
vv_pairs = st.lists(st.tuples(nodes, counters), unique_by=lambda p: p[0], max_size=4)
vvs = vv_pairs.map(encode_vv)

# A history: replicas 0..2 start empty; node n<r> coordinates the writes of replica r.
# ("w", r, value, ctx) writes with ctx None (no context), or the join of replica ctx;
# ("s", r, k) syncs replica k into replica r.
ops = st.one_of(
    st.tuples(st.just("w"), st.integers(0, 2), small_values, st.none() | st.integers(0, 2)),
    st.tuples(st.just("s"), st.integers(0, 2), st.integers(0, 2)),
)
histories = st.lists(ops, max_size=12)


def replay(v: ModuleType, history: list[tuple[Any, ...]]) -> list[bytes]:
    state = [v.empty(), v.empty(), v.empty()]
    for op in history:
        if op[0] == "w":
            _, r, value, ctx = op
            context = b"" if ctx is None else v.join(state[ctx])
            state[r] = v.update(state[r], context, value, f"n{r}")
        else:
            _, r, k = op
            state[r] = v.sync(state[r], state[k])
    return state


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("err", exception class): what parity compares."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # any class: parity must compare it
        return ("err", type(exc))


def vv_of(v: ModuleType, s: bytes) -> dict[str, int]:
    return dict(v.vv_to(v.join(s)))


# -- examples -------------------------------------------------------------------------------------


def test_empty_encodings_are_fixed(backend: _backend.Backend) -> None:
    v = backend.versions
    assert v.empty() == b"\x11\x00\x00"
    assert v.vv_empty() == b"\x21\x00"
    assert v.values(v.empty()) == []
    assert v.size(v.empty()) == 0
    assert v.ids(v.empty()) == []
    assert v.join(v.empty()) == v.vv_empty()
    assert v.vv_to(v.vv_empty()) == []


def test_new_holds_one_anonymous_value(backend: _backend.Backend) -> None:
    v = backend.versions
    s = v.new(b"hello")
    assert s == encode_set([], [b"hello"])
    assert v.values(s) == [b"hello"]
    assert v.ids(s) == []
    assert v.join(s) == v.vv_empty()


def test_first_write_gets_the_first_dot(backend: _backend.Backend) -> None:
    v = backend.versions
    s = v.update(v.empty(), b"", b"x", "a")
    assert s == encode_set([("a", 1, [b"x"])])
    assert v.vv_to(v.join(s)) == [("a", 1)]
    assert v.ids(s) == ["a"]


def test_write_without_context_adds_a_sibling(backend: _backend.Backend) -> None:
    v = backend.versions
    s1 = v.update(v.empty(), b"", b"x", "a")
    s2 = v.update(s1, v.vv_empty(), b"y", "a")
    assert v.values(s2) == [b"y", b"x"]
    assert s2 == encode_set([("a", 2, [b"y", b"x"])])


def test_write_with_the_read_context_replaces_every_sibling(backend: _backend.Backend) -> None:
    v = backend.versions
    s = v.update(v.update(v.empty(), b"", b"x", "a"), b"", b"y", "b")
    assert v.size(s) == 2
    r = v.update(s, v.join(s), b"z", "a")
    assert v.values(r) == [b"z"]
    assert v.vv_to(v.join(r)) == [("a", 2), ("b", 1)]


def test_partial_context_keeps_the_values_it_did_not_see(backend: _backend.Backend) -> None:
    v = backend.versions
    s = encode_set([("a", 4, [b"4", b"3", b"2"])])
    r = v.update(s, v.vv_from([("a", 3)]), b"new", "b")
    assert r == encode_set([("a", 4, [b"4"]), ("b", 1, [b"new"])])


def test_next_counter_is_one_past_the_context_and_the_stored(backend: _backend.Backend) -> None:
    v = backend.versions
    r = v.update(v.empty(), v.vv_from([("a", 5), ("c", 2)]), b"v", "a")
    assert r == encode_set([("a", 6, [b"v"]), ("c", 2, [])])
    r2 = v.update(encode_set([("a", 9, [b"9"])]), v.vv_from([("a", 5)]), b"w", "a")
    assert r2 == encode_set([("a", 10, [b"w", b"9"])])


def test_counter_overflow_is_a_version_error(backend: _backend.Backend) -> None:
    v = backend.versions
    top = encode_set([("a", MAX, [b"x"])])
    with pytest.raises(VersionError):
        v.update(top, b"", b"y", "a")
    with pytest.raises(VersionError):
        v.vv_increment(v.vv_from([("a", MAX)]), "a")
    with pytest.raises(VersionError):
        v.reconcile(top, lambda vals: b"m", "a")
    assert v.vv_to(v.vv_increment(v.vv_from([("a", MAX - 1)]), "a")) == [("a", MAX)]


def test_sync_keeps_concurrent_writes_and_drops_overwritten_ones(backend: _backend.Backend) -> None:
    v = backend.versions
    base = v.update(v.empty(), b"", b"x", "a")
    left = v.update(base, v.join(base), b"l", "a")
    right = v.update(base, v.join(base), b"r", "b")
    merged = v.sync(left, right)
    assert v.values(merged) == [b"l", b"r"]
    assert merged == encode_set([("a", 2, [b"l"]), ("b", 1, [b"r"])])
    assert v.sync(merged, base) == merged


def test_sync_of_two_values_for_one_dot_keeps_the_larger(backend: _backend.Backend) -> None:
    v = backend.versions
    p = encode_set([("a", 3, [b"p", b"q"])])
    q = encode_set([("a", 3, [b"r"])])
    assert v.sync(p, q) == q  # cut to one value each: [b"r"] > [b"p"]
    assert v.sync(q, p) == q


def test_anonymous_values_survive_sync_and_update(backend: _backend.Backend) -> None:
    v = backend.versions
    s = v.sync(v.new(b"b"), v.new(b"a"))
    assert v.values(s) == [b"a", b"b"]
    w = v.update(s, v.join(s), b"c", "n")
    assert v.values(w) == [b"c", b"a", b"b"]
    assert not v.covers(v.join(w), w)
    later = v.update(v.empty(), v.join(w), b"d", "m")  # saw c, not the anonymous values
    assert v.values(v.sync(w, later)) == [b"d", b"a", b"b"]


def test_lww_keeps_the_value_that_sorts_last(backend: _backend.Backend) -> None:
    v = backend.versions
    s = encode_set([("a", 3, [b"2", b"9"]), ("b", 1, [b"5"])], [b"1"])
    w = v.lww(s)
    assert w == encode_set([("a", 3, [b"9"]), ("b", 1, [])])
    assert v.join(w) == v.join(s)
    anon_wins = encode_set([("a", 2, [b"1"])], [b"7", b"8"])
    assert v.lww(anon_wins) == encode_set([("a", 2, [])], [b"8"])
    tie = encode_set([("a", 1, [b"9"]), ("b", 2, [b"9"])])
    assert v.lww(tie) == encode_set([("a", 1, [b"9"]), ("b", 2, [])])
    bare = encode_set([("a", 2, [])])
    assert v.lww(bare) == bare
    assert v.lww(v.empty()) == v.empty()


def test_reconcile_merges_every_value_into_one_new_event(backend: _backend.Backend) -> None:
    v = backend.versions
    s = encode_set([("a", 3, [b"x", b"y"]), ("b", 1, [b"z"])], [b"q"])
    seen: list[list[bytes]] = []

    def merge(vals: list[bytes]) -> bytes:
        seen.append(list(vals))
        return b"+".join(vals)

    r = v.reconcile(s, merge, "b")
    assert seen == [[b"x", b"y", b"z", b"q"]]
    assert r == encode_set([("a", 3, []), ("b", 2, [b"x+y+z+q"])])
    assert v.reconcile(v.empty(), lambda vals: b"m", "c") == encode_set([("c", 1, [b"m"])])


def test_reconcile_merge_errors(backend: _backend.Backend) -> None:
    v = backend.versions
    s = v.new(b"x")
    with pytest.raises(VersionError):
        v.reconcile(s, lambda vals: "not bytes", "a")

    class Boom(Exception):
        pass

    def boom(vals: list[bytes]) -> bytes:
        raise Boom

    with pytest.raises(Boom):
        v.reconcile(s, boom, "a")
    with pytest.raises(VersionError):  # the node is checked before merge is called
        v.reconcile(s, boom, "")


def test_less_and_equal(backend: _backend.Backend) -> None:
    v = backend.versions
    a = v.update(v.empty(), b"", b"x", "a")
    b = v.update(a, v.join(a), b"y", "b")
    c = v.update(a, b"", b"z", "a")
    assert v.less(v.empty(), a) and v.less(a, b) and v.less(a, c)
    assert not v.less(b, a) and not v.less(a, a)
    assert not v.less(b, c) and not v.less(c, b)
    assert v.equal(a, a) and not v.equal(a, b)
    # same clock, fewer values: the side that knows a dot was overwritten is greater
    assert v.less(encode_set([("a", 2, [b"2", b"1"])]), encode_set([("a", 2, [b"2"])]))


def test_covers(backend: _backend.Backend) -> None:
    v = backend.versions
    s = encode_set([("a", 3, [b"x"]), ("b", 9, [])])
    assert v.covers(v.vv_from([("a", 3)]), s)
    assert v.covers(v.join(s), s)
    assert not v.covers(v.vv_from([("a", 2), ("b", 9)]), s)
    assert not v.covers(b"", s)
    assert v.covers(b"", v.empty())
    assert not v.covers(v.vv_from([("a", 3)]), v.new(b"x"))


def test_version_vectors(backend: _backend.Backend) -> None:
    v = backend.versions
    a = v.vv_from([("b", 2), ("a", 1), ("c", 0)])
    assert a == encode_vv([("a", 1), ("b", 2)])
    assert v.vv_to(a) == [("a", 1), ("b", 2)]
    b = v.vv_from([("a", 3)])
    assert v.vv_concurrent(a, b) and not v.vv_descends(a, b) and not v.vv_descends(b, a)
    m = v.vv_merge(a, b)
    assert v.vv_to(m) == [("a", 3), ("b", 2)]
    assert v.vv_descends(m, a) and v.vv_descends(m, b) and not v.vv_concurrent(m, a)
    assert v.vv_equal(b"", v.vv_empty()) and v.vv_equal(m, v.vv_merge(b, a))
    assert v.vv_to(v.vv_increment(b"", "z")) == [("z", 1)]
    assert v.vv_to(v.vv_increment(a, "a")) == [("a", 2), ("b", 2)]
    assert v.vv_descends(a, b"") and not v.vv_descends(b"", a)
    assert v.vv_merge(b"", b"") == v.vv_empty()


def test_node_ids_sort_by_utf8_bytes(backend: _backend.Backend) -> None:
    v = backend.versions
    vv = v.vv_from([("\uffff", 1), ("\U00010000", 2), ("é", 3), ("z", 4)])
    assert [n for n, _ in v.vv_to(vv)] == ["z", "é", "\uffff", "\U00010000"]


# -- bad arguments --------------------------------------------------------------------------------

BAD_NODES: list[object] = ["", "x" * 256, "é" * 128, "\ud800", b"a", 1, None]


@pytest.mark.parametrize("node", BAD_NODES)
def test_bad_node_ids_are_version_errors(backend: _backend.Backend, node: object) -> None:
    v = backend.versions
    with pytest.raises(VersionError):
        v.update(v.empty(), b"", b"x", node)
    with pytest.raises(VersionError):
        v.vv_increment(b"", node)
    with pytest.raises(VersionError):
        v.vv_from([(node, 1)])
    with pytest.raises(VersionError):
        v.reconcile(v.empty(), lambda vals: b"", node)


def test_longest_node_id_is_accepted(backend: _backend.Backend) -> None:
    v = backend.versions
    node = "é" * 127 + "x"  # 255 UTF-8 bytes
    s = v.update(v.empty(), b"", b"x", node)
    assert v.ids(s) == [node]


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", 1), ("a", 2)],
        [("a", 0), ("a", 1)],
        [("a", -1)],
        [("a", MAX + 1)],
        [("a", True)],
        [("a", 1.0)],
        [("a", "1")],
        [["a", 1]],
        [("a", 1, 2)],
        ["a1"],
        5,
        None,
    ],
)
def test_bad_vv_pairs_are_version_errors(backend: _backend.Backend, pairs: object) -> None:
    with pytest.raises(VersionError):
        backend.versions.vv_from(pairs)


def test_vv_from_takes_any_iterable_of_pairs(backend: _backend.Backend) -> None:
    v = backend.versions
    expected = encode_vv([("a", 1), ("b", MAX)])
    assert v.vv_from((("b", MAX), ("a", 1))) == expected
    assert v.vv_from(iter([("a", 1), ("b", MAX)])) == expected
    assert v.vv_from([]) == v.vv_empty()


NOT_BYTES: list[object] = ["\x11\x00\x00", bytearray(b"\x11\x00\x00"), None, 17, [b"x"]]


def set_calls(v: ModuleType, bad: object) -> list[Callable[[], object]]:
    e = v.empty()
    return [
        lambda: v.update(bad, b"", b"x", "a"),
        lambda: v.update(e, bad, b"x", "a"),
        lambda: v.update(e, b"", bad, "a"),
        lambda: v.new(bad),
        lambda: v.sync(bad, e),
        lambda: v.sync(e, bad),
        lambda: v.sync_many([e, bad]),
        lambda: v.join(bad),
        lambda: v.values(bad),
        lambda: v.size(bad),
        lambda: v.ids(bad),
        lambda: v.lww(bad),
        lambda: v.reconcile(bad, lambda vals: b"", "a"),
        lambda: v.less(bad, e),
        lambda: v.less(e, bad),
        lambda: v.equal(bad, e),
        lambda: v.equal(e, bad),
        lambda: v.covers(bad, e),
        lambda: v.covers(b"", bad),
        lambda: v.vv_to(bad),
        lambda: v.vv_descends(bad, b""),
        lambda: v.vv_descends(b"", bad),
        lambda: v.vv_concurrent(bad, b""),
        lambda: v.vv_equal(b"", bad),
        lambda: v.vv_merge(bad, b""),
        lambda: v.vv_increment(bad, "a"),
    ]


@pytest.mark.parametrize("bad", NOT_BYTES, ids=repr)
def test_non_bytes_arguments_are_version_errors(backend: _backend.Backend, bad: object) -> None:
    for call in set_calls(backend.versions, bad):
        with pytest.raises(VersionError):
            call()


def test_sync_many_needs_an_iterable(backend: _backend.Backend) -> None:
    v = backend.versions
    with pytest.raises(VersionError):
        v.sync_many(5)
    assert v.sync_many([]) == v.empty()
    assert v.sync_many(iter([v.new(b"b"), v.new(b"a")])) == encode_set([], [b"a", b"b"])


def test_empty_bytes_is_the_empty_vv_but_not_a_set(backend: _backend.Backend) -> None:
    v = backend.versions
    s = v.new(b"x")
    assert v.update(s, b"", b"y", "a") == v.update(s, v.vv_empty(), b"y", "a")
    assert v.vv_to(b"") == []
    with pytest.raises(VersionError):
        v.values(b"")
    with pytest.raises(VersionError):
        v.sync(b"", v.empty())


def test_sets_and_vvs_are_not_interchangeable(backend: _backend.Backend) -> None:
    v = backend.versions
    with pytest.raises(VersionError):
        v.values(v.vv_empty())
    with pytest.raises(VersionError):
        v.vv_to(v.empty())
    with pytest.raises(VersionError):
        v.update(v.empty(), v.empty(), b"x", "a")


MALFORMED_SETS = [
    b"\x12\x00\x00",  # unknown version
    b"\x11\x00",  # no anonymous count
    b"\x11\x00\x00\x00",  # trailing byte
    b"\x11\x80\x00\x00",  # non-minimal varint
    b"\x11\x01\x01a\x00\x00\x00",  # counter 0
    b"\x11\x01\x01a\x01\x02\x00\x00\x00",  # more values than the counter
    b"\x11\x02\x01b\x01\x00\x01a\x01\x00\x00",  # entries not sorted
    b"\x11\x02\x01a\x01\x00\x01a\x02\x00\x00",  # duplicate node
    b"\x11\x01\x00\x01\x00\x00",  # empty node id
    b"\x11\x01\x01\xff\x01\x00\x00",  # node id not UTF-8
    b"\x11\x01\x03\xed\xa0\x80\x01\x00\x00",  # node id holds an encoded surrogate
    b"\x11\x00\x02\x01b\x01a",  # anonymous values not sorted
    b"\x11\x00\x02\x01a\x01a",  # anonymous values duplicated
    b"\x11\x00\x01\x05a",  # value past the end
    b"\x11" + b"\xff" * 9 + b"\x7f\x00",  # entry count past 64 bits
    b"\x11" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
    b"\x11\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # 2**63-1 entries announced
    b"\x11\x01\x01a" + b"\xff" * 9 + b"\x01\xff\xff\x03",  # 2**16 values announced, no bytes
    b"\x11\x01" + varint(256) + b"a" * 256 + b"\x01\x00\x00",  # node id of 256 bytes
]
MALFORMED_VVS = [
    b"\x22\x00",
    b"\x21",
    b"\x21\x00\x00",
    b"\x21\x01\x01a\x00",
    b"\x21\x01\x01a\x80",
    b"\x21\x01\x01a\x81\x00",
    b"\x21\x02\x01b\x01\x01a\x01",
    b"\x21\x02\x01a\x01\x01a\x01",
    b"\x21\x01\x01a" + b"\xff" * 9 + b"\x02",
    b"\x21\x01\x01a",
]


@pytest.mark.parametrize("data", MALFORMED_SETS)
def test_malformed_sets_are_version_errors(backend: _backend.Backend, data: bytes) -> None:
    v = backend.versions
    for fn in (v.values, v.join, v.size, v.ids, v.lww):
        with pytest.raises(VersionError):
            fn(data)
    with pytest.raises(VersionError):
        v.sync(v.empty(), data)
    with pytest.raises(VersionError):
        v.update(data, b"", b"x", "a")
    with pytest.raises(VersionError):
        v.covers(b"", data)


@pytest.mark.parametrize("data", MALFORMED_VVS)
def test_malformed_vvs_are_version_errors(backend: _backend.Backend, data: bytes) -> None:
    v = backend.versions
    with pytest.raises(VersionError):
        v.vv_to(data)
    with pytest.raises(VersionError):
        v.vv_merge(b"", data)
    with pytest.raises(VersionError):
        v.update(v.empty(), data, b"x", "a")
    with pytest.raises(VersionError):
        v.covers(data, v.empty())


def test_largest_counter_decodes(backend: _backend.Backend) -> None:
    v = backend.versions
    data = b"\x21\x01\x01a" + b"\xff" * 9 + b"\x01"
    assert v.vv_to(data) == [("a", MAX)]


# -- the laws (hypothesis) ------------------------------------------------------------------------


@SETTINGS
@given(a=sets, b=sets, c=sets)
def test_sync_is_a_semilattice_join(
    backend: _backend.Backend, a: bytes, b: bytes, c: bytes
) -> None:
    v = backend.versions
    ab = v.sync(a, b)
    assert ab == v.sync(b, a)
    assert v.sync(ab, c) == v.sync(a, v.sync(b, c))
    assert v.sync(a, a) == a
    assert v.sync(a, v.empty()) == a
    assert v.sync_many([a, b, c]) == v.sync_many([c, a, b]) == v.sync(ab, c)


@SETTINGS
@given(a=shapes(), b=shapes())
def test_sync_invents_nothing_and_loses_nothing(
    backend: _backend.Backend, a: Shape, b: Shape
) -> None:
    v = backend.versions
    merged = v.sync(a.encoded, b.encoded)
    got = v.values(merged)
    assert set(got) <= set(v.values(a.encoded)) | set(v.values(b.encoded))
    b_context = vv_of(v, b.encoded)
    for node, dot, value in a.dots():
        if b_context.get(node, 0) < dot:
            assert value in got, (node, dot, value)
    for value in a.anon:
        assert value in got
    assert vv_of(v, merged) == {
        n: max(vv_of(v, a.encoded).get(n, 0), b_context.get(n, 0))
        for n in vv_of(v, a.encoded).keys() | b_context.keys()
    }


@SETTINGS
@given(s=dotted_sets, value=small_values, node=nodes)
def test_update_with_the_full_context_leaves_one_value(
    backend: _backend.Backend, s: bytes, value: bytes, node: str
) -> None:
    v = backend.versions
    assert v.covers(v.join(s), s)
    before = vv_of(v, s).get(node, 0)
    if before == MAX:
        with pytest.raises(VersionError):
            v.update(s, v.join(s), value, node)
        return
    r = v.update(s, v.join(s), value, node)
    assert v.values(r) == [value]
    assert v.less(s, r)
    assert vv_of(v, r) == {**vv_of(v, s), node: before + 1}


@SETTINGS
@given(s=dotted_sets, v1=small_values, v2=small_values, n1=nodes, n2=nodes)
def test_two_writes_with_one_context_are_siblings(
    backend: _backend.Backend, s: bytes, v1: bytes, v2: bytes, n1: str, n2: str
) -> None:
    v = backend.versions
    if vv_of(v, s).get(n1, 0) >= MAX - 1 or vv_of(v, s).get(n2, 0) >= MAX - 1:
        return
    ctx = v.join(s)
    same_replica = v.update(v.update(s, ctx, v1, n1), ctx, v2, n2)
    assert sorted(v.values(same_replica)) == sorted([v1, v2])
    if n1 != n2:
        x = v.update(s, ctx, v1, n1)
        y = v.update(s, ctx, v2, n2)
        assert sorted(v.values(v.sync(x, y))) == sorted([v1, v2])


@SETTINGS
@given(s=shapes(anon=False), extra=vvs, value=small_values, node=nodes)
def test_an_update_replaces_exactly_what_its_context_covers(
    backend: _backend.Backend, s: Shape, extra: bytes, value: bytes, node: str
) -> None:
    v = backend.versions
    ctx = v.vv_merge(extra, v.join(s.encoded)) if len(s.entries) % 2 else extra
    if dict(v.vv_to(v.vv_merge(ctx, v.join(s.encoded)))).get(node, 0) == MAX:
        return
    r = v.update(s.encoded, ctx, value, node)
    seen = dict(v.vv_to(ctx))
    survivors = [val for n, dot, val in s.dots() if seen.get(n, 0) < dot]
    assert v.covers(ctx, s.encoded) == (not survivors)
    assert sorted(v.values(r)) == sorted([value, *survivors])
    assert v.vv_descends(v.join(r), ctx) and v.vv_descends(v.join(r), v.join(s.encoded))


@SETTINGS
@given(history=histories)
def test_replica_histories_obey_the_laws(backend: _backend.Backend, history: list[Any]) -> None:
    v = backend.versions
    state = replay(v, history)
    written = {op[2] for op in history if op[0] == "w"}
    for s in state:
        assert set(v.values(s)) <= written
        assert v.covers(v.join(s), s)
    merged = v.sync_many(state)
    for s in state:
        assert v.less(s, merged) or v.equal(s, merged)
    # every write that no later write on any replica overwrote is still in the merge
    final = v.update(merged, v.join(merged), b"final", "n9")
    assert v.values(final) == [b"final"]


@SETTINGS
@given(a=sets, b=sets)
def test_less_and_equal_agree_with_sync(backend: _backend.Backend, a: bytes, b: bytes) -> None:
    v = backend.versions
    ab = v.sync(a, b)
    assert v.less(a, b) == (ab == b and a != b)
    assert v.equal(a, b) == (a == b)
    assert not v.less(a, a)
    assert not (v.less(a, b) and v.less(b, a))
    assert v.less(a, ab) or v.equal(a, ab)


@SETTINGS
@given(s=shapes())
def test_covers_the_join_unless_anonymous(backend: _backend.Backend, s: Shape) -> None:
    v = backend.versions
    assert v.covers(v.join(s.encoded), s.encoded) == (not s.anon)


@SETTINGS
@given(a=vvs, b=vvs, c=vvs)
def test_vv_descends_is_a_partial_order_and_merge_its_lub(
    backend: _backend.Backend, a: bytes, b: bytes, c: bytes
) -> None:
    v = backend.versions
    assert v.vv_descends(a, a)
    if v.vv_descends(a, b) and v.vv_descends(b, a):
        assert a == b and v.vv_equal(a, b)
    if v.vv_descends(a, b) and v.vv_descends(b, c):
        assert v.vv_descends(a, c)
    m = v.vv_merge(a, b)
    assert m == v.vv_merge(b, a)
    assert v.vv_descends(m, a) and v.vv_descends(m, b)
    if v.vv_descends(c, a) and v.vv_descends(c, b):
        assert v.vv_descends(c, m)
    assert v.vv_merge(m, c) == v.vv_merge(a, v.vv_merge(b, c))
    assert v.vv_concurrent(a, b) == (not v.vv_descends(a, b) and not v.vv_descends(b, a))
    pairs = dict(v.vv_to(a))
    for node in NODES[:3]:
        if pairs.get(node) == MAX:
            with pytest.raises(VersionError):
                v.vv_increment(a, node)
            continue
        bumped = dict(v.vv_to(v.vv_increment(a, node)))
        assert bumped == {**pairs, node: pairs.get(node, 0) + 1}


@SETTINGS
@given(s=shapes(), pairs=vv_pairs, data=st.data())
def test_encoding_is_canonical(
    backend: _backend.Backend, s: Shape, pairs: list[tuple[str, int]], data: st.DataObject
) -> None:
    v = backend.versions
    assert v.values(s.encoded) == [val for _, _, vals in s.entries for val in vals] + s.anon
    assert v.ids(s.encoded) == [n for n, _, _ in s.entries]
    assert v.vv_to(v.join(s.encoded)) == [(n, c) for n, c, _ in s.entries]
    assert v.join(s.encoded) == encode_vv([(n, c) for n, c, _ in s.entries])
    assert v.sync_many([s.encoded]) == s.encoded
    shuffled = data.draw(st.permutations(pairs))
    assert v.vv_from(shuffled) == v.vv_from(pairs) == encode_vv(pairs)
    assert v.vv_to(v.vv_from(pairs)) == sorted(pairs, key=lambda p: p[0].encode())


@SETTINGS
@given(s=shapes())
def test_lww_and_reconcile_leave_one_value(backend: _backend.Backend, s: Shape) -> None:
    v = backend.versions
    everything = v.values(s.encoded)
    w = v.lww(s.encoded)
    assert v.values(w) == ([max(everything)] if everything else [])
    assert v.join(w) == v.join(s.encoded)
    if vv_of(v, s.encoded).get("a", 0) == MAX:
        return
    r = v.reconcile(s.encoded, b"".join, "a")
    assert v.values(r) == [b"".join(everything)]
    assert v.vv_descends(v.join(r), v.join(s.encoded))


# -- parity with the pure twin and fuzzing of the decoders ----------------------------------------


def every_op(v: ModuleType, x: bytes, y: bytes) -> list[tuple[str, Any]]:
    """Every operation fed with x (and y) in each role; the outcomes, for parity."""
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (v.update, (x, y, b"val", "a")),
        (v.update, (y, x, b"val", "é")),
        (v.sync, (x, y)),
        (v.sync_many, ([x, y, x],)),
        (v.join, (x,)),
        (v.values, (x,)),
        (v.size, (x,)),
        (v.ids, (x,)),
        (v.lww, (x,)),
        (v.reconcile, (x, b"|".join, "b")),
        (v.less, (x, y)),
        (v.equal, (x, y)),
        (v.covers, (y, x)),
        (v.covers, (x, y)),
        (v.vv_to, (x,)),
        (v.vv_descends, (x, y)),
        (v.vv_concurrent, (y, x)),
        (v.vv_equal, (x, y)),
        (v.vv_merge, (x, y)),
        (v.vv_increment, (x, "c")),
    ]
    return [outcome(fn, *args) for fn, args in calls]


def assert_typed(results: list[tuple[str, Any]]) -> None:
    for kind, value in results:
        if kind == "err":
            assert issubclass(value, VersionError), value


@SETTINGS
@given(a=sets, b=sets | vvs)
def test_backends_agree_on_valid_input(backend: _backend.Backend, a: bytes, b: bytes) -> None:
    ours = every_op(backend.versions, a, b)
    assert ours == every_op(PURE, a, b)
    assert_typed(ours)


@SETTINGS
@given(history=histories)
def test_backends_agree_on_histories(backend: _backend.Backend, history: list[Any]) -> None:
    assert replay(backend.versions, history) == replay(PURE, history)


@SETTINGS
@given(
    prefix=st.sampled_from([b"\x11", b"\x21", b""]),
    body=st.binary(max_size=40),
    other=sets | vvs,
)
def test_random_bytes_give_typed_errors_and_agree(
    backend: _backend.Backend, prefix: bytes, body: bytes, other: bytes
) -> None:
    data = prefix + body
    ours = every_op(backend.versions, data, other)
    assert ours == every_op(PURE, data, other)
    assert_typed(ours)


@SETTINGS
@given(s=sets | vvs, data=st.data())
def test_truncated_and_mutated_encodings(
    backend: _backend.Backend, s: bytes, data: st.DataObject
) -> None:
    v = backend.versions
    decode = v.values if s[0] == 0x11 else v.vv_to
    for cut in range(1 if decode is v.vv_to else 0, len(s)):
        with pytest.raises(VersionError):
            decode(s[:cut])
    at = data.draw(st.integers(0, len(s) - 1))
    byte = data.draw(st.integers(0, 255))
    mutated = s[:at] + bytes([byte]) + s[at + 1 :]
    ours = every_op(v, mutated, s)
    assert ours == every_op(PURE, mutated, s)
    assert_typed(ours)
    extended = s + data.draw(st.binary(min_size=1, max_size=3))
    with pytest.raises(VersionError):
        decode(extended)


@SETTINGS
@given(
    pairs=st.lists(
        st.tuples(st.text(min_size=0, max_size=3) | nodes, st.integers(-2, MAX + 2)), max_size=4
    )
)
def test_backends_agree_on_vv_from(backend: _backend.Backend, pairs: list[tuple[str, int]]) -> None:
    ours = outcome(backend.versions.vv_from, pairs)
    assert ours == outcome(PURE.vv_from, pairs)
    assert ours[0] == "ok" or issubclass(ours[1], VersionError)


def test_version_error_is_a_dynacore_value_error(backend: _backend.Backend) -> None:
    with pytest.raises(DynacoreError):
        backend.versions.values(b"junk")
    with pytest.raises(ValueError):
        backend.versions.values(b"junk")
