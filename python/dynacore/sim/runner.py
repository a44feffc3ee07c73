"""One seed end to end, and many seeds with a summary.

`run_seed(seed, config)` runs one whole simulation in ONE `trio.run` under
`trio.testing.MockClock(autojump_threshold=0)` and `deterministic_scheduling(seed)`:

1. the safety phase: clients run the set workload while the seed's fault schedule plays;
2. the liveness phase: every fault is healed and every node restarted; then the nodes' own
   self-healing (hinted handoff, active anti-entropy) must make every replica agree — equal
   stored sets, equal Merkle roots, no hint left — within `liveness_rounds` rounds. With
   anti-entropy off (aae_interval_s = 0) the harness drives read repair instead: every key is
   read at r=all through every node each round;
3. the final reads (r=all, through a client), a snapshot of every replica and the Merkle roots,
   and the checker's verdict.

Every random choice comes from `random.Random(seed)` (the fault schedule from its own
`random.Random(seed)`), so a run is a function of its seed and config — given a fixed
PYTHONHASHSEED, which the command line (`python -m dynacore.sim`) sees to. The result carries a
trace hash (network trace digest, history digest, schedule, final replica bytes) that a replay
reproduces exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field

import trio
import trio.testing

from dynacore.client import AsyncClient
from dynacore.errors import ConfigError, DynacoreError
from dynacore.net.simnet import SimNetwork, deterministic_scheduling
from dynacore.sim.checker import CheckResult, FinalState, History, check
from dynacore.sim.cluster import CALM, ClusterConfig, SimCluster, open_sim_cluster
from dynacore.sim.faults import PLANS, FaultSchedule, run_schedule, schedule_for
from dynacore.sim.workload import SetWorkload, WorkloadConfig, union_of

MAX_CLIENTS = 64
MAX_SAFETY_S = 3600.0
MAX_LIVENESS_ROUNDS = 1000
FINAL_READ_ATTEMPTS = 5
FINAL_READ_RETRY_S = 1.0
MAX_NODE_ERRORS_KEPT = 20
VIRTUAL_SLACK_S = 3600.0


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a run besides its seed."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    clients: int = 5
    safety_s: float = 30.0
    faults: str = "random"  # a plan of faults.PLANS: "random", "none", "power-loss"
    settle_s: float = 1.0  # after healing, before the first liveness round
    liveness_rounds: int = 30
    round_s: float = 2.0  # virtual time between liveness rounds (repairs land)

    def virtual_budget_s(self) -> float:
        """Virtual seconds a run may take: its phases plus a generous slack (liveness reads that
        time out, final reads, restarts, shutdown)."""
        phases_s = self.safety_s + self.settle_s + self.liveness_rounds * self.round_s
        return phases_s + VIRTUAL_SLACK_S

    def __post_init__(self) -> None:
        if self.faults not in PLANS:
            raise ConfigError(f"faults must be one of {sorted(PLANS)}, got {self.faults!r}")
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise ConfigError(f"clients must be in [1, {MAX_CLIENTS}], got {self.clients}")
        if not 0 < self.safety_s <= MAX_SAFETY_S:
            raise ConfigError(f"safety_s must be in (0, {MAX_SAFETY_S}], got {self.safety_s}")
        if not 1 <= self.liveness_rounds <= MAX_LIVENESS_ROUNDS:
            raise ConfigError(f"liveness_rounds must be in [1, {MAX_LIVENESS_ROUNDS}]")
        if not 0 <= self.settle_s <= 3600 or not 0 < self.round_s <= 3600:
            raise ConfigError("settle_s must be in [0, 3600] and round_s in (0, 3600]")


@dataclass(frozen=True)
class RunResult:
    """The outcome of one seed. `ok` means the run finished and the checker found nothing."""

    seed: int
    trace_hash: str
    check: CheckResult | None  # None when the run itself failed (see `error`)
    error: str | None
    fault_counts: dict[str, int]
    virtual_s: float
    wall_s: float
    liveness_rounds: int  # rounds until the replicas agreed (the limit when they never did)
    healed_by: str  # "self-healing" or "read repair"; "" when the replicas never agreed
    messages: dict[str, int]  # the network's counters
    node_errors: tuple[str, ...] = ()  # errors the node code logged (bugs it caught and survived)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and bool(self.healed_by)
            and not self.node_errors
            and self.check is not None
            and self.check.ok
        )

    def problems(self) -> list[str]:
        out = [f"node logged: {line}" for line in self.node_errors]
        if self.error is not None:
            return [f"run failed: {self.error}", *out]
        assert self.check is not None
        if not self.healed_by:
            out.append(f"replicas still differ after {self.liveness_rounds} liveness rounds")
        return self.check.problems() + out


class ErrorLog(logging.Handler):
    """Collects ERROR records of the `dynacore` loggers during a run.

    The node code logs at ERROR only what it did not expect — an exception in an RPC handler or
    a connection task, which it turns into an error reply or a closed connection and survives.
    Such a record fails the run: an assert (a node invariant) inside a handler ends up here.
    While attached, the handler also stands in for logging's last-resort stderr handler, so the
    warnings a faulty network provokes are neither built nor printed.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.lines) < MAX_NODE_ERRORS_KEPT:
            exc = record.exc_info[1] if record.exc_info else None
            cause = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            self.lines.append(f"{record.name}: {record.getMessage()}{cause}"[:300])

    @classmethod
    @contextmanager
    def attached(cls) -> Iterator[ErrorLog]:
        logger = logging.getLogger("dynacore")
        handler, level = cls(), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.ERROR)
        try:
            yield handler
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


def run_seed(seed: int, config: SimConfig | None = None) -> RunResult:
    """Run one seed (see the module docstring); never raises for a failing run."""
    config = config if config is not None else SimConfig()
    started = time.perf_counter()
    clock = trio.testing.MockClock(autojump_threshold=0)
    outcome: dict[str, object] = {}
    with ErrorLog.attached() as errors:
        try:
            with deterministic_scheduling(seed):
                trio.run(_simulate_bounded, seed, config, outcome, clock=clock)
            error = None
        except Exception as exc:  # a node invariant (AssertionError) or a harness bug: a failure
            error = _one_line(exc)
    wall_s = time.perf_counter() - started
    result = outcome.get("check")
    schedule = outcome.get("schedule")
    stats = outcome.get("messages", {})
    return RunResult(
        seed=seed,
        trace_hash=str(outcome.get("trace_hash", "")),
        check=result if isinstance(result, CheckResult) else None,
        error=error,
        fault_counts=dict(schedule.counts()) if isinstance(schedule, FaultSchedule) else {},
        virtual_s=clock.current_time(),
        wall_s=wall_s,
        liveness_rounds=int(outcome.get("rounds", 0)),  # type: ignore[call-overload]
        healed_by=str(outcome.get("healed_by", "")),
        messages=dict(stats) if isinstance(stats, dict) else {},
        node_errors=tuple(errors.lines),
    )


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_one_line(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


async def _simulate_bounded(seed: int, config: SimConfig, outcome: dict[str, object]) -> None:
    """The run, failing with trio.TooSlowError if it overruns its virtual-time budget (a node
    that never settles, or a shutdown that hangs, must fail the seed, not hang the soak)."""
    with trio.fail_after(config.virtual_budget_s()):
        await _simulate(seed, config, outcome)


async def _simulate(seed: int, config: SimConfig, outcome: dict[str, object]) -> None:
    rng = random.Random(seed)
    node_ids = config.cluster.node_ids()
    schedule = schedule_for(config.faults, seed, node_ids, config.safety_s)
    outcome["schedule"] = schedule
    network = SimNetwork(_child(rng), faults=CALM)
    history = History()
    workload = SetWorkload(config.workload, history, _child(rng))
    keys = config.workload.key_names()
    async with open_sim_cluster(config.cluster, network, _child(rng)) as cluster:
        async with AsyncExitStack() as stack:
            clients: list[tuple[str, AsyncClient]] = []
            for i in range(config.clients):
                name = f"c{i + 1}"
                home = node_ids[i % len(node_ids)]
                clients.append((name, await stack.enter_async_context(cluster.client(name, home))))
            await _safety_phase(cluster, schedule, workload, clients, config.safety_s)
            keys = sorted(set(keys) | {op.key for op in history.ops})
            outcome["rounds"], outcome["healed_by"] = await _liveness_phase(cluster, keys, config)
            final = await _final_state(cluster, keys, workload, config)
        outcome["check"] = check(history.ops, final)
        outcome["messages"] = dataclasses.asdict(network.stats)
        outcome["trace_hash"] = _trace_hash(network, history, schedule, final)


def _child(rng: random.Random) -> random.Random:
    return random.Random(rng.getrandbits(64))


async def _safety_phase(
    cluster: SimCluster,
    schedule: FaultSchedule,
    workload: SetWorkload,
    clients: Sequence[tuple[str, AsyncClient]],
    safety_s: float,
) -> None:
    start_s = trio.current_time()
    with trio.move_on_at(start_s + safety_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_schedule, schedule, cluster, start_s)
            for name, client in clients:
                nursery.start_soon(workload.run_client, name, client)


async def _liveness_phase(
    cluster: SimCluster, keys: Sequence[bytes], config: SimConfig
) -> tuple[int, str]:
    """Heal, then wait for the replicas to agree: by the nodes' self-healing, or (anti-entropy
    off) by read repair the harness drives. The rounds it took and what healed them."""
    await cluster.heal_all()
    await trio.sleep(config.settle_s)
    self_healing = config.cluster.aae_interval_s > 0
    for round_index in range(config.liveness_rounds):
        failures = 0 if self_healing else await cluster.read_all(keys)
        if failures == 0 and cluster.healed(keys):
            return round_index, "self-healing" if self_healing else "read repair"
        await trio.sleep(config.round_s)
    return config.liveness_rounds, ""


async def _final_state(
    cluster: SimCluster, keys: Sequence[bytes], workload: SetWorkload, config: SimConfig
) -> FinalState:
    reads: dict[bytes, frozenset[bytes] | None] = {}
    async with cluster.client("final", cluster.config.node_ids()[0]) as client:
        for key in keys:
            reads[key] = await _final_read(client, key)
    return FinalState(
        reads=reads,
        replicas={key: cluster.replica_states(key) for key in keys},
        siblings_limit=config.cluster.siblings_bound(),
        max_siblings_seen=workload.stats.max_siblings_seen,
        merkle_roots=cluster.merkle_roots(),
    )


async def _final_read(client: AsyncClient, key: bytes) -> frozenset[bytes] | None:
    for _ in range(FINAL_READ_ATTEMPTS):
        try:
            return union_of((await client.get(key, r="all")).values)
        except DynacoreError:
            await trio.sleep(FINAL_READ_RETRY_S)
    return None


def _trace_hash(
    network: SimNetwork, history: History, schedule: FaultSchedule, final: FinalState
) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(network.trace_digest.encode())
    h.update(history.digest().encode())
    for line in schedule.describe():
        h.update(line.encode())
    for key in sorted(final.replicas):
        for state in final.replicas[key]:
            h.update(state.node.encode() + b"=" + (state.raw or b"-"))
    return h.hexdigest()


# -- many seeds --------------------------------------------------------------------------------


@dataclass
class Summary:
    """Totals over many seeds."""

    seeds: int = 0
    passed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    attempted: int = 0
    acknowledged: int = 0
    lost: int = 0
    unacked_present: int = 0
    converged: int = 0
    self_healed: int = 0  # seeds whose replicas agreed through hints and anti-entropy alone
    max_siblings: int = 0
    wall_s: float = 0.0
    virtual_s: float = 0.0
    failures: list[RunResult] = field(default_factory=list)

    def add(self, result: RunResult) -> None:
        self.seeds += 1
        self.passed += result.ok
        self.faults.update(result.fault_counts)
        self.wall_s += result.wall_s
        self.virtual_s += result.virtual_s
        if result.check is not None:
            c = result.check
            self.attempted += c.attempted
            self.acknowledged += c.acknowledged
            self.lost += len(c.lost)
            self.unacked_present += c.unacked_present
            self.converged += c.converged and bool(result.healed_by)
            self.self_healed += result.healed_by == "self-healing"
            self.max_siblings = max(self.max_siblings, c.max_siblings)
        if not result.ok:
            self.failures.append(result)


def run_seeds(
    seeds: Iterable[int],
    config: SimConfig,
    on_result: Callable[[RunResult], None] | None = None,
) -> Summary:
    """Run seeds one after the other in this process; `on_result` sees each result."""
    summary = Summary()
    for seed in seeds:
        result = run_seed(seed, config)
        summary.add(result)
        if on_result is not None:
            on_result(result)
    return summary


def hash_seed_fixed() -> bool:
    """True when PYTHONHASHSEED pins str/bytes hashing (a replay needs it across processes)."""
    value = os.environ.get("PYTHONHASHSEED", "random")
    return value != "random"


__all__ = [
    "RunResult",
    "SimConfig",
    "Summary",
    "hash_seed_fixed",
    "run_seed",
    "run_seeds",
]
