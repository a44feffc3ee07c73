"""The membership messages (types 64–79 of the node range) and their field layouts.

Every request is ``rpc.call(address, TYPE, fields)``; the reply is the field list after "->".
A "state" field is an encoded ClusterState (`ClusterState.encode`), b"" when there is none.
Requests marked *claimant* are forwarded by any node to the cluster's claimant (with
forwarded=True, so that a forward is never forwarded again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dynacore.errors import ProtocolError
from dynacore.messages import expect

GOSSIP: Final = 64
"""[from_id: str, from_address: str, digest: bytes, state: bytes, want_state: bool]
-> [digest: bytes, state: bytes]   The receiver merges `state` (if any), then answers its digest,
and its state when asked and the digests (after the merge) differ. A heartbeat is a GOSSIP with
no state and want_state False."""

CLUSTER_JOIN: Final = 65
"""[seed_address: str] -> [claimant: str]   Sent to the joining node: it learns the cluster state
from the seed and asks the claimant to stage its join."""

STAGE_JOIN: Final = 66
"""*claimant* [node_id: str, address: str, forwarded: bool] -> [state]"""

STAGE_LEAVE: Final = 67
"""*claimant* [node_id: str ("" = the node first asked), forwarded: bool] -> [state]"""

CLUSTER_STATE: Final = 68
"""[at_claimant: bool, forwarded: bool] -> [state]   The answering node's state, or with
at_claimant the claimant's (which holds the staged changes first: `dynacore plan`)."""

COMMIT: Final = 69
"""*claimant* [forwarded: bool] -> [state]   Commit the staged changes (a new pending ring)."""

TRANSFERS: Final = 70
"""[] -> [state, rows: list[row], sweep: [swept_epoch: int, stale_keys: int, sweeps: int]]
row = [partition, sender, target, objects, bytes, elapsed_s: float, status: str]"""

HANDOFF_BATCH: Final = 71
"""[partition: int (-1: keys of many partitions), keys: list[bytes], sets: list[bytes]]
-> [applied: int]   Merged like replica puts (versions.sync); answered once durable."""

FIRST: Final = 64
LAST: Final = 79

NAMES: Final = {
    GOSSIP: "GOSSIP",
    CLUSTER_JOIN: "CLUSTER_JOIN",
    STAGE_JOIN: "STAGE_JOIN",
    STAGE_LEAVE: "STAGE_LEAVE",
    CLUSTER_STATE: "CLUSTER_STATE",
    COMMIT: "COMMIT",
    TRANSFERS: "TRANSFERS",
    HANDOFF_BATCH: "HANDOFF_BATCH",
}
assert all(FIRST <= t <= LAST for t in NAMES)


@dataclass(frozen=True, slots=True)
class TransferRow:
    """One partition's stream from a sender to one target, as the sender reports it."""

    partition: int
    sender: str
    target: str
    objects: int
    size_bytes: int
    elapsed_s: float
    status: str  # waiting, streaming, sent, failed

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.size_bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_fields(self) -> list[object]:
        return [
            self.partition,
            self.sender,
            self.target,
            self.objects,
            self.size_bytes,
            self.elapsed_s,
            self.status,
        ]

    @classmethod
    def from_fields(cls, fields: object) -> TransferRow:
        if not isinstance(fields, list):
            raise ProtocolError(f"malformed transfer row {fields!r}")
        values = expect(fields, (int, str, str, int, int, float, str), "transfer row")
        return cls(*values)


@dataclass(frozen=True, slots=True)
class SweepInfo:
    """The drop sweep of one node: the ring epoch it last completed for, what it found."""

    swept_epoch: int  # -1: none completed yet
    stale_keys: int  # keys of partitions this node does not replicate, found by the last sweep
    sweeps: int  # sweeps completed since start

    def to_fields(self) -> list[object]:
        return [self.swept_epoch, self.stale_keys, self.sweeps]

    @classmethod
    def from_fields(cls, fields: object) -> SweepInfo:
        if not isinstance(fields, list):
            raise ProtocolError(f"malformed sweep info {fields!r}")
        return cls(*expect(fields, (int, int, int), "sweep info"))


@dataclass(frozen=True, slots=True)
class TransfersReport:
    """The TRANSFERS reply: the node's state, its outgoing transfers, its drop sweep."""

    state: bytes
    rows: tuple[TransferRow, ...]
    sweep: SweepInfo

    def to_fields(self) -> list[object]:
        return [self.state, [row.to_fields() for row in self.rows], self.sweep.to_fields()]

    @classmethod
    def from_fields(cls, fields: Sequence[object]) -> TransfersReport:
        state, rows, sweep = expect(fields, (bytes, list, list), "TRANSFERS reply")
        return cls(
            state, tuple(TransferRow.from_fields(r) for r in rows), SweepInfo.from_fields(sweep)
        )
