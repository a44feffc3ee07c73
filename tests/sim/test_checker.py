"""The lost-write checker on hand-made histories: each property both holds and fails."""

from __future__ import annotations

import pytest

from dynacore.errors import ConfigError
from dynacore.sim.checker import (
    FinalState,
    History,
    Op,
    OpKind,
    Outcome,
    ReplicaState,
    check,
)

K1, K2 = b"k1", b"k2"


def history(*writes: tuple[bytes, bytes, Outcome | None]) -> list[Op]:
    """Ops in order; an outcome of None leaves the op pending (never completed)."""
    h = History()
    for i, (key, element, outcome) in enumerate(writes):
        op_id = h.invoke(OpKind.ADD if i % 2 else OpKind.BLIND, f"c{i % 3}", key, element, i)
        if outcome is not None:
            h.complete(op_id, outcome, i + 0.5, "" if outcome is Outcome.OK else "Boom")
    return h.ops


def replicas(
    key: bytes, *elements: bytes, nodes: int = 3, raw: bytes = b"set"
) -> list[ReplicaState]:
    return [ReplicaState(f"n{i}", raw, 1, frozenset(elements)) for i in range(nodes)]


def final(
    reads: dict[bytes, frozenset[bytes] | None],
    *,
    copies: dict[bytes, list[ReplicaState]] | None = None,
    limit: int = 10,
    seen: int = 1,
    roots: dict[int, dict[str, bytes]] | None = None,
) -> FinalState:
    if copies is None:
        copies = {k: replicas(k, *(v or ())) for k, v in reads.items()}
    return FinalState(reads, copies, limit, seen, roots or {})


def test_all_acknowledged_present_is_ok() -> None:
    ops = history((K1, b"a", Outcome.OK), (K1, b"b", Outcome.OK), (K2, b"c", Outcome.OK))
    result = check(ops, final({K1: frozenset({b"a", b"b"}), K2: frozenset({b"c"})}))
    assert result.ok, result.problems()
    assert (result.attempted, result.acknowledged, result.lost) == (3, 3, ())
    assert result.converged and result.problems() == []


def test_a_missing_acknowledged_add_is_a_loss() -> None:
    ops = history((K1, b"a", Outcome.OK), (K1, b"b", Outcome.OK), (K2, b"c", Outcome.OK))
    result = check(ops, final({K1: frozenset({b"a"}), K2: frozenset({b"c"})}))
    assert not result.ok
    assert result.lost == ((K1, b"b"),)
    assert any(line.startswith("lost 1 acknowledged") for line in result.problems())


def test_an_element_under_the_wrong_key_is_lost_and_unexpected() -> None:
    ops = history((K1, b"a", Outcome.OK))
    result = check(ops, final({K1: frozenset(), K2: frozenset({b"a"})}))
    assert result.lost == ((K1, b"a"),)
    assert result.unexpected == ((K2, b"a"),)


def test_a_key_that_vanished_entirely_loses_every_acknowledged_add() -> None:
    ops = history(*((K1, bytes([65 + i]), Outcome.OK) for i in range(5)))
    result = check(ops, final({}, copies={}))
    assert len(result.lost) == 5 and not result.ok


def test_unknown_and_failed_writes_are_not_losses() -> None:
    ops = history(
        (K1, b"a", Outcome.OK),
        (K1, b"b", Outcome.UNKNOWN),
        (K1, b"c", None),  # never completed: unknown
        (K1, b"d", Outcome.UNKNOWN),
        (K1, b"e", Outcome.FAIL),
    )
    result = check(ops, final({K1: frozenset({b"a", b"b", b"c"})}))
    assert result.ok, result.problems()
    assert (result.acknowledged, result.unknown, result.failed) == (1, 3, 1)
    assert result.unacked_present == 2


def test_a_failed_write_that_appears_is_reported() -> None:
    ops = history((K1, b"a", Outcome.OK), (K1, b"e", Outcome.FAIL))
    result = check(ops, final({K1: frozenset({b"a", b"e"})}))
    assert result.failed_present == ((K1, b"e"),)
    assert not result.ok


def test_an_element_nobody_wrote_is_unexpected() -> None:
    ops = history((K1, b"a", Outcome.OK))
    result = check(ops, final({K1: frozenset({b"a", b"zz"})}))
    assert result.unexpected == ((K1, b"zz"),)
    assert not result.ok


def test_replicas_that_differ_do_not_converge() -> None:
    ops = history((K1, b"a", Outcome.OK))
    copies = {
        K1: [
            ReplicaState("n1", b"x", 1, frozenset({b"a"})),
            ReplicaState("n2", b"x", 1, frozenset({b"a"})),
            ReplicaState("n3", None, 0, frozenset()),  # a replica without a copy
        ]
    }
    result = check(ops, final({K1: frozenset({b"a"})}, copies=copies))
    assert result.lost == ()  # the merged value has it ...
    assert result.divergent_keys == (K1,)  # ... but one replica does not
    assert not result.converged and not result.ok


def test_merkle_roots_per_partition() -> None:
    ops = history((K1, b"a", Outcome.OK))
    same = {0: {"n1": b"r" * 32, "n2": b"r" * 32}, 1: {"n2": b"s" * 32, "n3": b"s" * 32}}
    assert check(ops, final({K1: frozenset({b"a"})}, roots=same)).ok
    differ = {**same, 1: {"n2": b"s" * 32, "n3": b"t" * 32}}
    result = check(ops, final({K1: frozenset({b"a"})}, roots=differ))
    assert result.divergent_partitions == (1,) and not result.ok


def test_siblings_over_the_limit() -> None:
    ops = history((K1, b"a", Outcome.OK))
    assert check(ops, final({K1: frozenset({b"a"})}, limit=4, seen=4)).ok
    over_in_run = check(ops, final({K1: frozenset({b"a"})}, limit=4, seen=5))
    assert over_in_run.max_siblings == 5 and not over_in_run.ok
    fat = {K1: [ReplicaState("n1", b"x", 7, frozenset({b"a"}))]}
    at_end = check(ops, final({K1: frozenset({b"a"})}, copies=fat, limit=4))
    assert at_end.max_siblings == 7 and not at_end.siblings_ok


def test_an_unreadable_key_fails_but_falls_back_on_replicas() -> None:
    ops = history((K1, b"a", Outcome.OK), (K1, b"b", Outcome.OK))
    copies = {K1: replicas(K1, b"a")}
    result = check(ops, final({K1: None}, copies=copies))
    assert result.unreadable_keys == (K1,)
    assert result.lost == ((K1, b"b"),)


def test_history_rejects_reused_elements_and_double_completion() -> None:
    h = History(max_ops=2)
    op = h.invoke(OpKind.ADD, "c", K1, b"a", 0.0)
    with pytest.raises(ConfigError):
        h.invoke(OpKind.ADD, "c", K2, b"a", 1.0)
    h.complete(op, Outcome.OK, 1.0)
    with pytest.raises(ConfigError):
        h.complete(op, Outcome.FAIL, 2.0)
    h.invoke(OpKind.ADD, "c", K1, b"b", 2.0)
    with pytest.raises(ConfigError):
        h.invoke(OpKind.ADD, "c", K1, b"c", 3.0)  # full
    with pytest.raises(ConfigError):
        History(max_ops=0)


def test_history_digest_changes_with_any_outcome() -> None:
    def run(outcome: Outcome) -> str:
        h = History()
        h.complete(h.invoke(OpKind.ADD, "c", K1, b"a", 0.0), outcome, 1.0)
        return h.digest()

    assert run(Outcome.OK) == run(Outcome.OK)
    assert run(Outcome.OK) != run(Outcome.UNKNOWN)


def test_bad_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        check([], final({}, limit=0))
