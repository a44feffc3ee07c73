"""The storage layer: the Engine protocol, the LMDB and memory engines, and node metadata.

Open an engine with `open_lmdb_engine(path, ...)` or `open_memory_engine(...)`; each is an async
context manager that runs the engine's group committer in a nursery it owns. See engine.py for
the write path and docs/contracts.md (storage) for the contract.
"""

from __future__ import annotations

from dynacore.storage.engine import (
    DATABASES,
    CommitConfig,
    Engine,
    EngineStats,
    Update,
)
from dynacore.storage.lmdb_engine import LmdbEngine, open_lmdb_engine
from dynacore.storage.memory_engine import MemoryDisk, MemoryEngine, open_memory_engine
from dynacore.storage.meta import (
    NodeMeta,
    get_meta,
    get_ring,
    open_node_meta,
    put_meta,
    put_ring,
    read_node_meta,
)

__all__ = [
    "DATABASES",
    "CommitConfig",
    "Engine",
    "EngineStats",
    "LmdbEngine",
    "MemoryDisk",
    "MemoryEngine",
    "NodeMeta",
    "Update",
    "get_meta",
    "get_ring",
    "open_lmdb_engine",
    "open_memory_engine",
    "open_node_meta",
    "put_meta",
    "put_ring",
    "read_node_meta",
]
