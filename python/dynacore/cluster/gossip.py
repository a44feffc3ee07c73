"""Gossip of the ClusterState: the node's one copy of the state (persisted in the meta database),
its merge of what peers send, the periodic push-pull with a random peer, and heartbeats.

Every `interval_s` a node
- sends a heartbeat (a digest-only GOSSIP) to every serving member, up to `heartbeat_fanout_max`
  of them: the phi detector learns a regular interval, and a differing digest is noticed;
- runs one push-pull with a random serving member (one whose digest was seen to differ, when
  there is one; a seed while it knows no member): it sends its digest, the peer answers with its
  state when the digests differ, the node merges and pushes the merged state back when the peer
  lacks something.
Merge is ClusterState.merge (a join-semilattice), so every gossip order ends in one state.
After every merge or local change, `finish_if_done` switches the ring once every moving partition
is confirmed, and the node's own member record is kept at the address it listens on.

Safety: a state is merged only when it shares a ring node with ours (two unrelated clusters that
share a secret do not blend); a node without a state (started with --seeds only) adopts the first
state a seed gives it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from dynacore.cluster import protocol
from dynacore.cluster.health import DetectorHealth
from dynacore.cluster.state import ClusterState, Status
from dynacore.errors import ClusterError, ConfigError, DynacoreError, ProtocolError
from dynacore.messages import expect
from dynacore.net.messages import Value
from dynacore.net.transport import parse_address
from dynacore.storage import Engine
from dynacore.storage.meta import get_cluster_state, put_cluster_state

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
MAX_INTERVAL_S = 60.0
HEARTBEAT_FANOUT_MAX = 64  # heartbeats per round beyond this go to a random sample
INTERVAL_JITTER = 0.1  # each round waits interval_s x (1 ± this)
SERVING = (Status.JOINING, Status.VALID, Status.LEAVING)

Call = Callable[[str, int, Sequence[Value], float], Awaitable[list[Value]]]
"""rpc.call(address, msg_type, fields, timeout_s)."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    interval_s: float = DEFAULT_INTERVAL_S
    heartbeat_fanout_max: int = HEARTBEAT_FANOUT_MAX

    def __post_init__(self) -> None:
        if not 0 < self.interval_s <= MAX_INTERVAL_S:
            raise ConfigError(f"gossip interval must be in (0, {MAX_INTERVAL_S}] s")
        if not 1 <= self.heartbeat_fanout_max <= 4096:
            raise ConfigError("heartbeat_fanout_max must be in [1, 4096]")

    @property
    def timeout_s(self) -> float:
        """How long one gossip call may take: a few intervals, at least a second."""
        return max(1.0, 2 * self.interval_s)


def shares_ring_node(a: ClusterState, b: ClusterState) -> bool:
    """True when two states belong to one cluster (their rings have a node in common)."""
    nodes_a = set(a.ring.nodes) | set(a.pending.nodes if a.pending else ())
    nodes_b = set(b.ring.nodes) | set(b.pending.nodes if b.pending else ())
    return bool(nodes_a & nodes_b)


def advertised(address: str) -> bool:
    """True when `address` names a port a member listens on (not the port-0 placeholder of a
    static member list whose ports are bound at start)."""
    try:
        return parse_address(address)[1] != 0
    except ConfigError:
        return False


def decode_state(raw: object) -> ClusterState | None:
    """A state field: b"" is none; ProtocolError for anything that is not bytes."""
    if not isinstance(raw, bytes):
        raise ProtocolError(f"a cluster state field is bytes, got {type(raw).__name__}")
    return ClusterState.decode(raw) if raw else None


class Gossiper:
    """Holds the node's ClusterState and spreads it. Valid inside the node's nursery."""

    def __init__(
        self,
        *,
        node_id: str,
        store: Engine,
        call: Call,
        health: DetectorHealth,
        rng: random.Random,
        config: GossipConfig,
        seeds: Sequence[str] = (),
        state: ClusterState | None = None,
    ) -> None:
        self.node_id = node_id
        self.address = ""  # the bound address, set by start()
        self.config = config
        self._store = store
        self._call = call
        self._health = health
        self._rng = rng
        self._seeds = list(seeds)
        self._state = state
        self._digest = state.digest() if state is not None else b""
        self._peer_digests: dict[str, bytes] = {}
        self._listeners: list[Callable[[ClusterState], None]] = []
        self._changed = trio.Event()
        self._persist_lock = trio.Lock()
        self.rounds = 0

    # -- the state -----------------------------------------------------------------------------

    @property
    def state(self) -> ClusterState | None:
        return self._state

    @property
    def digest(self) -> bytes:
        return self._digest

    def subscribe(self, listener: Callable[[ClusterState], None]) -> None:
        """Call `listener(state)` on every change (synchronously, before anyone else sees it)."""
        self._listeners.append(listener)

    async def wait_changed(self) -> None:
        """Return at the next state change."""
        await self._changed.wait()

    @staticmethod
    def load(store: Engine) -> ClusterState | None:
        """The state persisted by a previous run, or None."""
        raw = get_cluster_state(store)
        if raw is None:
            return None
        try:
            return ClusterState.decode(raw)
        except ClusterError as exc:
            log.error("ignoring the persisted cluster state: %s", exc)
            return None

    async def start(self, address: str) -> None:
        """Record the bound address (in our member record too) and persist the state."""
        self.address = address
        if self._state is not None:
            await self._install(self._tidy(self._state), force=True)

    async def update(self, change: Callable[[ClusterState], ClusterState]) -> ClusterState:
        """Apply a local change (stage, commit, confirm) to the state; install and persist it."""
        if self._state is None:
            raise ClusterError("this node has not joined a cluster")
        new = self._tidy(change(self._state))
        await self._install(new)
        return new

    async def adopt(self, incoming: ClusterState) -> ClusterState:
        """Take `incoming` as our state, replacing an unrelated one (the join path)."""
        current = self._state
        if current is not None and shares_ring_node(current, incoming):
            new = current.merge(incoming)
        else:
            new = incoming
        new = self._tidy(new)
        await self._install(new)
        return new

    async def merge(self, incoming: ClusterState) -> bool:
        """Merge a gossiped state into ours; True if ours changed. ClusterError if foreign."""
        current = self._state
        if current is None:
            new = incoming
        elif not shares_ring_node(current, incoming):
            raise ClusterError("refused a cluster state that shares no ring node with ours")
        else:
            new = current.merge(incoming)
        new = self._tidy(new)
        if current is not None and new == current:
            return False
        await self._install(new)
        return True

    def _tidy(self, state: ClusterState) -> ClusterState:
        state = state.finish_if_done()
        member = state.members.get(self.node_id)
        if member is not None and self.address and member.address != self.address:
            state = state.set_address(self.node_id, self.address)
        return state

    async def _install(self, new: ClusterState, *, force: bool = False) -> None:
        old = self._state
        if not force and old is not None and new == old:
            return
        self._state = new
        self._digest = new.digest()
        if old is None or old.epoch != new.epoch:
            log.info("%s: cluster state epoch %d: %r", self.node_id, new.epoch, new)
        for listener in self._listeners:
            listener(new)
        self._changed.set()
        self._changed = trio.Event()
        await self._persist()

    async def _persist(self) -> None:
        async with self._persist_lock:  # the latest state, written in order
            state = self._state
            assert state is not None
            await put_cluster_state(self._store, state.encode())

    # -- serving -------------------------------------------------------------------------------

    async def handle(self, fields: list[object]) -> list[Value]:
        """The GOSSIP handler."""
        from_id, _from_address, digest, raw, want_state = expect(
            fields, (str, str, bytes, bytes, bool), "GOSSIP"
        )
        if from_id != self.node_id:
            self._health.heartbeat(from_id)
        incoming = decode_state(raw)
        if incoming is not None:
            await self.merge(incoming)
            digest = incoming.digest() if digest == b"" else digest
        state = self._state
        if state is None:
            return [b"", b""]
        if from_id in state.members:  # bounded: members only
            self._peer_digests[from_id] = digest
        send = want_state and digest != self._digest
        return [self._digest, state.encode() if send else b""]

    # -- rounds --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Gossip forever (until the node's nursery is cancelled). Rounds start at a steady
        rate, each bounded by timeout_s, so that a silent peer does not space out the
        heartbeats of the others."""
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(self._bounded_round)
                jitter = 1.0 + self._rng.uniform(-INTERVAL_JITTER, INTERVAL_JITTER)
                await trio.sleep(self.config.interval_s * jitter)

    async def _bounded_round(self) -> None:
        with trio.move_on_after(self.config.timeout_s):
            try:
                await self.round()
            except* DynacoreError as group:
                log.warning("%s: gossip round failed: %r", self.node_id, group.exceptions)
        self.rounds += 1

    async def round(self) -> None:
        """One round: heartbeats to the serving members, one push-pull with a random peer."""
        async with trio.open_nursery() as nursery:
            for node_id, address in self._heartbeat_targets():
                nursery.start_soon(self._heartbeat, node_id, address)
            target = self._exchange_target()
            if target is not None:
                nursery.start_soon(self.exchange, target[1], target[0])

    def peers(self) -> list[tuple[str, str]]:
        """(id, address) of every serving member but this node whose address is known (a
        member listed at port 0 has not advertised where it listens yet: a call there could
        only fail, and would mark a healthy peer failed), sorted by id."""
        state = self._state
        if state is None:
            return []
        return [
            (node_id, member.address)
            for node_id, member in state.members.items()
            if node_id != self.node_id and member.status in SERVING and advertised(member.address)
        ]

    def _heartbeat_targets(self) -> list[tuple[str, str]]:
        peers = self.peers()
        if len(peers) > self.config.heartbeat_fanout_max:
            peers = self._rng.sample(peers, self.config.heartbeat_fanout_max)
        return peers

    def _exchange_target(self) -> tuple[str | None, str] | None:
        peers = self.peers()
        differing = [p for p in peers if self._peer_digests.get(p[0], self._digest) != self._digest]
        pool = differing or peers
        if pool:
            node_id, address = self._rng.choice(pool)
            return node_id, address
        seeds = [s for s in self._seeds if s != self.address]
        return (None, self._rng.choice(seeds)) if seeds else None

    def _fields(self, *, with_state: bool, want_state: bool) -> list[Value]:
        state = self._state
        raw = state.encode() if with_state and state is not None else b""
        return [self.node_id, self.address, self._digest, raw, want_state]

    async def _heartbeat(self, node_id: str, address: str) -> None:
        reply = await self._gossip_call(
            node_id, address, self._fields(with_state=False, want_state=False)
        )
        if reply is not None:
            self._peer_digests[node_id] = reply[0]

    async def exchange(self, address: str, node_id: str | None = None) -> bool:
        """Push-pull with one peer: digests first, states only where they differ. True if the
        peer answered."""
        reply = await self._gossip_call(
            node_id, address, self._fields(with_state=False, want_state=True)
        )
        if reply is None:
            return False
        their_digest, theirs = reply
        if theirs is not None:
            try:
                await self.merge(theirs)
            except ClusterError as exc:
                log.warning("%s: gossip from %s refused: %s", self.node_id, address, exc)
                return True
        if self._state is not None and self._digest != their_digest:
            pushed = await self._gossip_call(
                node_id, address, self._fields(with_state=True, want_state=False)
            )
            if pushed is not None:
                their_digest = pushed[0]
        if node_id is not None:
            self._peer_digests[node_id] = their_digest
        return True

    async def pull(self, address: str) -> ClusterState | None:
        """Ask one node for its state (the join path); None if it has none."""
        fields: list[Value] = [self.node_id, self.address, b"", b"", True]
        reply = await self._call(address, protocol.GOSSIP, fields, self.config.timeout_s)
        _digest, raw = expect(reply, (bytes, bytes), "GOSSIP reply")
        return decode_state(raw)

    async def announce(self) -> list[str]:
        """Push-pull with every serving member at once; the ids of those that answered (they now
        hold everything our state holds)."""
        answered: list[str] = []

        async def one(node_id: str, address: str) -> None:
            if await self.exchange(address, node_id):
                answered.append(node_id)

        with trio.move_on_after(self.config.timeout_s):
            async with trio.open_nursery() as nursery:
                for node_id, address in self.peers():
                    nursery.start_soon(one, node_id, address)
        return sorted(answered)

    async def _gossip_call(
        self, node_id: str | None, address: str, fields: list[Value]
    ) -> tuple[bytes, ClusterState | None] | None:
        """One GOSSIP call; (their digest, their state or None), or None when unreachable or
        refused (health updated)."""
        try:
            reply = await self._call(address, protocol.GOSSIP, fields, self.config.timeout_s)
            digest, raw = expect(reply, (bytes, bytes), "GOSSIP reply")
            theirs = decode_state(raw)
        except DynacoreError as exc:
            log.debug("%s: gossip to %s failed: %r", self.node_id, address, exc)
            if node_id is not None:
                self._health.mark_failed(node_id)
            return None
        if node_id is not None:
            self._health.heartbeat(node_id)
        return digest, theirs
