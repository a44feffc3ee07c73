"""The workload: Jepsen's Riak set workload. Clients add unique elements to sets stored under a
few keys — by read-modify-write (read every sibling, union them, add the element, write back with
the read's context) or by a blind write (a one-element set with no context, which becomes a
sibling that the next read-modify-write folds in) — plus write-once keys (a fresh key per write,
never read by the workload, so only hints and anti-entropy repair a replica that missed it).
Every write goes into the checker's History.

A set value is its elements, sorted, joined by one space; elements are ASCII "<client>.<n>", so
they never contain the separator and never repeat.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from dynacore.errors import ConfigError, DynacoreError, LimitExceeded
from dynacore.sim.checker import History, OpKind, Outcome

SEPARATOR = b" "
ONCE_PREFIX = b"once-"
MAX_KEYS = 1024
MAX_CLIENTS = 1024
MAX_THINK_S = 60.0


class ReadResult(Protocol):
    """What a read returns (dynacore.client.GetResult has these fields)."""

    @property
    def values(self) -> list[bytes]: ...

    @property
    def context(self) -> bytes: ...

    @property
    def siblings(self) -> int: ...


class SetStoreClient(Protocol):
    """The part of dynacore.client.AsyncClient the workload uses."""

    async def get(self, key: bytes, r: str | int | None = None) -> ReadResult: ...

    async def put(
        self,
        key: bytes,
        value: bytes,
        context: bytes | None = None,
        w: str | int | None = None,
        ttl: float | None = None,
    ) -> bytes: ...


def encode_set(elements: frozenset[bytes] | set[bytes]) -> bytes:
    """A set value's bytes (sorted, space-separated; empty set: b"")."""
    assert all(e and SEPARATOR not in e for e in elements)
    return SEPARATOR.join(sorted(elements))


def decode_set(value: bytes) -> frozenset[bytes]:
    """The elements of a set value; b"" is the empty set."""
    return frozenset(part for part in value.split(SEPARATOR) if part)


def union_of(values: Sequence[bytes]) -> frozenset[bytes]:
    """The union merge of sibling set values."""
    return frozenset().union(*(decode_set(v) for v in values))


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Shape of the load: keys, write mix, pacing; quorums as the client spells them."""

    keys: int = 4
    blind_fraction: float = 0.2  # share of writes that are blind
    once_fraction: float = 0.1  # share of writes that each go to a fresh key, never written again
    think_max_s: float = 0.2  # each client waits uniform(0, think_max_s) between ops
    r: str | int | None = None  # None: the cluster default
    w: str | int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.keys <= MAX_KEYS:
            raise ConfigError(f"keys must be in [1, {MAX_KEYS}], got {self.keys}")
        for name in ("blind_fraction", "once_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.blind_fraction + self.once_fraction > 1.0:
            raise ConfigError("blind_fraction + once_fraction must not exceed 1")
        if not 0.0 <= self.think_max_s <= MAX_THINK_S:
            raise ConfigError(f"think_max_s must be in [0, {MAX_THINK_S}], got {self.think_max_s}")

    def key_names(self) -> list[bytes]:
        return [f"set{i}".encode() for i in range(self.keys)]


@dataclass
class WorkloadStats:
    """Counters beside the history: reads, failed reads, the largest sibling count read."""

    reads: int = 0
    read_failures: int = 0
    max_siblings_seen: int = 0


class SetWorkload:
    """Many clients' writes into one History; `run_client` is one client's loop."""

    def __init__(self, config: WorkloadConfig, history: History, rng: random.Random) -> None:
        self.config = config
        self.history = history
        self.stats = WorkloadStats()
        self._rng = rng
        self._keys = config.key_names()
        self._next = 0

    def _element(self, client: str) -> bytes:
        self._next += 1
        return f"{client}.{self._next}".encode()

    async def run_client(self, name: str, client: SetStoreClient) -> None:
        """Write until cancelled (the caller's cancel scope ends the safety phase)."""
        if not name or SEPARATOR.decode() in name:
            raise ConfigError(f"a client name is non-empty without spaces, got {name!r}")
        while True:
            await trio.sleep(self._rng.uniform(0, self.config.think_max_s))
            key = self._rng.choice(self._keys)
            draw = self._rng.random()
            if draw < self.config.once_fraction:
                await self.write_once(name, client)
            elif draw < self.config.once_fraction + self.config.blind_fraction:
                await self.blind_write(name, client, key)
            else:
                await self.add(name, client, key)

    async def add(self, name: str, client: SetStoreClient, key: bytes) -> None:
        """Read-modify-write: read the siblings, union them, add one element, write back."""
        try:
            read = await client.get(key, r=self.config.r)
        except DynacoreError:
            self.stats.read_failures += 1
            return  # nothing was written: not part of the history
        self.stats.reads += 1
        self.stats.max_siblings_seen = max(self.stats.max_siblings_seen, read.siblings)
        element = self._element(name)
        value = encode_set(union_of(read.values) | {element})
        await self._write(OpKind.ADD, name, client, key, element, value, read.context)

    async def blind_write(self, name: str, client: SetStoreClient, key: bytes) -> None:
        """A write without context: a new sibling holding one element."""
        element = self._element(name)
        await self._write(OpKind.BLIND, name, client, key, element, element, None)

    async def write_once(self, name: str, client: SetStoreClient) -> None:
        """A one-element set under a fresh key that no one reads or writes again: only the
        store's own repair (hinted handoff, anti-entropy) can bring a replica that missed it
        up to date."""
        element = self._element(name)
        key = ONCE_PREFIX + element
        await self._write(OpKind.BLIND, name, client, key, element, element, None)

    async def _write(
        self,
        kind: OpKind,
        name: str,
        client: SetStoreClient,
        key: bytes,
        element: bytes,
        value: bytes,
        context: bytes | None,
    ) -> None:
        op = self.history.invoke(kind, name, key, element, trio.current_time())
        try:
            await client.put(key, value, context=context, w=self.config.w)
        except LimitExceeded as exc:  # refused before anything was stored
            self.history.complete(op, Outcome.FAIL, trio.current_time(), _describe(exc))
        except DynacoreError as exc:  # timeouts, quorum, lost connections: maybe stored
            self.history.complete(op, Outcome.UNKNOWN, trio.current_time(), _describe(exc))
        else:
            self.history.complete(op, Outcome.OK, trio.current_time())


def _describe(exc: BaseException) -> str:
    return type(exc).__name__


__all__ = [
    "ONCE_PREFIX",
    "ReadResult",
    "SetStoreClient",
    "SetWorkload",
    "WorkloadConfig",
    "WorkloadStats",
    "decode_set",
    "encode_set",
    "union_of",
]
