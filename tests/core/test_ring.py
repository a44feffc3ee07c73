"""Tests of the ring primitive on every built backend: API, laws, errors, parity and fuzzing."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dynacore import _backend
from dynacore.errors import DynacoreError, RingError

Backend = _backend.Backend
BACKENDS = [_backend.load(name) for name in _backend.available()]
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

log2qs = st.integers(min_value=0, max_value=9)
node_ids = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)


@st.composite
def rings_spec(draw: st.DrawFn, min_nodes: int = 1) -> tuple[int, list[str]]:
    """A partition count and 1..min(Q, 24) distinct node ids."""
    q = 1 << draw(st.integers(min_value=max(0, (min_nodes - 1).bit_length()), max_value=9))
    size = draw(st.integers(min_value=min_nodes, max_value=min(q, 24)))
    nodes = draw(st.lists(node_ids, min_size=size, max_size=size, unique=True))
    return q, nodes


def names(count: int) -> list[str]:
    return [f"n{i:02d}" for i in range(count)]


def counts(ring: Any) -> list[int]:
    tally = Counter(ring.owners)
    return [tally[node] for node in ring.nodes]


def imbalance(ring: Any) -> int:
    tally = counts(ring)
    return max(tally) - min(tally)


def spacing_violations(owners: list[str]) -> int:
    q = len(owners)
    return sum(
        1 for p in range(q) for d in (1, 2) if (p + d) % q != p and owners[(p + d) % q] == owners[p]
    )


def naive_walk(owners: list[str], start: int) -> list[str]:
    seen: list[str] = []
    for step in range(len(owners)):
        node = owners[(start + step) % len(owners)]
        if node not in seen:
            seen.append(node)
    return seen


def sealed(body: bytes) -> bytes:
    """An encoding body with a valid checksum, to reach the structural checks behind it."""
    return body + xxhash.xxh3_64_intdigest(body).to_bytes(8, "big")


def raises_ring_error(call: Callable[..., object], *args: object) -> None:
    with pytest.raises(RingError):
        call(*args)


# -- hashing ---------------------------------------------------------------------------------------


def test_key_hash_is_xxh3_64(backend: Backend) -> None:
    for key in [b"", b"a", b"hello world", bytes(range(256)) * 4]:
        assert backend.ring.key_hash(key) == xxhash.xxh3_64_intdigest(key)


@given(key=st.binary(max_size=64), log2q=st.integers(min_value=0, max_value=16))
@PROPERTY
def test_partition_of_takes_the_top_bits(backend: Backend, key: bytes, log2q: int) -> None:
    expected = xxhash.xxh3_64_intdigest(key) >> (64 - log2q)
    assert backend.ring.partition_of(key, 1 << log2q) == expected
    ring = backend.ring.Ring.claim(1 << log2q, ["a"])
    assert ring.partition_of(key) == expected
    assert ring.partitions_of([key, key]) == [expected, expected]


@pytest.mark.parametrize("q", [0, 3, 6, -4, 1 << 17, 1 << 80, 8.0, "8", None])
def test_partition_count_must_be_a_power_of_two(backend: Backend, q: object) -> None:
    raises_ring_error(lambda: backend.ring.partition_of(b"k", q))
    raises_ring_error(lambda: backend.ring.Ring.claim(q, ["a"]))


@pytest.mark.parametrize("key", ["text", bytearray(b"k"), memoryview(b"k"), 7, None])
def test_keys_must_be_bytes(backend: Backend, key: object) -> None:
    ring = backend.ring.Ring.claim(8, ["a", "b"])
    raises_ring_error(lambda: backend.ring.key_hash(key))
    raises_ring_error(lambda: backend.ring.partition_of(key, 8))
    raises_ring_error(lambda: ring.partition_of(key))
    raises_ring_error(lambda: ring.lookup(key, 2))
    raises_ring_error(lambda: ring.lookup_many([b"ok", key], 2))
    raises_ring_error(lambda: ring.partitions_of([b"ok", key]))


# -- construction ----------------------------------------------------------------------------------


def test_ring_from_owners(backend: Backend) -> None:
    ring = backend.ring.Ring(["b", "a", "b", "c"])
    assert ring.q == 4
    assert ring.owners == ["b", "a", "b", "c"]
    assert ring.nodes == ["a", "b", "c"]
    assert [ring.owner(p) for p in range(4)] == ["b", "a", "b", "c"]
    assert ring.partitions_owned("b") == [0, 2]
    assert backend.ring.Ring(node for node in ["x", "y"]).owners == ["x", "y"]
    assert backend.ring.Ring(owners=("x",)).q == 1


def test_properties_are_copies(backend: Backend) -> None:
    ring = backend.ring.Ring(["a", "b"])
    ring.owners.append("c")
    ring.nodes.clear()
    assert ring.owners == ["a", "b"]
    assert ring.nodes == ["a", "b"]


@pytest.mark.parametrize(
    "owners",
    [
        [],
        ["a", "b", "c"],
        "abcd",
        ["a", "b", "c", 4],
        [b"a"],
        [""],
        ["x" * 256],
        ["é" * 128],
        ["\ud800"],
        None,
        42,
    ],
)
def test_bad_owners(backend: Backend, owners: object) -> None:
    raises_ring_error(lambda: backend.ring.Ring(owners))


def test_node_id_limit_is_in_bytes(backend: Backend) -> None:
    assert backend.ring.Ring(["x" * 255]).nodes == ["x" * 255]
    assert backend.ring.Ring(["é" * 127]).q == 1


def test_ring_error_is_a_dynacore_value_error() -> None:
    assert issubclass(RingError, DynacoreError)
    assert issubclass(RingError, ValueError)


# -- claim -----------------------------------------------------------------------------------------


def test_claim_golden(backend: Backend) -> None:
    """Pins the documented algorithm: any change here changes every backend's rings."""
    ring = backend.ring.Ring
    assert ring.claim(8, ["c", "a", "b"]).owners == ["a", "b", "c", "a", "b", "c", "a", "b"]
    five = ring.claim(16, ["n1", "n2", "n3", "n4", "n5"])
    assert five.owners == (
        "n3 n2 n1 n4 n5 n1 n2 n3 n4 n5 n1 n2 n3 n4 n5 n1".split()
    )  # round robin, wrap-around repaired by swapping partitions 0 and 2
    assert five.with_node("n0").owners == (
        "n0 n2 n1 n4 n5 n0 n2 n3 n4 n5 n1 n2 n3 n4 n5 n1".split()
    )
    assert five.without_node("n3").owners == (
        "n4 n2 n1 n4 n5 n1 n2 n2 n4 n5 n1 n2 n5 n4 n5 n1".split()
    )


def test_claim_is_deterministic_over_the_node_set(backend: Backend) -> None:
    nodes = names(7)
    shuffled = random.Random(5).sample(nodes, len(nodes))
    first = backend.ring.Ring.claim(64, nodes)
    assert backend.ring.Ring.claim(64, shuffled) == first
    assert backend.ring.Ring.claim(64, nodes + nodes[:3]) == first
    assert backend.ring.Ring.claim(64, tuple(nodes)).owners == first.owners


@given(spec=rings_spec())
@PROPERTY
def test_claim_is_balanced(backend: Backend, spec: tuple[int, list[str]]) -> None:
    q, nodes = spec
    ring = backend.ring.Ring.claim(q, nodes)
    assert ring.q == q
    assert ring.nodes == sorted(nodes)
    assert imbalance(ring) <= 1


def test_claim_spaces_owners(backend: Backend) -> None:
    """With 4 or more nodes, any 3 consecutive partitions have distinct owners."""
    for log2q in range(2, 11):
        q = 1 << log2q
        for size in range(4, min(q, 40) + 1):
            ring = backend.ring.Ring.claim(q, names(size))
            assert spacing_violations(ring.owners) == 0, (q, size)
            assert imbalance(ring) <= 1


def test_claim_of_the_largest_ring(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(65536, names(3))
    assert ring.q == 65536
    assert imbalance(ring) <= 1
    every = backend.ring.Ring.claim(256, names(256))
    assert sorted(every.owners) == sorted(names(256))


@pytest.mark.parametrize(
    ("q", "nodes"),
    [(8, []), (4, names(5)), (8, [""]), (8, ["ok", 3]), (8, "abc"), (8, None), (8, ["\udfff"])],
)
def test_claim_rejects_bad_input(backend: Backend, q: int, nodes: object) -> None:
    raises_ring_error(lambda: backend.ring.Ring.claim(q, nodes))


# -- joins and leaves ------------------------------------------------------------------------------


@given(spec=rings_spec(), new=node_ids)
@PROPERTY
def test_join_moves_few_partitions_only_to_the_new_node(
    backend: Backend, spec: tuple[int, list[str]], new: str
) -> None:
    q, nodes = spec
    assume(new not in nodes and len(nodes) < q)
    ring = backend.ring.Ring.claim(q, nodes)
    joined = ring.with_node(new)
    moved = ring.moves(joined)
    assert len(moved) <= math.ceil(q / (len(nodes) + 1))
    assert len(moved) == q // (len(nodes) + 1)
    assert all(to == new for _, _, to in moved)
    assert all(ring.owner(p) == source for p, source, _ in moved)
    assert joined.nodes == sorted([*nodes, new])
    assert imbalance(joined) <= 1


@given(spec=rings_spec(min_nodes=2), pick=st.integers(min_value=0))
@PROPERTY
def test_leave_moves_only_the_leavers_partitions(
    backend: Backend, spec: tuple[int, list[str]], pick: int
) -> None:
    q, nodes = spec
    ring = backend.ring.Ring.claim(q, nodes)
    leaver = nodes[pick % len(nodes)]
    left = ring.without_node(leaver)
    moved = ring.moves(left)
    assert sorted(p for p, _, _ in moved) == ring.partitions_owned(leaver)
    assert all(source == leaver and to != leaver for _, source, to in moved)
    assert leaver not in left.nodes
    assert imbalance(left) <= 1


@given(spec=rings_spec(min_nodes=2), data=st.data())
@PROPERTY
def test_join_then_leave_stays_balanced(
    backend: Backend, spec: tuple[int, list[str]], data: st.DataObject
) -> None:
    q, nodes = spec
    ring = backend.ring.Ring.claim(q, nodes[:1])
    for node in nodes[1:]:
        ring = ring.with_node(node)
        assert imbalance(ring) <= 1
    while len(ring.nodes) > 1:
        ring = ring.without_node(data.draw(st.sampled_from(ring.nodes)))
        assert imbalance(ring) <= 1
    assert ring.owners == [ring.nodes[0]] * q


def test_membership_errors(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(8, names(3))
    raises_ring_error(lambda: ring.with_node("n00"))
    raises_ring_error(lambda: ring.with_node(""))
    raises_ring_error(lambda: ring.with_node(3))
    raises_ring_error(lambda: ring.without_node("zz"))
    raises_ring_error(lambda: ring.without_node(None))
    raises_ring_error(lambda: ring.partitions_owned("zz"))
    raises_ring_error(lambda: backend.ring.Ring.claim(2, ["a"]).without_node("a"))
    raises_ring_error(lambda: backend.ring.Ring.claim(2, ["a", "b"]).with_node("c"))


def test_join_and_leave_on_the_largest_ring(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(65536, ["a"])
    joined = ring.with_node("b")
    assert counts(joined) == [32768, 32768]
    assert joined.without_node("a").owners == ["b"] * 65536


def test_membership_changes_keep_unbalanced_rings_valid(backend: Backend) -> None:
    ring = backend.ring.Ring(["a"] * 13 + ["b", "c", "d"])
    joined = ring.with_node("e")
    assert all(to == "e" for _, _, to in ring.moves(joined))
    assert len(ring.moves(joined)) == 16 // 5
    left = ring.without_node("a")
    assert all(source == "a" for _, source, _ in ring.moves(left))
    assert imbalance(left) <= 1


# -- preference lists ------------------------------------------------------------------------------


@given(spec=rings_spec(), n=st.integers(min_value=1, max_value=30), data=st.data())
@PROPERTY
def test_preference_and_extended_lists(
    backend: Backend, spec: tuple[int, list[str]], n: int, data: st.DataObject
) -> None:
    q, nodes = spec
    ring = backend.ring.Ring.claim(q, nodes)
    p = data.draw(st.integers(min_value=0, max_value=q - 1))
    walk = naive_walk(ring.owners, p)
    preference = ring.preference_list(p, n)
    extended = ring.extended_list(p, n)
    assert isinstance(preference, tuple)
    assert isinstance(extended, tuple)
    assert len(preference) == min(n, len(nodes))
    assert len(set(preference)) == len(preference)
    assert preference[0] == ring.owner(p)
    assert set(preference).isdisjoint(extended)
    assert list(preference + extended) == walk
    assert sorted(preference + extended) == sorted(nodes)


@given(spec=rings_spec(), keys=st.lists(st.binary(max_size=24), max_size=40), n=st.integers(1, 20))
@PROPERTY
def test_lookup_is_the_preference_list_of_the_key(
    backend: Backend, spec: tuple[int, list[str]], keys: list[bytes], n: int
) -> None:
    q, nodes = spec
    ring = backend.ring.Ring.claim(q, nodes)
    singles = [ring.lookup(key, n) for key in keys]
    assert singles == [ring.preference_list(ring.partition_of(key), n) for key in keys]
    assert ring.lookup_many(keys, n) == singles
    assert ring.lookup_many(tuple(keys), n) == singles
    assert ring.lookup_many(iter(keys), n) == singles
    assert ring.partitions_of(keys) == [ring.partition_of(key) for key in keys]


def test_lookup_with_many_nodes_beyond_the_cached_n(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(64, names(40))
    keys = [bytes([i]) * 3 for i in range(50)]
    for n in (16, 17, 30, 40, 41, 1 << 70):
        expected = [tuple(naive_walk(ring.owners, ring.partition_of(k))[:n]) for k in keys]
        assert ring.lookup_many(keys, n) == expected
        assert [ring.lookup(k, n) for k in keys] == expected


def test_lookup_reuses_cached_tuples(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(32, names(5))
    first = ring.lookup(b"key", 3)
    assert ring.lookup(b"key", 3) is first
    assert ring.lookup_many([b"key"], 3)[0] is first
    assert ring.preference_list(ring.partition_of(b"key"), 3) is first


def test_n_and_partitions_are_integers(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(8, names(3))
    assert ring.lookup(b"k", True) == ring.lookup(b"k", 1)  # bool is an int, as for operator.index
    assert ring.lookup(b"k", 1 << 80) == ring.lookup(b"k", 3)
    for bad_n in (0, -1, -(1 << 80), 1.0, "3", None, [3], slice(1)):
        raises_ring_error(ring.lookup, b"k", bad_n)
        raises_ring_error(ring.lookup_many, [b"k"], bad_n)
        raises_ring_error(ring.preference_list, 0, bad_n)
        raises_ring_error(ring.extended_list, 0, bad_n)
    for bad_p in (-1, 8, 1 << 80, 1.0, "0", None):
        raises_ring_error(ring.owner, bad_p)
        raises_ring_error(ring.preference_list, bad_p, 2)
        raises_ring_error(ring.extended_list, bad_p, 2)


@pytest.mark.parametrize("keys", ["text", b"bytes", 42, None, [b"a", "b"]])
def test_bad_key_sequences(backend: Backend, keys: object) -> None:
    ring = backend.ring.Ring.claim(8, names(3))
    raises_ring_error(lambda: ring.lookup_many(keys, 2))
    raises_ring_error(lambda: ring.partitions_of(keys))


def test_one_partition_ring(backend: Backend) -> None:
    ring = backend.ring.Ring(["solo"])
    assert ring.q == 1
    assert ring.partition_of(b"x") == 0
    assert ring.partitions_of([b"x", b"y"]) == [0, 0]
    assert ring.lookup(b"x", 3) == ("solo",)
    assert ring.lookup_many([b"x", b"y"], 1) == [("solo",), ("solo",)]
    assert ring.preference_list(0, 2) == ("solo",)
    assert ring.extended_list(0, 1) == ()
    raises_ring_error(ring.preference_list, 1, 1)
    raises_ring_error(ring.owner, 1)


def test_partitions_owned_cover_the_ring(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(128, names(9))
    owned = [p for node in ring.nodes for p in ring.partitions_owned(node)]
    assert sorted(owned) == list(range(128))


# -- moves, equality, encoding ---------------------------------------------------------------------


def test_moves(backend: Backend) -> None:
    ring = backend.ring.Ring(["a", "b", "a", "b"])
    other = backend.ring.Ring(["a", "c", "b", "b"])
    assert ring.moves(ring) == []
    assert ring.moves(other) == [(1, "b", "c"), (2, "a", "b")]
    raises_ring_error(lambda: ring.moves(backend.ring.Ring(["a", "b"])))
    raises_ring_error(lambda: ring.moves(["a", "b", "a", "b"]))


def test_equality_and_hash(backend: Backend) -> None:
    ring = backend.ring.Ring.claim(16, names(3))
    same = backend.ring.Ring(ring.owners)
    other = ring.with_node("zz")
    assert ring == same
    assert not ring != same
    assert hash(ring) == hash(same)
    assert ring != other
    assert ring != ring.owners
    assert len({ring, same, other}) == 2
    text = repr(ring)
    assert "16" in text
    assert "n00" in text


@given(spec=rings_spec())
@PROPERTY
def test_encoding_round_trips(backend: Backend, spec: tuple[int, list[str]]) -> None:
    q, nodes = spec
    ring = backend.ring.Ring.claim(q, nodes)
    data = ring.encode()
    assert isinstance(data, bytes)
    decoded = backend.ring.Ring.decode(data)
    assert decoded == ring
    assert decoded.owners == ring.owners
    assert backend.ring.Ring(ring.owners).encode() == data


def test_encoding_layout(backend: Backend) -> None:
    data = backend.ring.Ring(["b", "a"]).encode()
    body = b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b\x00\x01\x00\x00"
    assert data == sealed(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"XRNG\x01\x01\x00\x00\x00\x02\x01a\x01b\x00\x01\x00\x00",  # magic
        b"DRNG\x02\x01\x00\x00\x00\x02\x01a\x01b\x00\x01\x00\x00",  # version
        b"DRNG\x01\x11\x00\x00\x00\x01\x01a",  # log2 Q > 16
        b"DRNG\x01\x01\x00\x00\x00\x00",  # no nodes
        b"DRNG\x01\x01\x00\x00\x00\x03\x01a\x01b\x01c\x00\x01\x00\x02",  # more nodes than Q
        b"DRNG\x01\x01\xff\xff\xff\xff\x01a",  # huge node count
        b"DRNG\x01\x01\x00\x00\x00\x02\x01b\x01a\x00\x01\x00\x00",  # unsorted nodes
        b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01a\x00\x01\x00\x00",  # duplicate nodes
        b"DRNG\x01\x01\x00\x00\x00\x02\x00\x01b\x00\x01\x00\x00",  # empty node id
        b"DRNG\x01\x01\x00\x00\x00\x02\x01\xff\x01b\x00\x01\x00\x00",  # not UTF-8
        b"DRNG\x01\x01\x00\x00\x00\x02\x03\xed\xa0\x80\x01b\x00\x01\x00\x00",  # surrogate
        b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x09b\x00\x01\x00\x00",  # name overruns
        b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b\x00\x01\x00\x02",  # index out of range
        b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b\x00\x00\x00\x00",  # a node owns nothing
        b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b\x00\x01\x00",  # owner table short
        b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b\x00\x01\x00\x00\x00",  # trailing byte
    ],
)
def test_decode_checks_structure(backend: Backend, body: bytes) -> None:
    raises_ring_error(lambda: backend.ring.Ring.decode(sealed(body)))


def test_decode_rejects_every_truncation_and_bit_flip(backend: Backend) -> None:
    data = backend.ring.Ring.claim(32, ["a", "ü", "node-3"]).encode()
    for cut in range(len(data)):
        raises_ring_error(backend.ring.Ring.decode, data[:cut])
    for index in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[index] ^= bit
            raises_ring_error(backend.ring.Ring.decode, bytes(damaged))


@pytest.mark.parametrize("data", ["DRNG", bytearray(b"DRNG"), None, 5])
def test_decode_needs_bytes(backend: Backend, data: object) -> None:
    raises_ring_error(lambda: backend.ring.Ring.decode(data))


@given(garbage=st.binary(max_size=300))
@PROPERTY
def test_decode_fuzz_raises_ring_error(backend: Backend, garbage: bytes) -> None:
    for data in (garbage, b"DRNG\x01" + garbage, sealed(b"DRNG\x01" + garbage)):
        try:
            ring = backend.ring.Ring.decode(data)
        except RingError:
            continue
        assert ring.encode() == data  # whatever decodes is canonical


# -- parity across backends ------------------------------------------------------------------------


def _outcome(call: Callable[[], object]) -> object:
    try:
        return ("ok", call())
    except RingError:
        return ("RingError",)


def _script(ring_module: Any, q: int, nodes: list[str], keys: list[bytes], seed: int) -> object:
    rng = random.Random(seed)
    ring = ring_module.Ring.claim(q, nodes)
    trace: list[object] = [ring.owners, ring.encode()]
    for step in range(6):
        if rng.random() < 0.5 and len(ring.nodes) < q:
            ring = ring.with_node(f"joiner-{step}")
        elif len(ring.nodes) > 1:
            ring = ring.without_node(rng.choice(ring.nodes))
        trace += [ring.owners, ring.encode()]
    for n in (1, 2, 3, 5, 17):
        trace.append(ring.lookup_many(keys, n))
        trace.append([ring.extended_list(p, n) for p in range(0, q, max(1, q // 8))])
    trace.append(ring.partitions_of(keys))
    return trace


@given(
    spec=rings_spec(),
    keys=st.lists(st.binary(max_size=20), max_size=30),
    seed=st.integers(min_value=0, max_value=1 << 30),
)
@settings(max_examples=30, deadline=None)
def test_backends_agree(spec: tuple[int, list[str]], keys: list[bytes], seed: int) -> None:
    q, nodes = spec
    traces = [_script(backend.ring, q, nodes, keys, seed) for backend in BACKENDS]
    assert all(trace == traces[0] for trace in traces[1:])


@given(garbage=st.binary(max_size=64), q=st.integers(-3, 70), n=st.integers(-2, 20))
@settings(max_examples=60, deadline=None)
def test_backends_agree_on_errors(garbage: bytes, q: int, n: int) -> None:
    def outcomes(ring_module: Any) -> list[object]:
        ring = ring_module.Ring.claim(8, ["a", "b", "c"])
        return [
            _outcome(lambda: ring_module.Ring.decode(garbage)),
            _outcome(lambda: ring_module.Ring.decode(sealed(garbage))),
            _outcome(lambda: ring_module.partition_of(garbage, q)),
            _outcome(lambda: ring_module.Ring.claim(q, ["a", "b"]).owners),
            _outcome(lambda: ring.lookup(garbage, n)),
            _outcome(lambda: ring.preference_list(q, n)),
            _outcome(lambda: ring.extended_list(q, n)),
        ]

    results = [outcomes(backend.ring) for backend in BACKENDS]
    assert all(result == results[0] for result in results[1:])
