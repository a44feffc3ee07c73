"""The backend switch: required backends are built, the env var picks one, no silent fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dynacore import _backend
from dynacore.errors import BackendUnavailable, ConfigError


def test_required_backends_are_built() -> None:
    required = [b for b in os.environ.get("DYNACORE_REQUIRE_BACKENDS", "").split(",") if b]
    missing = [b for b in required if b not in _backend.available()]
    assert not missing, f"required backends not built: {missing}"


def test_python_backend_always_loads() -> None:
    assert "python" in _backend.available()


def test_unknown_backend_name_is_an_error() -> None:
    with pytest.raises(ConfigError):
        _backend.select("fortran")


def test_each_backend_has_every_primitive(backend: _backend.Backend) -> None:
    for name in _backend.PRIMITIVES:
        assert getattr(backend, name) is not None


@pytest.mark.parametrize("name", ["rust", "cython", "python"])
def test_env_var_selects_backend_or_fails_loudly(name: str) -> None:
    code = "import dynacore; print(dynacore.backend)"
    env = {**os.environ, "DYNACORE_BACKEND": name}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if name in _backend.available():
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == name
    else:
        assert proc.returncode != 0
        assert "BackendUnavailable" in proc.stderr


def test_auto_picks_the_fastest_built() -> None:
    assert _backend.select("auto").name == _backend.available()[0]


def test_missing_backend_raises_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str) -> None:
        raise ImportError("not built")

    monkeypatch.setattr(_backend, "_import_primitives", broken)
    monkeypatch.setattr(_backend, "_loaded", {})
    with pytest.raises(BackendUnavailable):
        _backend.load("rust")


def test_installed_wheel_is_what_runs() -> None:
    # `make wheel-test` sets DYNACORE_EXPECT_INSTALLED=1: the suite must then run against the
    # wheel installed in a fresh venv, not against the source tree.
    import dynacore

    if os.environ.get("DYNACORE_EXPECT_INSTALLED") == "1":
        assert "site-packages" in dynacore.__file__, dynacore.__file__
    else:
        assert dynacore.__file__.endswith(os.path.join("dynacore", "__init__.py"))
