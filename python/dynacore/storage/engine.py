"""The storage Engine protocol, argument checks, and the group-commit queue both engines share.

Writers never touch the store directly: `update`/`update_many` put a `Request` on a bounded queue
(`GroupCommitter`) and wait. One committer task per engine takes everything queued (up to
`max_batch_ops` operations, cut at `max_batch_bytes` written), applies it inside ONE write
transaction with `apply_batch`, makes it durable with ONE sync, and only then wakes every waiter
with its result. An update function that raises fails only its own request; a full map or disk
fails every request of that batch and applies none of it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from dynacore.errors import ConfigError, KeyTooLarge, LimitExceeded, StorageClosed, StorageError
from dynacore.limits import DEFAULT_GROUP_COMMIT_MAX_BATCH, KIB, MIB

log = logging.getLogger(__name__)

Update = Callable[[bytes | None], bytes | None]
"""Maps the current value (None: absent) to the new one (None: delete). Runs inside the write
transaction, possibly in a worker thread: it must be quick, pure, and must not call into trio."""

Done = Callable[[bytes | None, Exception | None], None]
"""on_done(result, error) of `update_soon`, called from the committer task once the update is
durable (error None) or failed (the error `update` would raise)."""

DATABASES: tuple[str, ...] = ("data", "hints", "meta")

# A storage key is a client key (<= 64 KiB, the ceiling of Limits.key_size_bytes) or a hint key
# (target node id <= 255 bytes, a separator, then a client key): this bound covers both.
MAX_STORAGE_KEY_SIZE_BYTES = 64 * KIB + 1 * KIB
DEFAULT_MAX_BATCH_OPS = DEFAULT_GROUP_COMMIT_MAX_BATCH
DEFAULT_MAX_BATCH_BYTES = 16 * MIB
DEFAULT_QUEUE_OPS = 8 * DEFAULT_MAX_BATCH_OPS
MAX_BATCH_OPS_CEILING = 1 << 20


class Engine(Protocol):
    """A durable (or simulated) key-value store with named databases and group commit."""

    @property
    def stats(self) -> EngineStats: ...

    def get(self, db: str, key: bytes) -> bytes | None: ...

    def get_many(self, db: str, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def scan(
        self, db: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def count(self, db: str) -> int: ...

    async def update(self, db: str, key: bytes, fn: Update) -> bytes | None: ...

    async def update_many(
        self, db: str, ops: Sequence[tuple[bytes, Update]]
    ) -> list[bytes | None]: ...

    def update_soon(self, db: str, key: bytes, fn: Update, on_done: Done) -> bool: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class EngineStats:
    """Counters of one engine; only the trio thread writes them."""

    commits: int = 0  # batches made durable
    ops: int = 0  # operations acknowledged as committed
    requests: int = 0  # update/update_many calls acknowledged as committed
    failed_ops: int = 0  # operations whose update function raised
    failed_commits: int = 0  # batches that failed as a whole (full map or disk, I/O error)
    max_batch_ops: int = 0  # the largest batch committed, in operations


@dataclass(frozen=True, slots=True)
class CommitConfig:
    """The bounds of the group-commit queue and of one batch."""

    max_batch_ops: int = DEFAULT_MAX_BATCH_OPS
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    queue_ops: int = DEFAULT_QUEUE_OPS
    key_size_bytes: int = MAX_STORAGE_KEY_SIZE_BYTES

    def __post_init__(self) -> None:
        _check_int("max_batch_ops", self.max_batch_ops, 1, MAX_BATCH_OPS_CEILING)
        _check_int("max_batch_bytes", self.max_batch_bytes, 1, 1 << 40)
        _check_int("queue_ops", self.queue_ops, self.max_batch_ops, 64 * MAX_BATCH_OPS_CEILING)
        _check_int("key_size_bytes", self.key_size_bytes, 1, MAX_STORAGE_KEY_SIZE_BYTES)


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


# -- argument checks shared by both engines --------------------------------------------------------


def check_db(db: str) -> None:
    if db not in DATABASES:
        raise ConfigError(f"unknown database {db!r}; the databases are {', '.join(DATABASES)}")


def check_key(key: bytes, key_size_bytes: int) -> None:
    if not isinstance(key, bytes):
        raise ConfigError(f"keys are bytes, got {type(key).__name__}")
    if not key:
        raise LimitExceeded("the empty key cannot be stored")
    if len(key) > key_size_bytes:
        raise KeyTooLarge(f"key of {len(key)} bytes exceeds the limit of {key_size_bytes} bytes")


def check_scan(start: bytes, end: bytes | None, limit: int | None) -> None:
    if not isinstance(start, bytes) or not (end is None or isinstance(end, bytes)):
        raise ConfigError("scan bounds are bytes (end may be None)")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ConfigError(f"scan limit must be None or an integer >= 0, got {limit!r}")


# -- requests and their application inside one write transaction ----------------------------------


class Request:
    """One update/update_many call: its operations, then its results or its error."""

    __slots__ = ("db", "done", "error", "on_done", "ops", "results")

    def __init__(
        self,
        db: str,
        ops: Sequence[tuple[bytes, Update]],
        on_done: Callable[[Request], None] | None = None,
    ) -> None:
        self.db = db
        self.ops = ops
        self.done = trio.Event()
        self.on_done = on_done  # called once finished, after `done` is set
        self.results: list[bytes | None] | None = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.results = None
        self.error = error

    def finish(self) -> None:
        """The outcome is final: wake the waiter (or call on_done)."""
        self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:
                log.exception("a storage completion callback failed")


class WriteTxn(Protocol):
    """What `apply_batch` needs of an open write transaction."""

    def read(self, db: str, key: bytes) -> bytes | None: ...

    def write(self, db: str, key: bytes, value: bytes | None) -> None: ...


def apply_request(txn: WriteTxn, request: Request) -> int:
    """Run the request's functions; write its results only if none raised. Returns bytes written.

    A request is atomic: its operations see each other's results in order (an overlay), and either
    all of its writes enter the transaction or none do. A key left as it was is not written (a
    batch that changes nothing makes LMDB skip its sync).
    """
    overlay: dict[bytes, bytes | None] = {}
    stored: dict[bytes, bytes | None] = {}  # each key's value before this request
    results: list[bytes | None] = []
    for key, fn in request.ops:
        if key in overlay:
            old = overlay[key]
        else:
            old = stored[key] = txn.read(request.db, key)
        try:
            new = fn(old)
        except Exception as exc:  # the caller's function failed: only this request fails
            request.fail(exc)
            return 0
        if new is not None and not isinstance(new, bytes):
            request.fail(StorageError(f"update function returned {type(new).__name__}, not bytes"))
            return 0
        overlay[key] = new
        results.append(new)
    written_bytes = 0
    for key, value in overlay.items():
        if value == stored[key]:
            continue  # unchanged (a merge that brought nothing new): no write, nothing to sync
        txn.write(request.db, key, value)
        written_bytes += len(key) + (len(value) if value is not None else 0)
    request.results = results
    return written_bytes


def apply_batch(txn: WriteTxn, batch: Sequence[Request], max_batch_bytes: int) -> int:
    """Apply requests in order until `max_batch_bytes` are written; return how many were applied.

    The first request is always applied, however large, so that every batch makes progress.
    """
    written_bytes = 0
    for index, request in enumerate(batch):
        if index > 0 and written_bytes >= max_batch_bytes:
            return index
        written_bytes += apply_request(txn, request)
    return len(batch)


def batch_bytes(batch: Sequence[Request]) -> int:
    """Bytes the applied requests of a batch wrote (keys plus new values)."""
    total = 0
    for request in batch:
        for (key, _fn), value in zip(request.ops, request.results or (), strict=False):
            total += len(key) + (len(value) if value is not None else 0)
    return total


async def submit_ops(
    committer: GroupCommitter, db: str, ops: Sequence[tuple[bytes, Update]]
) -> list[bytes | None]:
    """Check an update_many call and hand it to the committer as one atomic request."""
    check_db(db)
    ops = list(ops)
    config = committer.config
    if len(ops) > config.max_batch_ops:
        raise LimitExceeded(f"{len(ops)} operations exceed max_batch_ops={config.max_batch_ops}")
    for key, fn in ops:
        check_key(key, config.key_size_bytes)
        if not callable(fn):
            raise ConfigError(f"an update function must be callable, got {type(fn).__name__}")
    if not ops:
        await trio.lowlevel.checkpoint()
        if committer.closing:
            raise StorageClosed("the storage engine is closed")
        return []
    return await committer.submit(Request(db, ops))


def submit_one_soon(
    committer: GroupCommitter, db: str, key: bytes, fn: Update, on_done: Done
) -> bool:
    """`update(db, key, fn)` without waiting, when the queue has room: `on_done(result, error)`
    follows once durable (or failed). False when it cannot queue now (nothing was queued)."""
    check_db(db)
    check_key(key, committer.config.key_size_bytes)
    if not callable(fn):
        raise ConfigError(f"an update function must be callable, got {type(fn).__name__}")

    def report(request: Request) -> None:
        error = request.error
        if error is None:
            assert request.results is not None
            on_done(request.results[0], None)
        elif isinstance(error, Exception):
            on_done(None, error)
        else:
            on_done(None, StorageError(f"the update did not commit: {error!r}"))

    return committer.submit_soon(Request(db, [(key, fn)], report))


Commit = Callable[[list[Request]], Awaitable[tuple[int, bool]]]
"""Applies a batch in one transaction and makes it durable. Returns how many requests it took
(the rest go back to the head of the queue) and whether the transaction committed; when it did
not, the commit has failed each taken request (StorageFull, StorageError) instead of raising."""


class GroupCommitter:
    """The bounded queue of write requests and the committer loop that drains it."""

    def __init__(self, config: CommitConfig, stats: EngineStats) -> None:
        self.config = config
        self.stats = stats
        self._queue: deque[Request] = deque()
        self._queued_ops = 0
        self._space_freed = trio.Event()
        self._wake = trio.Event()
        self._inflight: list[Request] = []
        self._closing = False
        self._crashed = False
        self._running = False
        self._stopped = trio.Event()
        self._scope: trio.CancelScope | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued_ops(self) -> int:
        """Operations accepted and not yet finished (queued or in the batch being committed)."""
        return self._queued_ops

    async def submit(self, request: Request) -> list[bytes | None]:
        """Queue the request (waiting while the queue is full), then wait for its commit."""
        n_ops = len(request.ops)
        assert 0 < n_ops <= self.config.max_batch_ops
        # A cancel point now; the schedule point is the wait for `done` below, which always parks.
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._wait_for_space(n_ops)
        if self._closing or not self._running:
            raise StorageClosed("the storage engine is closed")
        self._queue.append(request)
        self._queued_ops += n_ops
        assert self._queued_ops <= self.config.queue_ops
        self._wake.set()
        # Cancelled here, the request still commits or fails: its outcome is then unknown.
        await request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.results is not None and len(request.results) == n_ops
        return request.results

    def submit_soon(self, request: Request) -> bool:
        """Queue the request if there is room now (no waiting); False when there is not or the
        engine is closing. Its `on_done` reports the outcome."""
        n_ops = len(request.ops)
        assert 0 < n_ops <= self.config.max_batch_ops
        if self._closing or not self._running:
            return False
        if self._queued_ops + n_ops > self.config.queue_ops:
            return False
        self._queue.append(request)
        self._queued_ops += n_ops
        self._wake.set()
        return True

    async def _wait_for_space(self, n_ops: int) -> None:
        """Backpressure: wait until `n_ops` more fit in the queue (returns with no checkpoint
        after the last check, so the caller can append at once)."""
        while self._queued_ops + n_ops > self.config.queue_ops:
            if self._closing:
                raise StorageClosed("the storage engine is closed")
            await self._space_freed.wait()

    def _take_batch(self) -> list[Request]:
        batch: list[Request] = []
        batch_ops = 0
        while self._queue and (
            not batch or batch_ops + len(self._queue[0].ops) <= self.config.max_batch_ops
        ):
            request = self._queue.popleft()
            batch.append(request)
            batch_ops += len(request.ops)
        return batch

    async def run(self, commit: Commit, *, task_status: trio.TaskStatus[None]) -> None:
        """The committer loop: one batch at a time until closed and drained (or crashed)."""
        assert not self._running, "a committer runs once"
        self._running = True
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                while True:
                    while not self._queue and not self._closing:
                        self._wake = trio.Event()
                        await self._wake.wait()
                    if not self._queue:
                        break
                    await self._commit_one(commit)
        finally:
            self._running = False
            self._closing = True
            self._fail_pending(StorageClosed("the storage engine closed before this commit"))
            self._stopped.set()

    async def _commit_one(self, commit: Commit) -> None:
        batch = self._take_batch()
        self._inflight = batch
        taken, committed = await commit(batch)
        if self._crashed:  # crash() already failed this batch and everything queued
            return
        assert 1 <= taken <= len(batch)
        self._inflight = []
        self._queue.extendleft(reversed(batch[taken:]))  # cut by bytes: first in the next batch
        self._queued_ops -= sum(len(request.ops) for request in batch[:taken])
        assert self._queued_ops >= 0
        self._space_freed.set()
        self._space_freed = trio.Event()
        self._finish(batch[:taken], committed)

    def _finish(self, batch: list[Request], committed: bool) -> None:
        stats = self.stats
        if committed:
            ok = [request for request in batch if request.error is None]
            batch_ops = sum(len(request.ops) for request in ok)
            stats.commits += 1 if ok else 0
            stats.ops += batch_ops
            stats.requests += len(ok)
            stats.max_batch_ops = max(stats.max_batch_ops, batch_ops)
            stats.failed_ops += sum(len(r.ops) for r in batch if r.error is not None)
        else:
            assert all(request.error is not None for request in batch)
            stats.failed_commits += 1
        for request in batch:
            request.finish()

    def _fail_pending(self, error: StorageClosed) -> None:
        pending = self._inflight + list(self._queue)
        self._inflight = []
        self._queue.clear()
        self._queued_ops = 0
        for request in pending:
            request.fail(StorageClosed(str(error)))
            request.finish()
        self._space_freed.set()
        self._wake.set()

    async def aclose(self) -> None:
        """Stop accepting requests, commit what is queued, and wait for the committer to stop."""
        self._closing = True
        self._wake.set()
        self._space_freed.set()
        if self._running:
            await self._stopped.wait()
        else:
            await trio.lowlevel.checkpoint()

    def crash(self) -> None:
        """Stop at once: the batch in flight and everything queued fail with StorageClosed."""
        self._closing = True
        self._crashed = True
        if self._scope is not None:
            self._scope.cancel()
        self._fail_pending(StorageClosed("the storage engine crashed before this commit"))
