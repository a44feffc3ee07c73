"""The end-to-end YCSB workloads in pytest-benchmark: Redis (primary + replica) and the 3-node
dynacore cluster on the rust and python backends, one pedantic round per (implementation,
workload). The figures that matter are in extra_info (ops_per_s, p50_ms, p95_ms, p99_ms,
ratio_to_redis); pytest-benchmark's own time is the wall time of the round (warm-up + run).

DYNACORE_E2E_QUICK=1 selects the short configuration (10k records, 3 s runs); the default is the
issue's (100k records, 10 s runs after 2 s warm-up). DYNACORE_E2E_IMPLS=redis,dynacore-rust
restricts the implementations.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from .targets import QUICK, BenchConfig, ImplSession, Result, check_impl, open_impl


def config_from_env() -> BenchConfig:
    config = QUICK if os.environ.get("DYNACORE_E2E_QUICK") == "1" else BenchConfig()
    impls = os.environ.get("DYNACORE_E2E_IMPLS")
    if impls:
        chosen = tuple(check_impl(name.strip()) for name in impls.split(","))
        config = dataclasses.replace(config, impls=chosen)
    return config


CONFIG = config_from_env()


def pedantic(benchmark: BenchmarkFixture, fn: Callable[[], object]) -> None:
    """benchmark.pedantic with one round, typed (pytest-benchmark's own is not annotated)."""
    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def baselines() -> dict[str, Result]:
    """Redis's result per workload, filled by the redis rows (which run first)."""
    return {}


@pytest.fixture(scope="module", params=CONFIG.impls)
def session(request: pytest.FixtureRequest, work_dir: Path) -> Iterator[ImplSession]:
    with open_impl(request.param, CONFIG, work_dir) as started:
        yield started


@pytest.mark.parametrize("workload", CONFIG.workloads)
def test_ycsb(
    benchmark: BenchmarkFixture,
    session: ImplSession,
    workload: str,
    baselines: dict[str, Result],
) -> None:
    benchmark.group = f"e2e.ycsb_{workload}"
    results: list[Result] = []
    pedantic(benchmark, lambda: results.append(session.run(workload)))
    (result,) = results
    s = result.summary
    if session.impl == "redis":
        baselines[workload] = result
    base = baselines.get(workload)
    benchmark.extra_info.update(
        impl=session.impl,
        ops_per_s=s.ops_per_s,
        p50_ms=s.p50_ms,
        p95_ms=s.p95_ms,
        p99_ms=s.p99_ms,
        ops=s.ops,
        server_cpu_us_per_op=s.server_cpu_us_per_op,
        client_cpu_us_per_op=s.driver_cpu_us_per_op,
        ratio_to_redis=round(s.ops_per_s / base.summary.ops_per_s, 3) if base else None,
        client=result.info,
    )
    assert s.ops > 0, f"{session.impl} completed no operation"
    assert s.errors == 0, f"{session.impl} failed operations: {s.error_kinds}"
    assert s.misses == 0, f"{session.impl} lost {s.misses} loaded records"
