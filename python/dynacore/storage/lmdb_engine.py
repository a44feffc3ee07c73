"""The durable engine: one LMDB environment with the named databases, written by group commit.

Layout. Named databases "data", "hints", "meta" hold the caller's keys, plus "_sys" (format
marker, the long-key cut, per-database long-key counters). Reads are synchronous and thread-safe:
py-lmdb opens every environment with MDB_NOTLS and `lock=True`, so each `get`/`scan`/`count`
takes its own read transaction on whatever thread calls it. All writes go through the
`GroupCommitter`; each batch is one write transaction and one sync, run in a worker thread
(`trio.to_thread.run_sync`) so the event loop never blocks on the disk. Without sync (the unsafe
fast mode) a small batch commits on the event loop itself: no disk wait, no thread round trip.

Long keys. LMDB keys are at most `env.max_key_size()` bytes (511 in the default build), while
dynacore keys may be longer. A key of at most `cut = max_key_size - 1` bytes is stored as is.
A longer key K lives in a *bucket*: the LMDB record `K[:cut] + b"\\0"` (exactly cut + 1 bytes,
a length no direct key has) whose value is the sorted list of every (long key, value) pair with
that first `cut` bytes. Every direct key compares with a long key exactly as it compares with the
long key's bucket record, so a cursor walk visits keys in true byte order and `scan` stays exact.
Buckets only share a record when long keys share their first `cut` bytes. `count` adds the number
of long keys beyond one per bucket, kept in "_sys" and updated in the same transaction.

Failures. A full map (MapFullError) or disk (ENOSPC; LMDB also reports a short write as EIO, so
an I/O error on a disk with no room left, or past the RLIMIT_FSIZE bound, counts as full) fails
the whole batch with StorageFull: the transaction is aborted, nothing of it is applied, earlier
commits stay, and the engine keeps serving reads and later writes.
"""

from __future__ import annotations

import bisect
import os
import queue
import resource
import struct
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import lmdb
import outcome
import trio

from dynacore.errors import ConfigError, StorageClosed, StorageError, StorageFull
from dynacore.limits import DEFAULT_LMDB_MAP_SIZE_BYTES, KIB, MIB
from dynacore.storage.engine import (
    DATABASES,
    CommitConfig,
    Done,
    EngineStats,
    GroupCommitter,
    Request,
    Update,
    apply_batch,
    batch_bytes,
    check_db,
    check_key,
    check_scan,
    submit_one_soon,
    submit_ops,
)

FORMAT = b"dynacore-lmdb-1"
SYS_DB = b"_sys"
MIN_MAP_SIZE_BYTES = 64 * KIB
MAX_MAP_SIZE_BYTES = 1 << 44  # 16 TiB
# With sync off, batches of at most this many operations commit on the event loop, cut after
# this many bytes written (the rest wait for the next batch).
INLINE_COMMIT_MAX_OPS = 64
INLINE_COMMIT_MAX_BYTES = 256 * KIB
# A disk with less free room than this (or than twice the failed batch) is taken as full.
FULL_DISK_SLACK_BYTES = 1 * MIB

T = TypeVar("T")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


# -- buckets of long keys ----------------------------------------------------------------------


def encode_bucket(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Entries sorted by key, as (u32 key length, key, u32 value length, value) each."""
    parts: list[bytes] = []
    for key, value in entries:
        parts += (_U32.pack(len(key)), key, _U32.pack(len(value)), value)
    return b"".join(parts)


def decode_bucket(data: bytes) -> list[tuple[bytes, bytes]]:
    entries: list[tuple[bytes, bytes]] = []
    offset = 0
    try:
        while offset < len(data):
            (key_len,) = _U32.unpack_from(data, offset)
            key = data[offset + 4 : offset + 4 + key_len]
            offset += 4 + key_len
            (value_len,) = _U32.unpack_from(data, offset)
            value = data[offset + 4 : offset + 4 + value_len]
            offset += 4 + value_len
            if len(key) != key_len or len(value) != value_len:
                raise StorageError("truncated long-key bucket")
            entries.append((key, value))
    except struct.error as exc:
        raise StorageError(f"corrupt long-key bucket: {exc}") from exc
    return entries


class _Layout:
    """The open environment's databases and its long-key cut."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.cut = 0  # set by the format check, before any use
        self.dbis = {name: env.open_db(name.encode()) for name in DATABASES}
        self.sys = env.open_db(SYS_DB)

    def bucket_key(self, key: bytes) -> bytes:
        assert len(key) > self.cut
        return key[: self.cut] + b"\0"

    def read(self, txn: lmdb.Transaction[bytes], db: str, key: bytes) -> bytes | None:
        dbi = self.dbis[db]
        if len(key) <= self.cut:
            return txn.get(key, db=dbi)
        raw = txn.get(self.bucket_key(key), db=dbi)
        if raw is None:
            return None
        entries = decode_bucket(raw)
        index = bisect.bisect_left(entries, key, key=_entry_key)
        if index < len(entries) and entries[index][0] == key:
            return entries[index][1]
        return None

    def long_extra(self, txn: lmdb.Transaction[bytes], db: str) -> int:
        raw = txn.get(b"long:" + db.encode(), db=self.sys)
        return 0 if raw is None else int(_I64.unpack(raw)[0])

    def count(self, txn: lmdb.Transaction[bytes], db: str) -> int:
        return txn.stat(self.dbis[db])["entries"] + self.long_extra(txn, db)

    def scan(
        self,
        txn: lmdb.Transaction[bytes],
        db: str,
        start: bytes,
        end: bytes | None,
        limit: int | None,
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if limit == 0 or (end is not None and end <= start):
            return out
        cursor = txn.cursor(self.dbis[db])
        seek = start if len(start) <= self.cut else self.bucket_key(start)
        positioned = cursor.set_range(seek) if seek else cursor.first()
        if not positioned:
            return out
        for stored_key, stored_value in cursor.iternext():
            if len(stored_key) <= self.cut:
                entries = [(stored_key, stored_value)]
            else:
                entries = decode_bucket(stored_value)
            for key, value in entries:
                if key < start:
                    continue
                if end is not None and key >= end:
                    return out
                out.append((key, value))
                if limit is not None and len(out) >= limit:
                    return out
        return out


def _entry_key(entry: tuple[bytes, bytes]) -> bytes:
    return entry[0]


class _WriteTxn:
    """An LMDB write transaction seen through the WriteTxn protocol of engine.py."""

    def __init__(self, layout: _Layout, txn: lmdb.Transaction[bytes]) -> None:
        self._layout = layout
        self._txn = txn
        self._extra_delta: dict[str, int] = {}

    def read(self, db: str, key: bytes) -> bytes | None:
        return self._layout.read(self._txn, db, key)

    def write(self, db: str, key: bytes, value: bytes | None) -> None:
        dbi = self._layout.dbis[db]
        if len(key) <= self._layout.cut:
            if value is None:
                self._txn.delete(key, db=dbi)
            else:
                self._txn.put(key, value, db=dbi)
            return
        self._write_long(db, key, value)

    def _write_long(self, db: str, key: bytes, value: bytes | None) -> None:
        dbi = self._layout.dbis[db]
        bucket_key = self._layout.bucket_key(key)
        raw = self._txn.get(bucket_key, db=dbi)
        entries = [] if raw is None else decode_bucket(raw)
        old_len = len(entries)
        index = bisect.bisect_left(entries, key, key=_entry_key)
        present = index < len(entries) and entries[index][0] == key
        if value is None:
            if not present:
                return
            del entries[index]
        elif present:
            entries[index] = (key, value)
        else:
            entries.insert(index, (key, value))
        if entries:
            self._txn.put(bucket_key, encode_bucket(entries), db=dbi)
        else:
            self._txn.delete(bucket_key, db=dbi)
        delta = max(len(entries) - 1, 0) - max(old_len - 1, 0)
        self._extra_delta[db] = self._extra_delta.get(db, 0) + delta

    def flush_counters(self) -> None:
        for db, delta in self._extra_delta.items():
            if delta:
                extra = self._layout.long_extra(self._txn, db) + delta
                assert extra >= 0, "long-key counter went negative"
                self._txn.put(b"long:" + db.encode(), _I64.pack(extra), db=self._layout.sys)


# -- the commit thread -------------------------------------------------------------------------


class CommitThread:
    """One long-lived worker thread that runs an engine's commits, one at a time, in order.

    A trio worker thread per commit (`trio.to_thread.run_sync`) costs a limiter, a thread-cache
    hand-off and two thread renames (system calls) every time; this thread takes the next job
    from a queue and reschedules the waiting task through the trio token (~36 against ~57 µs of
    CPU per round trip, measured alone).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) in the thread; not cancellable once queued (like to_thread.run_sync)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def job() -> None:
            result = outcome.capture(fn, *args)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                pass

        self._jobs.put(job)

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # a commit under way is waited for, never dropped

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def stop(self, join_timeout_s: float = 5.0) -> None:
        """End the thread after the jobs queued before this call, and wait for it to exit.

        Called once the last job has completed, so the join returns at once; the bound only
        guards against a job that never returns."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(join_timeout_s)
            assert not thread.is_alive(), f"{self._name} did not stop"

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()


# -- the engine --------------------------------------------------------------------------------


class LmdbEngine:
    """The LMDB engine. Start its committer with `open_lmdb_engine`, which owns the task."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size_bytes: int = DEFAULT_LMDB_MAP_SIZE_BYTES,
        sync: bool = True,
        config: CommitConfig | None = None,
    ) -> None:
        if not isinstance(map_size_bytes, int) or not (
            MIN_MAP_SIZE_BYTES <= map_size_bytes <= MAX_MAP_SIZE_BYTES
        ):
            raise ConfigError(
                f"map_size_bytes must be in [{MIN_MAP_SIZE_BYTES}, {MAX_MAP_SIZE_BYTES}], "
                f"got {map_size_bytes!r}"
            )
        self.path = Path(path)
        self.map_size_bytes = map_size_bytes
        self.sync = sync
        self._stats = EngineStats()
        self._committer = GroupCommitter(config or CommitConfig(), self._stats)
        self._closed = False
        # _lock guards _closed and _readers across threads; close waits on _drained (same lock).
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._readers = 0
        self._env_closed = trio.Event()
        # The committer's own worker thread: commits never queue behind other to_thread users.
        self._commit_thread = CommitThread(f"dynacore-commit:{self.path.name}")
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size_bytes,
                max_dbs=len(DATABASES) + 1,
                sync=sync,
                metasync=sync,
                lock=True,
            )
        except lmdb.Error as exc:
            raise StorageError(f"cannot open the LMDB environment at {self.path}: {exc}") from exc
        try:
            self._layout = self._open_layout()
        except BaseException:
            self._env.close()
            raise

    def _open_layout(self) -> _Layout:
        """Open the databases; create or check the format marker and the long-key cut."""
        env = self._env
        try:
            layout = _Layout(env)
            with env.begin(write=True, db=layout.sys) as txn:
                found = txn.get(b"format")
                if found is None:
                    layout.cut = env.max_key_size() - 1
                    txn.put(b"format", FORMAT)
                    txn.put(b"long_key_cut", _U32.pack(layout.cut))
                elif found != FORMAT:
                    raise StorageError(f"{self.path} holds format {found!r}, not {FORMAT!r}")
                else:
                    raw = txn.get(b"long_key_cut")
                    if raw is None or len(raw) != _U32.size:
                        raise StorageError(f"{self.path}: missing or bad long_key_cut")
                    (layout.cut,) = _U32.unpack(raw)
        except lmdb.MapFullError as exc:
            raise StorageFull(f"LMDB map full while creating {self.path}") from exc
        except lmdb.Error as exc:
            raise StorageError(f"cannot set up {self.path}: {exc}") from exc
        if not 0 < layout.cut < env.max_key_size():
            raise StorageError(f"{self.path}: long_key_cut {layout.cut} unsupported by this LMDB")
        return layout

    @property
    def stats(self) -> EngineStats:
        return self._stats

    @property
    def long_key_cut(self) -> int:
        """Keys longer than this many bytes are stored in long-key buckets."""
        return self._layout.cut

    # -- reads (sync, thread-safe) ---------------------------------------------------------

    def _run_read(self, read: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        """Run `read` in a fresh read transaction; close() waits for running reads to finish."""
        with self._lock:
            if self._closed:
                raise StorageClosed("the storage engine is closed")
            self._readers += 1
        try:
            with self._env.begin() as txn:
                return read(txn)
        except lmdb.Error as exc:
            raise StorageError(f"LMDB read failed: {exc}") from exc
        finally:
            with self._lock:
                self._readers -= 1
                if self._closed and not self._readers:
                    self._drained.notify_all()

    def get(self, db: str, key: bytes) -> bytes | None:
        check_db(db)
        check_key(key, self._committer.config.key_size_bytes)
        return self._run_read(lambda txn: self._layout.read(txn, db, key))

    def get_many(self, db: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys` (None: absent), read in one read transaction."""
        check_db(db)
        for key in keys:
            check_key(key, self._committer.config.key_size_bytes)
        read = self._layout.read
        return self._run_read(lambda txn: [read(txn, db, key) for key in keys])

    def scan(
        self, db: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Pairs with start <= key < end (end None: no bound), by key, at most `limit` of them."""
        check_db(db)
        check_scan(start, end, limit)
        return self._run_read(lambda txn: self._layout.scan(txn, db, start, end, limit))

    def count(self, db: str) -> int:
        check_db(db)
        return self._run_read(lambda txn: self._layout.count(txn, db))

    def read_handle(self, db: str) -> tuple[lmdb.Environment, lmdb._Database, int]:
        """(environment, database handle, long-key cut) for a caller that runs its own short
        read transactions on a hot path (the embedded cache's local get). Keys longer than the
        cut must go through `get`. The caller must finish its reads before `aclose`, which
        does not wait for them."""
        check_db(db)
        return self._env, self._layout.dbis[db], self._layout.cut

    # -- writes (group commit) -------------------------------------------------------------

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
        if not self.sync and sum(len(r.ops) for r in batch) <= INLINE_COMMIT_MAX_OPS:
            # No sync to wait for: a small commit only copies pages into the page cache,
            # cheaper on the event loop than a round trip through a worker thread.
            taken, error = self._commit_sync(batch, INLINE_COMMIT_MAX_BYTES)
            await trio.lowlevel.checkpoint()
        else:
            max_bytes = self._committer.config.max_batch_bytes
            taken, error = await self._commit_thread.run(self._commit_sync, batch, max_bytes)
        if error is None:
            return taken, True
        for request in batch[:taken]:
            if request.error is None:  # a request whose function raised keeps its own error
                request.fail(type(error)(str(error)))
        return taken, False

    def _commit_sync(self, batch: list[Request], max_bytes: int) -> tuple[int, StorageError | None]:
        """One write transaction and one sync for the batch (in a worker thread, except the
        small batches of an engine without sync)."""
        txn = self._env.begin(write=True)
        committed = False
        try:
            write_txn = _WriteTxn(self._layout, txn)
            taken = apply_batch(write_txn, batch, max_bytes)
            write_txn.flush_counters()
            txn.commit()
            committed = True
        except (lmdb.Error, StorageError) as exc:
            return len(batch), self._classify(exc, batch)
        finally:
            if not committed:
                txn.abort()
        return taken, None

    def _classify(self, exc: Exception, batch: list[Request]) -> StorageError:
        if isinstance(exc, lmdb.MapFullError):
            return StorageFull(f"LMDB map full (map_size_bytes={self.map_size_bytes}): {exc}")
        if isinstance(exc, lmdb.DiskError) or self._disk_looks_full(batch_bytes(batch)):
            return StorageFull(f"disk full under {self.path}: {exc}")
        if isinstance(exc, StorageError):
            return exc
        return StorageError(f"LMDB commit failed: {exc}")

    def _disk_looks_full(self, needed_bytes: int) -> bool:
        """After an I/O error: is there no room for the batch (free space, or RLIMIT_FSIZE)?"""
        room_bytes = max(FULL_DISK_SLACK_BYTES, 2 * needed_bytes)
        try:
            fs = os.statvfs(self.path)
            if fs.f_bavail * fs.f_frsize < room_bytes:
                return True
            soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            data_bytes = os.path.getsize(self.path / "data.mdb")
        except OSError:
            return False
        return soft != resource.RLIM_INFINITY and data_bytes + room_bytes > soft

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._committer.run(self._commit, task_status=task_status)

    async def aclose(self) -> None:
        """Commit what is queued, wait for running reads, close the environment (idempotent)."""
        await self._committer.aclose()
        with self._lock:
            closing_here = not self._closed
            self._closed = True
        if closing_here:
            try:
                await self._commit_thread.run(self._close_env)
            finally:
                self._commit_thread.stop()
            self._env_closed.set()
        await self._env_closed.wait()

    def _close_env(self) -> None:
        with self._drained:
            while self._readers:
                self._drained.wait()
        try:
            if not self.sync:
                self._env.sync(True)
        finally:
            self._env.close()


@asynccontextmanager
async def open_lmdb_engine(
    path: str | os.PathLike[str],
    map_size_bytes: int = DEFAULT_LMDB_MAP_SIZE_BYTES,
    sync: bool = True,
    config: CommitConfig | None = None,
) -> AsyncIterator[LmdbEngine]:
    """Open the engine and run its committer in a nursery owned by this context.

    `sync=False` is the unsafe fast mode (no sync, no metasync): a crash of the machine may
    undo the last acknowledged commits; a crash of the process alone loses nothing.
    """
    engine = LmdbEngine(path, map_size_bytes, sync, config)
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
