"""A test-only stand-in for the Ring of docs/contracts.md, used by tests/cluster only while the
selected backend has no Ring yet (the primitives land on main in parallel). It follows the
documented API and properties (balanced claim, fewest-move join/leave, moves, encode/decode)
but makes no claim to the real ring's exact placement.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynacore.errors import RingError


def _check_q(q: int) -> None:
    if not isinstance(q, int) or q < 1 or q > 1 << 16 or q & (q - 1):
        raise RingError(f"q must be a power of two in [1, 65536], got {q!r}")


class Ring:
    def __init__(self, owners: Sequence[str]) -> None:
        _check_q(len(owners))
        if not all(isinstance(o, str) and o for o in owners):
            raise RingError("owners must be non-empty str")
        self._owners = list(owners)

    @staticmethod
    def claim(q: int, nodes: Sequence[str]) -> Ring:
        _check_q(q)
        names = sorted(set(nodes))
        if not names:
            raise RingError("empty node list")
        return Ring([names[p % len(names)] for p in range(q)])

    @property
    def q(self) -> int:
        return len(self._owners)

    @property
    def owners(self) -> list[str]:
        return list(self._owners)

    @property
    def nodes(self) -> list[str]:
        return sorted(set(self._owners))

    def owner(self, partition: int) -> str:
        if not 0 <= partition < self.q:
            raise RingError(f"partition {partition} out of range")
        return self._owners[partition]

    def preference_list(self, partition: int, n: int) -> tuple[str, ...]:
        if n < 1:
            raise RingError("n < 1")
        out: list[str] = []
        for i in range(self.q):
            node = self.owner((partition + i) % self.q)
            if node not in out:
                out.append(node)
            if len(out) == n:
                break
        return tuple(out)

    def partitions_owned(self, node: str) -> list[int]:
        return [p for p, o in enumerate(self._owners) if o == node]

    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self._owners:
            counts[o] = counts.get(o, 0) + 1
        return counts

    def with_node(self, node: str) -> Ring:
        if node in self._owners:
            raise RingError(f"{node!r} is already in the ring")
        owners = list(self._owners)
        counts = self._counts()
        take = self.q // (len(counts) + 1)
        for _ in range(take):
            donor = max(counts, key=lambda n: (counts[n], n))
            partition = max(p for p, o in enumerate(owners) if o == donor)
            owners[partition] = node
            counts[donor] -= 1
        return Ring(owners)

    def without_node(self, node: str) -> Ring:
        if node not in self._owners:
            raise RingError(f"unknown node {node!r}")
        counts = self._counts()
        del counts[node]
        if not counts:
            raise RingError("cannot remove the last node")
        owners = list(self._owners)
        for p in self.partitions_owned(node):
            taker = min(counts, key=lambda n: (counts[n], n))
            owners[p] = taker
            counts[taker] += 1
        return Ring(owners)

    def moves(self, other: Ring) -> list[tuple[int, str, str]]:
        if other.q != self.q:
            raise RingError("rings of different q")
        return [
            (p, a, b)
            for p, (a, b) in enumerate(zip(self._owners, other._owners, strict=True))
            if a != b
        ]

    def encode(self) -> bytes:
        return "\n".join(self._owners).encode("utf-8")

    @staticmethod
    def decode(data: bytes) -> Ring:
        try:
            return Ring(data.decode("utf-8").split("\n"))
        except UnicodeDecodeError as exc:
            raise RingError("bad ring encoding") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and other._owners == self._owners

    def __hash__(self) -> int:
        return hash(tuple(self._owners))

    def __repr__(self) -> str:
        return f"Ring(q={self.q}, nodes={self.nodes})"
