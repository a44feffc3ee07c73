"""Checks of the benchmark harness itself (fast; run with `pytest benches/e2e/test_harness.py`):
the key chooser's distribution, percentiles, plans, the Redis pair's lifecycle, and the driver
protocol against a real Redis, bad commands included.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import psutil
import pytest

from . import procs, ycsb
from .profile import Profile, parse_raw
from .redis_pair import RedisPair
from .run import from_json, table, to_json, verdict
from .targets import BenchConfig, DriverProcess, Result, check_impl, dynacore_mode, open_impl

SMALL = BenchConfig(records=2_000, warmup_s=0.1, duration_s=0.5, impls=("redis",))


def test_fnv1a_64_known_vectors() -> None:
    # FNV-1a 64 of eight zero bytes, computed by the definition step by step.
    digest = ycsb.FNV_OFFSET_BASIS_64
    for _ in range(8):
        digest = (digest * ycsb.FNV_PRIME_64) & ycsb.MASK_64
    assert ycsb.fnv1a_64(0) == digest
    assert ycsb.fnv1a_64(1) != ycsb.fnv1a_64(256)
    assert ycsb.fnv1a_64(-1) == ycsb.fnv1a_64((1 << 64) - 1)


def test_zipfian_matches_its_law() -> None:
    """Ranks 0 and 1 are exact in Gray's method; beyond them it is a continuous approximation
    (as in YCSB): a single rank may be off by up to ~20%, cumulative masses by a few percent."""
    zipf = ycsb.Zipfian(1_000)
    rng = random.Random(7)
    draws = 200_000
    counts = Counter(zipf.rank(rng.random()) for _ in range(draws))
    assert set(counts) <= set(range(1_000))
    for rank, tolerance in ((0, 0.03), (1, 0.05), (2, 0.25), (9, 0.25)):
        expected = zipf.probability(rank) * draws
        assert abs(counts[rank] - expected) < tolerance * expected, (rank, counts[rank], expected)
    for top in (10, 100):
        observed = sum(counts[r] for r in range(top)) / draws
        expected_mass = sum(zipf.probability(r) for r in range(top))
        assert abs(observed - expected_mass) < 0.06 * expected_mass, (top, observed)


def test_scrambled_zipfian_spreads_hot_keys() -> None:
    chooser = ycsb.ScrambledZipfian(100_000)
    rng = random.Random(3)
    counts = Counter(chooser.index(rng.random()) for _ in range(50_000))
    assert all(0 <= i < 100_000 for i in counts)
    hottest = [index for index, _ in counts.most_common(10)]
    assert hottest != sorted(hottest) or hottest[0] > 10  # not the first indexes in order
    assert counts.most_common(1)[0][1] > 50_000 * 0.05  # the hottest key takes ~8%


def test_zipfian_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ycsb.Zipfian(1)
    with pytest.raises(ValueError):
        ycsb.Zipfian(100, theta=1.0)
    with pytest.raises(ValueError):
        ycsb.workload("Z")
    with pytest.raises(ValueError):
        ycsb.load_plan(0)
    with pytest.raises(ValueError):
        BenchConfig(r=4)
    with pytest.raises(ValueError):
        BenchConfig(impls=("memcached",))


def test_plans_are_deterministic_and_mixed() -> None:
    plan_b = ycsb.workload_plan(ycsb.workload("B"), 1_000, seed=1, size_ops=20_000)
    again = ycsb.workload_plan(ycsb.workload("b"), 1_000, seed=1, size_ops=20_000)
    assert plan_b == again
    reads = sum(plan_b.reads) / len(plan_b.reads)
    assert 0.94 < reads < 0.96
    plan_c = ycsb.workload_plan(ycsb.workload("C"), 1_000, seed=1, size_ops=1_000)
    assert all(plan_c.reads)
    load = ycsb.load_plan(5)
    assert list(load.indexes) == [0, 1, 2, 3, 4] and not any(load.reads) and not load.cyclic


def test_percentiles_and_summary() -> None:
    values = list(range(1, 101))
    assert ycsb.percentile(values, 0.5) == 50
    assert ycsb.percentile(values, 0.99) == 99
    assert ycsb.percentile(values, 1.0) == 100
    summary = ycsb.summarize([i * 1_000_000 for i in range(1, 101)], 2.0, {"Boom": 2}, misses=1)
    assert summary.ops == 100 and summary.ops_per_s == 50.0
    assert (summary.p50_ms, summary.p99_ms, summary.max_ms) == (50.0, 99.0, 100.0)
    assert summary.errors == 2 and summary.misses == 1
    assert ycsb.Summary.from_json(summary.to_json()) == summary


def test_profile_parsing_drops_line_numbers() -> None:
    raw = (
        "thread (0x1);main (a.py:3);f (a.py:10) 3\n"
        "thread (0x1);main (a.py:3);f (a.py:11) 2\n"
        "thread (0x1);main (a.py:4);g (b.py:1) 5\n"
        "garbage\n"
    )
    profile = Profile(parse_raw(raw))
    assert profile.samples == 10
    assert dict(profile.self_shares()) == {"f (a.py)": 0.5, "g (b.py)": 0.5}
    assert dict(profile.inclusive_shares())["main (a.py)"] == 1.0


def test_redis_pair_replicates_and_leaves_no_process(tmp_path: Path) -> None:
    with RedisPair(tmp_path) as pair:
        pids = [p.pid for p in pair.processes.values()]
        with pair.client("primary") as primary:
            primary.set(b"k", b"v")
        pair.wait_replicated()
        with pair.client("replica") as replica:
            assert replica.get(b"k") == b"v"
    assert pair.processes == {}
    assert not any(psutil.pid_exists(pid) and _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_driver_against_redis_end_to_end(tmp_path: Path) -> None:
    with open_impl("redis", SMALL, tmp_path) as session:
        assert session.load is not None and session.load.ops == SMALL.records
        result = session.run("A")
        driver_pid = session.driver.pid
        server_pids = session.server_pids
    s = result.summary
    assert s.ops > 0 and s.errors == 0 and s.misses == 0
    assert 0 < s.p50_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
    assert s.server_cpu_us_per_op > 0 and s.driver_cpu_us_per_op > 0  # both measured (not nan)
    assert result.info["client"] == "redis.asyncio"
    assert not any(_alive(pid) for pid in [driver_pid, *server_pids])
    assert from_json(json.loads(json.dumps(to_json(SMALL, [result])))) == [result]
    text = table([result, Result("dynacore-rust", "B", s)])
    assert "1.00" in text and "redis" in text
    assert verdict([Result("redis", "B", s), Result("dynacore-rust", "B", s)])[0].endswith(
        "met" if s.p99_ms <= 10 else "NOT met"
    )


def test_driver_reports_bad_commands(tmp_path: Path) -> None:
    with RedisPair(tmp_path) as pair:
        log = tmp_path / "driver.log"
        with DriverProcess("redis", [pair.primary_address], SMALL, log, {}) as driver:
            with pytest.raises(procs.BenchError, match="bad command"):
                driver.request({"cmd": "run", "workload": "Q", "records": 10, "seed": 1}, 10.0)
            with pytest.raises(procs.BenchError, match="bad command"):
                driver.request({"cmd": "load"}, 10.0)
            summary = driver.request({"cmd": "load", "records": 10}, 10.0)
            assert summary.ops == 10


def test_driver_counts_errors_of_a_dead_server(tmp_path: Path) -> None:
    with RedisPair(tmp_path) as pair:
        log = tmp_path / "driver.log"
        with DriverProcess("redis", [pair.primary_address], SMALL, log, {}) as driver:
            procs.stop(pair.processes.pop("primary"))
            command = {"cmd": "run", "workload": "C", "records": 100, "seed": 1}
            summary = driver.request({**command, "warmup_s": 0.0, "duration_s": 0.3}, 30.0)
            assert summary.ops == 0 and summary.errors > 0
            assert set(summary.error_kinds) <= {"ConnectionError", "TimeoutError"}


def test_impl_names_pick_backend_and_durability(tmp_path: Path) -> None:
    assert dynacore_mode("dynacore-rust") == ("rust", True)
    assert dynacore_mode("dynacore-python-nosync") == ("python", False)
    assert check_impl("redis-fsync") == "redis-fsync"
    for bad in ("dynacore-go", "dynacore-rust-fast", "redis-cluster"):
        with pytest.raises(ValueError):
            check_impl(bad)
    with pytest.raises(ValueError):
        RedisPair(tmp_path, appendonly=True, appendfsync="sometimes")
