"""Fixtures of the cluster tests: the Ring that ClusterState uses is the selected backend's.

While the primitives are still landing, a backend without a Ring gets the contract-following
stand-in of standin_ring.py for this test session (and the session says so in its header)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import standin_ring

from dynacore import _backend

USING_STANDIN = not hasattr(_backend.ring, "Ring")


def pytest_report_header() -> str:
    source = "the stand-in of tests/cluster" if USING_STANDIN else f"backend {_backend.backend}"
    return f"cluster tests: Ring from {source}"


@pytest.fixture(scope="session", autouse=True)
def ring_module() -> Iterator[object]:
    if not USING_STANDIN:
        yield _backend.ring
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_backend, "ring", standin_ring)
        yield standin_ring
