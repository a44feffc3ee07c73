"""Benchmark fixtures: `backend` parametrizes a benchmark over every built backend, as in tests/.

Benchmarks are outside the default test run (`make bench`, or `pytest benches`). Name benchmark
groups by primitive and operation (`benchmark.group = "ring.lookup"`) so that benches/report.py
can print each backend and outside baseline as a ratio to the pure-Python twin.
"""

from __future__ import annotations

import pytest

from dynacore import _backend

BUILT = _backend.available()


@pytest.fixture(params=BUILT, scope="session")
def backend(request: pytest.FixtureRequest) -> _backend.Backend:
    return _backend.load(request.param)
