"""The simulator end to end: real nodes under virtual time with the seed's faults.

- a run is a function of its seed (same trace hash twice, a different seed differs);
- the CI subset: fixed seeds under random faults, 0 acknowledged writes lost, full convergence;
- the power-loss test: lying disks (durable=False) crashed all at once MUST show losses, and
  the same schedule on honest disks shows none — proof that the checker can fail;
- the command line: summary table, failure lines with a replay command that reproduces the run.
"""

from __future__ import annotations

import io
import re

import pytest

from dynacore.net.messages import Value
from dynacore.node import Node
from dynacore.sim import __main__ as sim_cli
from dynacore.sim.cluster import ClusterConfig
from dynacore.sim.faults import KINDS, choose_schedule
from dynacore.sim.runner import SimConfig, run_seed

# The CI subset: seeds 0..CI_SEEDS-1 of the default configuration with a shorter safety phase.
CI_SEEDS = 40
CI_CONFIG = SimConfig(safety_s=20.0)
SMALL = SimConfig(safety_s=8.0)


def test_same_seed_same_trace() -> None:
    first, again = run_seed(7, SMALL), run_seed(7, SMALL)
    assert first.ok, first.problems()
    assert first.trace_hash == again.trace_hash
    assert first.check == again.check
    assert first.fault_counts == again.fault_counts
    other = run_seed(8, SMALL)
    assert other.trace_hash != first.trace_hash


def test_trace_hash_covers_the_configuration() -> None:
    fewer_clients = SimConfig(safety_s=8.0, clients=3)
    assert run_seed(7, fewer_clients).trace_hash != run_seed(7, SMALL).trace_hash


@pytest.mark.parametrize("seed", range(CI_SEEDS))
def test_ci_seed_loses_nothing_and_converges(seed: int) -> None:
    result = run_seed(seed, CI_CONFIG)
    assert result.ok, f"seed {seed}: {result.problems()}"
    assert result.check is not None and result.check.converged


def test_the_ci_subset_injects_every_kind_of_fault() -> None:
    """The seeds above are worth running: together they inject every fault of the menu."""
    nodes = CI_CONFIG.cluster.node_ids()
    kinds: set[str] = set()
    for seed in range(CI_SEEDS):
        kinds |= set(choose_schedule(seed, nodes, CI_CONFIG.safety_s).counts())
    assert kinds == set(KINDS)


def power_loss(durable: bool) -> SimConfig:
    return SimConfig(
        safety_s=15.0,
        faults="power-loss",
        cluster=ClusterConfig(durable=durable, unsynced_batches=16),
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_power_loss_on_lying_disks_loses_acknowledged_writes(seed: int) -> None:
    result = run_seed(seed, power_loss(durable=False))
    assert result.error is None and result.check is not None
    assert result.check.lost, "the checker must catch writes lost to unsynced disks"
    assert not result.ok
    assert result.fault_counts["crash"] >= 5  # every node lost power at least once


@pytest.mark.parametrize("seed", [1, 2])
def test_power_loss_on_durable_disks_loses_nothing(seed: int) -> None:
    result = run_seed(seed, power_loss(durable=True))
    assert result.ok, result.problems()
    assert result.check is not None and result.check.acknowledged > 100


def test_without_faults_nearly_every_write_is_acknowledged() -> None:
    result = run_seed(3, SimConfig(safety_s=8.0, faults="none"))
    assert result.ok and result.check is not None
    assert result.fault_counts == {}
    assert result.check.acknowledged >= 0.98 * result.check.attempted > 0


def test_cli_summary_and_replay_of_a_failure() -> None:
    out = io.StringIO()
    argv = ["--seeds", "2", "--first-seed", "1", "--safety-s", "15", "--faults", "power-loss"]
    argv += ["--not-durable", "--unsynced-batches", "16", "-v"]
    assert sim_cli.cli(argv, out) == 1
    text = out.getvalue()
    assert "writes acknowledged" in text and "lost (acknowledged)" in text
    assert "seeds                2 (passed 0, failed 2)" in text
    replays = re.findall(r"replay: (python -m dynacore\.sim .*)", text)
    assert len(replays) == 2
    assert replays[0] == (
        "python -m dynacore.sim --replay 1 --nodes 5 --safety-s 15.0 --faults power-loss "
        "--not-durable --unsynced-batches 16"
    )
    first_hash = re.findall(r"FAIL seed +1 .* ([0-9a-f]{32}) ", text)
    replay_out = io.StringIO()
    replay_argv = replays[0].split()[3:]
    assert sim_cli.cli(replay_argv, replay_out) == 1
    assert f"trace hash {first_hash[0]}" in replay_out.getvalue()
    assert "PROBLEM lost" in replay_out.getvalue()


def test_cli_rejects_bad_options() -> None:
    assert sim_cli.cli(["--seeds", "0"], io.StringIO()) == 2
    assert sim_cli.cli(["--replay", "1", "--nodes", "2", "--n", "3"], io.StringIO()) == 2


def test_an_assert_inside_a_node_handler_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RPC server turns a handler's exception into an error reply and survives; the run
    must still fail, or a broken node invariant would pass unnoticed. (Replica reads are
    answered inline, without a task, so the assert goes there.)"""

    def broken_one(self: Node, fields: list[Value], peer: str) -> list[Value]:
        raise AssertionError("invariant broken")

    def broken_many(self: Node, fields: list[Value], peer: str) -> list[Value]:
        raise AssertionError("invariant broken")

    monkeypatch.setattr(Node, "replica_get_inline", broken_one)
    monkeypatch.setattr(Node, "replica_get_many_inline", broken_many)
    result = run_seed(3, SimConfig(safety_s=4.0, faults="none"))
    assert result.error is None  # the node survived ...
    assert any("invariant broken" in line for line in result.node_errors)  # ... but it was seen
    assert not result.ok
    assert any(p.startswith("node logged:") for p in result.problems())


def test_a_run_that_overruns_its_virtual_budget_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that never settles must fail its seed, not hang the soak."""
    monkeypatch.setattr(SimConfig, "virtual_budget_s", lambda self: 3.0)
    result = run_seed(1, SimConfig(safety_s=8.0))
    assert not result.ok
    assert result.error is not None and "TooSlowError" in result.error


def test_replicas_that_never_heal_fail_the_run() -> None:
    """Seed 0 wipes a node. With anti-entropy on it heals; with the first exchange an hour away
    the write-once keys the wiped node missed stay missing, and the run must fail."""
    healing = run_seed(0, SimConfig(safety_s=20.0))
    assert healing.ok and healing.healed_by == "self-healing", healing.problems()
    assert healing.fault_counts["wipe"] == 1
    stalled = SimConfig(safety_s=20.0, cluster=ClusterConfig(aae_interval_s=3600.0))
    result = run_seed(0, stalled)
    assert result.healed_by == "" and not result.ok
    assert any("still differ" in p for p in result.problems())


def test_without_anti_entropy_the_harness_read_repairs() -> None:
    config = SimConfig(safety_s=20.0, cluster=ClusterConfig(aae_interval_s=0.0))
    result = run_seed(0, config)
    assert result.ok and result.healed_by == "read repair", result.problems()
