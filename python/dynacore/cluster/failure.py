"""Phi-accrual failure detection (Hayashibara et al. 2004, as in Cassandra and Akka), one
detector per node, with time passed in (no clock of its own) so it runs the same under the
simulator.

For each peer it keeps a bounded window of heartbeat inter-arrival intervals and reports
phi = -log10(P(a heartbeat arrives later than now)), estimated from a normal distribution fitted
to the window (with a floor on the deviation and an allowance for pauses). phi grows steadily
with silence; a peer is "up" while phi < threshold.

The verdict is local and steers routing only (which replicas a request tries first, where sloppy
quorum sends a hinted write). It never changes ownership: only a committed membership change does.

Peers never heard from are "unknown": treated as up (configurable with `unknown_is_up`) until the
node reports a failed attempt to reach them (`report_failure`), then down until a first heartbeat.
Memory is bounded: `window` intervals per peer, at most `max_peers` peers heard from and at most
`max_peers` never-heard-from peers with a reported failure (the least recent is forgotten first).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from dynacore.errors import ConfigError

DEFAULT_THRESHOLD = 8.0
DEFAULT_WINDOW = 1000
DEFAULT_MIN_STD_S = 0.1
DEFAULT_ACCEPTABLE_PAUSE_S = 1.0
DEFAULT_FIRST_INTERVAL_S = 1.0
DEFAULT_MAX_PEERS = 1024
MAX_WINDOW = 100_000
MAX_PEER_ID_BYTES = 255
_LN10 = math.log(10.0)


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer as the detector sees it at a given time (for `dynacore status`)."""

    phi: float
    up: bool
    last_heartbeat_s: float | None  # None: never heard from
    samples: int  # intervals in the window
    mean_interval_s: float | None


class _History:
    """The interval window of one peer, with running sums (recomputed every `window` samples,
    so that float drift from subtracting evicted samples cannot accumulate)."""

    __slots__ = ("_since_resum", "intervals", "last_s", "sum_s", "sum_sq_s2")

    def __init__(self, window: int, now_s: float, first_interval_s: float) -> None:
        self.intervals: deque[float] = deque(maxlen=window)
        self.last_s = now_s
        self.sum_s = 0.0
        self.sum_sq_s2 = 0.0
        self._since_resum = 0
        self.add(first_interval_s)  # a prior, so that phi is defined after the first heartbeat

    def add(self, interval_s: float) -> None:
        window = self.intervals.maxlen
        assert window is not None and interval_s >= 0.0
        if len(self.intervals) == window:
            evicted = self.intervals[0]
            self.sum_s -= evicted
            self.sum_sq_s2 -= evicted * evicted
        self.intervals.append(interval_s)
        self.sum_s += interval_s
        self.sum_sq_s2 += interval_s * interval_s
        self._since_resum += 1
        if self._since_resum >= window:
            self.sum_s = math.fsum(self.intervals)
            self.sum_sq_s2 = math.fsum(x * x for x in self.intervals)
            self._since_resum = 0

    def mean_std_s(self) -> tuple[float, float]:
        count = len(self.intervals)
        assert count >= 1
        mean = self.sum_s / count
        variance = max(0.0, self.sum_sq_s2 / count - mean * mean)
        return mean, math.sqrt(variance)


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < 0.0 or (value == 0.0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_peer(peer: str) -> None:
    if not isinstance(peer, str) or not peer or len(peer.encode("utf-8")) > MAX_PEER_ID_BYTES:
        raise ConfigError(f"peer id must be a non-empty str of <= 255 UTF-8 bytes, got {peer!r}")


def _check_time(now_s: float) -> float:
    if isinstance(now_s, bool) or not isinstance(now_s, int | float) or not math.isfinite(now_s):
        raise ConfigError(f"now_s must be a finite number of seconds, got {now_s!r}")
    return float(now_s)


def phi_of(elapsed_s: float, mean_s: float, std_s: float) -> float:
    """phi for a silence of elapsed_s given the interval distribution (mean_s, std_s > 0).

    Uses the logistic approximation of the normal tail (Bowling et al. 2009, as Akka does),
    computed as softplus(z) / ln 10 so that it is monotone in elapsed_s and never overflows."""
    assert std_s > 0.0
    y = (elapsed_s - mean_s) / std_s
    z = y * (1.5976 + 0.070566 * y * y)
    softplus = max(z, 0.0) + math.log1p(math.exp(-abs(z)))
    return softplus / _LN10


class PhiAccrualDetector:
    """Per-peer phi-accrual failure detector. Time is passed in; nothing here reads a clock."""

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        window: int = DEFAULT_WINDOW,
        min_std_s: float = DEFAULT_MIN_STD_S,
        acceptable_pause_s: float = DEFAULT_ACCEPTABLE_PAUSE_S,
        first_interval_s: float = DEFAULT_FIRST_INTERVAL_S,
        max_peers: int = DEFAULT_MAX_PEERS,
        unknown_is_up: bool = True,
    ) -> None:
        self.threshold = _check_positive("threshold", threshold)
        self.window = _check_int("window", window, 1, MAX_WINDOW)
        self.min_std_s = _check_positive("min_std_s", min_std_s)
        self.acceptable_pause_s = _check_positive(
            "acceptable_pause_s", acceptable_pause_s, allow_zero=True
        )
        self.first_interval_s = _check_positive("first_interval_s", first_interval_s)
        self.max_peers = _check_int("max_peers", max_peers, 1, 1 << 20)
        self.unknown_is_up = bool(unknown_is_up)
        self._histories: dict[str, _History] = {}
        self._failed_unknown: dict[str, float] = {}  # never heard from, and a failure reported

    def heartbeat(self, peer: str, now_s: float) -> None:
        """A heartbeat (or a reply standing for one) from `peer` arrived at now_s.

        Feed it dedicated periodic heartbeats: a burst of replies would shrink the learned
        interval and make the detector jumpy. A repeat at the same instant is ignored."""
        _check_peer(peer)
        now_s = _check_time(now_s)
        history = self._histories.get(peer)
        if history is None:
            self._failed_unknown.pop(peer, None)
            self._make_room(self._histories)
            self._histories[peer] = _History(self.window, now_s, self.first_interval_s)
            return
        if now_s < history.last_s:
            raise ConfigError(
                f"time went backwards for {peer!r}: heartbeat at {now_s} after {history.last_s}"
            )
        if now_s > history.last_s:
            history.add(now_s - history.last_s)
            history.last_s = now_s

    def report_failure(self, peer: str, now_s: float) -> None:
        """An attempt to reach `peer` failed. Marks a never-heard-from peer down until its first
        heartbeat; for a known peer phi alone decides, so this is a no-op."""
        _check_peer(peer)
        now_s = _check_time(now_s)
        if peer in self._histories:
            return
        if peer not in self._failed_unknown:
            self._make_room(self._failed_unknown)
        self._failed_unknown[peer] = now_s

    def _make_room(self, table: dict[str, _History] | dict[str, float]) -> None:
        if len(table) < self.max_peers:
            return
        oldest = min(table, key=lambda p: (self._last_seen(p), p))
        del table[oldest]
        assert len(table) < self.max_peers

    def _last_seen(self, peer: str) -> float:
        history = self._histories.get(peer)
        return history.last_s if history is not None else self._failed_unknown[peer]

    def forget(self, peer: str) -> None:
        """Drop everything known about `peer` (it left the cluster)."""
        self._histories.pop(peer, None)
        self._failed_unknown.pop(peer, None)

    def peers(self) -> list[str]:
        """Peers heard from at least once, sorted."""
        return sorted(self._histories)

    def phi(self, peer: str, now_s: float) -> float:
        """Suspicion level of `peer` at now_s: 0 for an unknown peer, inf for an unknown peer
        with a reported failure."""
        _check_peer(peer)
        now_s = _check_time(now_s)
        history = self._histories.get(peer)
        if history is None:
            return math.inf if peer in self._failed_unknown else 0.0
        mean_s, std_s = history.mean_std_s()
        elapsed_s = max(0.0, now_s - history.last_s)
        return phi_of(elapsed_s, mean_s + self.acceptable_pause_s, max(std_s, self.min_std_s))

    def is_up(self, peer: str, now_s: float) -> bool:
        """The routing verdict for `peer` at now_s (never an ownership decision)."""
        _check_peer(peer)
        if peer not in self._histories and peer not in self._failed_unknown:
            return self.unknown_is_up
        return self.phi(peer, now_s) < self.threshold

    def status(self, now_s: float) -> dict[str, PeerStatus]:
        """Every tracked peer (heard from, or failed while unknown) at now_s, by id."""
        out: dict[str, PeerStatus] = {}
        for peer in sorted(set(self._histories) | set(self._failed_unknown)):
            history = self._histories.get(peer)
            out[peer] = PeerStatus(
                phi=self.phi(peer, now_s),
                up=self.is_up(peer, now_s),
                last_heartbeat_s=None if history is None else history.last_s,
                samples=0 if history is None else len(history.intervals),
                mean_interval_s=None if history is None else history.mean_std_s()[0],
            )
        return out
