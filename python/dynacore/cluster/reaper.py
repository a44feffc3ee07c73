"""Reaping: the background task that removes expired objects (every value's TTL has passed) on its
own, and tombstone-only objects only when every replica holds an equal set, no node holds a hint
for the key and the grace period has passed (a compare-and-delete on each replica); the
REAP_CHECK / REAP_DELETE handlers; and the counter floor.

Why the floor: reaping forgets the object's causal history, so a later blind write coordinated
here would start its counter at 1 again and reuse a dot some replica may still hold with another
value (then one of the two is dropped: a lost write). Before deleting, a node raises its durable
floor above every counter its actor issued in the objects it reaps; the coordinator starts the
counter of a key it does not hold above the floor (see Coordinator.counter_floor). Only values
this node itself issued and reaped (dead ones) are ever covered by that.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from dynacore import objects
from dynacore._backend import versions
from dynacore.cluster.hints import (
    DATA_DB,
    HINTS_DB,
    Handler,
    HintStore,
    Peers,
    check_pairs,
    hint_key,
    n_for_key,
)
from dynacore.errors import DynacoreError, ProtocolError, VersionError
from dynacore.membership import Membership
from dynacore.messages import expect
from dynacore.net.messages import Value
from dynacore.storage import Engine, get_meta, put_meta

log = logging.getLogger(__name__)

REAP_CHECK: Final = 85
"""[keys: list[bytes]] -> [answers: list[[set: bytes | None, hinted: bool]]]  what this node
stores for each key, and whether it holds a hint for it (any target)."""

REAP_DELETE: Final = 86
"""[pairs: list[[stored_key, set]]] -> [deleted: int]  delete each key whose stored set is still
exactly that dead set (compare-and-delete), after raising the counter floor."""

REAP_SCAN_KEYS = 1024  # keys read per step (a checkpoint in between)
REAP_ROUND_MAX_KEYS = 65_536  # keys examined per round; the scan resumes there next round
REAP_BATCH_KEYS = 256  # tombstones checked and deleted per request
REAP_BATCH_BYTES = 512 * 1024  # and at most this many set bytes (one always goes)
REAP_REQUEST_MAX_KEYS = 1024
DELETE_CHUNK_KEYS = 1024
FLOOR_META_NAME = "reap/counter_floor"

_FLOOR = struct.Struct(">Q")
NOT_REAPABLE, EXPIRED, TOMBSTONE = 0, 1, 2


def classify(set_bytes: bytes, now_ms: int, grace_ms: int) -> int:
    """EXPIRED when every value has a TTL that has passed (reaped locally); TOMBSTONE when no
    value is live, one is a tombstone and the newest is older than the grace period (reaped by
    agreement); else NOT_REAPABLE. A malformed set is never reaped."""
    try:
        envelopes = [objects.decode_envelope(raw) for raw in versions.values(set_bytes)]
    except VersionError:
        return NOT_REAPABLE
    if not envelopes or any(e.visible(now_ms) for e in envelopes):
        return NOT_REAPABLE
    if not any(e.tombstone for e in envelopes):
        return EXPIRED
    newest_ms = max(e.timestamp_ms for e in envelopes)
    return TOMBSTONE if newest_ms + grace_ms <= now_ms else NOT_REAPABLE


class CounterFloor:
    """This node's floor: above every counter its actor issued in an object it reaped. Durable
    in the meta db; raised before the objects are deleted."""

    def __init__(self, store: Engine, actor_id: str) -> None:
        self._store = store
        self._actor_id = actor_id
        self._lock = trio.Lock()
        self.value = 0

    async def load(self) -> None:
        raw = get_meta(self._store, FLOOR_META_NAME)
        self.value = _FLOOR.unpack(raw)[0] if raw is not None and len(raw) == _FLOOR.size else 0

    def __call__(self) -> int:
        return self.value

    async def cover(self, sets: Sequence[bytes]) -> None:
        """Raise the floor (durably) to the highest counter of this actor in `sets`."""
        top = max((self._own_counter(s) for s in sets), default=0)
        async with self._lock:
            if top > self.value:
                await put_meta(self._store, FLOOR_META_NAME, _FLOOR.pack(top))
                self.value = top

    def _own_counter(self, set_bytes: bytes) -> int:
        pairs = versions.vv_to(versions.join(set_bytes))
        return max((counter for actor, counter in pairs if actor == self._actor_id), default=0)


@dataclass
class ReapStats:
    expired: int = 0  # objects removed because every value had expired
    tombstones: int = 0  # tombstone objects removed on every replica (counted by the primary)
    rounds: int = 0


class Reaper:
    """The reaper of one node."""

    def __init__(
        self,
        *,
        node_id: str,
        store: Engine,
        peers: Peers,
        clock_ms: Callable[[], int],
        floor: CounterFloor,
        interval_s: float,
        grace_s: float,
    ) -> None:
        assert interval_s >= 0 and grace_s >= 0
        self.node_id = node_id
        self._store = store
        self._hints = HintStore(store)
        self._peers = peers
        self._clock_ms = clock_ms
        self._floor = floor
        self._interval_s = interval_s
        self._grace_ms = int(grace_s * 1000)
        self._cursor = b""
        self.stats = ReapStats()

    async def run(self) -> None:
        """A reap round every interval_s, forever (returns at once when the interval is 0)."""
        if self._interval_s <= 0:
            return
        while True:
            await trio.sleep(self._interval_s)
            try:
                await self.reap_round()
            except DynacoreError as exc:  # a peer's bad answer, a full disk: try again later
                log.warning("reap round failed: %r", exc)

    async def reap_round(self) -> int:
        """Examine up to REAP_ROUND_MAX_KEYS objects from where the last round stopped; how
        many were reaped (here, and for tombstones on every replica)."""
        examined = reaped = 0
        while examined < REAP_ROUND_MAX_KEYS:
            rows = self._store.scan(DATA_DB, self._cursor, None, limit=REAP_SCAN_KEYS)
            examined += len(rows)
            wrapped = len(rows) < REAP_SCAN_KEYS
            self._cursor = b"" if wrapped else rows[-1][0] + b"\x00"
            reaped += await self._reap_rows(rows)
            if wrapped:
                break
            await trio.sleep(0)
        self.stats.rounds += 1
        return reaped

    async def _reap_rows(self, rows: list[tuple[bytes, bytes]]) -> int:
        now_ms = self._clock_ms()
        view = self._peers.view()
        expired: list[tuple[bytes, bytes]] = []
        tombstones: list[tuple[bytes, bytes]] = []
        for key, set_bytes in rows:
            kind = classify(set_bytes, now_ms, self._grace_ms)
            if kind == EXPIRED:
                expired.append((key, set_bytes))
            elif kind == TOMBSTONE and _primary(view, key) == self.node_id:
                tombstones.append((key, set_bytes))
        reaped = 0
        if expired:
            count = await self.reap_local(expired)
            self.stats.expired += count
            reaped += count
        for batch in _batches(tombstones):
            count = await self._reap_tombstones(batch)
            self.stats.tombstones += count
            reaped += count
        return reaped

    async def reap_local(self, pairs: Sequence[tuple[bytes, bytes]]) -> int:
        """Raise the floor, then delete each key whose stored set is still exactly its pair's
        set; how many keys are gone."""
        await self._floor.cover([set_bytes for _, set_bytes in pairs])
        gone = 0
        for start in range(0, len(pairs), DELETE_CHUNK_KEYS):
            chunk = pairs[start : start + DELETE_CHUNK_KEYS]
            ops = [(key, _compare_and_delete(set_bytes)) for key, set_bytes in chunk]
            results = await self._store.update_many(DATA_DB, ops)
            gone += sum(result is None for result in results)
        return gone

    async def _reap_tombstones(self, batch: list[tuple[bytes, bytes]]) -> int:
        """Delete the tombstones every replica agrees on (remote replicas first)."""
        agreed = await self._agreed(batch)
        view = self._peers.view()
        by_node: dict[str, list[tuple[bytes, bytes]]] = {}
        for key, set_bytes in agreed:
            for node in view.preference_list(key, n_for_key(view, key)):
                by_node.setdefault(node, []).append((key, set_bytes))
        for node, pairs in sorted(by_node.items(), key=lambda item: item[0] == self.node_id):
            if node == self.node_id:
                await self.reap_local(pairs)
                continue
            try:
                await self._peers.call(node, REAP_DELETE, [[[k, s] for k, s in pairs]])
            except DynacoreError as exc:  # the others still hold it: a later round retries
                log.info("tombstone reaping on %s failed: %r", node, exc)
        return len(agreed)

    async def _agreed(self, batch: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The pairs whose set every replica stores exactly and for which no node holds a
        hint; nothing unless every known node answered."""
        view = self._peers.view()
        keys: list[Value] = [key for key, _ in batch]
        answers: dict[str, list[tuple[bytes | None, bool]]] = {}
        for node in sorted(view.addresses):
            if node == self.node_id:
                answers[node] = self.check([key for key, _ in batch])
                continue
            try:
                reply = await self._peers.call(node, REAP_CHECK, [keys])
            except DynacoreError as exc:
                log.info("tombstone check on %s failed: %r", node, exc)
                return []
            if reply is None:
                return []
            answers[node] = _parse_check(reply, len(batch))
        agreed: list[tuple[bytes, bytes]] = []
        for index, (key, set_bytes) in enumerate(batch):
            if any(answer[index][1] for answer in answers.values()):
                continue
            replicas = view.preference_list(key, n_for_key(view, key))
            if all(answers[node][index][0] == set_bytes for node in replicas):
                agreed.append((key, set_bytes))
        return agreed

    def check(self, keys: Sequence[bytes]) -> list[tuple[bytes | None, bool]]:
        """For each key: the stored set and whether this node holds a hint for it."""
        targets = self._hints.targets()
        out: list[tuple[bytes | None, bool]] = []
        for key in keys:
            hinted = any(self._store.get(HINTS_DB, hint_key(t, key)) is not None for t in targets)
            out.append((self._store.get(DATA_DB, key), hinted))
        return out

    # -- handlers ----------------------------------------------------------------------------------

    def handlers(self) -> dict[int, Handler]:
        return {REAP_CHECK: self.handle_check, REAP_DELETE: self.handle_delete}

    async def handle_check(self, fields: list[Any]) -> list[Any]:
        (keys,) = expect(fields, (list,), "REAP_CHECK")
        if len(keys) > REAP_REQUEST_MAX_KEYS or not all(isinstance(k, bytes) and k for k in keys):
            raise ProtocolError(f"REAP_CHECK: 1..{REAP_REQUEST_MAX_KEYS} non-empty byte keys")
        return [[[set_bytes, hinted] for set_bytes, hinted in self.check(keys)]]

    async def handle_delete(self, fields: list[Any]) -> list[Any]:
        (items,) = expect(fields, (list,), "REAP_DELETE")
        pairs = check_pairs(items, "REAP_DELETE", REAP_REQUEST_MAX_KEYS)
        now_ms = self._clock_ms()
        dead = [(k, s) for k, s in pairs if objects.is_dead(s, now_ms)]  # never a live value
        return [await self.reap_local(dead)]


def _primary(view: Membership, key: bytes) -> str:
    return view.preference_list(key, n_for_key(view, key))[0]


def _compare_and_delete(expected: bytes) -> Callable[[bytes | None], bytes | None]:
    def apply(old: bytes | None) -> bytes | None:
        return None if old == expected else old

    return apply


def _batches(pairs: list[tuple[bytes, bytes]]) -> list[list[tuple[bytes, bytes]]]:
    """Cut into batches of at most REAP_BATCH_KEYS pairs and REAP_BATCH_BYTES set bytes."""
    out: list[list[tuple[bytes, bytes]]] = []
    batch: list[tuple[bytes, bytes]] = []
    size_bytes = 0
    for key, set_bytes in pairs:
        size_bytes += len(key) + len(set_bytes)
        if batch and (len(batch) >= REAP_BATCH_KEYS or size_bytes > REAP_BATCH_BYTES):
            out.append(batch)
            batch, size_bytes = [], len(key) + len(set_bytes)
        batch.append((key, set_bytes))
    if batch:
        out.append(batch)
    return out


def _parse_check(reply: list[Value], count: int) -> list[tuple[bytes | None, bool]]:
    (answers,) = expect(reply, (list,), "REAP_CHECK reply")
    if len(answers) != count:
        raise ProtocolError("REAP_CHECK reply does not match the request")
    out: list[tuple[bytes | None, bool]] = []
    for answer in answers:
        if not isinstance(answer, list):
            raise ProtocolError("a REAP_CHECK answer is a [set, hinted] list")
        set_bytes, hinted = expect(answer, ((bytes, type(None)), bool), "REAP_CHECK answer")
        out.append((set_bytes, hinted))
    return out


__all__ = [
    "REAP_CHECK",
    "REAP_DELETE",
    "CounterFloor",
    "ReapStats",
    "Reaper",
    "classify",
]
