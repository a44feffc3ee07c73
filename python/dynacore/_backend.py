"""The one place that imports compiled code, and the DYNACORE_BACKEND switch.

Three backends implement the same five primitives (ring, versions, merkle, wire, localread):
- "rust":   the PyO3 extension dynacore._native (submodules _native.ring, ...);
- "cython": the pure-Python twins compiled by Cython (dynacore._cy.ring, ...);
- "python": the pure-Python twins themselves (dynacore.core.ring, ...).

DYNACORE_BACKEND=auto|rust|cython|python picks the one the rest of the package uses; auto takes
the fastest that is built. A backend that was asked for by name and is missing raises
BackendUnavailable: there is never a silent fallback. Tests load every built backend side by side
with `load(name)`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from dynacore.errors import BackendUnavailable, ConfigError

BACKENDS: tuple[str, ...] = ("rust", "cython", "python")  # fastest first
PRIMITIVES: tuple[str, ...] = ("ring", "versions", "merkle", "wire", "localread")
ENV_VAR = "DYNACORE_BACKEND"


@dataclass(frozen=True)
class Backend:
    """The five primitive modules of one backend, each with the API of its twin in core/."""

    name: str
    ring: ModuleType
    versions: ModuleType
    merkle: ModuleType
    wire: ModuleType
    localread: ModuleType


def _import_primitives(name: str) -> dict[str, ModuleType]:
    if name == "python":
        return {p: importlib.import_module(f"dynacore.core.{p}") for p in PRIMITIVES}
    if name == "cython":
        return {p: importlib.import_module(f"dynacore._cy.{p}") for p in PRIMITIVES}
    if name == "rust":
        native = importlib.import_module("dynacore._native")
        return {p: getattr(native, p) for p in PRIMITIVES}
    raise ConfigError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


_loaded: dict[str, Backend] = {}


def load(name: str) -> Backend:
    """Load one backend by name; BackendUnavailable if it is not built."""
    if name in _loaded:
        return _loaded[name]
    try:
        modules = _import_primitives(name)
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailable(
            f"backend {name!r} is not available ({exc}); build it with `pip install .` "
            f"or pick another with {ENV_VAR}=auto|rust|cython|python"
        ) from exc
    backend = Backend(name=name, **modules)
    _loaded[name] = backend
    return backend


def available() -> list[str]:
    """The names of the backends that load here, fastest first."""
    names = []
    for name in BACKENDS:
        try:
            load(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def select(requested: str | None = None) -> Backend:
    """The backend named by `requested` (or DYNACORE_BACKEND, default auto)."""
    choice = (requested if requested is not None else os.environ.get(ENV_VAR, "auto")).strip()
    choice = choice.lower() or "auto"
    if choice != "auto":
        return load(choice)
    for name in BACKENDS:
        try:
            return load(name)
        except BackendUnavailable:
            continue
    raise AssertionError("the pure-Python backend always loads")  # pragma: no cover


_current = select()
backend: str = _current.name

if TYPE_CHECKING:
    # Type checkers see the pure twins; at run time these are the selected backend's modules,
    # which have the same API (the parity tests check it).
    from dynacore.core import localread, merkle, ring, versions, wire
else:
    ring = _current.ring
    versions = _current.versions
    merkle = _current.merkle
    wire = _current.wire
    localread = _current.localread

__all__ = [
    "BACKENDS",
    "Backend",
    "available",
    "backend",
    "load",
    "localread",
    "merkle",
    "ring",
    "select",
    "versions",
    "wire",
]
