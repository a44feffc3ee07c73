"""The fault schedule of one seed: timed fault events over the safety phase, drawn from one
`random.Random(seed)`, and the loop that applies them to a cluster (`run_schedule`).

The menu (issue 5): message drop 0–30 %, duplication 0–50 %, delay and reorder 0–100 ms (the
network "weather", in episodes between calm spells); partitions — symmetric majority/minority,
isolate one node, one-way — each healed after an episode; node crash and restart; node data wipe
(the node comes back on an empty disk, so with a new epoch and actor id; at most one per run, the
most a replication factor of 3 with w = 2 is meant to survive without anti-entropy); clock skew of
up to ±60 s per node; slow disk (a commit delay per node). Each kind is switched on per seed with
probability `KIND_PROBABILITY`, so seeds differ in which faults they combine, not only in when.

The schedule is a pure function of (seed, node ids, safety phase length). The liveness phase is
not part of it: the harness heals everything (`FaultTarget.heal_all`) when the safety phase ends.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from dynacore.errors import ConfigError

MAX_DROP_PROBABILITY = 0.30
MAX_DUPLICATE_PROBABILITY = 0.50
MIN_DELAY_S = 0.0005
MAX_DELAY_S = 0.100
CALM_DELAY_MAX_S = 0.002  # the delay of a calm network (and of the liveness phase)
MAX_SKEW_MS = 60_000
MIN_DISK_DELAY_S = 0.005
MAX_DISK_DELAY_S = 0.5
KIND_PROBABILITY = 0.6  # each fault kind is on in about this share of seeds
MAX_EPISODES = 6  # per episodic kind (partitions, crashes, slow disks)
EPISODE_MIN_S = 0.5
EPISODE_MAX_S = 12.0
GAP_MAX_S = 10.0
MAX_WIPES = 1
MAX_SAFETY_S = 3600.0
MAX_NODES = 64

# Fault kinds as the summary table counts them.
KINDS = (
    "drop",
    "duplicate",
    "delay",
    "partition",
    "isolate",
    "one-way",
    "crash",
    "wipe",
    "skew",
    "slow-disk",
)


class FaultTarget(Protocol):
    """What the schedule acts on: the simulated cluster (cluster.SimCluster)."""

    def set_weather(self, drop: float, duplicate: float, delay_max_s: float) -> None: ...

    def partition(self, group_a: Sequence[str], group_b: Sequence[str]) -> None: ...

    def partition_one_way(self, sources: Sequence[str], destinations: Sequence[str]) -> None: ...

    def heal(self) -> None: ...

    async def crash(self, node: str) -> None: ...

    async def restart(self, node: str, *, wipe: bool) -> None: ...

    def set_skew(self, node: str, offset_ms: int) -> None: ...

    def set_disk_delay(self, node: str, delay_s: float) -> None: ...


# -- actions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weather:
    """Per-message faults on every link from now on."""

    drop: float
    duplicate: float
    delay_max_s: float

    def kinds(self) -> tuple[str, ...]:
        named = (("drop", self.drop), ("duplicate", self.duplicate), ("delay", self.delay_max_s))
        return tuple(
            name for name, value in named if value > (CALM_DELAY_MAX_S if name == "delay" else 0)
        )

    async def apply(self, target: FaultTarget) -> None:
        target.set_weather(self.drop, self.duplicate, self.delay_max_s)


@dataclass(frozen=True, slots=True)
class Partition:
    """Cut the links between two groups: both ways, or only from `group_a` to `group_b`."""

    group_a: tuple[str, ...]
    group_b: tuple[str, ...]
    one_way: bool = False

    def kinds(self) -> tuple[str, ...]:
        if self.one_way:
            return ("one-way",)
        return ("isolate",) if min(len(self.group_a), len(self.group_b)) == 1 else ("partition",)

    async def apply(self, target: FaultTarget) -> None:
        if self.one_way:
            target.partition_one_way(self.group_a, self.group_b)
        else:
            target.partition(self.group_a, self.group_b)


@dataclass(frozen=True, slots=True)
class Heal:
    """Remove every partition."""

    def kinds(self) -> tuple[str, ...]:
        return ()

    async def apply(self, target: FaultTarget) -> None:
        target.heal()


@dataclass(frozen=True, slots=True)
class Crash:
    """Power loss on a node: it stops at once and loses what it had not committed."""

    node: str

    def kinds(self) -> tuple[str, ...]:
        return ("crash",)

    async def apply(self, target: FaultTarget) -> None:
        await target.crash(self.node)


@dataclass(frozen=True, slots=True)
class Restart:
    """Start a crashed node again, on its old disk or (wipe) on an empty one."""

    node: str
    wipe: bool = False

    def kinds(self) -> tuple[str, ...]:
        return ("wipe",) if self.wipe else ()

    async def apply(self, target: FaultTarget) -> None:
        await target.restart(self.node, wipe=self.wipe)


@dataclass(frozen=True, slots=True)
class Skew:
    """Set a node's wall clock to the simulated time plus `offset_ms`."""

    node: str
    offset_ms: int

    def kinds(self) -> tuple[str, ...]:
        return ("skew",) if self.offset_ms else ()

    async def apply(self, target: FaultTarget) -> None:
        target.set_skew(self.node, self.offset_ms)


@dataclass(frozen=True, slots=True)
class SlowDisk:
    """Make each commit of a node's disk take `delay_s` (0: a fast disk again)."""

    node: str
    delay_s: float

    def kinds(self) -> tuple[str, ...]:
        return ("slow-disk",) if self.delay_s else ()

    async def apply(self, target: FaultTarget) -> None:
        target.set_disk_delay(self.node, self.delay_s)


CALM_WEATHER = Weather(drop=0.0, duplicate=0.0, delay_max_s=CALM_DELAY_MAX_S)

Action = Weather | Partition | Heal | Crash | Restart | Skew | SlowDisk


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One action at `at_s` seconds after the start of the safety phase."""

    at_s: float
    action: Action

    def describe(self) -> str:
        return f"{self.at_s:9.3f}s {self.action!r}"


@dataclass(frozen=True)
class FaultSchedule:
    """The faults of one seed, in time order."""

    seed: int
    nodes: tuple[str, ...]
    safety_s: float
    events: tuple[FaultEvent, ...]

    def counts(self) -> Counter[str]:
        """How many faults of each kind the schedule injects."""
        return Counter(kind for event in self.events for kind in event.action.kinds())

    def describe(self) -> list[str]:
        return [event.describe() for event in self.events]


# -- choosing a schedule ---------------------------------------------------------------------------


def choose_schedule(seed: int, nodes: Sequence[str], safety_s: float) -> FaultSchedule:
    """The fault schedule of `seed` for these nodes over a safety phase of `safety_s` seconds."""
    if not 1 <= len(nodes) <= MAX_NODES or len(set(nodes)) != len(nodes):
        raise ConfigError(f"need 1..{MAX_NODES} distinct node ids, got {list(nodes)}")
    if not 0 < safety_s <= MAX_SAFETY_S:
        raise ConfigError(f"safety_s must be in (0, {MAX_SAFETY_S}], got {safety_s}")
    rng = random.Random(seed)
    ids = tuple(nodes)
    on = {
        kind: rng.random() < KIND_PROBABILITY for kind in ("net", "split", "crash", "skew", "disk")
    }
    wipes = MAX_WIPES if rng.random() < KIND_PROBABILITY else 0
    events: list[FaultEvent] = []
    if on["net"]:
        events += _weather(rng, safety_s)
    if on["split"] and len(ids) > 1:
        events += _partitions(rng, ids, safety_s)
    if on["crash"] or wipes:
        events += _crashes(rng, ids, safety_s, wipes=wipes, crashes=on["crash"])
    if on["skew"]:
        events += _skews(rng, ids, safety_s)
    if on["disk"]:
        events += _slow_disks(rng, ids, safety_s)
    events.sort(key=lambda e: e.at_s)  # stable: equal times keep their generation order
    return FaultSchedule(seed, ids, safety_s, tuple(events))


def _weather(rng: random.Random, safety_s: float) -> list[FaultEvent]:
    """Episodes of bad weather, each followed by a calm spell (so that heavy loss does not
    starve the workload for the whole phase). A kind that is off stays off all run."""
    drop_on, dup_on, delay_on = (rng.random() < 0.7 for _ in range(3))
    events: list[FaultEvent] = []
    for start, end in _episodes(rng, safety_s, long=True):
        bad = Weather(
            drop=rng.uniform(0, MAX_DROP_PROBABILITY) if drop_on else 0.0,
            duplicate=rng.uniform(0, MAX_DUPLICATE_PROBABILITY) if dup_on else 0.0,
            delay_max_s=rng.uniform(MIN_DELAY_S, MAX_DELAY_S) if delay_on else MIN_DELAY_S,
        )
        events.append(FaultEvent(start, bad))
        events.append(FaultEvent(end, CALM_WEATHER))
    return events


def _episodes(
    rng: random.Random, safety_s: float, *, long: bool = False
) -> list[tuple[float, float]]:
    """Non-overlapping (start, end) windows inside the safety phase (long: up to 2x longer)."""
    out: list[tuple[float, float]] = []
    t = rng.uniform(0, min(GAP_MAX_S, safety_s / 2))
    longest_s = EPISODE_MAX_S * (2 if long else 1)
    for _ in range(rng.randint(1, MAX_EPISODES)):
        end = t + rng.uniform(EPISODE_MIN_S, longest_s)
        if t >= safety_s:
            break
        out.append((t, min(end, safety_s)))
        t = end + rng.uniform(0, GAP_MAX_S)
    return out


def _partitions(rng: random.Random, ids: tuple[str, ...], safety_s: float) -> list[FaultEvent]:
    events: list[FaultEvent] = []
    for start, end in _episodes(rng, safety_s):
        shuffled = list(ids)
        rng.shuffle(shuffled)
        variant = rng.choice(("majority", "isolate", "one-way"))
        cut = 1 if variant == "isolate" else rng.randint(min(2, len(ids) // 2), len(ids) // 2)
        a, b = tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:]))
        if variant == "one-way" and rng.random() < 0.5:
            a, b = b, a
        events.append(FaultEvent(start, Partition(a, b, one_way=variant == "one-way")))
        events.append(FaultEvent(end, Heal()))
    return events


def _crashes(
    rng: random.Random, ids: tuple[str, ...], safety_s: float, *, wipes: int, crashes: bool
) -> list[FaultEvent]:
    windows = _episodes(rng, safety_s)
    if not crashes:
        windows = windows[:wipes]
    wiped = set(rng.sample(range(len(windows)), min(wipes, len(windows))))
    events: list[FaultEvent] = []
    for index, (start, end) in enumerate(windows):
        node = rng.choice(ids)
        events.append(FaultEvent(start, Crash(node)))
        events.append(FaultEvent(end, Restart(node, wipe=index in wiped)))
    return events


def _skews(rng: random.Random, ids: tuple[str, ...], safety_s: float) -> list[FaultEvent]:
    events = [FaultEvent(0.0, Skew(node, rng.randint(-MAX_SKEW_MS, MAX_SKEW_MS))) for node in ids]
    if rng.random() < 0.5:  # one clock jumps mid-run
        events.append(
            FaultEvent(
                rng.uniform(0, safety_s),
                Skew(rng.choice(ids), rng.randint(-MAX_SKEW_MS, MAX_SKEW_MS)),
            )
        )
    return events


def _slow_disks(rng: random.Random, ids: tuple[str, ...], safety_s: float) -> list[FaultEvent]:
    events: list[FaultEvent] = []
    for start, end in _episodes(rng, safety_s):
        node = rng.choice(ids)
        events.append(
            FaultEvent(start, SlowDisk(node, rng.uniform(MIN_DISK_DELAY_S, MAX_DISK_DELAY_S)))
        )
        events.append(FaultEvent(end, SlowDisk(node, 0.0)))
    return events


def no_faults(seed: int, nodes: Sequence[str], safety_s: float) -> FaultSchedule:
    """A schedule without faults (a baseline run)."""
    return FaultSchedule(seed, tuple(nodes), safety_s, ())


def power_loss_schedule(seed: int, nodes: Sequence[str], safety_s: float) -> FaultSchedule:
    """Every node loses power at the same instant, one to three times, and comes back a second
    later. With durable disks nothing acknowledged may be lost; with lying disks
    (ClusterConfig.durable=False) the checker must report losses."""
    rng = random.Random(seed)
    ids = tuple(nodes)
    events: list[FaultEvent] = []
    t = rng.uniform(safety_s / 8, safety_s / 4)
    for _ in range(rng.randint(1, 3)):
        if t + 1.0 >= safety_s:
            break
        events += [FaultEvent(t, Crash(node)) for node in ids]
        events += [FaultEvent(t + 1.0, Restart(node)) for node in ids]
        t += 1.0 + rng.uniform(safety_s / 8, safety_s / 3)
    return FaultSchedule(seed, ids, safety_s, tuple(events))


PLANS = {"random": choose_schedule, "none": no_faults, "power-loss": power_loss_schedule}


def schedule_for(plan: str, seed: int, nodes: Sequence[str], safety_s: float) -> FaultSchedule:
    """The schedule of a named plan (one of PLANS) for a seed."""
    try:
        choose = PLANS[plan]
    except KeyError:
        raise ConfigError(f"unknown fault plan {plan!r}; one of {sorted(PLANS)}") from None
    return choose(seed, nodes, safety_s)


# -- applying a schedule ---------------------------------------------------------------------------


async def run_schedule(schedule: FaultSchedule, target: FaultTarget, start_s: float) -> None:
    """Apply each event at `start_s + event.at_s` on trio's clock (virtual in the simulator).

    A node that is down when its Crash comes, or up when its Restart comes, is left as it is:
    episodes of different kinds may overlap, and the target decides what is a no-op. Each
    action is shielded, so that the end of the safety phase never cuts one in half.
    """
    for event in schedule.events:
        await trio.sleep_until(start_s + event.at_s)
        with trio.CancelScope(shield=True):
            await event.action.apply(target)


__all__ = [
    "KINDS",
    "PLANS",
    "Action",
    "Crash",
    "FaultEvent",
    "FaultSchedule",
    "FaultTarget",
    "Heal",
    "Partition",
    "Restart",
    "Skew",
    "SlowDisk",
    "Weather",
    "choose_schedule",
    "no_faults",
    "power_loss_schedule",
    "run_schedule",
    "schedule_for",
]
