"""Ownership handoff: streaming moving partitions to their new owners after a commit, applying
received batches, and the drop sweep that removes data a node no longer replicates.

After a commit (a pending ring), each moving partition has one *sender*: the first node of its
current preference list that the failure detector believes up (they all hold it). Before its
first stream of an epoch a sender pushes its state to every member (so that every coordinator
writes to the old and the new owners from then on), then scans its data once and streams every
key of its partitions to their targets in batches bounded in objects and bytes, several batches
in flight per target. A target merges each object with versions.sync, like a replica put, and
acks once durable. When every batch is acked, the sender confirms those partitions in the
cluster state (gossiped); the last confirmation lets `finish_if_done` switch the ring.

The drop sweep runs after every epoch change (and again every `sweep_interval_s` until a sweep
finds nothing, at least `min_sweeps` times): every stored key that this node is not an owner of
(`owners_for` of the current state, the key's namespace replication factor) is first sent to all
its owners, and deleted here only once every owner acked it durably, and only if it did not
change meanwhile. So a node that left holds no data that is not also on the new owners, and late
writes from coordinators with an old view end up where they belong.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from dynacore import objects
from dynacore._backend import versions
from dynacore.cluster.gossip import Gossiper
from dynacore.cluster.health import DetectorHealth
from dynacore.cluster.protocol import SweepInfo, TransferRow
from dynacore.cluster.state import ClusterState, Transfer
from dynacore.errors import ConfigError, DynacoreError, ProtocolError, Unavailable
from dynacore.limits import KIB, MIB
from dynacore.storage import Engine

log = logging.getLogger(__name__)

DATA_DB = "data"
DEFAULT_BATCH_MAX_OBJECTS = 1000
DEFAULT_BATCH_MAX_BYTES = 1 * MIB
MAX_BATCH_OBJECTS = 100_000  # the most one HANDOFF_BATCH may carry (receiver's bound)
BATCH_HEADROOM_BYTES = 64 * KIB  # frame header and field tags around a batch
ALL_PARTITIONS = -1  # the partition field of a batch that mixes partitions (the drop sweep)

SendBatch = Callable[[str, int, list[bytes], list[bytes]], Awaitable[None]]
"""send(target node, partition, keys, sets): returns once the target acked durably; raises a
DynacoreError when it could not."""
Acked = Callable[[str, Mapping[int, tuple[int, int]]], None]
"""on_acked(target, {partition: (objects, bytes)}) after each acked batch."""


class Partitioner(Protocol):
    """What the streaming needs of a ring."""

    def partitions_of(self, keys: Sequence[bytes]) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class HandoffConfig:
    """Bounds and pacing of the handoff and the drop sweep."""

    batch_max_objects: int = DEFAULT_BATCH_MAX_OBJECTS
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    scan_page_keys: int = 256  # bounds the memory of one scan page (values up to 1 MiB each)
    in_flight_batches: int = 4  # per target
    send_attempts: int = 5
    retry_backoff_s: float = 0.2  # doubled after each failed attempt
    tick_s: float = 1.0  # how often the manager looks again without a state change
    settle_s: float = 1.0  # after the announce, before the first stream of an epoch
    sweep_interval_s: float = 5.0
    min_sweeps: int = 2  # sweeps per epoch change, at least (late writes of old views)

    def __post_init__(self) -> None:
        checks = {
            "batch_max_objects": (self.batch_max_objects, 1, MAX_BATCH_OBJECTS),
            "batch_max_bytes": (self.batch_max_bytes, 1 * KIB, 256 * MIB),
            "scan_page_keys": (self.scan_page_keys, 1, 1_000_000),
            "in_flight_batches": (self.in_flight_batches, 1, 64),
            "send_attempts": (self.send_attempts, 1, 100),
            "min_sweeps": (self.min_sweeps, 1, 100),
        }
        for name, (value, low, high) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        for name, seconds in (
            ("retry_backoff_s", self.retry_backoff_s),
            ("tick_s", self.tick_s),
            ("settle_s", self.settle_s),
            ("sweep_interval_s", self.sweep_interval_s),
        ):
            if not 0 <= seconds <= 3600:
                raise ConfigError(f"{name} must be in [0, 3600] s, got {seconds!r}")

    @staticmethod
    def for_interval(gossip_interval_s: float, frame_size_bytes: int) -> HandoffConfig:
        """Pacing tied to the gossip interval; batches that fit one frame."""
        return HandoffConfig(
            batch_max_bytes=max(1 * KIB, min(DEFAULT_BATCH_MAX_BYTES, frame_size_bytes // 2)),
            tick_s=gossip_interval_s,
            settle_s=gossip_interval_s,
            sweep_interval_s=max(1.0, 5 * gossip_interval_s),
        )


# -- batches -------------------------------------------------------------------------------------


@dataclass
class _Batch:
    keys: list[bytes] = field(default_factory=list)
    sets: list[bytes] = field(default_factory=list)
    size_bytes: int = 0
    counts: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> objects, bytes

    def full_with(self, item_bytes: int, config: HandoffConfig) -> bool:
        """True when adding an item of item_bytes would break a bound (never for an empty one)."""
        if not self.keys:
            return False
        return (
            len(self.keys) >= config.batch_max_objects
            or self.size_bytes + item_bytes > config.batch_max_bytes
        )

    def add(self, partition: int, key: bytes, value: bytes) -> None:
        self.keys.append(key)
        self.sets.append(value)
        item_bytes = len(key) + len(value)
        self.size_bytes += item_bytes
        objects_so_far, bytes_so_far = self.counts.get(partition, (0, 0))
        self.counts[partition] = (objects_so_far + 1, bytes_so_far + item_bytes)


def scan_pages(store: Engine, page_keys: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """The data database in key order, `page_keys` pairs at a time."""
    start = b""
    while True:
        page = store.scan(DATA_DB, start, None, page_keys)
        if not page:
            return
        yield page
        start = page[-1][0] + b"\x00"


async def _send_with_retry(
    send: SendBatch, target: str, partition: int, batch: _Batch, config: HandoffConfig
) -> None:
    backoff_s = config.retry_backoff_s
    for attempt in range(1, config.send_attempts + 1):
        try:
            await send(target, partition, batch.keys, batch.sets)
            return
        except DynacoreError as exc:
            if attempt == config.send_attempts:
                raise Unavailable(
                    f"handoff batch of {len(batch.keys)} objects to {target} failed "
                    f"{attempt} times: {exc!r}"
                ) from exc
            log.info("handoff batch to %s failed (attempt %d): %r", target, attempt, exc)
            await trio.sleep(backoff_s)
            backoff_s *= 2


async def _sender_loop(
    target: str,
    partition: int,
    receive: trio.MemoryReceiveChannel[_Batch],
    send: SendBatch,
    config: HandoffConfig,
    on_acked: Acked,
) -> None:
    async with receive:
        async for batch in receive:
            await _send_with_retry(send, target, partition, batch, config)
            on_acked(target, batch.counts)


async def stream_partitions(
    store: Engine,
    ring: Partitioner,
    targets_by_partition: Mapping[int, Sequence[str]],
    send: SendBatch,
    config: HandoffConfig,
    on_acked: Acked | None = None,
) -> None:
    """Send every stored key of the given partitions to each of its targets; returns once every
    batch was acked, raises Unavailable when a target could not take one after the retries."""
    targets = sorted({t for ts in targets_by_partition.values() for t in ts})
    partition = (
        next(iter(targets_by_partition)) if len(targets_by_partition) == 1 else ALL_PARTITIONS
    )
    acked: Acked = on_acked if on_acked is not None else (lambda _t, _c: None)
    try:
        await _stream(store, ring, targets_by_partition, send, config, acked, targets, partition)
    except BaseExceptionGroup as group:
        raise _single_error(group) from None


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first DynacoreError of a nursery's group when every leaf is one (the rest are the
    same failure seen by sibling tasks), else the group itself."""
    matched, rest = group.split(DynacoreError)
    if matched is None or rest is not None:
        return group
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


async def _stream(
    store: Engine,
    ring: Partitioner,
    targets_by_partition: Mapping[int, Sequence[str]],
    send: SendBatch,
    config: HandoffConfig,
    acked: Acked,
    targets: list[str],
    partition: int,
) -> None:
    async with trio.open_nursery() as nursery:
        channels: dict[str, trio.MemorySendChannel[_Batch]] = {}
        for target in targets:
            send_channel, receive_channel = trio.open_memory_channel[_Batch](
                config.in_flight_batches
            )
            channels[target] = send_channel
            async with receive_channel:
                for _ in range(config.in_flight_batches):
                    nursery.start_soon(
                        _sender_loop,
                        target,
                        partition,
                        receive_channel.clone(),
                        send,
                        config,
                        acked,
                    )
        builders = {target: _Batch() for target in targets}
        for page in scan_pages(store, config.scan_page_keys):
            parts = ring.partitions_of([key for key, _ in page])
            for (key, value), part in zip(page, parts, strict=True):
                for target in targets_by_partition.get(part, ()):
                    builder = builders[target]
                    if builder.full_with(len(key) + len(value), config):
                        await channels[target].send(builder)
                        builder = builders[target] = _Batch()
                    builder.add(part, key, value)
            await trio.lowlevel.checkpoint()
        for target, builder in builders.items():
            if builder.keys:
                await channels[target].send(builder)
            await channels[target].aclose()


# -- receiving -----------------------------------------------------------------------------------


def _merge_with(incoming: bytes) -> Callable[[bytes | None], bytes]:
    def merge(old: bytes | None) -> bytes:
        return incoming if old is None else versions.sync(old, incoming)

    return merge


async def apply_batch(store: Engine, keys: Sequence[object], sets: Sequence[object]) -> int:
    """Merge a received batch into the data database (durable on return); the count applied.
    ProtocolError / VersionError for a malformed batch, before anything is written."""
    if len(keys) != len(sets):
        raise ProtocolError(f"handoff batch has {len(keys)} keys but {len(sets)} sets")
    if len(keys) > MAX_BATCH_OBJECTS:
        raise ProtocolError(f"handoff batch of {len(keys)} objects exceeds {MAX_BATCH_OBJECTS}")
    ops: list[tuple[bytes, Callable[[bytes | None], bytes | None]]] = []
    for key, value in zip(keys, sets, strict=True):
        if not isinstance(key, bytes) or not isinstance(value, bytes) or not key:
            raise ProtocolError("handoff batch items must be non-empty bytes keys and bytes sets")
        versions.size(value)  # VersionError when malformed
        ops.append((key, _merge_with(value)))
    if ops:
        await store.update_many(DATA_DB, ops)
    return len(ops)


# -- the manager ---------------------------------------------------------------------------------


@dataclass
class _Row:
    partition: int
    sender: str
    target: str
    objects: int = 0
    size_bytes: int = 0
    started_s: float | None = None
    finished_s: float | None = None
    status: str = "waiting"

    def report(self, now_s: float) -> TransferRow:
        if self.started_s is None:
            elapsed_s = 0.0
        else:
            elapsed_s = (self.finished_s if self.finished_s is not None else now_s) - self.started_s
        return TransferRow(
            self.partition,
            self.sender,
            self.target,
            self.objects,
            self.size_bytes,
            float(elapsed_s),
            self.status,
        )


@dataclass
class _Sweep:
    epoch: int = -1  # the epoch the current sweep series is for
    done_at_epoch: int = 0  # sweeps completed in this series
    swept_epoch: int = -1  # the last epoch with a clean sweep
    stale_keys: int = 0
    failed_keys: int = 0
    sweeps: int = 0
    next_at_s: float = 0.0
    required: int = 1


class Handoff:
    """Drives handoff and drop sweeps for one node from its gossiped state."""

    def __init__(
        self,
        *,
        node_id: str,
        store: Engine,
        gossiper: Gossiper,
        health: DetectorHealth,
        send: SendBatch,
        n_for: Callable[[str], int],
        config: HandoffConfig,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self._store = store
        self._gossiper = gossiper
        self._health = health
        self._send = send
        self._n_for = n_for
        self._rows: dict[tuple[int, str], _Row] = {}
        self._rows_epoch = -1
        self._announced_epoch = -1
        self._retry_at_s = 0.0
        self._sweep = _Sweep()

    # -- reporting -----------------------------------------------------------------------------

    def rows(self) -> list[TransferRow]:
        now_s = trio.current_time()
        return [self._rows[k].report(now_s) for k in sorted(self._rows)]

    def sweep_info(self) -> SweepInfo:
        s = self._sweep
        return SweepInfo(swept_epoch=s.swept_epoch, stale_keys=s.stale_keys, sweeps=s.sweeps)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Look at the state on every change (and every tick); act on what it asks for."""
        while True:
            state = self._gossiper.state
            if state is not None:
                try:
                    await self.step(state)
                except DynacoreError as exc:  # e.g. a state that changed under us: look again
                    log.warning("%s: handoff step failed: %r", self.node_id, exc)
            with trio.move_on_after(self.config.tick_s):
                await self._gossiper.wait_changed()

    async def step(self, state: ClusterState) -> None:
        if state.pending is not None:
            await self._confirm_ownerless(state)
            if trio.current_time() >= self._retry_at_s:
                await self._stream_mine(state)
        await self._maybe_sweep(state)

    def sender_of(self, transfer: Transfer) -> str:
        """Who streams a transfer: its first source believed up (this node counts as up)."""
        for source in transfer.sources:
            if source == self.node_id or self._health.is_up(source):
                return source
        return transfer.sources[0]

    async def _confirm_ownerless(self, state: ClusterState) -> None:
        """Transfers with no target only change the owner: confirm them at once (every node
        may, the result is the same)."""
        trivial = [t.partition for t in state.transfers() if not t.targets and not t.confirmed]
        if trivial:
            await self._gossiper.update(lambda s: _confirm_same(s, state, trivial))
            await self._gossiper.announce()

    async def _stream_mine(self, state: ClusterState) -> None:
        mine = [
            t
            for t in state.transfers()
            if t.targets and not t.confirmed and self.sender_of(t) == self.node_id
        ]
        if not mine:
            return
        if self._announced_epoch != state.epoch:
            answered = await self._gossiper.announce()
            log.info("%s: handoff of epoch %d announced to %s", self.node_id, state.epoch, answered)
            await trio.sleep(self.config.settle_s)
            self._announced_epoch = state.epoch
        rows = self._start_rows(state.epoch, mine)
        try:
            await stream_partitions(
                self._store,
                state.ring,
                {t.partition: t.targets for t in mine},
                self._send,
                self.config,
                self._on_acked,
            )
        except DynacoreError as exc:
            log.warning("%s: handoff of %d partitions failed: %r", self.node_id, len(mine), exc)
            self._finish_rows(rows, "failed")
            self._retry_at_s = trio.current_time() + 2 * self.config.tick_s
            return
        self._finish_rows(rows, "sent")
        partitions = [t.partition for t in mine]
        await self._gossiper.update(lambda s: _confirm_same(s, state, partitions))
        log.info("%s: handed off partitions %s", self.node_id, partitions)
        await self._gossiper.announce()  # the confirmation (maybe the switch) reaches all at once

    def _start_rows(self, epoch: int, transfers: list[Transfer]) -> list[_Row]:
        if self._rows_epoch != epoch:
            self._rows.clear()
            self._rows_epoch = epoch
        now_s = trio.current_time()
        rows = []
        for transfer in transfers:
            for target in transfer.targets:
                row = _Row(transfer.partition, self.node_id, target, started_s=now_s)
                row.status = "streaming"
                self._rows[(transfer.partition, target)] = row
                rows.append(row)
        return rows

    def _finish_rows(self, rows: list[_Row], status: str) -> None:
        now_s = trio.current_time()
        for row in rows:
            row.status = status
            row.finished_s = now_s

    def _on_acked(self, target: str, counts: Mapping[int, tuple[int, int]]) -> None:
        for partition, (objects_acked, bytes_acked) in counts.items():
            row = self._rows.get((partition, target))
            if row is not None:
                row.objects += objects_acked
                row.size_bytes += bytes_acked

    # -- the drop sweep ------------------------------------------------------------------------

    async def _maybe_sweep(self, state: ClusterState) -> None:
        sweep, now_s = self._sweep, trio.current_time()
        if sweep.epoch != state.epoch:
            first = sweep.epoch == -1  # at start: one sweep (a crash may have cut one short)
            sweep.epoch, sweep.done_at_epoch, sweep.next_at_s = state.epoch, 0, now_s
            sweep.required = 1 if first else self.config.min_sweeps
        clean = sweep.stale_keys == 0 and sweep.failed_keys == 0
        if sweep.done_at_epoch >= sweep.required and clean:
            return
        if now_s < sweep.next_at_s:
            return
        stale, failed = await self.sweep(state)
        sweep.sweeps += 1
        sweep.done_at_epoch += 1
        sweep.stale_keys, sweep.failed_keys = stale, failed
        sweep.next_at_s = trio.current_time() + self.config.sweep_interval_s
        if stale == 0 and failed == 0:
            sweep.swept_epoch = state.epoch
        elif stale:
            log.info("%s: sweep moved %d keys (%d kept for now)", self.node_id, stale, failed)

    async def sweep(self, state: ClusterState) -> tuple[int, int]:
        """One pass: hand keys this node does not replicate to their owners and drop them.
        (stale keys found, keys kept because an owner did not ack)."""
        stale_total = failed_total = 0
        for page in scan_pages(self._store, self.config.scan_page_keys):
            parts = state.ring.partitions_of([key for key, _ in page])
            stale = []
            for (key, value), part in zip(page, parts, strict=True):
                owners = state.owners_for(part, self._n_of(key, state))
                if self.node_id not in owners:
                    stale.append((key, value, owners))
            if stale:
                stale_total += len(stale)
                failed_total += await self._forward_and_drop(stale)
            await trio.lowlevel.checkpoint()
        return stale_total, failed_total

    def _n_of(self, stored_key: bytes, state: ClusterState) -> int:
        try:
            namespace, _key = objects.split_object_key(stored_key)
            n = self._n_for(namespace)
        except DynacoreError:
            n = state.n_val  # unknown namespace: keep it wherever any replica would be
        return min(n, state.n_val)

    async def _forward_and_drop(self, stale: list[tuple[bytes, bytes, tuple[str, ...]]]) -> int:
        """Send each key to all its owners; delete the ones every owner acked (and that did not
        change meanwhile). The number kept."""
        per_owner: dict[str, list[int]] = {}
        for index, (_key, _value, owners) in enumerate(stale):
            for owner in owners:
                per_owner.setdefault(owner, []).append(index)
        acked: dict[str, bool] = {}

        async def forward(owner: str, indexes: list[int]) -> None:
            pairs = [(stale[i][0], stale[i][1]) for i in indexes]
            try:
                await _send_pairs(self._send, owner, pairs, self.config)
                acked[owner] = True
            except DynacoreError as exc:
                log.info("%s: sweep could not hand keys to %s: %r", self.node_id, owner, exc)

        async with trio.open_nursery() as nursery:
            for owner, indexes in per_owner.items():
                nursery.start_soon(forward, owner, indexes)
        drops = [
            (key, _drop_if_unchanged(value))
            for key, value, owners in stale
            if all(acked.get(owner, False) for owner in owners)
        ]
        if drops:
            await self._store.update_many(DATA_DB, drops)
        return len(stale) - len(drops)


async def _send_pairs(
    send: SendBatch,
    target: str,
    pairs: list[tuple[bytes, bytes]],
    config: HandoffConfig,
) -> None:
    batch = _Batch()
    for key, value in pairs:
        if batch.full_with(len(key) + len(value), config):
            await _send_with_retry(send, target, ALL_PARTITIONS, batch, config)
            batch = _Batch()
        batch.add(ALL_PARTITIONS, key, value)
    if batch.keys:
        await _send_with_retry(send, target, ALL_PARTITIONS, batch, config)


def _drop_if_unchanged(sent: bytes) -> Callable[[bytes | None], bytes | None]:
    def drop(old: bytes | None) -> bytes | None:
        return None if old == sent else old

    return drop


def _confirm_same(current: ClusterState, seen: ClusterState, partitions: list[int]) -> ClusterState:
    """Confirm `partitions` in `current` if it is still the handoff that `seen` was."""
    if current.pending is None or seen.pending is None or current.epoch != seen.epoch:
        return current
    if current.ring != seen.ring or current.pending != seen.pending:
        return current
    moving = set(current.moving_partitions())
    return current.confirm_handoffs([p for p in partitions if p in moving])
