"""`python -m dynacore.sim`: run many seeds and print a summary, or replay one seed in detail.

    python -m dynacore.sim --seeds 1000 --first-seed 0 --nodes 5
    python -m dynacore.sim --replay 17 --nodes 5

The process re-executes itself with PYTHONHASHSEED=0 when that is not already set, so that a
replay in another process follows exactly the same path (same trace hash).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

from dynacore.errors import ConfigError
from dynacore.sim.cluster import ClusterConfig
from dynacore.sim.faults import KINDS, PLANS, schedule_for
from dynacore.sim.runner import RunResult, SimConfig, Summary, hash_seed_fixed, run_seed
from dynacore.sim.workload import WorkloadConfig

HASH_SEED = "0"
MAX_SEEDS = 10_000_000
MAX_JOBS = 64


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dynacore.sim", description=__doc__.split("\n")[0])
    run = p.add_mutually_exclusive_group()
    run.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    run.add_argument("--replay", type=int, metavar="SEED", help="run one seed and show it all")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--n", type=int, default=3, help="replication factor")
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--blind-fraction", type=float, default=0.2)
    p.add_argument("--once-fraction", type=float, default=0.1, help="share of write-once keys")
    p.add_argument("--r", default=None, help="read quorum (default: the cluster's)")
    p.add_argument("--w", default=None, help="write quorum (default: the cluster's)")
    p.add_argument("--safety-s", type=float, default=30.0, help="virtual seconds of faults")
    p.add_argument("--timeout-s", type=float, default=1.0, help="the nodes' request timeout")
    p.add_argument("--siblings-max", type=int, default=100)
    p.add_argument(
        "--aae-interval-s",
        type=float,
        default=1.0,
        help="anti-entropy exchange interval; 0 turns it off (the harness read-repairs instead)",
    )
    p.add_argument("--hint-interval-s", type=float, default=0.5)
    p.add_argument("--faults", choices=sorted(PLANS), default="random")
    p.add_argument(
        "--not-durable",
        action="store_true",
        help="disks that lie: a crash also loses the last --unsynced-batches acknowledged batches",
    )
    p.add_argument("--unsynced-batches", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per seed")
    return p


def config_from(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the arguments describe (ConfigError for bad values)."""
    return SimConfig(
        cluster=ClusterConfig(
            nodes=args.nodes,
            n=args.n,
            partitions=args.partitions,
            request_timeout_s=args.timeout_s,
            siblings_max=args.siblings_max,
            durable=not args.not_durable,
            unsynced_batches=args.unsynced_batches,
            aae_interval_s=args.aae_interval_s,
            hint_interval_s=args.hint_interval_s,
        ),
        workload=WorkloadConfig(
            keys=args.keys,
            blind_fraction=args.blind_fraction,
            once_fraction=args.once_fraction,
            r=_quorum(args.r),
            w=_quorum(args.w),
        ),
        clients=args.clients,
        safety_s=args.safety_s,
        faults=args.faults,
    )


def _quorum(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def replay_command(seed: int, args: argparse.Namespace) -> str:
    """The one-line command that replays `seed` with the same options."""
    defaults = parser().parse_args([])
    words = ["python -m dynacore.sim", f"--replay {seed}", f"--nodes {args.nodes}"]
    for action in parser()._actions:
        name = action.dest
        if name in ("help", "seeds", "replay", "first_seed", "nodes", "jobs", "verbose"):
            continue
        value = getattr(args, name)
        if value != getattr(defaults, name):
            flag = action.option_strings[0]
            words.append(flag if isinstance(value, bool) else f"{flag} {value}")
    return " ".join(words)


def describe(result: RunResult) -> str:
    c = result.check
    status = "ok  " if result.ok else "FAIL"
    line = f"{status} seed {result.seed:>7}  "
    if c is not None:
        converged = "yes" if c.converged and result.healed_by else "NO "
        line += (
            f"acked {c.acknowledged:>5}  lost {len(c.lost):>3}  unacked-present "
            f"{c.unacked_present:>3}  converged {converged}  "
        )
    faults = ",".join(f"{k}:{v}" for k, v in sorted(result.fault_counts.items()))
    return line + f"{result.wall_s:6.2f}s  {result.trace_hash}  {faults}"


def print_summary(summary: Summary, elapsed_s: float, out: TextIO) -> None:
    s = summary
    per_seed = s.wall_s / s.seeds if s.seeds else 0.0
    rows = [
        ("seeds", f"{s.seeds} (passed {s.passed}, failed {len(s.failures)})"),
        ("faults injected", ", ".join(f"{k} {s.faults.get(k, 0)}" for k in KINDS)),
        ("", f"total {sum(s.faults.values())}"),
        ("writes attempted", str(s.attempted)),
        ("writes acknowledged", str(s.acknowledged)),
        ("lost (acknowledged)", str(s.lost)),
        ("unacked but present", str(s.unacked_present)),
        ("converged", f"{s.converged} of {s.seeds} seeds ({s.self_healed} by self-healing alone)"),
        ("max siblings", str(s.max_siblings)),
        ("time", f"{elapsed_s:.1f} s elapsed; runs took {s.wall_s:.1f} s ({per_seed:.2f} s/seed)"),
        ("", f"{s.virtual_s:.0f} s of virtual time"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)


def _results(seeds: range, config: SimConfig, jobs: int) -> Iterator[RunResult]:
    if jobs == 1:
        for seed in seeds:
            yield run_seed(seed, config)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_run_one, [(seed, config) for seed in seeds])


def _run_one(job: tuple[int, SimConfig]) -> RunResult:
    return run_seed(*job)


def run_many(args: argparse.Namespace, config: SimConfig, out: TextIO) -> int:
    if not 1 <= args.seeds <= MAX_SEEDS or not 1 <= args.jobs <= MAX_JOBS:
        raise ConfigError(f"--seeds must be in [1, {MAX_SEEDS}], --jobs in [1, {MAX_JOBS}]")
    summary = Summary()
    started = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for result in _results(seeds, config, args.jobs):
        summary.add(result)
        if args.verbose or not result.ok:
            print(describe(result), file=out, flush=True)
        if not result.ok:
            for problem in result.problems():
                print(f"     {problem}", file=out)
            print(f"     replay: {replay_command(result.seed, args)}", file=out, flush=True)
    print_summary(summary, time.perf_counter() - started, out)
    return 0 if not summary.failures else 1


def replay(args: argparse.Namespace, config: SimConfig, out: TextIO) -> int:
    seed = args.replay
    nodes = config.cluster.node_ids()
    schedule = schedule_for(config.faults, seed, nodes, config.safety_s)
    print(f"seed {seed}: {len(schedule.events)} fault events", file=out)
    for line in schedule.describe():
        print(f"  {line}", file=out)
    result = run_seed(seed, config)
    print(describe(result), file=out)
    if result.check is not None:
        c = result.check
        print(
            f"  attempted {c.attempted}, acknowledged {c.acknowledged}, failed {c.failed}, "
            f"unknown {c.unknown}, max siblings {c.max_siblings}",
            file=out,
        )
    healed = result.healed_by or "nothing (the replicas never agreed)"
    print(f"  healed by {healed} after {result.liveness_rounds} liveness rounds", file=out)
    print(f"  virtual time {result.virtual_s:.1f} s", file=out)
    print(f"  messages {result.messages}", file=out)
    for problem in result.problems():
        print(f"  PROBLEM {problem}", file=out)
    print(f"  trace hash {result.trace_hash}", file=out)
    return 0 if result.ok else 1


def cli(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """Run the command in this process (no re-exec); the exit status."""
    args = parser().parse_args(list(argv))
    try:
        config = config_from(args)
        if args.replay is not None:
            return replay(args, config, out)
        return run_many(args, config, out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != HASH_SEED:
        env = {**os.environ, "PYTHONHASHSEED": HASH_SEED}
        os.execve(sys.executable, [sys.executable, "-m", "dynacore.sim", *sys.argv[1:]], env)
    assert hash_seed_fixed()
    sys.exit(cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
