"""ClusterService: the membership side of one node, wired by node.py. It owns the gossiper, the
handoff manager, the detector-fed peer health and the routing view, and answers the membership
messages (cluster/protocol.py): gossip, join, staged join/leave, plan, commit, transfers and
handoff batches.

The initial state: the one persisted by a previous run; else the static members of the
configuration (`--members`); else, with seeds only, none (the node is unjoined and learns the
state by gossip); else a cluster of this node alone.

Staged changes go to the claimant (`ClusterState.claimant()`): any node forwards them there, so
that one node orders them, as riak-admin does. Ownership changes only through commit.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from dynacore.cluster import protocol
from dynacore.cluster.gossip import GossipConfig, Gossiper, shares_ring_node
from dynacore.cluster.handoff import Handoff, HandoffConfig, apply_batch
from dynacore.cluster.health import DetectorHealth, make_detector
from dynacore.cluster.protocol import TransfersReport
from dynacore.cluster.state import ClusterState, Member, Status
from dynacore.cluster.view import ClusterView
from dynacore.config import NodeConfig, check_address
from dynacore.errors import ClusterError, ConnectionLost, ProtocolError, RequestTimeout, Unavailable
from dynacore.membership import Membership
from dynacore.messages import expect
from dynacore.net.messages import Value
from dynacore.net.rpc import RpcClient
from dynacore.storage import Engine

log = logging.getLogger(__name__)

Handler = Callable[[list[Any]], Awaitable[list[Any]]]
UNREACHABLE = (ConnectionLost, RequestTimeout, OSError)


def initial_state(config: NodeConfig, membership: Membership | None = None) -> ClusterState | None:
    """The state a node starts from when none is persisted (None: unjoined)."""
    n_val = max([config.n, *config.namespaces.values()])
    if membership is not None:
        members = {
            node_id: Member(membership.address_of(node_id), Status.VALID)
            for node_id in membership.ring.nodes
        }
        return ClusterState(n_val=n_val, epoch=0, ring=membership.ring, members=members)
    if config.members:
        return ClusterState.bootstrap(config.partitions, dict(config.members), n_val)
    if config.seeds:
        return None
    return ClusterState.bootstrap(config.partitions, {config.node_id: config.listen}, n_val)


class ClusterService:
    """Membership for one node. Made by `open`, started by `start` inside the node's nursery."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        store: Engine,
        rpc: RpcClient,
        rng: random.Random,
        state: ClusterState | None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self._store = store
        self._rpc = rpc
        self._nursery: trio.Nursery | None = None
        interval_s = config.gossip_interval_s
        self.health = DetectorHealth(make_detector(interval_s), min_heartbeat_interval_s=interval_s)
        self.gossiper = Gossiper(
            node_id=config.node_id,
            store=store,
            call=self._rpc.call,
            health=self.health,
            rng=rng,
            config=GossipConfig(interval_s=interval_s),
            seeds=config.seeds,
            state=state,
        )
        self.handoff = Handoff(
            node_id=config.node_id,
            store=store,
            gossiper=self.gossiper,
            health=self.health,
            send=self._send_batch,
            n_for=lambda namespace: self.view.n_for(namespace),
            config=HandoffConfig.for_interval(interval_s, config.limits.frame_size_bytes),
        )
        self.view = self._make_view(state, config.listen)
        self._view_listeners: list[Callable[[ClusterView], None]] = []
        self.gossiper.subscribe(self._state_changed)

    @classmethod
    async def open(
        cls,
        config: NodeConfig,
        *,
        store: Engine,
        rpc: RpcClient,
        rng: random.Random,
        membership: Membership | None = None,
    ) -> ClusterService:
        """The service with the persisted state, else the configured initial one."""
        state = Gossiper.load(store)
        if state is None:
            state = initial_state(config, membership)
        return cls(config, store=store, rpc=rpc, rng=rng, state=state)

    async def start(self, nursery: trio.Nursery, address: str) -> None:
        """Begin gossip and handoff; `address` is where this node listens."""
        self._nursery = nursery
        await self.gossiper.start(address)
        self._refresh_view(self.gossiper.state)
        nursery.start_soon(self.gossiper.run)
        nursery.start_soon(self.handoff.run)

    # -- the view ------------------------------------------------------------------------------

    def on_view(self, listener: Callable[[ClusterView], None]) -> None:
        """Call `listener(view)` whenever the routing view changes."""
        self._view_listeners.append(listener)

    def _make_view(self, state: ClusterState | None, address: str) -> ClusterView:
        if state is None:
            return ClusterView.unjoined(
                self.node_id,
                address,
                q=self.config.partitions,
                n=self.config.n,
                namespaces=self.config.namespaces,
            )
        return ClusterView.of(state, n=self.config.n, namespaces=self.config.namespaces)

    def _state_changed(self, state: ClusterState) -> None:
        self._refresh_view(state)

    def _refresh_view(self, state: ClusterState | None) -> None:
        self.view = self._make_view(state, self.gossiper.address or self.config.listen)
        for listener in self._view_listeners:
            listener(self.view)

    def adopt_addresses(self, membership: Membership) -> ClusterView:
        """Take the member addresses of a static view (tests that bind port 0 fill them in)."""
        state = self.gossiper.state
        if state is None:
            return self.view
        new = state
        for node_id, address in membership.addresses.items():
            if node_id in new.members and new.members[node_id].address != address:
                new = new.set_address(node_id, address)
        if new is not state and self._nursery is not None:
            self._nursery.start_soon(self.gossiper.adopt, new)
            self._refresh_view(new)  # at once: the caller routes with it right away
        return self.view

    # -- messages ------------------------------------------------------------------------------

    def handlers(self) -> dict[int, Handler]:
        return {
            protocol.GOSSIP: self.gossiper.handle,
            protocol.CLUSTER_JOIN: self._join,
            protocol.STAGE_JOIN: self._stage_join,
            protocol.STAGE_LEAVE: self._stage_leave,
            protocol.CLUSTER_STATE: self._cluster_state,
            protocol.COMMIT: self._commit,
            protocol.TRANSFERS: self._transfers,
            protocol.HANDOFF_BATCH: self._handoff_batch,
        }

    def _state(self) -> ClusterState:
        state = self.gossiper.state
        if state is None:
            raise Unavailable(f"{self.node_id} has not joined a cluster (no cluster state yet)")
        return state

    async def _call_node(
        self, node_id: str, msg_type: int, fields: Sequence[Value], timeout_s: float
    ) -> list[Value]:
        address = self._state().address_of(node_id)
        try:
            reply = await self._rpc.call(address, msg_type, fields, timeout_s)
        except UNREACHABLE:
            self.health.mark_failed(node_id)
            raise
        self.health.mark_ok(node_id)
        return reply

    async def _at_claimant(self, msg_type: int, fields: list[Value]) -> ClusterState | None:
        """Forward a claimant request (fields end with forwarded=True); None when this node is
        the claimant and must apply it itself."""
        claimant = self._state().claimant()
        if claimant == self.node_id:
            return None
        reply = await self._call_node(
            claimant, msg_type, fields, self.config.limits.request_timeout_s
        )
        (raw,) = expect(reply, (bytes,), f"{protocol.NAMES[msg_type]} reply")
        incoming = ClusterState.decode(raw)
        await self.gossiper.merge(incoming)
        return incoming

    async def _handled_by_claimant(
        self, forwarded: bool, msg_type: int, fields: list[Value]
    ) -> bool:
        """True when the request went to the claimant (whose resulting state we merged); False
        when this node must apply it (it is the claimant, or the request was forwarded here)."""
        return not forwarded and (await self._at_claimant(msg_type, fields)) is not None

    async def _join(self, fields: list[Any]) -> list[Any]:
        (seed,) = expect(fields, (str,), "CLUSTER_JOIN")
        return [await self.join(seed)]

    async def join(self, seed: str) -> str:
        """Join the cluster of `seed`: learn its state, then stage this node's join at the
        claimant (who must still commit it); the claimant's id. ClusterError when this node is
        in a ring already or belongs to another cluster; Unavailable when the seed is silent."""
        check_address(seed)
        current = self.gossiper.state
        lone = current is not None and _is_lone(current, self.node_id)
        if current is not None and self.node_id in _placed(current) and not lone:
            raise ClusterError(f"{self.node_id} is already in the ring")
        try:
            pulled = await self.gossiper.pull(seed)
        except UNREACHABLE as exc:
            raise Unavailable(f"seed {seed} did not answer: {exc}") from exc
        if pulled is None:
            raise Unavailable(f"seed {seed} knows no cluster yet")
        if self.node_id in _placed(pulled):
            raise ClusterError(f"{self.node_id} is already in the ring of {seed}'s cluster")
        if current is not None and not shares_ring_node(current, pulled):
            _check_lone(current, self.node_id)
        await self.gossiper.adopt(pulled)
        address = self.gossiper.address
        staged = await self._at_claimant(protocol.STAGE_JOIN, [self.node_id, address, True])
        if staged is None:
            await self.gossiper.update(lambda s: _stage_join(s, self.node_id, address))
        return self._state().claimant()

    async def _stage_join(self, fields: list[Any]) -> list[Any]:
        node_id, address, forwarded = expect(fields, (str, str, bool), "STAGE_JOIN")
        check_address(address)
        if await self._handled_by_claimant(forwarded, protocol.STAGE_JOIN, [*fields[:2], True]):
            return [self._state().encode()]
        new = await self.gossiper.update(lambda s: _stage_join(s, node_id, address))
        self._spread()
        return [new.encode()]

    async def _stage_leave(self, fields: list[Any]) -> list[Any]:
        node_id, forwarded = expect(fields, (str, bool), "STAGE_LEAVE")
        return [(await self.stage_leave(node_id, forwarded=forwarded)).encode()]

    async def stage_leave(self, node_id: str = "", *, forwarded: bool = False) -> ClusterState:
        """Stage the leave of `node_id` (default: this node) at the claimant; the state after."""
        leaver = node_id or self.node_id
        if await self._handled_by_claimant(forwarded, protocol.STAGE_LEAVE, [leaver, True]):
            return self._state()
        new = await self.gossiper.update(lambda s: _stage_leave(s, leaver))
        self._spread()
        return new

    async def _cluster_state(self, fields: list[Any]) -> list[Any]:
        at_claimant, forwarded = expect(fields, (bool, bool), "CLUSTER_STATE")
        state = self.gossiper.state
        if state is None:
            return [b""]
        if at_claimant and not forwarded:
            at = await self._at_claimant(protocol.CLUSTER_STATE, [True, True])
            if at is not None:
                return [at.encode()]
        return [state.encode()]

    async def refresh_from_claimant(self) -> ClusterState:
        """Merge the claimant's state (the staged changes live there) into ours; ours after."""
        await self._at_claimant(protocol.CLUSTER_STATE, [True, True])
        return self._state()

    async def _commit(self, fields: list[Any]) -> list[Any]:
        (forwarded,) = expect(fields, (bool,), "COMMIT")
        return [(await self.commit(forwarded=forwarded)).encode()]

    async def commit(self, *, forwarded: bool = False) -> ClusterState:
        """Commit the changes staged at the claimant (forwarded there); the state after.
        ClusterError when nothing is staged or a handoff is still in progress."""
        if await self._handled_by_claimant(forwarded, protocol.COMMIT, [True]):
            return self._state()
        new = await self.gossiper.update(lambda s: s.commit())
        log.info("%s: committed epoch %d: %r", self.node_id, new.epoch, new)
        self._spread()
        return new

    def _spread(self) -> None:
        """Push the state to every member now, in the background (a staged change or a commit
        should not wait for random gossip)."""
        if self._nursery is not None:
            self._nursery.start_soon(self.gossiper.announce)

    async def _transfers(self, fields: list[Any]) -> list[Any]:
        expect(fields, (), "TRANSFERS")
        state = self.gossiper.state
        report = TransfersReport(
            state=state.encode() if state is not None else b"",
            rows=tuple(self.handoff.rows()),
            sweep=self.handoff.sweep_info(),
        )
        return report.to_fields()

    async def _handoff_batch(self, fields: list[Any]) -> list[Any]:
        _partition, keys, sets = expect(fields, (int, list, list), "HANDOFF_BATCH")
        return [await apply_batch(self._store, keys, sets)]

    async def _send_batch(
        self, target: str, partition: int, keys: list[bytes], sets: list[bytes]
    ) -> None:
        fields: list[Value] = [partition, list(keys), list(sets)]
        timeout_s = 2 * self.config.limits.request_timeout_s
        reply = await self._call_node(target, protocol.HANDOFF_BATCH, fields, timeout_s)
        (applied,) = expect(reply, (int,), "HANDOFF_BATCH reply")
        if applied != len(keys):
            raise ProtocolError(f"{target} applied {applied} of {len(keys)} handed-off objects")


def _placed(state: ClusterState) -> set[str]:
    return set(state.ring.nodes) | set(state.pending.nodes if state.pending else ())


def _is_lone(state: ClusterState, node_id: str) -> bool:
    """True for a cluster of this node alone with nothing in flight (a fresh node started
    without members or seeds): it may give it up to join another."""
    return set(state.members) == {node_id} and state.pending is None


def _check_lone(state: ClusterState, node_id: str) -> None:
    if not _is_lone(state, node_id):
        others = sorted(n for n in state.members if n != node_id)
        raise ClusterError(
            f"{node_id} belongs to another cluster with members {others}; it cannot join"
        )


def _stage_join(state: ClusterState, node_id: str, address: str) -> ClusterState:
    member = state.members.get(node_id)
    if node_id in state.staged_joins and member is not None and member.address == address:
        return state  # a repeated request
    return state.stage_join(node_id, address)


def _stage_leave(state: ClusterState, node_id: str) -> ClusterState:
    if node_id in state.staged_leaves:
        return state  # a repeated request
    return state.stage_leave(node_id)
