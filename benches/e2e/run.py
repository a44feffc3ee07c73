"""The standalone end-to-end benchmark: every implementation (Redis primary + replica, then the
3-node dynacore cluster on each backend) through the same YCSB-style driver, printed side by
side with the ratio to Redis. `python -m benches.e2e.run --quick` for a short run; see --help.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import ycsb
from .targets import QUICK, BenchConfig, Result, check_impl, open_impl

BASELINES = ("redis", "redis-threads")  # no persistence
FSYNC_BASELINE = "redis-fsync"  # an AOF fsynced before each write is acknowledged
TARGET_RATIO = 0.5  # dynacore >= 50% of redis-py throughput on workload B ...
TARGET_P99_MS = 10.0  # ... with p99 <= 10 ms


def baseline_of(results: Sequence[Result], workload: str) -> Result | None:
    for name in BASELINES:
        for result in results:
            if result.impl == name and result.workload == workload:
                return result
    return None


def ratio(result: Result, results: Sequence[Result], baseline: str | None = None) -> float:
    """Throughput as a fraction of the Redis baseline on the same workload (nan without one):
    `baseline` names it, else the first of BASELINES in the run."""
    if baseline is None:
        base = baseline_of(results, result.workload)
    else:
        found = [r for r in results if r.impl == baseline and r.workload == result.workload]
        base = found[0] if found else None
    if base is None or base.summary.ops_per_s <= 0:
        return math.nan
    return result.summary.ops_per_s / base.summary.ops_per_s


def table(results: Sequence[Result], markdown: bool = False) -> str:
    """The side-by-side table: one row per (workload, implementation)."""
    header = [
        "workload", "impl", "ops/s", "p50 ms", "p95 ms", "p99 ms", "read p99", "update p99",
        "x redis", "x redis-fsync",
        "server CPU µs/op", "client CPU µs/op", "errors",
    ]  # fmt: skip
    rows = []
    for result in sorted(results, key=lambda r: r.workload):
        s = result.summary
        mix = ycsb.workload(result.workload)
        rows.append(
            [
                f"{mix.name} ({mix.description})",
                result.impl,
                f"{s.ops_per_s:,.0f}",
                f"{s.p50_ms:.2f}",
                f"{s.p95_ms:.2f}",
                f"{s.p99_ms:.2f}",
                f"{s.read_p99_ms:.2f}",
                f"{s.update_p99_ms:.2f}",
                f"{ratio(result, results):.2f}",
                f"{ratio(result, results, FSYNC_BASELINE):.2f}",
                f"{s.server_cpu_us_per_op:.0f}",
                f"{s.driver_cpu_us_per_op:.0f}",
                str(s.errors + s.misses),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i >= 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    )


def verdict(results: Sequence[Result]) -> list[str]:
    """The issue's target, checked per dynacore implementation on workload B."""
    lines = []
    for result in results:
        if result.workload != "B" or not result.impl.startswith("dynacore-"):
            continue
        share = ratio(result, results)
        p99 = result.summary.p99_ms
        ok = share >= TARGET_RATIO and p99 <= TARGET_P99_MS
        fsync_share = ratio(result, results, FSYNC_BASELINE)
        also = "" if math.isnan(fsync_share) else f" ({fsync_share:.0%} of redis-fsync)"
        lines.append(
            f"{result.impl}: workload B at {share:.0%} of Redis throughput{also}, p99 "
            f"{p99:.2f} ms -> target (>= {TARGET_RATIO:.0%}, p99 <= {TARGET_P99_MS} ms) "
            f"{'met' if ok else 'NOT met'}"
        )
        base = baseline_of(results, "B")
        if base is not None:
            lines.append("  " + cpu_comparison(result, base))
    return lines


def cpu_comparison(result: Result, base: Result) -> str:
    """CPU per op beside the baseline's: the figure a loaded machine does not distort."""
    mine, theirs = result.summary, base.summary
    total = mine.server_cpu_us_per_op + mine.driver_cpu_us_per_op
    base_total = theirs.server_cpu_us_per_op + theirs.driver_cpu_us_per_op
    return (
        f"CPU per op: servers {mine.server_cpu_us_per_op:.0f} µs + client "
        f"{mine.driver_cpu_us_per_op:.0f} µs = {total:.0f} µs, vs {base.impl} "
        f"{theirs.server_cpu_us_per_op:.0f} + {theirs.driver_cpu_us_per_op:.0f} = "
        f"{base_total:.0f} µs ({total / base_total:.1f}x)"
    )


def plot(results: Sequence[Result], out_dir: Path) -> list[Path]:
    """Throughput and latency-percentile bar charts per workload, as PNG (needs matplotlib)."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    workloads = sorted({r.workload for r in results})
    impls = list(dict.fromkeys(r.impl for r in results))
    by_key = {(r.impl, r.workload): r.summary for r in results}
    paths = []
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        xs = [j + i * width for j in range(len(workloads))]
        ys = [by_key[(impl, w)].ops_per_s if (impl, w) in by_key else 0 for w in workloads]
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))], workloads)
    ax.set_ylabel("ops/s")
    ax.set_title("YCSB throughput, 64 concurrent requests")
    ax.legend()
    paths.append(out_dir / "throughput.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 4), squeeze=False)
    for ax, w in zip(axes[0], workloads, strict=True):
        for impl in impls:
            s = by_key.get((impl, w))
            if s is not None:
                ax.plot(
                    ["p50", "p95", "p99"], [s.p50_ms, s.p95_ms, s.p99_ms], marker="o", label=impl
                )
        ax.set_title(f"workload {w}")
        ax.set_ylabel("latency ms")
        ax.set_yscale("log")
        ax.legend()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def run_all(config: BenchConfig, work_dir: Path, profile_dir: Path | None = None) -> list[Result]:
    """Every implementation in turn, every workload on each; with `profile_dir`, py-spy samples
    the driver (and the dynacore nodes) during workload B (see profile.py)."""
    results: list[Result] = []
    for impl in config.impls:
        with open_impl(impl, config, work_dir) as session:
            if session.load is not None:
                load = session.load
                print(
                    f"[{impl}] load: {load.ops:,} records at {load.ops_per_s:,.0f} ops/s, "
                    f"p99 {load.p99_ms:.2f} ms",
                    file=sys.stderr,
                )
            for workload in config.workloads:
                if profile_dir is not None and workload == "B":
                    from .profile import profile_run

                    result = profile_run(session, workload, profile_dir / impl)
                else:
                    result = session.run(workload)
                s = result.summary
                machine_load = result.info["loadavg_1m_after"]
                print(
                    f"[{impl}] {workload}: {s.ops_per_s:,.0f} ops/s p50 {s.p50_ms:.2f} ms "
                    f"p99 {s.p99_ms:.2f} ms (reads {s.read_p99_ms:.2f}, updates "
                    f"{s.update_p99_ms:.2f}) errors {s.errors} misses {s.misses} "
                    f"(machine load {machine_load:.1f} on {os.cpu_count()} cores)",
                    file=sys.stderr,
                )
                results.append(result)
    return results


def parse_args(argv: Sequence[str] | None) -> tuple[BenchConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10k records, 0.5 s warm-up, 3 s runs")
    parser.add_argument("--records", type=int)
    parser.add_argument("--warmup-s", type=float)
    parser.add_argument("--duration-s", type=float)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--workloads", help="comma-separated, e.g. A,B,C")
    parser.add_argument(
        "--impls",
        help="comma-separated: redis, redis-threads, dynacore-rust, "
        "dynacore-cython, dynacore-python",
    )
    parser.add_argument(
        "--redis-appendonly",
        action="store_true",
        help="Redis with appendonly yes, appendfsync everysec",
    )
    parser.add_argument("--work-dir", type=Path, help="logs and data (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write PNG plots into this directory")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the dynacore processes during workload B; reports here"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--report", type=Path, help="print the table of a --json file; no run")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else BenchConfig()
    changes: dict[str, object] = {}
    for name in ("records", "warmup_s", "duration_s", "concurrency"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.workloads:
        changes["workloads"] = tuple(w.strip().upper() for w in args.workloads.split(","))
    if args.impls:
        changes["impls"] = tuple(check_impl(i.strip()) for i in args.impls.split(","))
    if args.redis_appendonly:
        changes["redis_appendonly"] = True
    try:
        config = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
    except (ValueError, AssertionError) as exc:
        parser.error(str(exc))
    return config, args


def to_json(config: BenchConfig, results: Sequence[Result]) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(config),
        "results": [
            {"impl": r.impl, "workload": r.workload, "summary": r.summary.to_json(), "info": r.info}
            for r in results
        ],
    }


def from_json(payload: dict[str, Any]) -> list[Result]:
    return [
        Result(r["impl"], r["workload"], ycsb.Summary.from_json(r["summary"]), r["info"])
        for r in payload["results"]
    ]


def main(argv: Sequence[str] | None = None) -> None:
    config, args = parse_args(argv)
    if args.report is not None:
        results = from_json(json.loads(args.report.read_text()))
    else:
        print(f"config: {config}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="dynacore-e2e-") as tmp:
            work_dir = args.work_dir if args.work_dir is not None else Path(tmp)
            results = run_all(config, work_dir, args.profile)
        if args.json is not None:
            args.json.write_text(json.dumps(to_json(config, results), indent=2))
    print(table(results, markdown=args.markdown))
    for line in verdict(results):
        print(line)
    if args.plot is not None:
        for path in plot(results, args.plot):
            print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
