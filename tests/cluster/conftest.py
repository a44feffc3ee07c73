"""Fixtures of the cluster tests. ClusterState takes its Ring from `dynacore._backend.ring`;
`ring_backend` runs a test once per built backend with that backend's Ring in place."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dynacore import _backend

BUILT = _backend.available()


@pytest.fixture(params=BUILT, scope="session")
def ring_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_backend, "ring", _backend.load(name).ring)
        yield name
