"""YCSB-style workload definitions: scrambled-zipfian key choice, the A/B/C operation mixes, the
precomputed operation plans every target replays identically, and latency summaries. Pure: no
I/O, no clocks; randomness comes from a seeded `random.Random` handed in.

Key choice follows YCSB's scrambled zipfian (Gray et al., "Quickly generating billion-record
synthetic databases"): a zipfian rank with theta 0.99 over the record count, then the rank hashed
with 64-bit FNV-1a and taken modulo the record count, so that the popular keys are spread over the
key space instead of clustered at its start. (YCSB draws the rank over a fixed space of 10^10 items
before the modulo; here it is drawn over the record count itself, which keeps the same skew for
the most popular keys and needs no precomputed constant.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_RECORDS = 100_000
DEFAULT_VALUE_SIZE_BYTES = 100
DEFAULT_CONCURRENCY = 64
ZIPFIAN_THETA = 0.99
MAX_RECORDS = 10_000_000
PLAN_SIZE_OPS = 1 << 17  # a workload's plan is replayed cyclically; big enough to not repeat soon
KEY_PREFIX = b"user"

FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 0x100000001B3
MASK_64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Workload:
    """One operation mix: reads with probability `read_fraction`, updates otherwise."""

    name: str
    read_fraction: float
    description: str


WORKLOADS: dict[str, Workload] = {
    "A": Workload("A", 0.50, "50/50 read/update"),
    "B": Workload("B", 0.95, "95/5 read/update"),
    "C": Workload("C", 1.00, "100% read"),
}


def workload(name: str) -> Workload:
    """The workload named `name` (A, B or C); ValueError for any other name."""
    try:
        return WORKLOADS[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}"
        ) from None


def key_of(index: int) -> bytes:
    """The key of record `index`: b"user" and the zero-padded index (14 bytes)."""
    assert 0 <= index < MAX_RECORDS, index
    return KEY_PREFIX + b"%010d" % index


def value_of(seed: int, size_bytes: int = DEFAULT_VALUE_SIZE_BYTES) -> bytes:
    """A deterministic value of `size_bytes` random-looking bytes."""
    return random.Random(seed).randbytes(size_bytes)


def fnv1a_64(value: int) -> int:
    """FNV-1a 64 over the 8 little-endian bytes of `value` (as YCSB hashes a long)."""
    digest = FNV_OFFSET_BASIS_64
    for octet in (value & MASK_64).to_bytes(8, "little"):
        digest = ((digest ^ octet) * FNV_PRIME_64) & MASK_64
    return digest


def zeta(items: int, theta: float) -> float:
    """The generalized harmonic number: sum over i in 1..items of 1 / i**theta."""
    return math.fsum(i**-theta for i in range(1, items + 1))


class Zipfian:
    """Zipfian ranks in [0, items): rank 0 most popular, P(rank k) proportional to 1/(k+1)^theta."""

    def __init__(self, items: int, theta: float = ZIPFIAN_THETA) -> None:
        if not 2 <= items <= MAX_RECORDS:
            raise ValueError(f"items must be in [2, {MAX_RECORDS}], got {items}")
        if not 0.0 < theta < 1.0:
            raise ValueError(f"theta must be in (0, 1), got {theta}")
        self.items = items
        self.theta = theta
        self.zeta_n = zeta(items, theta)
        self._alpha = 1.0 / (1.0 - theta)
        self._eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (1.0 - zeta(2, theta) / self.zeta_n)
        self._second_threshold = 1.0 + 0.5**theta

    def rank(self, u: float) -> int:
        """The rank for a uniform draw `u` in [0, 1)."""
        uz = u * self.zeta_n
        if uz < 1.0:
            return 0
        if uz < self._second_threshold:
            return 1
        rank = int(self.items * (self._eta * u - self._eta + 1.0) ** self._alpha)
        return min(rank, self.items - 1)

    def probability(self, rank: int) -> float:
        """The exact probability of `rank` under the zipfian law."""
        return float((rank + 1) ** -self.theta / self.zeta_n)


class ScrambledZipfian:
    """Zipfian popularity, with each rank hashed to a record index (see the module doc)."""

    def __init__(self, items: int, theta: float = ZIPFIAN_THETA) -> None:
        self.zipfian = Zipfian(items, theta)
        self.items = items

    def index(self, u: float) -> int:
        return fnv1a_64(self.zipfian.rank(u)) % self.items


@dataclass(frozen=True, slots=True)
class Plan:
    """A precomputed operation sequence: `reads[i]` says read (else update) of record
    `indexes[i]`. A run replays it cyclically (`cyclic`) or exactly once (a load)."""

    indexes: Sequence[int]
    reads: Sequence[bool]
    cyclic: bool

    def __post_init__(self) -> None:
        assert len(self.indexes) == len(self.reads) > 0


def workload_plan(mix: Workload, records: int, seed: int, size_ops: int = PLAN_SIZE_OPS) -> Plan:
    """The operation plan of one workload: the same seed gives every target the same sequence."""
    rng = random.Random(f"{seed}:{mix.name}")
    chooser = ScrambledZipfian(records)
    indexes = [chooser.index(rng.random()) for _ in range(size_ops)]
    reads = [rng.random() < mix.read_fraction for _ in range(size_ops)]
    return Plan(indexes, reads, cyclic=True)


def load_plan(records: int) -> Plan:
    """Insert every record once, in index order."""
    if not 1 <= records <= MAX_RECORDS:
        raise ValueError(f"records must be in [1, {MAX_RECORDS}], got {records}")
    return Plan(range(records), [False] * records, cyclic=False)


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending sequence (fraction in (0, 1])."""
    assert sorted_values, "percentile of nothing"
    assert 0.0 < fraction <= 1.0, fraction
    rank = math.ceil(fraction * len(sorted_values))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """What one run measured: throughput and latency percentiles over every successful op."""

    ops: int
    errors: int
    misses: int  # reads that found no value (after a load, there should be none)
    duration_s: float
    ops_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    error_kinds: dict[str, int]
    # CPU seconds per op (user + system) in microseconds, when measured: the load driver's own
    # process, and the servers' processes together; nan when not measured
    driver_cpu_us_per_op: float = math.nan
    server_cpu_us_per_op: float = math.nan
    # p99 of the reads and of the updates alone (nan when the run had none of that kind)
    read_p99_ms: float = math.nan
    update_p99_ms: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Summary:
        return Summary(**data)


def summarize(
    latencies_ns: list[int],
    duration_s: float,
    errors: dict[str, int] | None = None,
    misses: int = 0,
    read_latencies_ns: list[int] | None = None,
    update_latencies_ns: list[int] | None = None,
) -> Summary:
    """Summarize every recorded latency (nanoseconds) of a run that lasted `duration_s`; the
    reads' and the updates' latencies, when given, also get a p99 of their own."""
    kinds = dict(errors or {})
    if not latencies_ns:
        nan = float("nan")
        return Summary(0, sum(kinds.values()), misses, duration_s, 0.0, nan, nan, nan, nan, kinds)
    assert duration_s > 0.0, duration_s
    ordered = sorted(latencies_ns)

    def ms(value_ns: int) -> float:
        return round(value_ns / 1e6, 3)

    return Summary(
        ops=len(ordered),
        errors=sum(kinds.values()),
        misses=misses,
        duration_s=round(duration_s, 3),
        ops_per_s=round(len(ordered) / duration_s, 1),
        p50_ms=ms(percentile(ordered, 0.50)),
        p95_ms=ms(percentile(ordered, 0.95)),
        p99_ms=ms(percentile(ordered, 0.99)),
        max_ms=ms(ordered[-1]),
        error_kinds=kinds,
        read_p99_ms=_p99_ms(read_latencies_ns),
        update_p99_ms=_p99_ms(update_latencies_ns),
    )


def _p99_ms(latencies_ns: list[int] | None) -> float:
    if not latencies_ns:
        return math.nan
    return round(percentile(sorted(latencies_ns), 0.99) / 1e6, 3)
