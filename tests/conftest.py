"""Shared fixtures. `backend` parametrizes a test over every built backend (rust, cython, python).

Like aio-libs/multidict's conftest: a test that takes the `backend` fixture runs once per backend
that is built here. DYNACORE_REQUIRE_BACKENDS (set by `make test` and CI) lists backends that must
be built; tests/test_backend.py fails when one of them is missing, so a CI run can never pass on a
silently absent compiled core.
"""

from __future__ import annotations

import pytest

from dynacore import _backend

BUILT = _backend.available()


@pytest.fixture(params=BUILT, scope="session")
def backend(request: pytest.FixtureRequest) -> _backend.Backend:
    return _backend.load(request.param)
