"""A replay in a fresh process reproduces a run exactly — on every built backend.

`python -m dynacore.sim --replay SEED` re-executes itself with PYTHONHASHSEED=0 and must print
the trace hash this process computes for the same seed and options. Running it once per backend
(rust, cython, python) also checks that the twins behave identically down to every byte the
nodes exchange and store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from dynacore import _backend
from dynacore.sim.runner import SimConfig, run_seed

SEED = 3
SAFETY_S = 6.0
REPLAY_TIMEOUT_S = 120.0


def replay_hash(backend: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env["DYNACORE_BACKEND"] = backend
    argv = [sys.executable, "-m", "dynacore.sim", "--replay", str(SEED)]
    argv += ["--safety-s", str(SAFETY_S)]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=REPLAY_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found: list[str] = re.findall(r"trace hash ([0-9a-f]{32})", done.stdout)
    assert len(found) == 1, done.stdout
    return found[0]


@pytest.fixture(scope="module")
def in_process_hash() -> str:
    result = run_seed(SEED, SimConfig(safety_s=SAFETY_S))
    assert result.ok, result.problems()
    return result.trace_hash


@pytest.mark.parametrize("backend", _backend.available())
def test_replay_in_a_fresh_process_matches(backend: str, in_process_hash: str) -> None:
    assert replay_hash(backend) == in_process_hash
