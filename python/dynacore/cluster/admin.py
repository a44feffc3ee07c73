"""The client side of the membership commands (`dynacore join / leave / plan / commit /
transfers / members`): requests to nodes over RPC, and the handoff progress of a whole cluster
gathered from every member's TRANSFERS report.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import reduce

import trio

from dynacore.cluster import protocol
from dynacore.cluster.gossip import decode_state
from dynacore.cluster.protocol import TransferRow, TransfersReport
from dynacore.cluster.state import ClusterState, Status
from dynacore.config import check_address
from dynacore.errors import ConfigError, ConnectionLost, DynacoreError, RequestTimeout, Unavailable
from dynacore.limits import Limits
from dynacore.messages import expect
from dynacore.net.messages import Value
from dynacore.net.rpc import RpcClient, open_rpc_client
from dynacore.net.transport import TcpTransport, Transport

DEFAULT_TIMEOUT_S = 15.0
UNREACHABLE = (ConnectionLost, RequestTimeout, OSError)


@dataclass(frozen=True)
class ClusterProgress:
    """The handoff as every reachable member reports it."""

    state: ClusterState  # the merge of every answering node's state (confirmations included)
    reports: dict[str, TransfersReport | None]  # by node id; None: did not answer

    @property
    def rows(self) -> list[TransferRow]:
        return [row for r in self.reports.values() if r is not None for row in r.rows]

    @property
    def moving(self) -> int:
        return len(self.state.moving_partitions())

    @property
    def confirmed(self) -> int:
        return len(self.state.confirmed)

    @property
    def objects(self) -> int:
        return sum(row.objects for row in self.rows)

    @property
    def size_bytes(self) -> int:
        return sum(row.size_bytes for row in self.rows)

    def agreed(self) -> bool:
        """Every answering member holds one and the same state."""
        digests = set()
        for report in self.reports.values():
            state = decode_state(report.state) if report is not None else None
            if report is not None:
                digests.add(state.digest() if state is not None else b"")
        return len(digests) == 1

    def done(self) -> bool:
        """No handoff pending anywhere, every member agrees, and every serving member finished
        its drop sweep for the current ring."""
        if self.state.pending is not None or not self.agreed():
            return False
        serving = {n for n, m in self.state.members.items() if m.status is not Status.EXITING}
        for node_id, report in self.reports.items():
            if report is None:
                if node_id in serving:
                    return False
                continue
            if report.sweep.swept_epoch != self.state.epoch:
                return False
        return True


class AdminClient:
    """Talks to the nodes of one cluster; use as `async with AdminClient(seeds) as admin`."""

    def __init__(
        self,
        seeds: Sequence[str],
        *,
        secret: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: Transport | None = None,
        limits: Limits | None = None,
    ) -> None:
        if not seeds:
            raise ConfigError("give at least one node address (--seeds)")
        self.seeds = [check_address(seed) for seed in seeds]
        self._secret = secret
        self._timeout_s = timeout_s
        self._limits = limits if limits is not None else Limits()
        self._transport = transport if transport is not None else TcpTransport(self._limits)
        self._rpc: RpcClient | None = None
        self._stack = AsyncExitStack()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[RpcClient]:
        async with open_rpc_client(
            self._transport,
            client_id="dynacore-admin",
            rng=random.Random(),
            secret=self._secret.encode(),
            limits=self._limits,
        ) as rpc:
            yield rpc

    async def __aenter__(self) -> AdminClient:
        self._rpc = await self._stack.enter_async_context(self._open())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._rpc = None
        await self._stack.aclose()

    async def call(
        self, msg_type: int, fields: list[Value], address: str | None = None
    ) -> list[Value]:
        """Send to `address`, else to the first seed that answers."""
        assert self._rpc is not None, "use `async with AdminClient(...)`"
        candidates = [check_address(address)] if address is not None else self.seeds
        errors = []
        for candidate in candidates:
            try:
                return await self._rpc.call(candidate, msg_type, fields, self._timeout_s)
            except UNREACHABLE as exc:
                errors.append(f"{candidate}: {exc}")
        raise Unavailable(f"no node answered: {'; '.join(errors)}")

    async def _state_reply(self, msg_type: int, fields: list[Value]) -> ClusterState:
        (raw,) = expect(await self.call(msg_type, fields), (bytes,), "state reply")
        state = decode_state(raw)
        if state is None:
            raise Unavailable("the node answering has not joined a cluster")
        return state

    async def join(self, seed: str, node: str | None = None) -> str:
        """Ask the joining node (`node`, else the first seed) to join the cluster of `seed`;
        the claimant that staged it."""
        reply = await self.call(protocol.CLUSTER_JOIN, [check_address(seed)], node)
        (claimant,) = expect(reply, (str,), "CLUSTER_JOIN reply")
        return str(claimant)

    async def leave(self, node_id: str = "") -> ClusterState:
        """Stage the leave of `node_id` (default: the node answering)."""
        return await self._state_reply(protocol.STAGE_LEAVE, [node_id, False])

    async def plan_state(self) -> ClusterState:
        """The claimant's state, which holds the staged changes (`.plan()`)."""
        return await self._state_reply(protocol.CLUSTER_STATE, [True, False])

    async def state(self, address: str | None = None) -> ClusterState:
        reply = await self.call(protocol.CLUSTER_STATE, [False, False], address)
        (raw,) = expect(reply, (bytes,), "CLUSTER_STATE reply")
        state = decode_state(raw)
        if state is None:
            raise Unavailable("the node answering has not joined a cluster")
        return state

    async def commit(self) -> ClusterState:
        return await self._state_reply(protocol.COMMIT, [False])

    async def transfers(self) -> ClusterProgress:
        """TRANSFERS from every member (exiting ones included) of the cluster, concurrently."""
        base = await self.state()
        reports: dict[str, TransfersReport | None] = {}

        async def one(node_id: str, address: str) -> None:
            try:
                reply = await self.call(protocol.TRANSFERS, [], address)
                reports[node_id] = TransfersReport.from_fields(reply)
            except DynacoreError:
                reports[node_id] = None

        async with trio.open_nursery() as nursery:
            for node_id, member in base.members.items():
                nursery.start_soon(one, node_id, member.address)
        states = [base] + [
            s
            for r in reports.values()
            if r is not None and r.state
            for s in [decode_state(r.state)]
            if s is not None
        ]
        merged = reduce(ClusterState.merge, states)
        return ClusterProgress(state=merged, reports=dict(sorted(reports.items())))
