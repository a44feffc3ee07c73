"""Fault schedules: a function of the seed, inside the menu's bounds, applied at their times."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from dynacore.errors import ConfigError
from dynacore.sim import faults
from dynacore.sim.faults import (
    Crash,
    Heal,
    Partition,
    Restart,
    Skew,
    SlowDisk,
    Weather,
    choose_schedule,
    run_schedule,
)

NODES = ("n1", "n2", "n3", "n4", "n5")
SAFETY_S = 30.0
SEEDS = range(300)


def test_same_seed_same_schedule_and_seeds_differ() -> None:
    assert choose_schedule(42, NODES, SAFETY_S) == choose_schedule(42, NODES, SAFETY_S)
    distinct = {choose_schedule(seed, NODES, SAFETY_S).events for seed in range(50)}
    assert len(distinct) >= 45


@pytest.mark.parametrize("seed", SEEDS)
def test_schedule_stays_inside_the_menu(seed: int) -> None:
    schedule = choose_schedule(seed, NODES, SAFETY_S)
    times = [event.at_s for event in schedule.events]
    assert times == sorted(times)
    assert all(0.0 <= t <= SAFETY_S for t in times)
    for event in schedule.events:
        action = event.action
        if isinstance(action, Weather):
            assert 0.0 <= action.drop <= faults.MAX_DROP_PROBABILITY
            assert 0.0 <= action.duplicate <= faults.MAX_DUPLICATE_PROBABILITY
            assert faults.MIN_DELAY_S <= action.delay_max_s <= faults.MAX_DELAY_S
        elif isinstance(action, Partition):
            assert action.group_a and action.group_b
            assert not set(action.group_a) & set(action.group_b)
            assert set(action.group_a) | set(action.group_b) == set(NODES)
        elif isinstance(action, Skew):
            assert abs(action.offset_ms) <= faults.MAX_SKEW_MS
        elif isinstance(action, SlowDisk):
            assert action.delay_s == 0 or faults.MIN_DISK_DELAY_S <= action.delay_s
            assert action.delay_s <= faults.MAX_DISK_DELAY_S
    assert schedule.counts()["wipe"] <= faults.MAX_WIPES
    _check_crash_pairs(schedule.events)
    _check_partitions_healed(schedule.events)


def _check_crash_pairs(events: Sequence[faults.FaultEvent]) -> None:
    """Crashes and restarts alternate, one node down at a time, each crash restarted."""
    down: str | None = None
    for event in events:
        if isinstance(event.action, Crash):
            assert down is None
            down = event.action.node
        elif isinstance(event.action, Restart):
            assert down == event.action.node
            down = None
    assert down is None


def _check_partitions_healed(events: Sequence[faults.FaultEvent]) -> None:
    open_partitions = 0
    for event in events:
        if isinstance(event.action, Partition):
            assert open_partitions == 0
            open_partitions += 1
        elif isinstance(event.action, Heal):
            open_partitions -= 1
    assert open_partitions == 0


def test_over_many_seeds_every_kind_is_injected() -> None:
    total: Counter[str] = Counter()
    for seed in SEEDS:
        total += choose_schedule(seed, NODES, SAFETY_S).counts()
    assert set(total) == set(faults.KINDS), total
    assert all(count >= 10 for count in total.values()), total


def test_a_three_node_cluster_has_isolations_not_majority_splits() -> None:
    for seed in range(100):
        for event in choose_schedule(seed, NODES[:3], SAFETY_S).events:
            if isinstance(event.action, Partition):
                assert min(len(event.action.group_a), len(event.action.group_b)) == 1


def test_one_node_gets_no_partitions() -> None:
    for seed in range(50):
        schedule = choose_schedule(seed, NODES[:1], SAFETY_S)
        assert not any(isinstance(e.action, Partition) for e in schedule.events)


@pytest.mark.parametrize(
    ("nodes", "safety_s"), [((), 10.0), (("a", "a"), 10.0), (NODES, 0.0), (NODES, -1.0)]
)
def test_bad_arguments_are_config_errors(nodes: tuple[str, ...], safety_s: float) -> None:
    with pytest.raises(ConfigError):
        choose_schedule(1, nodes, safety_s)


class Recorder:
    """A FaultTarget that notes what it was told, and when."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def _note(self, what: str) -> None:
        self.calls.append((trio.current_time(), what))

    def set_weather(self, drop: float, duplicate: float, delay_max_s: float) -> None:
        self._note("weather")

    def partition(self, group_a: Sequence[str], group_b: Sequence[str]) -> None:
        self._note(f"partition {','.join(group_a)}|{','.join(group_b)}")

    def partition_one_way(self, sources: Sequence[str], destinations: Sequence[str]) -> None:
        self._note(f"one-way {','.join(sources)}>{','.join(destinations)}")

    def heal(self) -> None:
        self._note("heal")

    async def crash(self, node: str) -> None:
        self._note(f"crash {node}")

    async def restart(self, node: str, *, wipe: bool) -> None:
        self._note(f"restart {node} wipe={wipe}")

    def set_skew(self, node: str, offset_ms: int) -> None:
        self._note(f"skew {node} {offset_ms}")

    def set_disk_delay(self, node: str, delay_s: float) -> None:
        self._note(f"disk {node}")


async def test_run_schedule_applies_each_event_at_its_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    schedule = faults.FaultSchedule(
        seed=0,
        nodes=NODES,
        safety_s=10.0,
        events=(
            faults.FaultEvent(0.0, Weather(0.1, 0.2, 0.05)),
            faults.FaultEvent(1.5, Partition(("n1",), NODES[1:], one_way=True)),
            faults.FaultEvent(2.0, Crash("n2")),
            faults.FaultEvent(4.0, Heal()),
            faults.FaultEvent(4.0, Restart("n2", wipe=True)),
            faults.FaultEvent(9.0, SlowDisk("n3", 0.1)),
        ),
    )
    target = Recorder()
    start = trio.current_time() + 100.0
    await run_schedule(schedule, target, start)
    assert [(t - start, what) for t, what in target.calls] == [
        (0.0, "weather"),
        (1.5, "one-way n1>n2,n3,n4,n5"),
        (2.0, "crash n2"),
        (4.0, "heal"),
        (4.0, "restart n2 wipe=True"),
        (9.0, "disk n3"),
    ]
    assert schedule.counts() == Counter(
        {"drop": 1, "duplicate": 1, "delay": 1, "one-way": 1, "crash": 1, "wipe": 1, "slow-disk": 1}
    )
