"""The in-memory engine for tests and the simulator: the LMDB engine's interface and group-commit
path, with no threads and no real I/O, so it is deterministic under trio's MockClock.

The data lives in a `MemoryDisk`, which outlives the engine: a simulated node that crashes is
restarted by opening a new engine on the same disk. Faults:

- `commit_delay_s`: a slow disk; the committer sleeps that long per batch (the "sync"), and a
  batch becomes visible and acknowledged only after it.
- `crash()`: a power loss. Queued and in-flight (not yet committed) requests fail with
  StorageClosed; committed data stays on the disk.
- `durable=False`: a disk whose write cache lies (like `LmdbEngine(sync=False)` under a machine
  crash). Writes are acknowledged as usual, but `crash()` also rolls back the last
  `unsynced_batches` committed batches, acknowledged writes included. It exists so that the
  simulator's lost-write checker can be shown to catch lost writes; never use it otherwise.
- `MemoryDisk(capacity_bytes=...)`: a full disk. A batch that would take the stored keys and
  values past the capacity fails as a whole with StorageFull and applies nothing.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from dynacore.errors import ConfigError, StorageClosed, StorageError, StorageFull
from dynacore.storage.engine import (
    DATABASES,
    CommitConfig,
    Done,
    EngineStats,
    GroupCommitter,
    Request,
    Update,
    apply_batch,
    check_db,
    check_key,
    check_scan,
    submit_one_soon,
    submit_ops,
)

MAX_UNSYNCED_BATCHES = 1 << 16
MAX_COMMIT_DELAY_S = 3600.0

Undo = list[tuple[str, bytes, bytes | None]]  # (db, key, value before the batch)


class MemoryTable:
    """One database: a dict for lookups and a sorted key list for ordered scans."""

    def __init__(self) -> None:
        self._values: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: bytes) -> bytes | None:
        return self._values.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self._values:
            bisect.insort(self._keys, key)
        self._values[key] = value

    def delete(self, key: bytes) -> None:
        if self._values.pop(key, None) is not None:
            index = bisect.bisect_left(self._keys, key)
            assert self._keys[index] == key
            del self._keys[index]

    def scan(self, start: bytes, end: bytes | None, limit: int | None) -> list[tuple[bytes, bytes]]:
        low = bisect.bisect_left(self._keys, start)
        high = len(self._keys) if end is None else bisect.bisect_left(self._keys, end)
        if limit is not None:
            high = min(high, low + limit)
        return [(key, self._values[key]) for key in self._keys[low:high]]


class MemoryDisk:
    """The durable state of a MemoryEngine; it survives the engine's crash() and close."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        if capacity_bytes is not None and (
            not isinstance(capacity_bytes, int) or capacity_bytes < 0
        ):
            raise ConfigError(f"capacity_bytes must be None or >= 0, got {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes
        self.tables = {db: MemoryTable() for db in DATABASES}
        self.size_bytes = 0  # keys plus values stored
        self.in_use = False

    def set(self, db: str, key: bytes, value: bytes | None) -> bytes | None:
        """Store (or delete, for None) one value; return the value it replaced."""
        table = self.tables[db]
        old = table.get(key)
        if old is not None:
            self.size_bytes -= len(key) + len(old)
        if value is None:
            table.delete(key)
        else:
            table.put(key, value)
            self.size_bytes += len(key) + len(value)
        assert self.size_bytes >= 0
        return old


class _MemoryWriteTxn:
    """A batch's writes, staged over the disk until the commit installs them."""

    def __init__(self, disk: MemoryDisk) -> None:
        self._disk = disk
        self._staged: dict[tuple[str, bytes], bytes | None] = {}

    def read(self, db: str, key: bytes) -> bytes | None:
        if (db, key) in self._staged:
            return self._staged[(db, key)]
        return self._disk.tables[db].get(key)

    def write(self, db: str, key: bytes, value: bytes | None) -> None:
        self._staged[(db, key)] = value

    def size_after_bytes(self) -> int:
        size = self._disk.size_bytes
        for (db, key), value in self._staged.items():
            old = self._disk.tables[db].get(key)
            size -= 0 if old is None else len(key) + len(old)
            size += 0 if value is None else len(key) + len(value)
        return size

    def install(self) -> Undo:
        staged = self._staged.items()
        return [(db, key, self._disk.set(db, key, value)) for (db, key), value in staged]


class MemoryEngine:
    """The in-memory engine. Start its committer with `open_memory_engine`."""

    def __init__(
        self,
        disk: MemoryDisk | None = None,
        *,
        commit_delay_s: float = 0.0,
        durable: bool = True,
        unsynced_batches: int = 1,
        config: CommitConfig | None = None,
    ) -> None:
        if not isinstance(commit_delay_s, int | float) or not (
            0.0 <= commit_delay_s <= MAX_COMMIT_DELAY_S
        ):
            raise ConfigError(f"commit_delay_s must be in [0, {MAX_COMMIT_DELAY_S}]")
        if not isinstance(unsynced_batches, int) or not (
            1 <= unsynced_batches <= MAX_UNSYNCED_BATCHES
        ):
            raise ConfigError(f"unsynced_batches must be in [1, {MAX_UNSYNCED_BATCHES}]")
        self.disk = disk if disk is not None else MemoryDisk()
        if self.disk.in_use:
            raise StorageError("this MemoryDisk is already open in another engine")
        self.disk.in_use = True
        self.commit_delay_s = float(commit_delay_s)
        self.durable = durable
        self._unsynced: deque[Undo] = deque(maxlen=unsynced_batches)
        self._stats = EngineStats()
        self._committer = GroupCommitter(config or CommitConfig(), self._stats)
        self._closed = False

    @property
    def stats(self) -> EngineStats:
        return self._stats

    def _tables(self) -> dict[str, MemoryTable]:
        if self._closed:
            raise StorageClosed("the storage engine is closed")
        return self.disk.tables

    def get(self, db: str, key: bytes) -> bytes | None:
        check_db(db)
        check_key(key, self._committer.config.key_size_bytes)
        return self._tables()[db].get(key)

    def get_many(self, db: str, keys: Sequence[bytes]) -> list[bytes | None]:
        check_db(db)
        for key in keys:
            check_key(key, self._committer.config.key_size_bytes)
        table = self._tables()[db]
        return [table.get(key) for key in keys]

    def scan(
        self, db: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Pairs with start <= key < end (end None: no bound), by key, at most `limit` of them."""
        check_db(db)
        check_scan(start, end, limit)
        if end is not None and end <= start:
            return []
        return self._tables()[db].scan(start, end, limit)

    def count(self, db: str) -> int:
        check_db(db)
        return len(self._tables()[db])

    async def update(self, db: str, key: bytes, fn: Update) -> bytes | None:
        """Apply fn to the key's value in the next group commit; return its result once durable."""
        (result,) = await submit_ops(self._committer, db, [(key, fn)])
        return result

    def update_soon(self, db: str, key: bytes, fn: Update, on_done: Done) -> bool:
        """`update` without waiting when the commit queue has room (else False, nothing
        queued): `on_done(result, error)` follows once durable or failed."""
        return submit_one_soon(self._committer, db, key, fn, on_done)

    async def update_many(self, db: str, ops: Sequence[tuple[bytes, Update]]) -> list[bytes | None]:
        """Apply every op atomically (all or none) in one group commit; results in op order."""
        return await submit_ops(self._committer, db, ops)

    async def _commit(self, batch: list[Request]) -> tuple[int, bool]:
        txn = _MemoryWriteTxn(self.disk)
        taken = apply_batch(txn, batch, self._committer.config.max_batch_bytes)
        capacity = self.disk.capacity_bytes
        if capacity is not None and txn.size_after_bytes() > capacity:
            for request in batch:
                if request.error is None:
                    request.fail(StorageFull(f"memory disk full (capacity {capacity} bytes)"))
            return len(batch), False
        # The "sync". A crash() while it sleeps cancels it: the batch is never installed.
        await trio.sleep(self.commit_delay_s)
        undo = txn.install()
        if not self.durable:
            self._unsynced.append(undo)
        return taken, True

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._committer.run(self._commit, task_status=task_status)

    def crash(self) -> None:
        """Power loss: drop what is not committed (and, if not durable, the unsynced batches)."""
        if self._closed:
            return
        self._committer.crash()
        while self._unsynced:
            for db, key, old in reversed(self._unsynced.pop()):
                self.disk.set(db, key, old)
        self._release()

    async def aclose(self) -> None:
        """Commit what is queued, then close (idempotent). A clean close syncs everything."""
        await self._committer.aclose()
        if not self._closed:
            self._unsynced.clear()
            self._release()

    def _release(self) -> None:
        self._closed = True
        self.disk.in_use = False


@asynccontextmanager
async def open_memory_engine(
    disk: MemoryDisk | None = None,
    *,
    commit_delay_s: float = 0.0,
    durable: bool = True,
    unsynced_batches: int = 1,
    config: CommitConfig | None = None,
) -> AsyncIterator[MemoryEngine]:
    """Open a memory engine (on `disk`, or a fresh one) and run its committer in a nursery."""
    engine = MemoryEngine(
        disk,
        commit_delay_s=commit_delay_s,
        durable=durable,
        unsynced_batches=unsynced_batches,
        config=config,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine._run)
            try:
                yield engine
            finally:
                with trio.CancelScope(shield=True):
                    await engine.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await engine.aclose()
