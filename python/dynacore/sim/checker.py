"""The lost-write checker: pure logic over an operation history and the final replica states.

The workload (Jepsen's Riak set workload) adds unique elements to sets stored under a few keys.
Every add is recorded twice: when a client invokes it and when it completes, with one of three
outcomes:

- OK: the store acknowledged the write; the element must survive.
- FAIL: the store refused the write before storing anything (a limit, a malformed request);
  the element must NOT appear.
- UNKNOWN: anything else (timeout, quorum not met, connection lost, still running at the end);
  the element may or may not appear.

After the liveness phase the harness reads every key (the final merged value) and snapshots the
version set that every replica of the key stores. `check` then reports:

- lost: acknowledged elements missing from their key's final merged value;
- unacked-but-present: UNKNOWN elements that did survive (Jepsen's "recovered");
- failed-but-present and unexpected: elements that should not be there at all;
- convergence: every replica of a key stores the same bytes, and every replica of a partition has
  the same Merkle root (when the harness supplies roots);
- siblings: the largest sibling count seen (during the run and at the end) against the bound
  the caller sets (the simulator's: n × siblings_max, see ClusterConfig.siblings_bound).

No I/O, no clocks, no randomness: the same inputs give the same result.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dynacore.errors import ConfigError

MAX_HISTORY_OPS = 1_000_000  # a bound on one run's history (memory)
MAX_REPORTED_ITEMS = 20  # problems() lists at most this many examples per kind


class OpKind(enum.Enum):
    """How a client wrote: read-modify-write with the read's context, or a blind write."""

    ADD = "add"
    BLIND = "blind"


class Outcome(enum.Enum):
    """What the client learned about a write; see the module docstring."""

    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Op:
    """One write of one element to one key: its invocation and (if any) its completion."""

    op_id: int
    kind: OpKind
    client: str
    key: bytes
    element: bytes
    invoked_s: float
    completed_s: float | None = None  # None: never completed (counts as UNKNOWN)
    outcome: Outcome = Outcome.UNKNOWN
    error: str = ""  # the exception's class name (and message) when not OK


class History:
    """The ordered record of every write a run's clients attempted. Elements are unique."""

    def __init__(self, max_ops: int = MAX_HISTORY_OPS) -> None:
        if not 1 <= max_ops <= MAX_HISTORY_OPS:
            raise ConfigError(f"max_ops must be in [1, {MAX_HISTORY_OPS}], got {max_ops}")
        self._max_ops = max_ops
        self._ops: list[Op] = []
        self._elements: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._ops)

    def invoke(
        self, kind: OpKind, client: str, key: bytes, element: bytes, invoked_s: float
    ) -> int:
        """Record the start of a write; returns its op id for `complete`."""
        if len(self._ops) >= self._max_ops:
            raise ConfigError(f"the history is full ({self._max_ops} ops)")
        if element in self._elements:
            raise ConfigError(f"element {element!r} was already written: elements are unique")
        self._elements.add(element)
        op_id = len(self._ops)
        self._ops.append(Op(op_id, kind, client, key, element, invoked_s))
        return op_id

    def complete(self, op_id: int, outcome: Outcome, completed_s: float, error: str = "") -> None:
        """Record how write `op_id` ended (each op completes at most once)."""
        op = self._ops[op_id]
        if op.completed_s is not None:
            raise ConfigError(f"op {op_id} already completed ({op.outcome.value})")
        assert completed_s >= op.invoked_s, "an op completes after it is invoked"
        self._ops[op_id] = dataclasses.replace(
            op, completed_s=completed_s, outcome=outcome, error=error
        )

    @property
    def ops(self) -> list[Op]:
        return list(self._ops)

    def digest(self) -> str:
        """A hash of the whole history (part of a run's trace hash)."""
        h = hashlib.blake2b(digest_size=16)
        for op in self._ops:
            done = "-" if op.completed_s is None else f"{op.completed_s:.9f}"
            line = f"{op.op_id} {op.kind.value} {op.client} {op.key.hex()} {op.element.hex()} "
            line += f"{op.invoked_s:.9f} {done} {op.outcome.value} {op.error}\n"
            h.update(line.encode())
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What one replica stores for one key at the end of the run."""

    node: str
    raw: bytes | None  # the stored version set's bytes; None when the replica has no copy
    siblings: int  # values in the set, tombstones included
    elements: frozenset[bytes]  # the union of the elements of every visible sibling


@dataclass(frozen=True)
class FinalState:
    """Everything read after the liveness phase."""

    reads: Mapping[bytes, frozenset[bytes] | None]  # key -> union of the final read (None: failed)
    replicas: Mapping[bytes, Sequence[ReplicaState]]  # key -> its preference list's copies
    siblings_limit: int
    max_siblings_seen: int = 0  # the most siblings any read returned during the run
    merkle_roots: Mapping[int, Mapping[str, bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one run; `ok` is the conjunction of every property."""

    attempted: int
    acknowledged: int
    failed: int
    unknown: int
    lost: tuple[tuple[bytes, bytes], ...]  # (key, element), acknowledged but missing
    unacked_present: int
    failed_present: tuple[tuple[bytes, bytes], ...]
    unexpected: tuple[tuple[bytes, bytes], ...]  # present, never written to that key
    unreadable_keys: tuple[bytes, ...]
    divergent_keys: tuple[bytes, ...]
    divergent_partitions: tuple[int, ...]
    max_siblings: int
    siblings_limit: int

    @property
    def converged(self) -> bool:
        return not self.divergent_keys and not self.divergent_partitions

    @property
    def siblings_ok(self) -> bool:
        return self.max_siblings <= self.siblings_limit

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.failed_present
            and not self.unexpected
            and not self.unreadable_keys
            and self.converged
            and self.siblings_ok
        )

    def problems(self) -> list[str]:
        """One line per violated property (empty when ok)."""
        out: list[str] = []
        if self.lost:
            out.append(f"lost {len(self.lost)} acknowledged: {_sample(self.lost)}")
        if self.failed_present:
            failed = self.failed_present
            out.append(f"failed yet present {len(failed)}: {_sample(failed)}")
        if self.unexpected:
            out.append(f"unexpected {len(self.unexpected)}: {_sample(self.unexpected)}")
        if self.unreadable_keys:
            out.append(f"final read failed for {_sample(self.unreadable_keys)}")
        if self.divergent_keys:
            out.append(f"replicas differ for keys {_sample(self.divergent_keys)}")
        if self.divergent_partitions:
            out.append(f"merkle roots differ for partitions {_sample(self.divergent_partitions)}")
        if not self.siblings_ok:
            out.append(f"{self.max_siblings} siblings exceed the limit {self.siblings_limit}")
        return out


def _sample(items: Sequence[object]) -> str:
    shown = ", ".join(_show(item) for item in items[:MAX_REPORTED_ITEMS])
    more = len(items) - MAX_REPORTED_ITEMS
    return shown + (f" (+{more} more)" if more > 0 else "")


def _show(item: object) -> str:
    if isinstance(item, tuple):
        return "/".join(_show(part) for part in item)
    if isinstance(item, bytes):
        return item.decode("utf-8", "backslashreplace")
    return str(item)


def check(ops: Sequence[Op], final: FinalState) -> CheckResult:
    """Judge a run: see the module docstring for each property."""
    if final.siblings_limit < 1:
        raise ConfigError(f"siblings_limit must be >= 1, got {final.siblings_limit}")
    present = _final_elements(final)
    written: dict[bytes, set[bytes]] = {}
    lost: list[tuple[bytes, bytes]] = []
    failed_present: list[tuple[bytes, bytes]] = []
    unacked_present = 0
    for op in ops:
        written.setdefault(op.key, set()).add(op.element)
        survived = op.element in present.get(op.key, frozenset())
        if op.outcome is Outcome.OK and not survived:
            lost.append((op.key, op.element))
        elif op.outcome is Outcome.FAIL and survived:
            failed_present.append((op.key, op.element))
        elif op.outcome is Outcome.UNKNOWN and survived:
            unacked_present += 1
    unexpected = [
        (key, element)
        for key in sorted(present)
        for element in sorted(present[key] - written.get(key, set()))
    ]
    outcomes = [op.outcome for op in ops]
    return CheckResult(
        attempted=len(ops),
        acknowledged=outcomes.count(Outcome.OK),
        failed=outcomes.count(Outcome.FAIL),
        unknown=outcomes.count(Outcome.UNKNOWN),
        lost=tuple(lost),
        unacked_present=unacked_present,
        failed_present=tuple(failed_present),
        unexpected=tuple(unexpected),
        unreadable_keys=tuple(sorted(k for k, v in final.reads.items() if v is None)),
        divergent_keys=tuple(divergent_keys(final.replicas)),
        divergent_partitions=tuple(divergent_partitions(final.merkle_roots)),
        max_siblings=max([final.max_siblings_seen, *_replica_siblings(final.replicas)]),
        siblings_limit=final.siblings_limit,
    )


def _final_elements(final: FinalState) -> dict[bytes, frozenset[bytes]]:
    """Each key's final merged value; a key whose final read failed falls back on the union of
    its replicas' copies (the key is reported unreadable anyway)."""
    out: dict[bytes, frozenset[bytes]] = {}
    for key in set(final.reads) | set(final.replicas):
        read = final.reads.get(key)
        if read is None:
            read = frozenset().union(*(r.elements for r in final.replicas.get(key, ())))
        out[key] = read
    return out


def _replica_siblings(replicas: Mapping[bytes, Sequence[ReplicaState]]) -> Iterable[int]:
    return (r.siblings for states in replicas.values() for r in states)


def divergent_keys(replicas: Mapping[bytes, Sequence[ReplicaState]]) -> list[bytes]:
    """Keys whose replicas do not all store the same bytes (a missing copy counts)."""
    return sorted(key for key, states in replicas.items() if len({r.raw for r in states}) > 1)


def divergent_partitions(roots: Mapping[int, Mapping[str, bytes]]) -> list[int]:
    """Partitions whose replicas do not all have the same Merkle root."""
    return sorted(p for p, by_node in roots.items() if len(set(by_node.values())) > 1)


__all__ = [
    "CheckResult",
    "FinalState",
    "History",
    "Op",
    "OpKind",
    "Outcome",
    "ReplicaState",
    "check",
    "divergent_keys",
    "divergent_partitions",
]
