"""dynacore: a Dynamo-style, always-writable, replicated key-value store.

`dynacore.backend` names the implementation of the hot paths in use ("rust", "cython" or
"python"), chosen by DYNACORE_BACKEND=auto|rust|cython|python. `dynacore.Client` (sync) and
`dynacore.AsyncClient` (trio) talk to a cluster; `resolve_lww` / `resolve_with` resolve siblings.
`dynacore.Cache` (sync) and `dynacore.open_cache` (trio) embed a replicated cache member.
"""

from __future__ import annotations

from dynacore import errors
from dynacore._backend import backend
from dynacore.cache import AsyncCache, Cache, open_cache
from dynacore.client import AsyncClient, Client, GetResult, resolve_lww, resolve_with
from dynacore.config import NodeConfig, load_config
from dynacore.limits import Limits

__version__ = "0.1.0"

__all__ = [
    "AsyncCache",
    "AsyncClient",
    "Cache",
    "Client",
    "GetResult",
    "Limits",
    "NodeConfig",
    "__version__",
    "backend",
    "errors",
    "load_config",
    "open_cache",
    "resolve_lww",
    "resolve_with",
]
