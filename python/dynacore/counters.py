"""PN-counters, the value of a Cache key that holds an int: a base (set by the last `set` of an
int) plus, per actor (a coordinating node's actor id), the total of its increments and of its
decrements. Concurrent siblings merge by pointwise max per actor, as Riak's counters do, so that
no increment is lost as long as each actor's totals only grow; the coordinator guarantees that by
applying every increment to its own entry inside its storage write transaction.

A `set` of an int keeps the entries and moves the base (base = value − Σ(p − n)), so that an
actor's totals never shrink and a later merge with an older concurrent sibling cannot hide its
increments. Concurrent bases are resolved by the newest `base_ms` (ties: the larger base).
A delete (or the expiry) of a counter drops its entries: increments made elsewhere concurrently
with the delete may survive it, and an older concurrent sibling may shadow the first increments
after it (Riak's counters have the same caveat); sequential delete-then-incr is exact.

Encoding (big-endian): ``base i128 ‖ base_ms u64 ‖ count u16 ‖ (len u8 ‖ actor ‖ p u64 ‖
n u64)*``, entries sorted by actor, each actor at most once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from dynacore.errors import LimitExceeded, SerializationError

MIN_VALUE: Final = -(1 << 63)
MAX_VALUE: Final = (1 << 63) - 1  # a counter's value is a signed 64-bit integer
MAX_TOTAL: Final = (1 << 64) - 1  # one actor's increments (or decrements) in all
MAX_ACTORS: Final = 4096  # distinct actors (node epochs) one counter may hold
MAX_ACTOR_BYTES: Final = 255
_HEAD: Final = struct.Struct(">16sQH")
_TOTALS: Final = struct.Struct(">QQ")

Entry = tuple[str, int, int]  # (actor, increments, decrements)


def fits(value: int) -> bool:
    """True when `value` is in a counter's range (a signed 64-bit integer)."""
    return MIN_VALUE <= value <= MAX_VALUE


@dataclass(frozen=True, slots=True)
class Counter:
    """One counter state; immutable (every operation returns a new one)."""

    base: int = 0
    base_ms: int = 0
    entries: tuple[Entry, ...] = ()

    @property
    def total(self) -> int:
        """Σ(increments − decrements) over every actor."""
        return sum(p - n for _, p, n in self.entries)

    @property
    def value(self) -> int:
        return self.base + self.total

    def add(self, actor: str, delta: int) -> Counter:
        """This counter with `delta` added to `actor`'s increments (or, if negative, to its
        decrements). LimitExceeded when the value would leave the signed 64-bit range."""
        if not fits(delta):
            raise LimitExceeded(f"an increment is a signed 64-bit integer, got {delta}")
        if not fits(self.value + delta):
            raise LimitExceeded(f"counter overflow: {self.value} + {delta} leaves the i64 range")
        entries = dict((a, (p, n)) for a, p, n in self.entries)
        p, n = entries.get(actor, (0, 0))
        p, n = (p + delta, n) if delta >= 0 else (p, n - delta)
        if p > MAX_TOTAL or n > MAX_TOTAL:
            raise LimitExceeded(f"actor {actor!r} of this counter reached its u64 total")
        entries[actor] = (p, n)
        return Counter(self.base, self.base_ms, _sorted(entries))

    def rebased(self, value: int, base_ms: int) -> Counter:
        """This counter's entries with a base that makes its value `value` (a set)."""
        if not fits(value):
            raise LimitExceeded(f"a counter's value is a signed 64-bit integer, got {value}")
        return Counter(value - self.total, base_ms, self.entries)

    def merge(self, other: Counter) -> Counter:
        """Pointwise max per actor; the base with the newest base_ms (ties: the larger)."""
        entries = dict((a, (p, n)) for a, p, n in self.entries)
        for actor, p, n in other.entries:
            mine = entries.get(actor)
            entries[actor] = (p, n) if mine is None else (max(mine[0], p), max(mine[1], n))
        base_ms, base = max((self.base_ms, self.base), (other.base_ms, other.base))
        return Counter(base, base_ms, _sorted(entries))

    def encode(self) -> bytes:
        if len(self.entries) > MAX_ACTORS:
            raise LimitExceeded(f"a counter holds at most {MAX_ACTORS} actors")
        parts = [_HEAD.pack(self.base.to_bytes(16, "big", signed=True), self.base_ms, len(self))]
        for actor, p, n in self.entries:
            raw = actor.encode("utf-8")
            if not 0 < len(raw) <= MAX_ACTOR_BYTES:
                raise LimitExceeded(f"a counter actor is 1..{MAX_ACTOR_BYTES} bytes: {actor!r}")
            parts += (bytes((len(raw),)), raw, _TOTALS.pack(p, n))
        return b"".join(parts)

    def __len__(self) -> int:
        return len(self.entries)


def _sorted(entries: dict[str, tuple[int, int]]) -> tuple[Entry, ...]:
    return tuple((a, p, n) for a, (p, n) in sorted(entries.items()))


def of_value(value: int, now_ms: int) -> Counter:
    """A fresh counter whose value is `value`, set at now_ms."""
    return Counter().rebased(value, now_ms)


def merge_all(states: list[Counter]) -> Counter:
    """The merge of every state (a zero counter when there is none)."""
    merged = Counter()
    for state in states:
        merged = merged.merge(state)
    return merged


def decode(data: bytes) -> Counter:
    """A counter from its encoding; SerializationError when malformed."""
    if len(data) < _HEAD.size:
        raise SerializationError(f"counter of {len(data)} bytes is shorter than its header")
    raw_base, base_ms, count = _HEAD.unpack_from(data)
    if count > MAX_ACTORS:
        raise SerializationError(f"counter claims {count} actors (limit {MAX_ACTORS})")
    entries: list[Entry] = []
    pos = _HEAD.size
    for _ in range(count):
        if pos >= len(data):
            raise SerializationError("truncated counter entry")
        size = data[pos]
        end = pos + 1 + size + _TOTALS.size
        if size == 0 or end > len(data):
            raise SerializationError("truncated or empty counter actor")
        try:
            actor = data[pos + 1 : pos + 1 + size].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError("counter actor is not UTF-8") from exc
        p, n = _TOTALS.unpack_from(data, pos + 1 + size)
        if entries and entries[-1][0] >= actor:
            raise SerializationError("counter actors are not sorted and unique")
        entries.append((actor, p, n))
        pos = end
    if pos != len(data):
        raise SerializationError(f"{len(data) - pos} bytes after the end of a counter")
    return Counter(int.from_bytes(raw_base, "big", signed=True), base_ms, tuple(entries))


__all__ = ["MAX_ACTORS", "Counter", "decode", "fits", "merge_all", "of_value"]
