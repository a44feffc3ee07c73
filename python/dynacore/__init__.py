"""dynacore: a Dynamo-style, always-writable, replicated key-value store.

`dynacore.backend` names the implementation of the hot paths in use ("rust", "cython" or
"python"), chosen by DYNACORE_BACKEND=auto|rust|cython|python.
"""

from __future__ import annotations

from dynacore import errors
from dynacore._backend import backend
from dynacore.limits import Limits

__version__ = "0.1.0"

__all__ = ["Limits", "__version__", "backend", "errors"]
