"""ClusterState: bootstrap, staged join/leave walks with handoff, refusals, routing during handoff,
the merge semilattice on divergent replicas, and the canonical encoding."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from functools import reduce
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacore import _backend
from dynacore.cluster import ClusterState, Member, Status
from dynacore.cluster.state import MAX_MEMBERS
from dynacore.errors import ClusterError, ConfigError, DynacoreError, RingError, UnknownNode

if TYPE_CHECKING:
    from dynacore.core.ring import Ring

Q = 64
ABC = {"a": "10.0.0.1:7000", "b": "10.0.0.2:7000", "c": "10.0.0.3:7000"}
ABCD = {**ABC, "d": "10.0.0.4:7000"}
pytestmark = pytest.mark.usefixtures("ring_backend")
LATTICE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def claim(q: int, nodes: list[str]) -> Ring:
    return _backend.ring.Ring.claim(q, nodes)


def balanced(ring: Ring) -> bool:
    counts = Counter(ring.owners)
    return max(counts.values()) - min(counts.values()) <= 1


def hand_off_everything(state: ClusterState) -> ClusterState:
    return state.confirm_handoffs(state.moving_partitions()) if state.pending else state


# -- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_is_all_valid_with_the_claimed_ring() -> None:
    state = ClusterState.bootstrap(Q, ABC)
    assert state.ring == claim(Q, ["a", "b", "c"])
    assert state.q == Q and state.epoch == 0 and state.pending is None
    assert {n: m.status for n, m in state.members.items()} == dict.fromkeys(ABC, Status.VALID)
    assert state.address_of("b") == ABC["b"]
    assert state.moving_partitions() == [] and state.stranded() == []
    assert ClusterState.bootstrap(Q, dict(reversed(ABC.items()))) == state  # order-independent


@pytest.mark.parametrize(
    ("q", "members", "error"),
    [
        (Q, {}, ConfigError),
        (Q, {"": "x:1"}, ConfigError),
        (Q, {"a": ""}, ConfigError),
        (Q, {"a" * 256: "x:1"}, ConfigError),
        (48, ABC, RingError),
        (0, ABC, RingError),
    ],
)
def test_bootstrap_rejects_bad_input(q: int, members: dict[str, str], error: type) -> None:
    with pytest.raises(error):
        ClusterState.bootstrap(q, members)


def test_unknown_member_lookups_are_typed() -> None:
    state = ClusterState.bootstrap(Q, ABC)
    with pytest.raises(UnknownNode):
        state.member("zz")
    with pytest.raises(UnknownNode):
        state.set_address("zz", "x:1")


# -- the 3 -> 4 join and the 4 -> 3 leave ------------------------------------------------------


def test_join_walk_3_to_4() -> None:
    start = ClusterState.bootstrap(Q, ABC)
    staged = start.stage_join("d", "10.0.0.4:7000")
    assert staged.members["d"] == Member("10.0.0.4:7000", Status.JOINING, 0)
    assert staged.staged_joins == {"d"} and staged.ring == start.ring and staged.epoch == 0

    plan = staged.plan()
    assert plan.ring == start.ring.with_node("d")
    assert list(plan.moves) == start.ring.moves(plan.ring)
    assert plan.moves and all(to == "d" for _, _, to in plan.moves)
    assert len(plan.moves) <= math.ceil(Q / 4)
    assert balanced(plan.ring) and sorted(plan.ring.nodes) == ["a", "b", "c", "d"]

    committed = staged.commit()
    assert committed.epoch == 1 and committed.pending == plan.ring
    assert committed.members["d"].status is Status.VALID
    assert not committed.staged_joins and not committed.staged_leaves
    moving = committed.moving_partitions()
    assert {p for p, _, _ in plan.moves} <= set(moving)
    assert committed.finish_if_done() is committed  # nothing confirmed yet

    almost = committed
    for partition in moving[:-1]:
        almost = almost.confirm_handoff(partition)
    assert not almost.handoff_done() and almost.finish_if_done() is almost

    done = almost.confirm_handoff(moving[-1]).finish_if_done()
    assert done.ring == plan.ring and done.pending is None and not done.confirmed
    assert done.epoch == 2 and done.stranded() == []
    assert all(m.status is Status.VALID for m in done.members.values())


def test_leave_walk_4_to_3() -> None:
    start = ClusterState.bootstrap(Q, ABCD)
    staged = start.stage_leave("b")
    assert staged.members["b"].status is Status.LEAVING and staged.members["b"].seq == 1

    plan = staged.plan()
    assert plan.ring == start.ring.without_node("b")
    assert list(plan.moves) == start.ring.moves(plan.ring)
    assert {p for p, _, _ in plan.moves} == set(start.ring.partitions_owned("b"))
    assert all(frm == "b" for _, frm, _ in plan.moves)
    assert balanced(plan.ring) and plan.ring.nodes == ["a", "c", "d"]

    committed = staged.commit()
    assert committed.members["b"].status is Status.LEAVING  # serves until handed off
    assert "b" in committed.members_up(lambda _: True)
    done = hand_off_everything(committed).finish_if_done()
    assert done.ring == plan.ring and done.pending is None and done.epoch == 2
    assert done.members["b"].status is Status.EXITING
    assert "b" not in done.members_up(lambda _: True)
    assert done.stranded() == []


def test_join_and_leave_in_one_plan_and_rejoin_after_exit() -> None:
    start = ClusterState.bootstrap(Q, ABC)
    plan = start.stage_join("d", "d:1").stage_leave("a").plan()
    assert plan.joins == ("d",) and plan.leaves == ("a",)
    assert plan.ring == start.ring.with_node("d").without_node("a")
    assert list(plan.moves) == start.ring.moves(plan.ring)
    exited = hand_off_everything(start.stage_join("d", "d:1").stage_leave("a").commit())
    exited = exited.finish_if_done()
    assert exited.members["a"].status is Status.EXITING and exited.ring.nodes == ["b", "c", "d"]
    back = exited.stage_join("a", "a:2")
    assert back.members["a"] == Member("a:2", Status.JOINING, exited.members["a"].seq + 1)


def test_plan_without_changes_moves_nothing_and_commit_refuses() -> None:
    state = ClusterState.bootstrap(Q, ABC)
    plan = state.plan()
    assert plan.ring == state.ring and plan.moves == ()
    with pytest.raises(ClusterError):
        state.commit()


# -- refusals ----------------------------------------------------------------------------------


def test_staging_refusals() -> None:
    state = ClusterState.bootstrap(Q, ABC)
    with pytest.raises(UnknownNode):
        state.stage_leave("zz")
    with pytest.raises(ClusterError):
        state.stage_join("a", "a:2")  # already a member of the ring
    with pytest.raises(ClusterError):
        state.stage_join("d", "d:1").stage_join("d", "d:1")
    with pytest.raises(ClusterError):
        state.stage_leave("a").stage_leave("a")
    with pytest.raises(ClusterError):
        state.stage_leave("a").stage_leave("b").stage_leave("c")  # nobody left
    with pytest.raises(ConfigError):
        state.stage_join("", "x:1")
    with pytest.raises(ConfigError):
        state.stage_join("d", "")


def test_a_plan_that_leaves_no_node_is_refused_even_when_assembled_by_gossip() -> None:
    two = ClusterState.bootstrap(Q, {"a": "a:1", "b": "b:1"})
    merged = two.stage_leave("a").merge(two.stage_leave("b"))
    assert merged.staged_leaves == {"a", "b"}
    with pytest.raises(ClusterError):
        merged.plan()
    with pytest.raises(ClusterError):
        merged.commit()


def test_handoff_refusals() -> None:
    state = ClusterState.bootstrap(Q, ABC)
    with pytest.raises(ClusterError):
        state.confirm_handoff(0)  # no handoff pending
    committed = state.stage_join("d", "d:1").commit()
    still = sorted(set(range(Q)) - set(committed.moving_partitions()))
    assert still, "a 3 -> 4 join with n_val=3 leaves some partitions in place"
    with pytest.raises(ClusterError):
        committed.confirm_handoff(still[0])
    for bad in (-1, Q, "0"):
        with pytest.raises(ClusterError):
            committed.confirm_handoff(bad)  # type: ignore[arg-type]
    with pytest.raises(ClusterError):
        committed.stage_join("e", "e:1")
    with pytest.raises(ClusterError):
        committed.stage_leave("a")
    with pytest.raises(ClusterError):
        committed.plan()
    first = committed.moving_partitions()[0]
    once = committed.confirm_handoff(first)
    assert once.confirm_handoff(first) is once  # idempotent


def test_transfers_name_sources_and_targets() -> None:
    joined = ClusterState.bootstrap(Q, ABC).stage_join("d", "d:1").commit()
    transfers = joined.transfers()
    assert [t.partition for t in transfers] == joined.moving_partitions()
    assert joined.pending is not None
    for t in transfers:
        assert t.sources == joined.ring.preference_list(t.partition, 3)
        assert t.targets in ((), ("d",)) and not t.confirmed
    owner_moves = {p for p, _, _ in joined.ring.moves(joined.pending)}
    assert all(t.targets == ("d",) for t in transfers if t.partition in owner_moves)

    left = ClusterState.bootstrap(Q, ABCD).stage_leave("b").commit()
    assert left.transfers() and all("b" not in t.targets for t in left.transfers())
    assert all(t.targets for t in left.transfers() if "b" in t.sources[:1])
    first = left.transfers()[0].partition
    assert left.confirm_handoff(first).transfers()[0].confirmed
    assert ClusterState.bootstrap(Q, ABC).transfers() == []


def test_confirm_handoffs_in_one_batch() -> None:
    committed = ClusterState.bootstrap(Q, ABC).stage_join("d", "d:1").commit()
    moving = committed.moving_partitions()
    batched = committed.confirm_handoffs(moving + moving[:3])
    assert batched == reduce(ClusterState.confirm_handoff, moving, committed)
    assert batched.handoff_done() and batched.confirm_handoffs([]) is batched
    with pytest.raises(ClusterError):
        committed.confirm_handoffs([moving[0], True])  # True is a bool, not a partition


# -- routing during a handoff ------------------------------------------------------------------


def test_routing_during_and_after_a_handoff() -> None:
    committed = ClusterState.bootstrap(Q, ABC).stage_join("d", "d:1").commit()
    assert committed.pending is not None
    for partition in range(Q):
        old = committed.ring.preference_list(partition, 3)
        new = committed.pending.preference_list(partition, 3)
        writes = committed.owners_for(partition)
        assert writes[: len(old)] == old and set(writes) == set(old) | set(new)
        assert committed.read_owners(partition) == old
    moving = committed.moving_partitions()
    confirmed = committed.confirm_handoff(moving[0])
    assert confirmed.read_owners(moving[0]) == committed.pending.preference_list(moving[0], 3)
    assert confirmed.read_owners(moving[0], 1) == (committed.pending.owner(moving[0]),)
    done = hand_off_everything(confirmed).finish_if_done()
    assert done.owners_for(moving[0]) == done.ring.preference_list(moving[0], 3)
    with pytest.raises(ConfigError):
        done.owners_for(0, 4)  # beyond n_val: handoff readiness is not tracked that far
    with pytest.raises(ConfigError):
        done.owners_for(0, 0)


def test_members_up_follows_the_verdict_and_skips_exiting() -> None:
    state = ClusterState.bootstrap(Q, ABCD).stage_join("e", "e:1")
    assert state.members_up(lambda n: n != "b") == ["a", "c", "d", "e"]
    gone = hand_off_everything(ClusterState.bootstrap(Q, ABCD).stage_leave("d").commit())
    assert gone.finish_if_done().members_up(lambda _: True) == ["a", "b", "c"]


# -- merge: a join-semilattice -----------------------------------------------------------------

POOL = ["e", "f", "g"]
OPS = ["join", "leave", "commit", "confirm", "finish", "address", "gossip"]
REPLICAS = 3


def apply(replicas: list[ClusterState], who: int, op: str, arg: int) -> None:
    """One operation on one replica; refused operations leave it unchanged."""
    state = replicas[who]
    try:
        if op == "join":
            replicas[who] = state.stage_join(POOL[arg % len(POOL)], f"host{arg % 7}:7000")
        elif op == "leave":
            replicas[who] = state.stage_leave(state.ring.nodes[arg % len(state.ring.nodes)])
        elif op == "commit":
            replicas[who] = state.commit()
        elif op == "confirm":
            moving = state.moving_partitions()
            if moving:
                replicas[who] = state.confirm_handoff(moving[arg % len(moving)])
        elif op == "finish":
            replicas[who] = hand_off_everything(state).finish_if_done()
        elif op == "address":
            node = sorted(state.members)[arg % len(state.members)]
            replicas[who] = state.set_address(node, f"moved{arg % 5}:7000")
        else:
            replicas[who] = state.merge(replicas[arg % REPLICAS])
    except (ClusterError, UnknownNode):
        pass


histories = st.lists(
    st.tuples(st.integers(0, REPLICAS - 1), st.sampled_from(OPS), st.integers(0, 1000)),
    max_size=30,
)


def diverge(history: list[tuple[int, str, int]]) -> list[ClusterState]:
    ancestor = ClusterState.bootstrap(16, ABCD)
    replicas = [ancestor] * REPLICAS
    for who, op, arg in history:
        apply(replicas, who, op, arg)
    return replicas


@LATTICE
@given(histories)
def test_merge_is_commutative_associative_idempotent(history: list[tuple[int, str, int]]) -> None:
    a, b, c = diverge(history)
    assert a.merge(a) == a
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    ab = a.merge(b)
    assert ab.merge(a) == ab and ab.merge(b) == ab  # an upper bound of both


@LATTICE
@given(histories, st.permutations(range(REPLICAS)))
def test_every_gossip_order_converges_to_one_state(
    history: list[tuple[int, str, int]], order: list[int]
) -> None:
    replicas = diverge(history)
    everything = reduce(ClusterState.merge, [replicas[i] for i in order])
    for pairwise_first in itertools.permutations(replicas):
        assert reduce(ClusterState.merge, pairwise_first) == everything
    # anti-entropy style: each replica pulls from the others until nothing changes
    views = list(replicas)
    for _ in range(REPLICAS):
        views = [reduce(ClusterState.merge, [v, *views]) for v in views]
    assert all(v == everything for v in views)
    assert len({v.ring.encode() for v in views}) == 1


@LATTICE
@given(histories)
def test_merged_states_keep_the_invariants_and_round_trip(
    history: list[tuple[int, str, int]],
) -> None:
    merged = reduce(ClusterState.merge, diverge(history))
    assert ClusterState.decode(merged.encode()) == merged
    assert set(merged.ring.nodes) <= merged.members.keys()
    assert balanced(merged.ring)
    done = hand_off_everything(merged).finish_if_done()
    assert done.pending is None or done.moving_partitions() == []


def test_a_healed_partition_with_two_commits_ends_with_one_ring() -> None:
    ancestor = ClusterState.bootstrap(Q, ABC)
    left = ancestor.stage_join("d", "d:1").commit()
    right = ancestor.stage_join("e", "e:1").commit()
    assert left.epoch == right.epoch and left.pending != right.pending
    healed = left.merge(right)
    assert healed == right.merge(left)
    assert healed.pending in (left.pending, right.pending)
    loser = "e" if healed.pending == left.pending else "d"
    assert healed.stranded() == [loser]  # its commit was overridden: stage it again
    restaged = hand_off_everything(healed).finish_if_done().stage_join(loser, f"{loser}:1")
    assert loser in restaged.plan().ring.nodes


def test_merge_takes_the_newer_ring_and_keeps_newer_member_records() -> None:
    old = ClusterState.bootstrap(Q, ABC)
    new = hand_off_everything(old.stage_join("d", "d:1").commit()).finish_if_done()
    moved = old.set_address("a", "a:9")
    merged = moved.merge(new)
    assert merged.ring == new.ring and merged.epoch == new.epoch
    assert merged.address_of("a") == "a:9" and merged.members["d"].status is Status.VALID


def test_changes_staged_on_two_replicas_commit_together() -> None:
    ancestor = ClusterState.bootstrap(Q, ABCD)
    merged = ancestor.stage_join("e", "e:1").merge(ancestor.stage_leave("a"))
    assert merged.staged_joins == {"e"} and merged.staged_leaves == {"a"}
    assert merged.claimant() == "b"  # a is leaving
    plan = merged.plan()
    assert plan.ring == ancestor.ring.with_node("e").without_node("a")
    done = hand_off_everything(merged.commit()).finish_if_done()
    assert done.ring.nodes == ["b", "c", "d", "e"] and done.stranded() == []


def test_merge_refuses_another_cluster() -> None:
    with pytest.raises(ClusterError):
        ClusterState.bootstrap(Q, ABC).merge(ClusterState.bootstrap(Q * 2, ABC))
    with pytest.raises(ClusterError):
        ClusterState.bootstrap(Q, ABC).merge(ClusterState.bootstrap(Q, ABC, n_val=2))


def test_confirmations_from_two_replicas_are_unioned() -> None:
    committed = ClusterState.bootstrap(Q, ABC).stage_join("d", "d:1").commit()
    moving = committed.moving_partitions()
    half = len(moving) // 2
    left = reduce(ClusterState.confirm_handoff, moving[:half], committed)
    right = reduce(ClusterState.confirm_handoff, moving[half:], committed)
    assert not left.handoff_done() and not right.handoff_done()
    assert left.merge(right).handoff_done()


# -- encoding ----------------------------------------------------------------------------------


@LATTICE
@given(histories)
def test_encode_decode_round_trip(history: list[tuple[int, str, int]]) -> None:
    for state in diverge(history):
        data = state.encode()
        again = ClusterState.decode(data)
        assert again == state and again.encode() == data and again.digest() == state.digest()
        assert again.members == state.members and again.confirmed == state.confirmed


def test_digest_tells_states_apart() -> None:
    state = ClusterState.bootstrap(Q, ABC)
    assert len(state.digest()) == 16
    assert state.digest() == ClusterState.bootstrap(Q, ABC).digest()
    assert state.digest() != state.stage_join("d", "d:1").digest()
    assert hash(state) == hash(ClusterState.bootstrap(Q, ABC))


def sample_encoding() -> bytes:
    state = ClusterState.bootstrap(Q, ABC).stage_join("d", "d:1").commit()
    return state.confirm_handoff(state.moving_partitions()[0]).encode()


def test_every_truncation_is_a_typed_error() -> None:
    data = sample_encoding()
    for size in range(len(data)):
        with pytest.raises(ClusterError):
            ClusterState.decode(data[:size])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"XXXX" + d[4:],  # magic
        lambda d: d[:4] + b"\x09" + d[5:],  # format version
        lambda d: d[:5] + b"\x00" + d[6:],  # n_val 0
        lambda d: d[:5] + b"\xff" + d[6:],  # n_val above MAX_N
        lambda d: d + b"\x00",  # trailing byte
    ],
)
def test_malformed_headers_are_typed_errors(mutate: Callable[[bytes], bytes]) -> None:
    with pytest.raises(ClusterError):
        ClusterState.decode(mutate(sample_encoding()))


def test_non_canonical_and_inconsistent_encodings_are_refused() -> None:
    from dynacore.cluster.codec import Writer

    ring = claim(4, ["a", "b"])

    def encode(members: list[tuple[str, int]], joins: list[str], leaves: list[str]) -> bytes:
        out = Writer()
        out.raw(b"DCST")
        out.u8(1)
        out.u8(3)
        out.u64(0)
        out.blob(ring.encode())
        out.u8(0)
        out.u32(0)
        out.u32(len(members))
        for node_id, rank in members:
            out.text(node_id)
            out.text("h:1")
            out.u8(rank)
            out.u64(0)
        for staged in (joins, leaves):
            out.u32(len(staged))
            for node_id in staged:
                out.text(node_id)
        return out.getvalue()

    good = encode([("a", 1), ("b", 1)], [], [])
    assert ClusterState.decode(good).ring == ring
    for bad in (
        encode([("b", 1), ("a", 1)], [], []),  # members out of order
        encode([("a", 1), ("a", 1), ("b", 1)], [], []),  # duplicate member
        encode([("a", 1)], [], []),  # ring node b is not a member
        encode([("a", 1), ("b", 9)], [], []),  # bad status
        encode([("a", 1), ("b", 1)], ["a"], []),  # staged join of a ring node
        encode([("a", 1), ("b", 1)], [], ["z"]),  # staged leave of a stranger
        encode([("a", 1), ("b", 1), ("c", 0)], ["c", "c"], []),  # duplicate staged
        encode([("", 1), ("a", 1), ("b", 1)], [], []),  # empty node id
    ):
        with pytest.raises(ClusterError):
            ClusterState.decode(bad)


def test_decode_refuses_non_bytes_and_huge_counts() -> None:
    with pytest.raises(ClusterError):
        ClusterState.decode("not bytes")  # type: ignore[arg-type]
    data = sample_encoding()
    # announce 2**32 - 1 members right after the confirmed list: refused without allocating
    state = ClusterState.decode(data)
    head = len(data) - len(_members_and_staged(state))
    with pytest.raises(ClusterError):
        ClusterState.decode(data[:head] + b"\xff\xff\xff\xff" + data[head + 4 :])
    assert MAX_MEMBERS < 0xFFFFFFFF


def _members_and_staged(state: ClusterState) -> bytes:
    from dynacore.cluster.codec import Writer

    out = Writer()
    out.u32(len(state.members))
    for node_id, member in state.members.items():
        out.text(node_id)
        out.text(member.address)
        out.u8(member.status.rank)
        out.u64(member.seq)
    out.u32(0)
    out.u32(0)
    return out.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_decode_to_a_typed_error(data: bytes) -> None:
    with pytest.raises(ClusterError):
        ClusterState.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_bit_flips_never_crash(data: st.DataObject) -> None:
    encoded = bytearray(sample_encoding())
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        state = ClusterState.decode(bytes(encoded))
    except DynacoreError as exc:
        assert isinstance(exc, ClusterError)
    else:
        assert ClusterState.decode(state.encode()) == state


def test_every_backend_gives_the_same_states(monkeypatch: pytest.MonkeyPatch) -> None:
    encodings = set()
    for name in _backend.available():
        monkeypatch.setattr(_backend, "ring", _backend.load(name).ring)
        walk = ClusterState.bootstrap(Q, ABC).stage_join("d", "d:1").stage_leave("a").commit()
        done = hand_off_everything(walk).finish_if_done().stage_leave("b").commit()
        encodings.add(done.encode())
        assert ClusterState.decode(done.encode()) == done
    assert len(encodings) == 1
