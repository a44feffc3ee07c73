"""The merkle primitive on every built backend: the contract's layout, the API, its laws, parity.

Every test takes the `backend` fixture and so runs on rust, cython and python. The layout is
checked against `model_levels`, a slow from-scratch model of docs/contracts.md written with the
blake3 and xxhash packages directly; the laws and the cross-backend agreement are hypothesis
properties; malformed arguments are fuzzed and must give MerkleError, never another error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import blake3
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacore import _backend
from dynacore.errors import MerkleError

ZERO = bytes(32)
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Shapes small enough to exercise every level quickly, plus the default one.
SHAPES = [(2, 1), (2, 3), (4, 2), (8, 2), (16, 1), (16, 3), (256, 1)]

Pairs = list[tuple[bytes, bytes]]


# -- the model -------------------------------------------------------------------------------------


def blake(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def model_segments(fanout: int, depth: int, pairs: Sequence[tuple[bytes, bytes]]) -> list[Pairs]:
    """Every segment's (key, digest) pairs, sorted by key; later pairs win."""
    segments = fanout**depth
    content: dict[bytes, bytes] = dict(pairs)
    out: list[Pairs] = [[] for _ in range(segments)]
    for key, value in content.items():
        out[xxhash.xxh3_64_intdigest(key) % segments].append((key, value))
    return [sorted(seg) for seg in out]


def model_segment_hash(seg: Pairs) -> bytes:
    if not seg:
        return ZERO
    return blake(b"".join(len(k).to_bytes(4, "big") + k + d for k, d in seg))


def model_levels(
    fanout: int, depth: int, pairs: Sequence[tuple[bytes, bytes]]
) -> list[list[bytes]]:
    levels = [[model_segment_hash(seg) for seg in model_segments(fanout, depth, pairs)]]
    while len(levels[0]) > 1:
        children = levels[0]
        parents = []
        for start in range(0, len(children), fanout):
            block = b"".join(children[start : start + fanout])
            parents.append(ZERO if block == ZERO * fanout else blake(block))
        levels.insert(0, parents)
    return levels


def digest_of(n: int) -> bytes:
    return blake(n.to_bytes(8, "big"))


def numbered(n: int, salt: int = 0) -> Pairs:
    return [(b"key-%d" % i, digest_of(i * 7919 + salt)) for i in range(n)]


def tree_of(backend: _backend.Backend, pairs: Pairs, fanout: int = 16, depth: int = 3) -> Any:
    tree = backend.merkle.MerkleTree(fanout, depth)
    tree.update_many(pairs)
    return tree


# -- strategies ------------------------------------------------------------------------------------

keys = st.binary(min_size=0, max_size=24)
digests = st.binary(min_size=32, max_size=32)
pair_lists = st.lists(st.tuples(keys, digests), max_size=60)
shapes = st.sampled_from(SHAPES)


# -- digest ----------------------------------------------------------------------------------------


def test_digest_is_blake3_256(backend: _backend.Backend) -> None:
    for data in (b"", b"abc", bytes(range(256)) * 9):
        assert backend.merkle.digest(data) == blake(data)
        assert len(backend.merkle.digest(data)) == 32


@pytest.mark.parametrize("bad", ["abc", None, 5, bytearray(b"abc"), memoryview(b"abc")])
def test_digest_rejects_non_bytes(backend: _backend.Backend, bad: object) -> None:
    with pytest.raises(MerkleError):
        backend.merkle.digest(bad)


def test_every_backend_has_the_public_api(backend: _backend.Backend) -> None:
    pure = _backend.load("python").merkle
    for name in pure.__all__:
        value = getattr(backend.merkle, name)
        if isinstance(value, int | bytes):
            assert value == getattr(pure, name), name
    assert (backend.merkle.MAX_SEGMENTS, backend.merkle.ZERO_HASH) == (1 << 20, ZERO)


# -- shape -----------------------------------------------------------------------------------------


def test_default_shape_is_4096_empty_segments(backend: _backend.Backend) -> None:
    tree = backend.merkle.MerkleTree()
    assert (tree.fanout, tree.depth, tree.segments, tree.size) == (16, 3, 4096, 0)
    assert tree.root() == ZERO
    assert tree.level(0) == [ZERO]
    assert tree.level(3) == [ZERO] * 4096


@pytest.mark.parametrize("fanout,depth", [(2, 1), (2, 6), (4, 6), (16, 5), (32, 4), (256, 2)])
def test_valid_shapes(backend: _backend.Backend, fanout: int, depth: int) -> None:
    tree = backend.merkle.MerkleTree(fanout=fanout, depth=depth)
    assert tree.segments == fanout**depth <= 1 << 20
    assert len(tree.level(depth)) == fanout**depth


@pytest.mark.parametrize(
    "fanout,depth",
    [
        (0, 3), (1, 3), (3, 2), (6, 2), (257, 1), (512, 1), (-2, 3), (-16, 3),
        (16, 0), (16, 7), (16, -1), (64, 4), (256, 3), (2**70, 1), (16, 2**70),
        ("16", 3), (16.0, 3), (None, 3), (16, None), (16, 3.0), (b"\x10", 3),
    ],
)  # fmt: skip
def test_invalid_shapes(backend: _backend.Backend, fanout: object, depth: object) -> None:
    with pytest.raises(MerkleError):
        backend.merkle.MerkleTree(fanout, depth)


def test_segment_of_is_low_bits_of_xxh3(backend: _backend.Backend) -> None:
    for fanout, depth in SHAPES:
        tree = backend.merkle.MerkleTree(fanout, depth)
        for key in (b"", b"a", b"key-1", bytes(range(200))):
            expected = xxhash.xxh3_64_intdigest(key) & (fanout**depth - 1)
            assert tree.segment_of(key) == expected


# -- layout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fanout,depth", SHAPES)
def test_levels_follow_the_contract_layout(
    backend: _backend.Backend, fanout: int, depth: int
) -> None:
    pairs = numbered(300)
    tree = tree_of(backend, pairs, fanout, depth)
    expected = model_levels(fanout, depth, pairs)
    assert [tree.level(d) for d in range(depth + 1)] == expected
    assert tree.root() == expected[0][0]


def test_one_key_leaves_zero_siblings(backend: _backend.Backend) -> None:
    tree = tree_of(backend, [(b"only", digest_of(1))], 4, 3)
    index = tree.segment_of(b"only")
    leaves = tree.level(3)
    assert [i for i, h in enumerate(leaves) if h != ZERO] == [index]
    record = (4).to_bytes(4, "big") + b"only" + digest_of(1)
    assert leaves[index] == blake(record)
    middle = tree.level(2)
    assert [i for i, h in enumerate(middle) if h != ZERO] == [index // 4]
    assert middle[index // 4] == blake(b"".join(leaves[index // 4 * 4 : index // 4 * 4 + 4]))


def test_an_all_zero_record_still_hashes(backend: _backend.Backend) -> None:
    """An empty key with a zero digest encodes to 36 zero bytes: not an empty segment."""
    tree = tree_of(backend, [(b"", ZERO)], 2, 1)
    assert tree.level(1)[tree.segment_of(b"")] == blake(bytes(36))
    assert tree.root() != ZERO


def test_records_sort_by_key_bytes_not_length(backend: _backend.Backend) -> None:
    pairs = [(b"b", digest_of(1)), (b"ab", digest_of(2)), (b"a", digest_of(3)), (b"a\0", ZERO)]
    tree = tree_of(backend, pairs, 2, 1)
    # 2 segments: check every segment's content against the model.
    for index, seg in enumerate(model_segments(2, 1, pairs)):
        assert tree.segment(index) == seg
        assert tree.level(1)[index] == model_segment_hash(seg)


# -- writes ----------------------------------------------------------------------------------------


def test_update_replace_remove_and_size(backend: _backend.Backend) -> None:
    tree = backend.merkle.MerkleTree(4, 2)
    tree.update(b"k", digest_of(1))
    tree.update(b"k", digest_of(2))
    tree.update(b"j", digest_of(3))
    assert tree.size == 2
    assert tree.segment(tree.segment_of(b"k")).count((b"k", digest_of(2))) == 1
    tree.remove(b"k")
    tree.remove(b"k")
    tree.remove(b"never there")
    assert tree.size == 1
    assert tree.root() == model_levels(4, 2, [(b"j", digest_of(3))])[0][0]
    tree.remove(b"j")
    assert tree.size == 0
    assert tree.root() == ZERO


def test_rewriting_the_same_digest_changes_nothing(backend: _backend.Backend) -> None:
    tree = tree_of(backend, numbered(50), 4, 2)
    before = tree.root()
    tree.update(b"key-3", numbered(50)[3][1])
    tree.update_many(numbered(50)[:10])
    assert tree.root() == before
    assert tree.size == 50


def test_later_duplicates_win_in_batches(backend: _backend.Backend) -> None:
    pairs = [(b"k", digest_of(1)), (b"x", digest_of(5)), (b"k", digest_of(2))]
    for load in ("update_many", "rebuild"):
        tree = backend.merkle.MerkleTree(2, 1)
        getattr(tree, load)(pairs)
        assert tree.size == 2
        assert (b"k", digest_of(2)) in tree.segment(tree.segment_of(b"k"))


def test_rebuild_replaces_everything(backend: _backend.Backend) -> None:
    tree = tree_of(backend, numbered(100), 8, 2)
    tree.rebuild(numbered(30, salt=1))
    assert tree == tree_of(backend, numbered(30, salt=1), 8, 2)
    assert tree.size == 30
    tree.rebuild([])
    assert tree.size == 0
    assert tree.root() == ZERO


def test_batches_accept_lists_tuples_and_iterables(backend: _backend.Backend) -> None:
    pairs = numbered(40)
    expected = tree_of(backend, pairs, 4, 2).root()
    for shaped in (pairs, tuple(pairs), iter(pairs), (p for p in pairs), dict(pairs).items()):
        tree = backend.merkle.MerkleTree(4, 2)
        tree.update_many(shaped)
        assert tree.root() == expected


BAD_PAIRS: list[object] = [
    [b"k", digest_of(1)],  # a list, not a tuple
    (b"k",),
    (b"k", digest_of(1), b"extra"),
    ("k", digest_of(1)),
    (b"k", digest_of(1)[:31]),
    (b"k", digest_of(1) + b"\0"),
    (b"k", bytearray(digest_of(1))),
    (bytearray(b"k"), digest_of(1)),
    (None, digest_of(1)),
    (b"k", None),
    b"kd",
    None,
    7,
]


@pytest.mark.parametrize("bad", BAD_PAIRS, ids=repr)
@pytest.mark.parametrize("load", ["update_many", "rebuild"])
def test_a_bad_pair_changes_nothing(backend: _backend.Backend, load: str, bad: object) -> None:
    tree = tree_of(backend, numbered(64), 4, 2)
    before = (tree.root(), tree.size, [tree.segment(i) for i in range(tree.segments)])
    with pytest.raises(MerkleError):
        getattr(tree, load)([*numbered(20, salt=9), bad, *numbered(5, salt=3)])
    assert (tree.root(), tree.size, [tree.segment(i) for i in range(tree.segments)]) == before
    assert tree == tree_of(backend, numbered(64), 4, 2)


@pytest.mark.parametrize("bad", [5, None, 3.5, object()], ids=repr)
@pytest.mark.parametrize("load", ["update_many", "rebuild"])
def test_non_iterable_pairs_are_merkle_errors(
    backend: _backend.Backend, load: str, bad: object
) -> None:
    with pytest.raises(MerkleError):
        getattr(backend.merkle.MerkleTree(), load)(bad)


@pytest.mark.parametrize(
    "key,value",
    [("k", ZERO), (None, ZERO), (b"k", ZERO[:31]), (b"k", b""), (b"k", "0" * 32), (b"k", None)],
    ids=repr,
)
def test_update_rejects_bad_arguments(
    backend: _backend.Backend, key: object, value: object
) -> None:
    tree = backend.merkle.MerkleTree()
    with pytest.raises(MerkleError):
        tree.update(key, value)
    assert tree.size == 0


@pytest.mark.parametrize("key", ["k", None, 1, bytearray(b"k")], ids=repr)
def test_key_must_be_bytes(backend: _backend.Backend, key: object) -> None:
    tree = backend.merkle.MerkleTree()
    with pytest.raises(MerkleError):
        tree.remove(key)
    with pytest.raises(MerkleError):
        tree.segment_of(key)


# -- reads -----------------------------------------------------------------------------------------


def test_level_and_hashes_bounds(backend: _backend.Backend) -> None:
    tree = tree_of(backend, numbered(20), 4, 2)
    for bad_depth in (-1, 3, 2**70, "1", None, 1.0):
        with pytest.raises(MerkleError):
            tree.level(bad_depth)
        with pytest.raises(MerkleError):
            tree.hashes(bad_depth, [0])
    for bad_index in (-1, 16, 2**70, "0", None, 0.0):
        with pytest.raises(MerkleError):
            tree.hashes(2, [0, bad_index])
        with pytest.raises(MerkleError):
            tree.segment(bad_index)
    with pytest.raises(MerkleError):
        tree.hashes(1, [4])
    with pytest.raises(MerkleError):
        tree.hashes(1, 3)
    assert tree.hashes(2, []) == []


def test_hashes_keep_the_order_asked(backend: _backend.Backend) -> None:
    tree = tree_of(backend, numbered(200), 4, 3)
    level = tree.level(2)
    asked = [15, 0, 7, 7, 3]
    assert tree.hashes(2, asked) == [level[i] for i in asked]
    assert tree.hashes(2, (i for i in asked)) == [level[i] for i in asked]
    assert tree.hashes(0, [0]) == [tree.root()]


def test_levels_read_before_a_change_do_not_go_stale(backend: _backend.Backend) -> None:
    pairs = numbered(100)
    tree = tree_of(backend, pairs, 4, 2)
    before = [tree.level(d) for d in range(3)]
    writes = [
        lambda: tree.update(b"new", digest_of(5)),
        lambda: tree.remove(b"new"),
        lambda: tree.update_many(numbered(10, salt=2)),
        lambda: tree.rebuild(pairs),
        lambda: tree.remove(b"key-0"),
    ]
    for write in writes:
        tree.level(2)
        tree.hashes(1, [0, 1])
        write()
        content = [p for i in range(16) for p in tree.segment(i)]
        expected = model_levels(4, 2, content)
        assert [tree.level(d) for d in range(3)] == expected
        assert tree.hashes(2, [3, 0]) == [expected[2][3], expected[2][0]]
        assert tree.root() == expected[0][0]
    tree.update(b"key-0", pairs[0][1])
    assert [tree.level(d) for d in range(3)] == before
    level = tree.level(2)
    level[0] = b"mutated by the caller"
    assert tree.level(2) == before[2]


def test_segment_lists_pairs_sorted_by_key(backend: _backend.Backend) -> None:
    pairs = numbered(500)
    tree = tree_of(backend, pairs, 2, 2)
    expected = model_segments(2, 2, pairs)
    assert [tree.segment(i) for i in range(4)] == expected
    assert all(isinstance(k, bytes) and isinstance(d, bytes) for k, d in tree.segment(0))


# -- diff and equality -----------------------------------------------------------------------------


def test_diff_of_equal_and_self(backend: _backend.Backend) -> None:
    a = tree_of(backend, numbered(100), 4, 3)
    b = tree_of(backend, list(reversed(numbered(100))), 4, 3)
    assert a.diff(b) == [] == b.diff(a) == a.diff(a)


def test_diff_rejects_other_shapes_and_types(backend: _backend.Backend) -> None:
    tree = backend.merkle.MerkleTree(4, 2)
    for other in (backend.merkle.MerkleTree(4, 3), backend.merkle.MerkleTree(2, 4)):
        with pytest.raises(MerkleError):
            tree.diff(other)
    for other in (None, 5, "tree", [tree]):
        with pytest.raises(MerkleError):
            tree.diff(other)


def test_trees_of_different_backends_do_not_mix(backend: _backend.Backend) -> None:
    others = [_backend.load(name) for name in _backend.available() if name != backend.name]
    tree = backend.merkle.MerkleTree()
    for other in others:
        with pytest.raises(MerkleError):
            tree.diff(other.merkle.MerkleTree())


def test_equality_is_by_shape_and_content(backend: _backend.Backend) -> None:
    tree_class = backend.merkle.MerkleTree
    assert tree_class() == tree_class()
    assert tree_class(4, 2) != tree_class(2, 4)
    a = tree_of(backend, numbered(30), 4, 2)
    b = tree_of(backend, numbered(30)[::-1], 4, 2)
    assert a == b
    assert not a != b
    b.update(b"key-1", ZERO)
    assert a != b
    assert not a == b
    assert a != "a tree"
    assert a != None  # noqa: E711
    with pytest.raises(TypeError):
        hash(a)
    assert "MerkleTree" in repr(a)


# -- laws (hypothesis) -----------------------------------------------------------------------------


@SETTINGS
@given(shape=shapes, base=pair_lists, changed=pair_lists, removed=st.data())
def test_diff_names_exactly_the_differing_segments(
    backend: _backend.Backend,
    shape: tuple[int, int],
    base: Pairs,
    changed: Pairs,
    removed: st.DataObject,
) -> None:
    fanout, depth = shape
    content = dict(base)
    gone = removed.draw(st.lists(st.sampled_from(sorted(content)), max_size=5)) if content else []
    mutated = {**content, **dict(changed)}
    for key in gone:
        mutated.pop(key, None)
    a = tree_of(backend, list(content.items()), fanout, depth)
    b = tree_of(backend, list(mutated.items()), fanout, depth)
    before = model_segments(fanout, depth, list(content.items()))
    after = model_segments(fanout, depth, list(mutated.items()))
    expected = [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
    assert a.diff(b) == expected
    assert b.diff(a) == expected
    assert (a.root() == b.root()) == (content == mutated) == (a == b)


@SETTINGS
@given(shape=shapes, pairs=pair_lists, seed=st.randoms(use_true_random=False))
def test_order_of_updates_does_not_matter(
    backend: _backend.Backend, shape: tuple[int, int], pairs: Pairs, seed: Any
) -> None:
    content = list(dict(pairs).items())
    shuffled = content[:]
    seed.shuffle(shuffled)
    one_by_one = backend.merkle.MerkleTree(*shape)
    for key, value in shuffled:
        one_by_one.update(key, value)
    batch = tree_of(backend, content, *shape)
    assert one_by_one.root() == batch.root()
    assert one_by_one == batch
    assert one_by_one.size == batch.size == len(content)


@SETTINGS
@given(shape=shapes, pairs=pair_lists, key=keys, value=digests)
def test_update_then_remove_restores_the_root(
    backend: _backend.Backend, shape: tuple[int, int], pairs: Pairs, key: bytes, value: bytes
) -> None:
    content = {k: v for k, v in pairs if k != key}
    tree = tree_of(backend, list(content.items()), *shape)
    before = (tree.root(), tree.level(tree.depth), tree.size)
    tree.update(key, value)
    assert tree.size == before[2] + 1
    tree.remove(key)
    assert (tree.root(), tree.level(tree.depth), tree.size) == before


@SETTINGS
@given(shape=shapes, old=pair_lists, pairs=pair_lists)
def test_rebuild_equals_a_fresh_update_many(
    backend: _backend.Backend, shape: tuple[int, int], old: Pairs, pairs: Pairs
) -> None:
    rebuilt = tree_of(backend, old, *shape)
    rebuilt.root()  # hashed before the rebuild, so that dirty tracking is exercised
    rebuilt.rebuild(pairs)
    fresh = tree_of(backend, pairs, *shape)
    assert rebuilt == fresh
    assert rebuilt.size == fresh.size == len(dict(pairs))
    for depth in range(shape[1] + 1):
        assert rebuilt.level(depth) == fresh.level(depth)


@SETTINGS
@given(shape=shapes, pairs=pair_lists, more=pair_lists)
def test_levels_and_hashes_are_consistent_with_the_root(
    backend: _backend.Backend, shape: tuple[int, int], pairs: Pairs, more: Pairs
) -> None:
    fanout, depth = shape
    tree = tree_of(backend, pairs, fanout, depth)
    tree.root()
    tree.update_many(more)  # some dirty segments, hashed lazily below
    levels = [tree.level(d) for d in range(depth + 1)]
    assert levels == model_levels(fanout, depth, pairs + more)
    assert levels[0] == [tree.root()]
    for d in range(depth):
        for i, node in enumerate(levels[d]):
            block = b"".join(levels[d + 1][i * fanout : (i + 1) * fanout])
            assert node == (ZERO if block == ZERO * fanout else blake(block))
    for index, leaf in enumerate(levels[depth]):
        assert leaf == model_segment_hash(tree.segment(index))
    wanted = list(range(len(levels[depth])))[::-1]
    assert tree.hashes(depth, wanted) == levels[depth][::-1]


# -- parity (hypothesis) ---------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("update"), keys, digests),
        st.tuples(st.just("remove"), keys),
        st.tuples(st.just("update_many"), pair_lists),
        st.tuples(st.just("rebuild"), pair_lists),
        st.tuples(st.just("root")),
    ),
    max_size=12,
)


def run(module: ModuleType, shape: tuple[int, int], ops: list[tuple[Any, ...]]) -> Iterator[object]:
    """Everything observable about a tree after each operation."""
    tree = module.MerkleTree(*shape)
    for op, *args in ops:
        if op == "root":
            yield tree.root()
            continue
        getattr(tree, op)(*args)
        yield tree.size
    yield [tree.level(d) for d in range(tree.depth + 1)]
    yield [tree.segment(i) for i in range(tree.segments)]


@SETTINGS
@given(shape=shapes, ops=operations)
def test_all_backends_agree(
    backend: _backend.Backend, shape: tuple[int, int], ops: list[tuple[Any, ...]]
) -> None:
    mine = list(run(backend.merkle, shape, ops))
    for name in _backend.available():
        assert list(run(_backend.load(name).merkle, shape, ops)) == mine, name


@SETTINGS
@given(shape=shapes, a=pair_lists, b=pair_lists)
def test_all_backends_agree_on_diff(
    backend: _backend.Backend, shape: tuple[int, int], a: Pairs, b: Pairs
) -> None:
    expected = tree_of(backend, a, *shape).diff(tree_of(backend, b, *shape))
    for name in _backend.available():
        other = _backend.load(name)
        assert tree_of(other, a, *shape).diff(tree_of(other, b, *shape)) == expected, name


# -- malformed input (hypothesis fuzz) -------------------------------------------------------------

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.tuples(inner),
    max_leaves=8,
)


def fails_cleanly(call: Any, *args: object) -> None:
    """`call(*args)` either works or raises MerkleError; nothing else is acceptable."""
    try:
        call(*args)
    except MerkleError:
        pass


@SETTINGS
@given(data=st.binary(max_size=80), cut=st.integers(min_value=0, max_value=80))
def test_truncated_or_random_digests_are_typed_errors(
    backend: _backend.Backend, data: bytes, cut: int
) -> None:
    tree = backend.merkle.MerkleTree(4, 2)
    value = data[:cut]
    if len(value) == 32:
        tree.update(b"k", value)
        assert tree.size == 1
        return
    with pytest.raises(MerkleError):
        tree.update(b"k", value)
    with pytest.raises(MerkleError):
        tree.update_many([(b"k", value)])
    assert tree.size == 0


@SETTINGS
@given(args=st.lists(junk, min_size=1, max_size=3), pairs=junk)
def test_junk_arguments_raise_merkle_error_or_work(
    backend: _backend.Backend, args: list[object], pairs: object
) -> None:
    tree = tree_of(backend, numbered(10), 4, 2)
    before = tree.root()
    fails_cleanly(backend.merkle.MerkleTree, *args[:2])
    if len(args) >= 2:
        fails_cleanly(tree.update, args[0], args[1])
    fails_cleanly(tree.remove, args[0])
    fails_cleanly(tree.segment_of, args[0])
    fails_cleanly(tree.level, args[0])
    fails_cleanly(tree.segment, args[0])
    fails_cleanly(tree.hashes, args[0], args[-1])
    fails_cleanly(tree.diff, args[0])
    fails_cleanly(tree.update_many, pairs)
    fails_cleanly(tree.rebuild, pairs)
    fails_cleanly(tree.update_many, [pairs])
    # Junk that happens to be well-formed may change the tree; the hashes must still be right.
    assert tree.level(0) == [tree.root()]
    if tree.root() == before:
        assert tree == tree_of(backend, numbered(10), 4, 2)


@SETTINGS
@given(blob=st.binary(max_size=400))
def test_pairs_cut_from_random_bytes_are_typed_errors(
    backend: _backend.Backend, blob: bytes
) -> None:
    """Pairs as a decoder would produce them from random bytes: key and digest cut anywhere."""
    pairs = []
    offset = 0
    while offset < len(blob):
        key_len = blob[offset] % 40
        key = blob[offset + 1 : offset + 1 + key_len]
        value = blob[offset + 1 + key_len : offset + 33 + key_len]
        pairs.append((key, value))
        offset += 33 + key_len
    tree = backend.merkle.MerkleTree(4, 2)
    if all(len(value) == 32 for _, value in pairs):
        tree.rebuild(pairs)
        assert tree.size == len(dict(pairs))
    else:
        with pytest.raises(MerkleError):
            tree.rebuild(pairs)
        assert tree.size == 0
