"""The phi-accrual failure detector: phi rises with silence and falls after a heartbeat, the
verdict flips at the threshold, regular heartbeats keep a peer up, unknown peers, bounded memory,
typed errors for bad input. Time is virtual: every instant is passed in."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacore.cluster import PhiAccrualDetector
from dynacore.cluster.failure import phi_of
from dynacore.errors import ConfigError


def beating(
    peer: str = "p", beats: int = 30, interval_s: float = 1.0, **options: object
) -> tuple[PhiAccrualDetector, float]:
    detector = PhiAccrualDetector(**options)  # type: ignore[arg-type]
    now_s = 100.0
    for _ in range(beats):
        detector.heartbeat(peer, now_s)
        now_s += interval_s
    return detector, now_s - interval_s  # the instant of the last heartbeat


def test_phi_rises_with_silence() -> None:
    detector, last_s = beating()
    silences = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 60.0, 3600.0]
    phis = [detector.phi("p", last_s + s) for s in silences]
    assert all(a < b for a, b in itertools.pairwise(phis)), phis
    assert phis[0] < 0.5 and phis[-1] > 1000.0 and math.isfinite(phis[-1])


def test_phi_falls_after_a_heartbeat() -> None:
    detector, last_s = beating()
    silent_s = last_s + 4.0
    suspicious = detector.phi("p", silent_s)
    assert suspicious >= detector.threshold
    detector.heartbeat("p", silent_s)
    assert detector.phi("p", silent_s) < 0.5
    assert detector.is_up("p", silent_s)


def test_is_up_flips_exactly_at_the_threshold() -> None:
    detector, last_s = beating(threshold=5.0)
    low, high = last_s, last_s + 100.0
    assert detector.is_up("p", low) and not detector.is_up("p", high)
    for _ in range(60):  # bisect the crossing instant
        mid = (low + high) / 2
        low, high = (mid, high) if detector.is_up("p", mid) else (low, mid)
    assert detector.phi("p", low) < 5.0 <= detector.phi("p", high)
    for offset in (-1.0, -0.1, 0.1, 1.0):
        at = low + offset
        assert detector.is_up("p", at) == (detector.phi("p", at) < 5.0)
    assert detector.is_up("p", low - 0.1) and not detector.is_up("p", high + 0.1)


def test_a_higher_threshold_or_pause_allowance_tolerates_longer_silence() -> None:
    strict, last_s = beating(threshold=3.0, acceptable_pause_s=0.0)
    lenient, _ = beating(threshold=12.0, acceptable_pause_s=0.0)
    paused, _ = beating(threshold=3.0, acceptable_pause_s=5.0)
    at = last_s + 1.4  # 4 deviations late: phi ~ 4.7
    assert not strict.is_up("p", at)
    assert lenient.is_up("p", at) and paused.is_up("p", at)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.8, 1.2), min_size=5, max_size=200))
def test_regular_heartbeats_keep_a_peer_up(intervals: list[float]) -> None:
    detector = PhiAccrualDetector()
    now_s = 0.0
    detector.heartbeat("p", now_s)
    for interval_s in intervals:
        assert detector.is_up("p", now_s + interval_s * 0.99)  # just before the next beat
        now_s += interval_s
        detector.heartbeat("p", now_s)
        assert detector.is_up("p", now_s)
    assert not detector.is_up("p", now_s + 60.0)


def test_unknown_peers_are_up_until_a_failure_by_default() -> None:
    detector = PhiAccrualDetector()
    assert detector.is_up("ghost", 0.0) and detector.phi("ghost", 0.0) == 0.0
    detector.report_failure("ghost", 1.0)
    assert not detector.is_up("ghost", 1.0) and detector.phi("ghost", 1.0) == math.inf
    detector.heartbeat("ghost", 2.0)
    assert detector.is_up("ghost", 2.0)
    detector.report_failure("ghost", 2.5)  # known now: phi alone decides
    assert detector.is_up("ghost", 2.5)
    strict = PhiAccrualDetector(unknown_is_up=False)
    assert not strict.is_up("ghost", 0.0)
    strict.heartbeat("ghost", 0.0)
    assert strict.is_up("ghost", 0.5)


def test_memory_is_bounded() -> None:
    detector, _ = beating(window=10, beats=100)
    assert detector.status(200.0)["p"].samples == 10
    assert detector.status(200.0)["p"].mean_interval_s == pytest.approx(1.0)
    bounded = PhiAccrualDetector(max_peers=4)
    for i in range(10):
        bounded.heartbeat(f"n{i}", float(i))
    assert bounded.peers() == ["n6", "n7", "n8", "n9"]  # the oldest are forgotten
    for i in range(10):
        bounded.report_failure(f"u{i}", float(i))
    assert sorted(bounded.status(20.0)) == ["n6", "n7", "n8", "n9", "u6", "u7", "u8", "u9"]
    bounded.forget("n9")
    assert "n9" not in bounded.peers()


def test_the_window_forgets_old_rhythms() -> None:
    detector, last_s = beating(window=20, beats=40, interval_s=10.0)
    assert detector.is_up("p", last_s + 9.0)
    now_s = last_s
    for _ in range(40):  # the peer now beats every second
        now_s += 1.0
        detector.heartbeat("p", now_s)
    assert detector.status(now_s)["p"].mean_interval_s == pytest.approx(1.0)
    assert not detector.is_up("p", now_s + 9.0)


def test_duplicate_heartbeats_at_one_instant_are_ignored() -> None:
    detector, last_s = beating(beats=5)
    before = detector.status(last_s)["p"]
    detector.heartbeat("p", last_s)
    assert detector.status(last_s)["p"] == before


def test_status_reports_every_tracked_peer() -> None:
    detector, last_s = beating()
    detector.report_failure("q", last_s)
    report = detector.status(last_s + 30.0)
    assert set(report) == {"p", "q"}
    assert not report["p"].up and report["p"].last_heartbeat_s == last_s
    assert report["q"].last_heartbeat_s is None and report["q"].samples == 0


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 0.0},
        {"threshold": math.nan},
        {"window": 0},
        {"window": 10**9},
        {"min_std_s": 0.0},
        {"acceptable_pause_s": -1.0},
        {"first_interval_s": math.inf},
        {"max_peers": 0},
        {"threshold": True},
    ],
)
def test_bad_options_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PhiAccrualDetector(**options)  # type: ignore[arg-type]


def test_bad_calls_are_config_errors() -> None:
    detector, last_s = beating()
    with pytest.raises(ConfigError):
        detector.heartbeat("p", last_s - 1.0)  # time went backwards
    for bad_time in (math.nan, math.inf, "1", None):
        with pytest.raises(ConfigError):
            detector.heartbeat("p", bad_time)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            detector.phi("p", bad_time)  # type: ignore[arg-type]
    for bad_peer in ("", None, "x" * 256):
        with pytest.raises(ConfigError):
            detector.heartbeat(bad_peer, last_s + 1.0)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            detector.is_up(bad_peer, last_s + 1.0)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1e12), st.floats(0.0, 1e12), st.floats(0.001, 1e6), st.floats(0.001, 1e6))
def test_phi_of_is_monotone_and_never_nan(
    a_s: float, b_s: float, mean_s: float, std_s: float
) -> None:
    low, high = sorted((a_s, b_s))
    phi_low, phi_high = phi_of(low, mean_s, std_s), phi_of(high, mean_s, std_s)
    assert not math.isnan(phi_low) and not math.isnan(phi_high)
    assert 0.0 <= phi_low <= phi_high
