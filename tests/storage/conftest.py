"""Storage fixtures: every engine test runs on both engines, LMDB and memory.

`open_engine(...)` opens a fresh engine of the parametrized kind as an async context manager;
`full_at_bytes` gives it a small capacity (an LMDB map of that size, a memory disk of that
capacity) for the full-storage tests. `engine` is an engine opened with the defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from dynacore.storage import (
    CommitConfig,
    Engine,
    MemoryDisk,
    open_lmdb_engine,
    open_memory_engine,
)

TEST_MAP_SIZE_BYTES = 64 << 20

OpenEngine = Callable[..., AbstractAsyncContextManager[Engine]]


@pytest.fixture(params=["lmdb", "memory"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def open_engine(engine_kind: str, tmp_path: Path) -> OpenEngine:
    def factory(
        *, full_at_bytes: int | None = None, config: CommitConfig | None = None
    ) -> AbstractAsyncContextManager[Engine]:
        if engine_kind == "lmdb":
            map_size = TEST_MAP_SIZE_BYTES if full_at_bytes is None else full_at_bytes
            return open_lmdb_engine(tmp_path / "db", map_size_bytes=map_size, config=config)
        return open_memory_engine(MemoryDisk(capacity_bytes=full_at_bytes), config=config)

    return factory


@pytest.fixture
async def engine(open_engine: OpenEngine) -> AsyncIterator[Engine]:
    async with open_engine() as opened:
        yield opened
