"""ClusterState: the membership, ring, staged changes and ownership-handoff progress of a cluster,
as one immutable value that every node holds and gossips, with a merge that is a join-semilattice.

Pure logic: no I/O, no clock, no randomness. The node layer drives it (gossip, handoff streaming,
admin commands) and replaces its state with the value an operation returns.

Lifecycle of a membership change (as riak-admin cluster join/leave/plan/commit):
  stage_join / stage_leave -> plan() shows the ring and the partition moves -> commit() sets the
  pending ring (epoch + 1) -> the node layer streams each moving partition and calls
  confirm_handoff(p) -> finish_if_done() makes the pending ring current (epoch + 1).
Ownership changes only through this path, never because a node looks down.

Merge (what gossip does on receipt) is commutative, associative and idempotent:
- members merge per node id: the record with the larger (seq, status rank, address) wins;
- the ring part (epoch, ring, pending, confirmed) and the staged changes come from the side with
  the larger (epoch, encoded ring, encoded pending); on a tie (then both rings are equal) the
  confirmed sets and the staged sets are unioned.
So every gossip order, and a partitioned gossip that heals, ends in one state: never two rings.
Two commits made concurrently on both sides of a partition cannot both survive: the larger ring
wins and the other side's change is dropped (its nodes show in `stranded()` and can be staged
again). Run commits on one node, `claimant()`, to avoid that.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dynacore import _backend
from dynacore.cluster.codec import U64_MAX, Reader, Writer
from dynacore.errors import ClusterError, ConfigError, RingError, UnknownNode
from dynacore.limits import DEFAULT_N, MAX_N

if TYPE_CHECKING:
    from dynacore.core.ring import Ring

MAX_MEMBERS = 1024  # members ever known, exiting ones included (a merge never forgets one)
MAX_NODE_ID_BYTES = 255
MAX_ADDRESS_BYTES = 255
DIGEST_SIZE_BYTES = 16
_MAGIC = b"DCST"
_FORMAT_VERSION = 1


class Status(enum.StrEnum):
    """A member's place in the membership lifecycle, in merge precedence order."""

    JOINING = "joining"  # staged to join; not yet in any ring
    VALID = "valid"  # a full member (in the ring, or in the pending ring during handoff)
    LEAVING = "leaving"  # staged or committed to leave; serves until its partitions moved
    EXITING = "exiting"  # left: owns nothing, may shut down

    @property
    def rank(self) -> int:
        return _STATUS_ORDER.index(self)


_STATUS_ORDER: tuple[Status, ...] = tuple(Status)
_SERVING = frozenset({Status.JOINING, Status.VALID, Status.LEAVING})


@dataclass(frozen=True, slots=True)
class Member:
    """One member as gossiped: where it listens, its status, and the version of this record."""

    address: str
    status: Status
    seq: int = 0

    def __post_init__(self) -> None:
        _check_text("address", self.address, MAX_ADDRESS_BYTES)
        if not isinstance(self.status, Status):
            raise ClusterError(f"member status must be a Status, got {self.status!r}")
        if not isinstance(self.seq, int) or not 0 <= self.seq <= U64_MAX:
            raise ClusterError(f"member seq must be a u64, got {self.seq!r}")

    def merge_key(self) -> tuple[int, int, str]:
        return (self.seq, self.status.rank, self.address)

    def bumped(self, status: Status | None = None, address: str | None = None) -> Member:
        """The next version of this record (seq + 1) with the given changes."""
        return Member(
            address=self.address if address is None else address,
            status=self.status if status is None else status,
            seq=self.seq + 1,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """What committing the staged changes would do: the target ring and its partition moves."""

    ring: Ring
    moves: tuple[tuple[int, str, str], ...]  # (partition, from, to), exactly ring.moves(target)
    joins: tuple[str, ...]
    leaves: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Transfer:
    """The handoff of one moving partition: its current holders stream it to the targets."""

    partition: int
    sources: tuple[str, ...]  # the current n_val preference list (they hold all of it)
    targets: tuple[str, ...]  # pending preference-list nodes that do not hold it yet
    confirmed: bool


def _check_text(what: str, value: object, max_bytes: int) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty str, got {value!r}")
    if len(value.encode("utf-8")) > max_bytes:
        raise ConfigError(f"{what} is longer than {max_bytes} UTF-8 bytes: {value[:40]!r}...")


def _check_node_id(node_id: object) -> str:
    _check_text("node id", node_id, MAX_NODE_ID_BYTES)
    assert isinstance(node_id, str)
    return node_id


def _is_index(value: object, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _ring_key(ring: Ring | None) -> bytes:
    return b"" if ring is None else ring.encode()


@dataclass(frozen=True, slots=True, eq=False)
class ClusterState:
    """The gossiped cluster state. Immutable: every operation returns a new value.

    Invariants (checked on construction, so a decoded or merged state always satisfies them):
    every ring and pending-ring node is a member; confirmed partitions exist only during a handoff
    and are partitions of the ring; staged joins are members outside the ring, staged leaves are
    ring nodes, and nothing is staged while a handoff is pending.
    """

    n_val: int  # replicas per key that handoff readiness is tracked for
    epoch: int  # + 1 on every commit and every finished handoff
    ring: Ring
    pending: Ring | None = None
    confirmed: frozenset[int] = frozenset()
    members: Mapping[str, Member] = field(default_factory=dict)
    staged_joins: frozenset[str] = frozenset()
    staged_leaves: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        ordered = MappingProxyType(dict(sorted(dict(self.members).items())))
        object.__setattr__(self, "members", ordered)
        object.__setattr__(self, "confirmed", frozenset(self.confirmed))
        object.__setattr__(self, "staged_joins", frozenset(self.staged_joins))
        object.__setattr__(self, "staged_leaves", frozenset(self.staged_leaves))
        self._validate()

    # -- invariants ------------------------------------------------------------------------------

    def _validate(self) -> None:
        if not isinstance(self.n_val, int) or not 1 <= self.n_val <= MAX_N:
            raise ClusterError(f"n_val must be in [1, {MAX_N}], got {self.n_val!r}")
        if not isinstance(self.epoch, int) or not 0 <= self.epoch <= U64_MAX:
            raise ClusterError(f"epoch must be a u64, got {self.epoch!r}")
        if len(self.members) > MAX_MEMBERS:
            raise ClusterError(f"{len(self.members)} members exceed the limit of {MAX_MEMBERS}")
        for node_id, member in self.members.items():
            _check_node_id(node_id)
            if not isinstance(member, Member):
                raise ClusterError(f"member {node_id!r} must be a Member, got {member!r}")
        self._validate_rings()
        self._validate_staged()

    def _validate_rings(self) -> None:
        missing = set(self.ring.nodes) - self.members.keys()
        if self.pending is not None:
            if self.pending.q != self.ring.q:
                raise ClusterError(f"pending ring has q={self.pending.q}, ring q={self.ring.q}")
            missing |= set(self.pending.nodes) - self.members.keys()
        if missing:
            raise ClusterError(f"ring nodes that are not members: {sorted(missing)}")
        if self.pending is None and self.confirmed:
            raise ClusterError("confirmed handoffs without a pending ring")
        bad = [p for p in self.confirmed if not _is_index(p, self.ring.q)]
        if bad:
            raise ClusterError(f"confirmed partitions outside the ring: {bad[:8]}")

    def _validate_staged(self) -> None:
        if (self.staged_joins or self.staged_leaves) and self.pending is not None:
            raise ClusterError("changes are staged while a handoff is pending")
        ring_nodes = set(self.ring.nodes)
        bad_joins = {n for n in self.staged_joins if n not in self.members or n in ring_nodes}
        if bad_joins:
            raise ClusterError(f"staged joins that are ring nodes or unknown: {sorted(bad_joins)}")
        bad_leaves = self.staged_leaves - ring_nodes
        if bad_leaves:
            raise ClusterError(f"staged leaves that are not ring nodes: {sorted(bad_leaves)}")

    # -- construction ----------------------------------------------------------------------------

    @staticmethod
    def bootstrap(q: int, members: Mapping[str, str], n_val: int = DEFAULT_N) -> ClusterState:
        """A static initial cluster: every member valid, ring = Ring.claim(q, ids)."""
        if not isinstance(members, Mapping) or not members:
            raise ConfigError("bootstrap needs at least one member {node_id: address}")
        if len(members) > MAX_MEMBERS:
            raise ConfigError(f"{len(members)} members exceed the limit of {MAX_MEMBERS}")
        records = {
            _check_node_id(node_id): Member(address, Status.VALID)
            for node_id, address in members.items()
        }
        ring = _backend.ring.Ring.claim(q, sorted(records))
        return ClusterState(n_val=n_val, epoch=0, ring=ring, members=records)

    def _replace(self, **changes: Any) -> ClusterState:
        return dataclasses.replace(self, **changes)

    def _with_members(self, updates: Mapping[str, Member]) -> dict[str, Member]:
        members = dict(self.members)
        members.update(updates)
        return members

    # -- queries ---------------------------------------------------------------------------------

    @property
    def q(self) -> int:
        return self.ring.q

    def member(self, node_id: str) -> Member:
        try:
            return self.members[node_id]
        except KeyError:
            raise UnknownNode(f"{node_id!r} is not a member of the cluster") from None

    def address_of(self, node_id: str) -> str:
        return self.member(node_id).address

    def claimant(self) -> str:
        """The node that should run commit(): the smallest valid ring node (else the smallest)."""
        nodes = self.ring.nodes
        valid = [n for n in nodes if self.members[n].status is Status.VALID]
        return min(valid) if valid else min(nodes)

    def stranded(self) -> list[str]:
        """Members whose status has no change behind it: a join or leave that a concurrent commit
        elsewhere overrode. Stage them again (or leave them be)."""
        placed = set(self.ring.nodes) | set(self.pending.nodes if self.pending else ())
        out = []
        for node_id, member in self.members.items():
            if member.status in (Status.JOINING, Status.VALID):
                lost = node_id not in placed and node_id not in self.staged_joins
            elif member.status is Status.LEAVING:
                lost = self._leave_lost(node_id)
            else:
                lost = False
            if lost:
                out.append(node_id)
        return out

    def _leave_lost(self, node_id: str) -> bool:
        if self.pending is not None:
            return node_id in self.pending.nodes
        return node_id in self.ring.nodes and node_id not in self.staged_leaves

    def members_up(self, is_up: Callable[[str], bool]) -> list[str]:
        """Members that serve requests (joining, valid, leaving) and that `is_up` says are up.

        `is_up` is the local failure detector's verdict: it steers routing only."""
        return [n for n, m in self.members.items() if m.status in _SERVING and is_up(n)]

    # -- staging and planning --------------------------------------------------------------------

    def _check_no_handoff(self, action: str) -> None:
        if self.pending is not None:
            raise ClusterError(
                f"cannot {action}: the handoff of epoch {self.epoch} is still in progress "
                f"({len(self.moving_partitions()) - len(self.confirmed)} partitions to go)"
            )

    def stage_join(self, node_id: str, address: str) -> ClusterState:
        """Stage a node to join; it becomes `joining` and enters the ring on commit."""
        _check_node_id(node_id)
        _check_text("address", address, MAX_ADDRESS_BYTES)
        self._check_no_handoff("stage a join")
        if node_id in self.ring.nodes:
            raise ClusterError(f"{node_id!r} is already in the ring")
        if node_id in self.staged_joins:
            raise ClusterError(f"{node_id!r} is already staged to join")
        old = self.members.get(node_id)
        record = (
            Member(address, Status.JOINING) if old is None else old.bumped(Status.JOINING, address)
        )
        return self._replace(
            members=self._with_members({node_id: record}),
            staged_joins=self.staged_joins | {node_id},
        )

    def stage_leave(self, node_id: str) -> ClusterState:
        """Stage a ring node to leave; it becomes `leaving` and serves until handoff finishes."""
        _check_node_id(node_id)
        self._check_no_handoff("stage a leave")
        if node_id not in self.ring.nodes:
            raise UnknownNode(f"{node_id!r} is not a ring node; only ring nodes can leave")
        if node_id in self.staged_leaves:
            raise ClusterError(f"{node_id!r} is already staged to leave")
        remaining = (set(self.ring.nodes) | self.staged_joins) - self.staged_leaves - {node_id}
        if not remaining:
            raise ClusterError(f"{node_id!r} cannot leave: the cluster would have no node left")
        record = self.members[node_id].bumped(Status.LEAVING)
        return self._replace(
            members=self._with_members({node_id: record}),
            staged_leaves=self.staged_leaves | {node_id},
        )

    def plan(self) -> Plan:
        """The ring that commit() would set as pending, and the partition moves it implies."""
        self._check_no_handoff("plan")
        joins = tuple(sorted(self.staged_joins))
        leaves = tuple(sorted(self.staged_leaves))
        target = self.ring
        for node_id in joins:
            target = target.with_node(node_id)
        for node_id in leaves:
            target = self._plan_leave(target, node_id)
        return Plan(ring=target, moves=tuple(self.ring.moves(target)), joins=joins, leaves=leaves)

    @staticmethod
    def _plan_leave(target: Ring, node_id: str) -> Ring:
        nodes = target.nodes
        if node_id not in nodes:
            return target  # a join took its last partition (tiny q): nothing left to move
        if len(nodes) <= 1:
            raise ClusterError(f"refused: leaving {node_id!r} would leave the cluster no node")
        try:
            return target.without_node(node_id)
        except RingError as exc:
            raise ClusterError(f"refused: cannot plan the leave of {node_id!r}: {exc}") from exc

    def commit(self) -> ClusterState:
        """Make the plan pending (epoch + 1): joiners become valid, leavers stay leaving."""
        self._check_no_handoff("commit")
        if not self.staged_joins and not self.staged_leaves:
            raise ClusterError("nothing is staged to commit")
        plan = self.plan()
        updates = {n: self.members[n].bumped(Status.VALID) for n in plan.joins}
        for node_id in plan.leaves:
            if self.members[node_id].status is not Status.LEAVING:
                updates[node_id] = self.members[node_id].bumped(Status.LEAVING)
        return self._replace(
            epoch=self._next_epoch(),
            pending=plan.ring,
            confirmed=frozenset(),
            members=self._with_members(updates),
            staged_joins=frozenset(),
            staged_leaves=frozenset(),
        )

    def _next_epoch(self) -> int:
        if self.epoch >= U64_MAX:
            raise ClusterError("the ring epoch is exhausted")
        return self.epoch + 1

    # -- ownership handoff -----------------------------------------------------------------------

    def moving_partitions(self) -> list[int]:
        """Partitions that must be handed off before the pending ring can become current: those
        whose owner changes, or whose n_val preference list gains a node. Empty without a pending
        ring."""
        if self.pending is None:
            return []
        return [p for p in range(self.ring.q) if self._moves(self.pending, p)]

    def _moves(self, pending: Ring, partition: int) -> bool:
        if self.ring.owner(partition) != pending.owner(partition):
            return True
        old = set(self.ring.preference_list(partition, self.n_val))
        return any(n not in old for n in pending.preference_list(partition, self.n_val))

    def transfers(self) -> list[Transfer]:
        """What the handoff must stream, per moving partition (empty without a pending ring).
        A transfer with no targets only changes the owner: confirm it at once."""
        if self.pending is None:
            return []
        out = []
        for partition in self.moving_partitions():
            sources = self.ring.preference_list(partition, self.n_val)
            wanted = self.pending.preference_list(partition, self.n_val)
            targets = tuple(n for n in wanted if n not in sources)
            out.append(Transfer(partition, sources, targets, partition in self.confirmed))
        return out

    def confirm_handoff(self, partition: int) -> ClusterState:
        """Record that every node of the pending preference list holds all of `partition`."""
        return self.confirm_handoffs([partition])

    def confirm_handoffs(self, partitions: Iterable[int]) -> ClusterState:
        """confirm_handoff for many partitions at once (one new state, one validation)."""
        pending = self.pending
        if pending is None:
            raise ClusterError("no handoff is pending")
        new: set[int] = set()
        for partition in partitions:
            if not _is_index(partition, self.ring.q):
                raise ClusterError(f"partition must be in [0, {self.ring.q}), got {partition!r}")
            if partition not in self.confirmed and partition not in new:
                if not self._moves(pending, partition):
                    raise ClusterError(f"partition {partition} does not move in epoch {self.epoch}")
                new.add(partition)
        if not new:
            return self
        return self._replace(confirmed=self.confirmed | new)

    def handoff_done(self) -> bool:
        """True when a handoff is pending and every moving partition is confirmed."""
        return self.pending is not None and set(self.moving_partitions()) <= self.confirmed

    def finish_if_done(self) -> ClusterState:
        """When every moving partition is confirmed: the pending ring becomes the ring (epoch + 1)
        and leavers that own nothing become exiting. Otherwise (or with no handoff) self."""
        if self.pending is None or not self.handoff_done():
            return self
        new_nodes = set(self.pending.nodes)
        updates = {
            n: m.bumped(Status.EXITING)
            for n, m in self.members.items()
            if m.status is Status.LEAVING and n not in new_nodes
        }
        return self._replace(
            epoch=self._next_epoch(),
            ring=self.pending,
            pending=None,
            confirmed=frozenset(),
            members=self._with_members(updates),
        )

    def set_address(self, node_id: str, address: str) -> ClusterState:
        """A member now listens elsewhere (restart on a new port): bump its record."""
        _check_text("address", address, MAX_ADDRESS_BYTES)
        old = self.member(node_id)
        if old.address == address:
            return self
        return self._replace(members=self._with_members({node_id: old.bumped(address=address)}))

    # -- routing ---------------------------------------------------------------------------------

    def _check_n(self, n: int | None) -> int:
        if n is None:
            return self.n_val
        if not isinstance(n, int) or not 1 <= n <= self.n_val:
            raise ConfigError(f"n must be in [1, n_val={self.n_val}], got {n!r}")
        return n

    def owners_for(self, partition: int, n: int | None = None) -> tuple[str, ...]:
        """Where writes of `partition` go: its preference list, plus during a handoff every node
        that the pending preference list adds (the old owners keep serving until finish)."""
        n = self._check_n(n)
        current = self.ring.preference_list(partition, n)
        if self.pending is None:
            return current
        added = [x for x in self.pending.preference_list(partition, n) if x not in current]
        return current + tuple(added)

    def read_owners(self, partition: int, n: int | None = None) -> tuple[str, ...]:
        """Where reads of `partition` go: the pending preference list once its handoff is
        confirmed (those nodes have all of it), else the current one."""
        n = self._check_n(n)
        if self.pending is not None and partition in self.confirmed:
            return self.pending.preference_list(partition, n)
        return self.ring.preference_list(partition, n)

    # -- merge -----------------------------------------------------------------------------------

    def _order_key(self) -> tuple[int, bytes, bytes]:
        return (self.epoch, _ring_key(self.ring), _ring_key(self.pending))

    def merge(self, other: ClusterState) -> ClusterState:
        """The least upper bound of two states (commutative, associative, idempotent)."""
        if not isinstance(other, ClusterState):
            raise ClusterError(f"cannot merge a {type(other).__name__} into a ClusterState")
        if other.ring.q != self.ring.q or other.n_val != self.n_val:
            raise ClusterError(
                f"states of different clusters: q={self.ring.q}/{other.ring.q}, "
                f"n_val={self.n_val}/{other.n_val}"
            )
        members = _merge_members(self.members, other.members)
        mine, theirs = self._order_key(), other._order_key()
        if mine == theirs:
            return self._replace(
                members=members,
                confirmed=self.confirmed | other.confirmed,
                staged_joins=self.staged_joins | other.staged_joins,
                staged_leaves=self.staged_leaves | other.staged_leaves,
            )
        winner = self if mine > theirs else other
        return winner._replace(members=members)

    # -- encoding --------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The canonical bytes of this state: equal states, equal bytes."""
        out = Writer()
        out.raw(_MAGIC)
        out.u8(_FORMAT_VERSION)
        out.u8(self.n_val)
        out.u64(self.epoch)
        out.blob(self.ring.encode())
        out.u8(0 if self.pending is None else 1)
        if self.pending is not None:
            out.blob(self.pending.encode())
        _write_ints(out, sorted(self.confirmed))
        out.u32(len(self.members))
        for node_id, member in self.members.items():
            out.text(node_id)
            out.text(member.address)
            out.u8(member.status.rank)
            out.u64(member.seq)
        _write_texts(out, sorted(self.staged_joins))
        _write_texts(out, sorted(self.staged_leaves))
        return out.getvalue()

    @staticmethod
    def decode(data: bytes) -> ClusterState:
        """The state `encode` wrote; ClusterError for anything malformed or non-canonical."""
        reader = Reader(data)
        if reader.raw(len(_MAGIC), "magic") != _MAGIC:
            raise ClusterError("not a cluster state (bad magic)")
        version = reader.u8("format version")
        if version != _FORMAT_VERSION:
            raise ClusterError(f"unsupported cluster state format version {version}")
        n_val = reader.u8("n_val")
        epoch = reader.u64("epoch")
        ring = _decode_ring(reader.blob("ring"))
        has_pending = reader.u8("pending flag")
        if has_pending not in (0, 1):
            raise ClusterError(f"bad pending flag {has_pending}")
        pending = _decode_ring(reader.blob("pending ring")) if has_pending else None
        confirmed = _read_ints(reader, "confirmed partitions", ring.q)
        members = _read_members(reader)
        staged_joins = _read_texts(reader, "staged joins")
        staged_leaves = _read_texts(reader, "staged leaves")
        reader.finish()
        try:
            return ClusterState(
                n_val=n_val,
                epoch=epoch,
                ring=ring,
                pending=pending,
                confirmed=frozenset(confirmed),
                members=members,
                staged_joins=frozenset(staged_joins),
                staged_leaves=frozenset(staged_leaves),
            )
        except ConfigError as exc:
            raise ClusterError(f"invalid cluster state: {exc}") from exc

    def digest(self) -> bytes:
        """A short hash of the encoding, for cheap "do we agree?" checks in gossip."""
        return hashlib.blake2b(self.encode(), digest_size=DIGEST_SIZE_BYTES).digest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClusterState):
            return NotImplemented
        return self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        pending = "none" if self.pending is None else f"{len(self.pending.nodes)} nodes"
        return (
            f"ClusterState(epoch={self.epoch}, q={self.ring.q}, n_val={self.n_val}, "
            f"ring={self.ring.nodes}, pending={pending}, confirmed={len(self.confirmed)}, "
            f"members={len(self.members)}, staged=+{sorted(self.staged_joins)}"
            f"-{sorted(self.staged_leaves)})"
        )


def _merge_members(a: Mapping[str, Member], b: Mapping[str, Member]) -> dict[str, Member]:
    merged = dict(a)
    for node_id, theirs in b.items():
        mine = merged.get(node_id)
        if mine is None or theirs.merge_key() > mine.merge_key():
            merged[node_id] = theirs
    return merged


def _decode_ring(data: bytes) -> Ring:
    try:
        return _backend.ring.Ring.decode(data)
    except RingError as exc:
        raise ClusterError(f"bad ring in cluster state: {exc}") from exc


def _write_ints(out: Writer, values: Iterable[int]) -> None:
    items = list(values)
    out.u32(len(items))
    for value in items:
        out.u32(value)


def _write_texts(out: Writer, values: Iterable[str]) -> None:
    items = list(values)
    out.u32(len(items))
    for value in items:
        out.text(value)


def _read_ints(reader: Reader, what: str, limit: int) -> list[int]:
    values = [reader.u32(what) for _ in range(reader.count(what, 4, limit))]
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ClusterError(f"{what} are not strictly increasing")
    return values


def _read_texts(reader: Reader, what: str) -> list[str]:
    values = [reader.text(what) for _ in range(reader.count(what, 2, MAX_MEMBERS))]
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ClusterError(f"{what} are not sorted and distinct")
    return values


def _read_members(reader: Reader) -> dict[str, Member]:
    members: dict[str, Member] = {}
    previous = ""
    for _ in range(reader.count("members", 2 + 2 + 1 + 8, MAX_MEMBERS)):
        node_id = reader.text("member id")
        address = reader.text("member address")
        rank = reader.u8("member status")
        seq = reader.u64("member seq")
        if node_id <= previous:
            raise ClusterError("members are not sorted by id and distinct")
        if rank >= len(_STATUS_ORDER):
            raise ClusterError(f"bad member status {rank}")
        try:
            members[node_id] = Member(address, _STATUS_ORDER[rank], seq)
        except ConfigError as exc:
            raise ClusterError(f"bad member {node_id!r}: {exc}") from exc
        previous = node_id
    return members
