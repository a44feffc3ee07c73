"""Real-process chaos helpers: `dynacore serve` processes on 127.0.0.1 (localcluster.LocalNode),
a fault-injecting TCP proxy per directed link between nodes, the set workload over real TCP
clients, and the final state read back both over the wire (REPLICA_GET) and from each node's
LMDB directory after the processes stopped (which also proves LMDB reopens cleanly).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from dynacore import messages, objects
from dynacore._backend import versions
from dynacore.client import AsyncClient
from dynacore.errors import DynacoreError
from dynacore.limits import Limits
from dynacore.localcluster import LocalNode, free_ports
from dynacore.membership import Membership
from dynacore.net.rpc import RpcClient, open_rpc_client
from dynacore.net.transport import TcpTransport
from dynacore.sim.checker import FinalState, ReplicaState
from dynacore.sim.workload import union_of
from dynacore.storage import open_lmdb_engine

HOST = "127.0.0.1"
SECRET = "chaos"
PARTITIONS = 16
READY_TIMEOUT_S = 5.0  # the issue: a killed node serves again within 5 s
FIRST_START_TIMEOUT_S = 60.0  # a cold start on a loaded machine (imports, first LMDB open)
RPC_TIMEOUT_S = 2.0
LIVENESS_ROUNDS = 30
LIVENESS_PAUSE_S = 0.5
PROXY_CHUNK_BYTES = 64 * 1024
LIMITS = Limits(request_timeout_s=RPC_TIMEOUT_S)


# -- the fault-injecting proxy ---------------------------------------------------------------


class LinkProxy:
    """A TCP proxy for one directed link: connections that node A opens towards node B.

    `drop_up` discards what the initiator sends, `drop_down` what the acceptor answers. Every
    change of the flags closes the link's open connections (a partition starting or healing
    breaks connections, and bytes discarded mid-stream must never be followed by more).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.drop_up = False
        self.drop_down = False
        self._scopes: set[trio.CancelScope] = set()
        self.connections = 0
        self.carried_bytes = 0
        self.dropped_bytes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def set(self, *, drop_up: bool, drop_down: bool) -> None:
        if (drop_up, drop_down) == (self.drop_up, self.drop_down):
            return
        self.drop_up, self.drop_down = drop_up, drop_down
        for scope in list(self._scopes):
            scope.cancel()

    async def _handle(self, initiator: trio.SocketStream) -> None:
        self.connections += 1
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with initiator:
                    try:
                        acceptor = await trio.open_tcp_stream(HOST, self.target_port)
                    except OSError:
                        return  # the target is down: so is the connection
                    async with acceptor, trio.open_nursery() as nursery:
                        cancel = nursery.cancel_scope
                        nursery.start_soon(self._pump, initiator, acceptor, True, cancel)
                        nursery.start_soon(self._pump, acceptor, initiator, False, cancel)
            finally:
                self._scopes.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, up: bool, scope: trio.CancelScope
    ) -> None:
        try:
            while chunk := await source.receive_some(PROXY_CHUNK_BYTES):
                if self.drop_up if up else self.drop_down:
                    self.dropped_bytes += len(chunk)
                else:
                    self.carried_bytes += len(chunk)
                    await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side closed: the connection is over


@dataclass
class ProxiedCluster:
    """Three or more `dynacore serve` processes; node A reaches node B through proxy (A, B)."""

    base_dir: Path
    ids: list[str]
    nodes: dict[str, LocalNode] = field(default_factory=dict)
    proxies: dict[tuple[str, str], LinkProxy] = field(default_factory=dict)

    def cut(self, sources: Sequence[str], destinations: Sequence[str]) -> None:
        """Lose everything sent from a source to a destination (one way)."""
        for s in sources:
            for d in destinations:
                if s != d:
                    self.proxies[(s, d)].set(drop_up=True, drop_down=self.proxies[(s, d)].drop_down)
                    back = self.proxies[(d, s)]
                    back.set(drop_up=back.drop_up, drop_down=True)

    def partition(self, group_a: Sequence[str], group_b: Sequence[str]) -> None:
        self.cut(group_a, group_b)
        self.cut(group_b, group_a)

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.set(drop_up=False, drop_down=False)


@asynccontextmanager
async def open_proxied_cluster(base_dir: Path, count: int) -> AsyncIterator[ProxiedCluster]:
    """Start the proxies, then the node processes (each with its own view of the addresses:
    the others are behind its outgoing proxies); stop everything on exit."""
    ids = [f"n{i + 1}" for i in range(count)]
    ports = dict(zip(ids, free_ports(count), strict=True))
    cluster = ProxiedCluster(base_dir, ids)
    async with trio.open_nursery() as nursery:
        for a in ids:
            for b in ids:
                if a != b:
                    proxy = LinkProxy(ports[b])
                    await nursery.start(proxy.run)
                    cluster.proxies[(a, b)] = proxy
        for node_id in ids:
            seen = {
                o: ports[o] if o == node_id else cluster.proxies[(node_id, o)].port for o in ids
            }
            view = ",".join(f"{other}@{HOST}:{port}" for other, port in seen.items())
            cluster.nodes[node_id] = LocalNode(
                node_id, f"{HOST}:{ports[node_id]}", base_dir / node_id, serve_args(
                    node_id, ports[node_id], base_dir / node_id, view
                ),
            )  # fmt: skip
        try:
            await start_nodes(list(cluster.nodes.values()))
            yield cluster
        finally:
            await stop_nodes(list(cluster.nodes.values()))
            nursery.cancel_scope.cancel()


def serve_args(node_id: str, port: int, data_dir: Path, members: str) -> list[str]:
    return [
        "--node-id", node_id,
        "--listen", f"{HOST}:{port}",
        "--data-dir", str(data_dir),
        "--members", members,
        "--partitions", str(PARTITIONS),
        "--n", "3",
    ]  # fmt: skip


def node_env() -> dict[str, str]:
    return {**os.environ, "DYNACORE_CLUSTER_SECRET": SECRET}


async def start_nodes(nodes: Sequence[LocalNode]) -> None:
    for node in nodes:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.start(node_env())
    for node in nodes:
        await wait_ready(node, FIRST_START_TIMEOUT_S)


async def restart_node(node: LocalNode, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Start a stopped node again; the seconds until it accepted a connection."""
    started = trio.current_time()
    node.start(node_env())
    await wait_ready(node, timeout_s)
    return trio.current_time() - started


async def wait_ready(node: LocalNode, timeout_s: float) -> None:
    """Until the node accepts TCP connections; DynacoreError if it died, TooSlowError after
    timeout_s."""
    host, port = node.address.rsplit(":", 1)
    with trio.fail_after(timeout_s):
        while True:
            if not node.running:
                raise DynacoreError(f"node {node.node_id} exited; see {node.log_path}")
            try:
                stream = await trio.open_tcp_stream(host, int(port))
            except OSError:
                await trio.sleep(0.02)
            else:
                await stream.aclose()
                return


async def stop_nodes(nodes: Sequence[LocalNode]) -> list[int | None]:
    codes: list[int | None] = []
    with trio.CancelScope(shield=True):
        for node in nodes:
            codes.append(await trio.to_thread.run_sync(node.stop))
    return codes


async def kill_node(node: LocalNode) -> None:
    await trio.to_thread.run_sync(node.kill)


# -- reading the final state -------------------------------------------------------------------


@asynccontextmanager
async def replica_reader() -> AsyncIterator[RpcClient]:
    transport = TcpTransport(LIMITS)
    async with open_rpc_client(
        transport, secret=SECRET.encode(), client_id="chaos-checker", limits=LIMITS,
        rng=random.Random(0),
    ) as rpc:  # fmt: skip
        yield rpc


async def replica_states(
    rpc: RpcClient, membership: Membership, addresses: dict[str, str], key: bytes
) -> list[ReplicaState]:
    """Every replica's stored set of `key`, over REPLICA_GET to the node itself."""
    stored_key = objects.object_key("", key)
    states = []
    for node_id in membership.preference_list(stored_key, membership.n):
        (raw,) = await rpc.call(addresses[node_id], messages.REPLICA_GET, [stored_key])
        assert raw is None or isinstance(raw, bytes)
        states.append(state_of(node_id, raw))
    return states


def state_of(node_id: str, raw: bytes | None) -> ReplicaState:
    now_ms = 0  # nothing in these workloads expires
    elements = union_of(objects.visible_values(raw, now_ms)) if raw else frozenset()
    return ReplicaState(node_id, raw, versions.size(raw) if raw else 0, elements)


async def converge_and_read(
    client: AsyncClient,
    rpc: RpcClient,
    addresses: dict[str, str],
    keys: Sequence[bytes],
    siblings_limit: int,
    max_siblings_seen: int,
) -> tuple[FinalState, int]:
    """Read every key at r=all (read repair) until every replica agrees; then the final state
    (final reads at r=all, replica copies over REPLICA_GET) and the rounds it took."""
    membership = await client.refresh_ring()
    rounds = 0
    while rounds < LIVENESS_ROUNDS:
        rounds += 1
        failures = 0
        for key in keys:
            try:
                await client.get(key, r="all")
            except DynacoreError:
                failures += 1
        await trio.sleep(LIVENESS_PAUSE_S)
        states = {key: await _states_or_none(rpc, membership, addresses, key) for key in keys}
        if not failures and all(s is not None and len({r.raw for r in s}) == 1
                                for s in states.values()):  # fmt: skip
            break
    reads: dict[bytes, frozenset[bytes] | None] = {}
    replicas: dict[bytes, list[ReplicaState]] = {}
    for key in keys:
        try:
            reads[key] = union_of((await client.get(key, r="all")).values)
        except DynacoreError:
            reads[key] = None
        replicas[key] = await replica_states(rpc, membership, addresses, key)
    final = FinalState(reads, replicas, siblings_limit, max_siblings_seen)
    return final, rounds


async def _states_or_none(
    rpc: RpcClient, membership: Membership, addresses: dict[str, str], key: bytes
) -> list[ReplicaState] | None:
    try:
        return await replica_states(rpc, membership, addresses, key)
    except DynacoreError:
        return None


async def stored_on_disk(data_dir: Path, keys: Sequence[bytes]) -> dict[bytes, bytes | None]:
    """Open a stopped node's LMDB directory and read the stored sets of `keys`."""
    async with open_lmdb_engine(data_dir) as engine:
        return {key: engine.get("data", objects.object_key("", key)) for key in keys}
