"""Batched replica reads: the REPLICA_GETs a coordinator sends one peer within one scheduler tick
leave as one REPLICA_GET_MANY message, answered by one reply (see benches/README.md, "Data path
profile": the per-message cost of framing, dispatch and RPC bookkeeping is paid once per batch).

`ReadBatcher.add` queues a read for a peer and wakes the batcher's task, which runs after every
task runnable now has queued its reads too, and sends each peer's reads (a single read goes as a
plain REPLICA_GET). A read a batch could not carry — no connection or slot at flush time, a reply
that answered only a prefix (the reply budget), or a peer that does not know REPLICA_GET_MANY —
goes to the `single` fallback (a REPLICA_GET of its own); an unreachable peer fails the batch's
reads, as it would fail each of them. `answer_many` is the replica's side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from dynacore import messages
from dynacore.errors import (
    AuthError,
    ConnectionLost,
    DynacoreError,
    LimitExceeded,
    ProtocolError,
    RequestTimeout,
)
from dynacore.limits import Limits
from dynacore.net.messages import Value
from dynacore.net.rpc import RpcClient

log = logging.getLogger(__name__)

BATCH_MAX_KEYS = 256  # reads in one REPLICA_GET_MANY; more leave in several messages
REPLY_BUDGET_FRACTION = 4  # a reply carries sets up to frame_size_bytes / this, then stops
_UNREACHABLE = (ConnectionLost, RequestTimeout, OSError, AuthError)

Done = Callable[[list[Value] | None], None]
"""A read's outcome as REPLICA_GET reply fields ([set or None]), or None: the peer failed."""
Single = Callable[[str, bytes, Done], None]
"""The fallback: read one key from a peer by itself (peer, stored key, done)."""


class Health(Protocol):
    def mark_ok(self, node: str) -> None: ...

    def mark_failed(self, node: str) -> None: ...


@dataclass(slots=True)
class _Read:
    key: bytes
    done: Done


class ReadBatcher:
    """One coordinator's pending replica reads, by peer; `run` is its task (in the node's
    nursery), which sends them."""

    def __init__(
        self,
        rpc: RpcClient,
        health: Health,
        address_of: Callable[[str], str],
        timeout_s: Callable[[], float],
        single: Single,
    ) -> None:
        self._rpc = rpc
        self._health = health
        self._address_of = address_of
        self._timeout_s = timeout_s
        self._single = single
        self._pending: dict[str, list[_Read]] = {}
        self._wake = trio.Event()
        self.batches = 0  # REPLICA_GET_MANY messages sent
        self.batched_reads = 0  # reads they carried

    def add(self, peer: str, stored_key: bytes, done: Done) -> None:
        """Queue a read of `peer`; `done` follows once, as REPLICA_GET's would."""
        reads = self._pending.get(peer)
        if reads is None:
            self._pending[peer] = [_Read(stored_key, done)]
            self._wake.set()
        else:
            reads.append(_Read(stored_key, done))

    async def run(self) -> None:
        """Send what was queued each time reads come in (until cancelled)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for peer, reads in pending.items():
            for start in range(0, len(reads), BATCH_MAX_KEYS):
                self._send(peer, reads[start : start + BATCH_MAX_KEYS])

    def _send(self, peer: str, reads: list[_Read]) -> None:
        if len(reads) == 1:
            self._single(peer, reads[0].key, reads[0].done)
            return
        try:
            address = self._address_of(peer)
            sent = self._rpc.call_soon(
                address,
                messages.REPLICA_GET_MANY,
                [[read.key for read in reads]],
                self._timeout_s(),
                lambda result, error: self._answered(peer, reads, result, error),
            )
        except DynacoreError as exc:  # e.g. the peer left the view meanwhile
            log.debug("read batch to %s not sent: %r", peer, exc)
            sent = False
        if not sent:
            for read in reads:
                self._single(peer, read.key, read.done)
            return
        self.batches += 1
        self.batched_reads += len(reads)

    def _answered(
        self,
        peer: str,
        reads: list[_Read],
        result: list[Value] | None,
        error: DynacoreError | None,
    ) -> None:
        if error is not None:
            if isinstance(error, _UNREACHABLE):
                self._health.mark_failed(peer)
                for read in reads:
                    read.done(None)
            else:  # e.g. a peer that does not know the message: one by one, then
                log.debug("read batch to %s refused: %r", peer, error)
                for read in reads:
                    self._single(peer, read.key, read.done)
            return
        self._health.mark_ok(peer)
        sets = result[0] if result is not None and len(result) == 1 else None
        if not isinstance(sets, list) or len(sets) > len(reads):
            log.warning("malformed read batch reply from %s", peer)
            for read in reads:
                read.done(None)
            return
        for read, found in zip(reads, sets, strict=False):
            read.done([found])
        for read in reads[len(sets) :]:  # past the reply budget
            self._single(peer, read.key, read.done)


def answer_many(
    fields: list[Value],
    read_many: Callable[[list[bytes]], list[bytes | None]],
    limits: Limits,
) -> list[Value]:
    """The replica's REPLICA_GET_MANY reply: the sets of a prefix of the keys (all of them
    unless their size passes the reply budget; at least one), read in one read transaction."""
    (keys,) = messages.expect(fields, (list,), "REPLICA_GET_MANY")
    if len(keys) > BATCH_MAX_KEYS:
        raise LimitExceeded(f"{len(keys)} keys in one read batch (at most {BATCH_MAX_KEYS})")
    if not all(isinstance(key, bytes) for key in keys):
        raise ProtocolError("REPLICA_GET_MANY: keys must be bytes")
    budget_bytes = limits.frame_size_bytes // REPLY_BUDGET_FRACTION
    sets: list[Value] = []
    size_bytes = 0
    for found in read_many(keys):
        size_bytes += len(found) if found is not None else 0
        if sets and size_bytes > budget_bytes:
            break
        sets.append(found)
    return [sets]
