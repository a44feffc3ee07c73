"""The server side of the embedded Cache's writes (CACHE_WRITE, message 96): `set` and `delete`
replace every value the coordinator holds for the key, `incr` adds to the coordinator's own entry
of the key's counter. Each is one update of the stored version set inside the storage write
transaction (so concurrent writes through one node are serialized per key and no increment is
lost), then replicated like a put (`Coordinator.apply`). A cache that does not replicate the key
forwards the request to a preference-list node; every node, `dynacore serve` ones included,
answers it, so caches can join a cluster of servers.

Siblings that other replicas hold concurrently survive (the new value's context covers only what
the coordinator had); readers resolve them: values by the cache's resolver, counters by merge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dynacore import counters, messages, objects, serializers
from dynacore._backend import versions
from dynacore.config import QuorumSpec, check_quorum_spec
from dynacore.coordinator import Clock, Coordinator, Update
from dynacore.errors import ProtocolError, Unavailable, WrongType
from dynacore.limits import Limits
from dynacore.messages import expect
from dynacore.net.messages import Value

OP_SET: Final = 1
OP_DELETE: Final = 2
OP_INCR: Final = 3
OPS: Final = (OP_SET, OP_DELETE, OP_INCR)
MAX_TTL_MS: Final = 10 * 365 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One cache write as it travels: the op, its payload (set), delta (incr) and ttl (set)."""

    namespace: str
    key: bytes
    op: int
    payload: bytes = b""
    delta: int = 0
    ttl_ms: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ProtocolError(f"unknown cache write op {self.op}")
        if not 0 <= self.ttl_ms <= MAX_TTL_MS:
            raise ProtocolError(f"ttl must be in [0, {MAX_TTL_MS}] ms, got {self.ttl_ms}")
        if self.op == OP_INCR and not counters.fits(self.delta):
            raise ProtocolError(f"an increment is a signed 64-bit integer, got {self.delta}")
        if self.op == OP_SET and not self.payload:
            raise ProtocolError("a cache set carries a tagged payload")

    def fields(self, w: QuorumSpec | None, *, forwarded: bool) -> list[Value]:
        return [
            self.namespace,
            self.key,
            self.op,
            self.payload,
            self.delta,
            self.ttl_ms,
            w,
            forwarded,
        ]


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """existed: a live value was there before (delete, set); value: the counter after an incr."""

    existed: bool = False
    value: int = 0


async def write(
    coordinator: Coordinator,
    clock: Clock,
    limits: Limits,
    request: WriteRequest,
    *,
    w: QuorumSpec | None = None,
    forwarded: bool = False,
) -> WriteOutcome:
    """Apply the write here when this node replicates the key (holds all of its partition; a
    forwarded write: is any of its owners), else forward it (an incr is never retried on a
    second node: it must not be applied twice)."""
    objects.check_sizes(request.key, request.payload, limits)
    if coordinator.replicates(request.namespace, request.key, any_owner=forwarded):
        outcome: list[WriteOutcome] = []
        fn = _update_fn(request, clock.now_ms(), coordinator.actor_id, outcome)
        await coordinator.apply(request.namespace, request.key, fn, w=w)
        return outcome[-1]
    if forwarded:
        raise Unavailable(
            f"{coordinator.node_id} got a forwarded cache write it does not replicate"
        )
    reply = await coordinator.forward(
        request.namespace,
        request.key,
        messages.CACHE_WRITE,
        request.fields(w, forwarded=True),
        retry=request.op != OP_INCR,
    )
    existed, value = expect(reply, (bool, int), "CACHE_WRITE reply")
    return WriteOutcome(existed, value)


def write_soon(
    coordinator: Coordinator,
    clock: Clock,
    limits: Limits,
    request: WriteRequest,
    on_done: Callable[[WriteOutcome | None, Exception | None], None],
    *,
    w: QuorumSpec | None = None,
) -> bool:
    """`write` without a task, when this node replicates the key and the coordinator's
    callback path is ready (`Coordinator.apply_soon`): `on_done(outcome, error)` follows, error
    being what `write` would raise. False when it cannot start so (nothing was done: forward or
    retry through `write`)."""
    objects.check_sizes(request.key, request.payload, limits)
    if not coordinator.replicates(request.namespace, request.key):
        return False
    outcome: list[WriteOutcome] = []
    fn = _update_fn(request, clock.now_ms(), coordinator.actor_id, outcome)

    def done(new_set: bytes | None, error: Exception | None) -> None:
        on_done(outcome[-1] if outcome and new_set is not None else None, error)

    return coordinator.apply_soon(request.namespace, request.key, fn, w, done)


async def handle(
    coordinator: Coordinator, clock: Clock, limits: Limits, fields: list[Any]
) -> list[Any]:
    """The CACHE_WRITE handler a node registers."""
    namespace, key, op, payload, delta, ttl_ms, w, forwarded = expect(
        fields, (str, bytes, int, bytes, int, int, (str, int, type(None)), bool), "CACHE_WRITE"
    )
    request = WriteRequest(namespace, key, op, payload, delta, ttl_ms)
    spec = None if w is None else check_quorum_spec(w)
    outcome = await write(coordinator, clock, limits, request, w=spec, forwarded=forwarded)
    return [outcome.existed, outcome.value]


def _update_fn(
    request: WriteRequest, now_ms: int, actor: str, outcome: list[WriteOutcome]
) -> Update:
    """The function run on the stored set inside the write transaction; it appends what it
    found to `outcome` (the last append is the committed one)."""

    def apply(old: bytes | None) -> bytes:
        stored = old if old is not None else versions.empty()
        live = [
            e for e in map(objects.decode_envelope, versions.values(stored)) if e.visible(now_ms)
        ]
        data, expiry_ms, result = _new_value(request, live, now_ms, actor)
        envelope = objects.encode_envelope(
            data, timestamp_ms=now_ms, expiry_ms=expiry_ms, tombstone=request.op == OP_DELETE
        )
        new = versions.update(stored, versions.join(stored), envelope, actor)
        outcome.append(WriteOutcome(existed=bool(live), value=result))
        return new

    return apply


def _new_value(
    request: WriteRequest, live: list[objects.Envelope], now_ms: int, actor: str
) -> tuple[bytes, int, int]:
    """(stored data, expiry_ms, counter value) of the value that replaces `live`."""
    if request.op == OP_DELETE:
        return b"", 0, 0
    if request.op == OP_SET:
        expiry_ms = now_ms + request.ttl_ms if request.ttl_ms else 0
        if not serializers.is_counter(request.payload):
            return request.payload, expiry_ms, 0
        wanted = counters.decode(request.payload[1:]).value
        state = _merged_counter(live, strict=False).rebased(wanted, now_ms)
        return _counter_bytes(state), expiry_ms, state.value
    state = _merged_counter(live, strict=True).add(actor, request.delta)
    return _counter_bytes(state), _kept_expiry_ms(live), state.value


def _merged_counter(live: list[objects.Envelope], *, strict: bool) -> counters.Counter:
    """The merge of the live counter siblings; with strict, WrongType when a live value is not
    a counter (with strict=False such values are ignored: a set replaces them)."""
    states = []
    for envelope in live:
        if serializers.is_counter(envelope.data):
            states.append(counters.decode(envelope.data[1:]))
        elif strict:
            raise WrongType("incr/decr on a key whose value is not an int")
    return counters.merge_all(states)


def _counter_bytes(state: counters.Counter) -> bytes:
    return bytes((serializers.TAG_COUNTER,)) + state.encode()


def _kept_expiry_ms(live: list[objects.Envelope]) -> int:
    """An incr keeps the key's expiry: none if any live sibling has none, else the latest."""
    if not live or any(e.expiry_ms == 0 for e in live):
        return 0
    return max(e.expiry_ms for e in live)


__all__ = [
    "OP_DELETE",
    "OP_INCR",
    "OP_SET",
    "WriteOutcome",
    "WriteRequest",
    "handle",
    "write",
    "write_soon",
]
