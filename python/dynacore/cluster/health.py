"""DetectorHealth: the coordinator's peer health (`PeerHealth`) fed by a phi-accrual detector.

Heartbeats come from gossip (every GOSSIP request or reply from a peer) and from RPC replies
(`mark_ok`, throttled to one per `min_heartbeat_interval_s` per peer, so that a burst of replies
does not teach the detector a tiny interval). A peer is up when the detector says so and no call
to it failed recently. The verdict steers routing (who is tried first, whether a handoff source
is skipped) and `dynacore status`; it never changes ownership.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from dynacore.cluster.failure import PhiAccrualDetector
from dynacore.coordinator import PEER_RETRY_AFTER_S, PeerHealth

MIN_ACCEPTABLE_PAUSE_S = 1.0  # silence tolerated beyond the learned interval (GC, scheduling)
MIN_STD_FLOOR_S = 0.1


def make_detector(gossip_interval_s: float) -> PhiAccrualDetector:
    """A detector tuned to heartbeats every `gossip_interval_s`."""
    assert gossip_interval_s > 0
    return PhiAccrualDetector(
        first_interval_s=gossip_interval_s,
        acceptable_pause_s=max(MIN_ACCEPTABLE_PAUSE_S, gossip_interval_s),
        min_std_s=max(MIN_STD_FLOOR_S, gossip_interval_s / 4),
    )


class DetectorHealth(PeerHealth):
    """PeerHealth whose up/down verdict is the phi-accrual detector's (and recent failures)."""

    def __init__(
        self,
        detector: PhiAccrualDetector,
        *,
        min_heartbeat_interval_s: float,
        retry_after_s: float = PEER_RETRY_AFTER_S,
    ) -> None:
        super().__init__(retry_after_s)
        assert min_heartbeat_interval_s > 0
        self.detector = detector
        self._min_interval_s = min_heartbeat_interval_s
        self._last_fed_s: dict[str, float] = {}

    def heartbeat(self, node: str) -> None:
        """A gossip message from `node` arrived: it is alive now."""
        now_s = trio.current_time()
        self.detector.heartbeat(node, now_s)
        self._last_fed_s[node] = now_s
        super().mark_ok(node)

    def mark_ok(self, node: str) -> None:
        super().mark_ok(node)
        now_s = trio.current_time()
        last_s = self._last_fed_s.get(node)
        if last_s is None or now_s - last_s >= self._min_interval_s:
            self.detector.heartbeat(node, now_s)
            self._last_fed_s[node] = now_s

    def mark_failed(self, node: str) -> None:
        super().mark_failed(node)
        self.detector.report_failure(node, trio.current_time())

    def is_up(self, node: str) -> bool:
        return super().is_up(node) and self.detector.is_up(node, trio.current_time())

    def is_down(self, node: str) -> bool:
        return super().is_down(node) or not self.detector.is_up(node, trio.current_time())

    def order(self, nodes: Sequence[str]) -> list[str]:
        """`nodes` with the ones believed up first (PeerHealth's shortcut, no failed call on
        record, does not apply: the detector alone may find a silent peer down)."""
        up = [self.is_up(n) for n in nodes]
        return [n for n, ok in zip(nodes, up, strict=True) if ok] + [
            n for n, ok in zip(nodes, up, strict=True) if not ok
        ]

    def phi(self, node: str) -> float:
        return self.detector.phi(node, trio.current_time())

    def forget(self, node: str) -> None:
        """Drop what is known about `node` (it left the cluster)."""
        self.detector.forget(node)
        self._last_fed_s.pop(node, None)
        super().mark_ok(node)
