"""PN-counters: merge is a join (commutative, associative, idempotent), increments never shrink
an actor's totals, a set moves the base, malformed encodings are typed errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynacore import counters
from dynacore.counters import Counter
from dynacore.errors import LimitExceeded, SerializationError

ACTORS = st.sampled_from(["a.01", "b.02", "c.03"])
OPS = st.lists(st.tuples(ACTORS, st.integers(-1000, 1000)), max_size=8)


def build(ops: list[tuple[str, int]], base: int = 0, base_ms: int = 0) -> Counter:
    state = counters.of_value(base, base_ms)
    for actor, delta in ops:
        state = state.add(actor, delta)
    return state


@given(OPS, OPS, OPS, st.integers(-100, 100), st.integers(0, 5))
def test_merge_is_a_join(
    ops_a: list[tuple[str, int]],
    ops_b: list[tuple[str, int]],
    ops_c: list[tuple[str, int]],
    base: int,
    base_ms: int,
) -> None:
    a, b, c = build(ops_a), build(ops_b, base, base_ms), build(ops_c)
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a


@given(OPS, OPS)
def test_concurrent_increments_of_distinct_actors_all_count(
    ops_a: list[tuple[str, int]], ops_b: list[tuple[str, int]]
) -> None:
    start = build([("x.00", 5)])
    left = start
    for _, delta in ops_a:
        left = left.add("a.01", delta)
    right = start
    for _, delta in ops_b:
        right = right.add("b.02", delta)
    merged = left.merge(right)
    assert merged.value == 5 + sum(d for _, d in ops_a) + sum(d for _, d in ops_b)


@given(OPS, st.integers(-(10**6), 10**6))
def test_set_keeps_entries_and_moves_the_base(ops: list[tuple[str, int]], wanted: int) -> None:
    state = build(ops)
    rebased = state.rebased(wanted, 10)
    assert rebased.value == wanted
    assert rebased.entries == state.entries
    assert rebased.add("a.01", 1).value == wanted + 1


def test_newest_base_wins_a_merge() -> None:
    old = counters.of_value(10, 100).add("a.01", 1)
    new = counters.of_value(50, 200)
    assert old.merge(new).value == 51
    assert new.merge(old).value == 51


@given(OPS, st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, (1 << 64) - 1))
def test_encoding_round_trips(ops: list[tuple[str, int]], base: int, base_ms: int) -> None:
    state = Counter(base, base_ms, build(ops).entries)
    assert counters.decode(state.encode()) == state


def test_overflow_is_a_limit_error() -> None:
    state = counters.of_value(counters.MAX_VALUE, 0)
    with pytest.raises(LimitExceeded):
        state.add("a.01", 1)
    with pytest.raises(LimitExceeded):
        counters.of_value(0, 0).add("a.01", 1 << 63)
    with pytest.raises(LimitExceeded):
        counters.of_value(0, 0).rebased(1 << 63, 0)
    with pytest.raises(LimitExceeded):
        counters.of_value(0, 0).add("x" * 300, 1).encode()


@given(st.binary(max_size=80))
def test_decode_never_crashes(data: bytes) -> None:
    try:
        state = counters.decode(data)
    except SerializationError:
        return
    assert counters.decode(state.encode()) == state


def test_unsorted_or_truncated_encodings_are_refused() -> None:
    good = counters.of_value(1, 2).add("b.02", 3).add("a.01", 4).encode()
    with pytest.raises(SerializationError):
        counters.decode(good[:-1])
    with pytest.raises(SerializationError):
        counters.decode(good + b"\x00")
    swapped = Counter(0, 0, (("b.02", 1, 0), ("a.01", 1, 0))).encode()
    with pytest.raises(SerializationError):
        counters.decode(swapped)
