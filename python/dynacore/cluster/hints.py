"""Sloppy quorum and hinted handoff: the "hints" database (target node ‖ stored key → version
set), the coordinator's fallback when a preference-list replica is down, the HINT_PUT and
SETS_PUT handlers, and the background task that hands hints back to their targets.

A hint is a promise to deliver a version set to a node that missed it. It is merged into what is
already hinted with `versions.sync` (so many writes to one key for one target make one hint), and
deleted only after the target answered that the merged set is durable there, and only if the
hint did not change meanwhile (compare-and-delete): a write that lands during a delivery stays
for the next round. Also here: `Peers`, the RPC-by-node-id helper the self-healing modules share.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import trio

from dynacore import objects
from dynacore._backend import versions
from dynacore.config import check_node_id
from dynacore.errors import (
    AuthError,
    ConnectionLost,
    DynacoreError,
    ProtocolError,
    RequestTimeout,
    VersionError,
)
from dynacore.limits import KIB, MIB, Limits
from dynacore.membership import Membership
from dynacore.messages import expect
from dynacore.net.messages import Value
from dynacore.net.rpc import RpcClient
from dynacore.storage import Engine

log = logging.getLogger(__name__)

DATA_DB: Final = "data"
HINTS_DB: Final = "hints"

# -- messages (the self-healing range is 80–95) ----------------------------------------------------

SETS_PUT: Final = 80
"""[pairs: list[[stored_key: bytes, set: bytes]]] -> []  merge each set into the stored one
(versions.sync); answered once durable (hint delivery, anti-entropy push)."""

HINT_PUT: Final = 81
"""[target: str, stored_key: bytes, set: bytes] -> []  keep a hint for `target`; answered once
durable (a sloppy-quorum fallback taking a write for a down replica)."""

# -- bounds ----------------------------------------------------------------------------------------

HINT_BATCH_KEYS = 256  # hints per delivery request
HINT_BATCH_BYTES = 1 * MIB  # and at most this many set bytes per request (one is always sent)
HINT_ROUND_MAX_BATCHES = 64  # batches per target per round; the rest waits for the next round
HINT_TARGET_COUNT_MAX = 1_000_000  # per-target counts (aae-status) stop here
SETS_PUT_MAX_PAIRS = 1024  # pairs one SETS_PUT may carry (the engine's batch bound)
PROBE_TIMEOUT_FRACTION = 0.2  # of the request timeout: a write to a replica believed down
FRAME_HEADROOM_BYTES = 16 * KIB
MAX_TARGET_BYTES = 255
UNREACHABLE = (ConnectionLost, RequestTimeout, OSError, AuthError)

Handler = Callable[[list[Any]], Awaitable[list[Any]]]
"""A message handler of the self-healing services: request fields in, reply fields out."""


class Health(Protocol):
    """The coordinator's view of peer health (coordinator.PeerHealth); only steers routing."""

    def mark_ok(self, node: str) -> None: ...

    def mark_failed(self, node: str) -> None: ...

    def is_up(self, node: str) -> bool: ...

    def order(self, nodes: Sequence[str]) -> list[str]: ...


# -- hint keys -------------------------------------------------------------------------------------


def hint_key(target: str, stored_key: bytes) -> bytes:
    """``len(target) u8 ‖ target ‖ stored key``: a target's hints are one contiguous key range."""
    return target_prefix(target) + stored_key


def target_prefix(target: str) -> bytes:
    raw = target.encode()
    if not 1 <= len(raw) <= MAX_TARGET_BYTES:
        raise ProtocolError(f"a hint target is 1..{MAX_TARGET_BYTES} bytes, got {len(raw)}")
    return bytes((len(raw),)) + raw


def split_hint_key(raw: bytes) -> tuple[str, bytes]:
    """The inverse of hint_key: (target, stored key); ProtocolError when malformed."""
    if not raw or len(raw) <= 1 + raw[0] or raw[0] == 0:
        raise ProtocolError("malformed hint key")
    size = raw[0]
    try:
        target = raw[1 : 1 + size].decode()
    except UnicodeDecodeError:
        raise ProtocolError("hint key names a target that is not UTF-8") from None
    return target, raw[1 + size :]


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with `prefix` (None: no such bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


def n_for_key(view: Membership, stored_key: bytes) -> int:
    """The replication factor of a stored key's namespace (the default for an unknown namespace
    or a key without a well-formed one, which a peer's replica put may have stored)."""
    try:
        namespace, _ = objects.split_object_key(stored_key)
    except VersionError:
        return view.n
    return view.namespaces.get(namespace, view.n) if namespace else view.n


def check_pairs(fields: Sequence[object], what: str, max_pairs: int) -> list[tuple[bytes, bytes]]:
    """A list of [key, set] pairs whose sets are well-formed; ProtocolError / VersionError."""
    if len(fields) > max_pairs:
        raise ProtocolError(f"{what}: {len(fields)} pairs, at most {max_pairs}")
    pairs: list[tuple[bytes, bytes]] = []
    for item in fields:
        if not isinstance(item, list):
            raise ProtocolError(f"{what}: each pair is a [key, set] list")
        key, set_bytes = expect(item, (bytes, bytes), what)
        if not key:
            raise ProtocolError(f"{what}: empty key")
        versions.size(set_bytes)  # VersionError for a malformed set, before anything is written
        pairs.append((key, set_bytes))
    return pairs


async def merge_into(store: Engine, db: str, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    """Merge each (key, set) into what `db` holds (versions.sync), durably, one batch per
    SETS_PUT_MAX_PAIRS pairs."""
    for start in range(0, len(pairs), SETS_PUT_MAX_PAIRS):
        chunk = pairs[start : start + SETS_PUT_MAX_PAIRS]
        await store.update_many(db, [(key, _merge_fn(incoming)) for key, incoming in chunk])


def _merge_fn(incoming: bytes) -> Callable[[bytes | None], bytes]:
    def merge(old: bytes | None) -> bytes:
        return incoming if old is None else versions.sync(old, incoming)

    return merge


def _compare_and_delete(expected: bytes) -> Callable[[bytes | None], bytes | None]:
    def apply(old: bytes | None) -> bytes | None:
        return None if old == expected else old

    return apply


# -- RPC by node id --------------------------------------------------------------------------------


class Peers:
    """Calls to cluster members by node id, keeping the coordinator's peer health current."""

    def __init__(
        self,
        rpc: RpcClient,
        view: Callable[[], Membership],
        health: Health,
        limits: Limits,
    ) -> None:
        self._rpc = rpc
        self.view = view
        self.health = health
        self.limits = limits

    @property
    def max_reply_bytes(self) -> int:
        """What a reply may carry besides its frame header."""
        return self.limits.frame_size_bytes - FRAME_HEADROOM_BYTES

    async def call(
        self, node: str, msg_type: int, fields: Sequence[Value], timeout_s: float | None = None
    ) -> list[Value] | None:
        """One request; None when the node is unreachable (its health is marked failed). Typed
        errors the node answers with propagate."""
        timeout = self.limits.request_timeout_s if timeout_s is None else timeout_s
        try:
            address = self.view().address_of(node)
            reply = await self._rpc.call(address, msg_type, fields, timeout)
        except UNREACHABLE as exc:
            log.debug("%s type %d: %r", node, msg_type, exc)
            self.health.mark_failed(node)
            return None
        self.health.mark_ok(node)
        return reply


# -- the hints database ----------------------------------------------------------------------------


class HintStore:
    """The hints a node holds for others, in the "hints" database."""

    def __init__(self, store: Engine) -> None:
        self._store = store

    def pending(self) -> int:
        """How many hints this node holds (all targets)."""
        return self._store.count(HINTS_DB)

    async def add(self, target: str, stored_key: bytes, set_bytes: bytes) -> None:
        """Keep (merge into) the hint of `stored_key` for `target`; returns once durable."""
        await merge_into(self._store, HINTS_DB, [(hint_key(target, stored_key), set_bytes)])

    def targets(self) -> list[str]:
        """The targets this node holds hints for (one short scan per target)."""
        found: list[str] = []
        start = b""
        while True:
            first = self._store.scan(HINTS_DB, start, None, limit=1)
            if not first:
                return found
            target, _ = split_hint_key(first[0][0])
            found.append(target)
            end = prefix_end(target_prefix(target))
            if end is None:
                return found
            start = end

    def count_for(self, target: str) -> int:
        """Hints held for `target` (stops counting at HINT_TARGET_COUNT_MAX)."""
        prefix = target_prefix(target)
        rows = self._store.scan(HINTS_DB, prefix, prefix_end(prefix), limit=HINT_TARGET_COUNT_MAX)
        return len(rows)

    def by_target(self) -> dict[str, int]:
        return {target: self.count_for(target) for target in self.targets()}

    def batch(self, target: str) -> list[tuple[bytes, bytes]]:
        """The next (stored key, set) hints of `target`: at most HINT_BATCH_KEYS of them and
        HINT_BATCH_BYTES of sets (at least one)."""
        prefix = target_prefix(target)
        rows = self._store.scan(HINTS_DB, prefix, prefix_end(prefix), limit=HINT_BATCH_KEYS)
        out: list[tuple[bytes, bytes]] = []
        size_bytes = 0
        for raw_key, set_bytes in rows:
            size_bytes += len(raw_key) + len(set_bytes)
            if out and size_bytes > HINT_BATCH_BYTES:
                break
            out.append((raw_key[len(prefix) :], set_bytes))
        return out

    async def remove_delivered(self, target: str, delivered: Sequence[tuple[bytes, bytes]]) -> None:
        """Delete each delivered hint unless it changed since it was read (compare-and-delete)."""
        ops = [(hint_key(target, key), _compare_and_delete(sent)) for key, sent in delivered]
        for start in range(0, len(ops), SETS_PUT_MAX_PAIRS):
            await self._store.update_many(HINTS_DB, ops[start : start + SETS_PUT_MAX_PAIRS])


# -- sloppy quorum and handoff ---------------------------------------------------------------------


class HintedHandoff:
    """The coordinator's fallback (sloppy quorum), the HINT_PUT / SETS_PUT handlers and the
    delivery task of one node."""

    def __init__(
        self,
        *,
        node_id: str,
        store: Engine,
        peers: Peers,
        interval_s: float,
    ) -> None:
        assert interval_s >= 0
        self.node_id = node_id
        self.hints = HintStore(store)
        self._store = store
        self._peers = peers
        self._interval_s = interval_s
        self.delivered = 0  # hints handed back (and deleted) since start

    # -- the coordinator's hook --------------------------------------------------------------------

    async def fallback(
        self, target: str, stored_key: bytes, set_bytes: bytes, used: set[str], tried: bool
    ) -> bool:
        """A replica put to `target` failed (`tried`) or was skipped because `target` is believed
        down: hand the write to the next healthy node of the extended preference list with a hint
        naming `target`.

        True when a fallback node (not in `used`, which collects the fallbacks of one put)
        stored the hint durably, so that it counts toward w. With no fallback left, a skipped
        target is tried after all, briefly (it may be back); failing that, this node keeps the
        hint itself (still delivered later, but no extra replica) and the answer is False.
        """
        view = self._peers.view()
        health = self._peers.health
        extended = view.extended_list(stored_key, n_for_key(view, stored_key))
        for node in health.order(extended):
            if node in used or node == self.node_id or not health.is_up(node):
                continue
            used.add(node)
            try:
                reply = await self._peers.call(node, HINT_PUT, [target, stored_key, set_bytes])
            except DynacoreError as exc:
                log.warning("fallback %s refused a hint for %s: %r", node, target, exc)
                continue
            if reply is not None:
                return True
        if not tried and await self._put_sets(target, [(stored_key, set_bytes)], probe=True):
            return True
        await self.hints.add(target, stored_key, set_bytes)
        return False

    # -- handlers ----------------------------------------------------------------------------------

    def handlers(self) -> dict[int, Handler]:
        return {HINT_PUT: self.handle_hint_put}

    async def handle_hint_put(self, fields: list[Any]) -> list[Any]:
        target, stored_key, set_bytes = expect(fields, (str, bytes, bytes), "HINT_PUT")
        check_node_id(target)
        if not stored_key:
            raise ProtocolError("HINT_PUT: empty key")
        versions.size(set_bytes)
        if target == self.node_id:  # a hint for this node is simply its data
            await merge_into(self._store, DATA_DB, [(stored_key, set_bytes)])
        else:
            await self.hints.add(target, stored_key, set_bytes)
        return []

    # -- delivery ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver hints every interval_s, forever (returns at once when the interval is 0)."""
        if self._interval_s <= 0:
            return
        while True:
            await trio.sleep(self._interval_s)
            try:
                await self.deliver_round()
            except DynacoreError as exc:  # a full disk, a closing store: try again later
                log.warning("hint delivery round failed: %r", exc)

    async def deliver_round(self) -> int:
        """One pass over every target with hints; how many hints were handed back."""
        delivered = 0
        for target in self.hints.targets():
            delivered += await self.deliver_to(target)
        return delivered

    async def deliver_to(self, target: str) -> int:
        """Hand `target` its hints in batches until none are left, it fails, or the round's
        batch budget is spent."""
        delivered = 0
        for _ in range(HINT_ROUND_MAX_BATCHES):
            batch = self.hints.batch(target)
            if not batch or not await self._send(target, batch):
                break
            await self.hints.remove_delivered(target, batch)
            delivered += len(batch)
        self.delivered += delivered
        return delivered

    async def _send(self, target: str, batch: list[tuple[bytes, bytes]]) -> bool:
        """True once `target` (or, for a node that left, every current replica) has the batch
        durably. A node has left when it no longer serves: not a member, or one that exited
        (a gossiped view keeps the addresses of exited members)."""
        view = self._peers.view()
        if target == self.node_id:
            await merge_into(self._store, DATA_DB, batch)
            return True
        if target in view.nodes:
            return await self._put_sets(target, batch)
        return await self._send_to_owners(view, batch)

    async def _send_to_owners(self, view: Membership, batch: list[tuple[bytes, bytes]]) -> bool:
        by_owner: dict[str, list[tuple[bytes, bytes]]] = {}
        for key, set_bytes in batch:
            for owner in view.preference_list(key, n_for_key(view, key)):
                by_owner.setdefault(owner, []).append((key, set_bytes))
        for owner, pairs in by_owner.items():
            if owner == self.node_id:
                await merge_into(self._store, DATA_DB, pairs)
            elif not await self._put_sets(owner, pairs):
                return False
        return True

    async def _put_sets(
        self, node: str, pairs: list[tuple[bytes, bytes]], *, probe: bool = False
    ) -> bool:
        """SETS_PUT to `node`; True once it answered. A probe goes even to a node believed
        down, with a short timeout."""
        if not probe and not self._peers.health.is_up(node):
            return False
        timeout_s = self._peers.limits.request_timeout_s * (PROBE_TIMEOUT_FRACTION if probe else 1)
        try:
            reply = await self._peers.call(node, SETS_PUT, [[[k, s] for k, s in pairs]], timeout_s)
        except DynacoreError as exc:
            log.warning("hint delivery to %s failed: %r", node, exc)
            return False
        return reply is not None


def merged(sets: Sequence[bytes | None]) -> bytes | None:
    """The sync of the present sets (None when all are absent)."""
    present = [s for s in sets if s is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else versions.sync_many(present)


__all__ = [
    "HINTS_DB",
    "HINT_PUT",
    "SETS_PUT",
    "Handler",
    "Health",
    "HintStore",
    "HintedHandoff",
    "Peers",
    "check_pairs",
    "hint_key",
    "merge_into",
    "merged",
    "n_for_key",
    "split_hint_key",
]
