"""The simulation harness: N real nodes (`dynacore.node.open_node`) on one SimNetwork in one
trio.run, each on a MemoryEngine whose MemoryDisk outlives it, each with its own skewable clock;
crash, restart (on the old disk or a wiped one), partitions that carry each client with its home
node, the network weather and slow disks — the `faults.FaultTarget` a schedule acts on — plus the
liveness-phase helpers: heal everything, converge by reads at r=all, snapshot every replica.

Nothing here draws randomness of its own: every node, client and the network get generators
derived from the one `random.Random` handed in.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dynacore import objects
from dynacore._backend import merkle, versions
from dynacore.client import AsyncClient
from dynacore.config import NodeConfig
from dynacore.errors import ConfigError, DynacoreError
from dynacore.limits import Limits
from dynacore.membership import Membership
from dynacore.net.simnet import SimFaults, SimNetwork
from dynacore.node import Node, open_node
from dynacore.sim.checker import ReplicaState
from dynacore.sim.faults import CALM_DELAY_MAX_S, MIN_DELAY_S
from dynacore.sim.workload import union_of
from dynacore.storage import MemoryDisk, MemoryEngine, open_memory_engine

PORT = 7000
CLIENT_PORT = 1
EPOCH_MS = 1_700_000_000_000  # simulated wall clocks start here (plus each node's skew)
CALM = SimFaults(delay_min_s=MIN_DELAY_S, delay_max_s=CALM_DELAY_MAX_S)
MAX_NODES = 64
MAX_CLIENTS = 256
MAX_PARTITIONS = 1 << 16
MAX_UNSYNCED_BATCHES = 1 << 16
MAX_INTERVAL_S = 3600.0
DATA_DB = "data"


@dataclass(frozen=True)
class ClusterConfig:
    """The simulated cluster's shape and the nodes' settings."""

    nodes: int = 5
    n: int = 3
    partitions: int = 16
    request_timeout_s: float = 1.0
    siblings_max: int = 100
    durable: bool = True  # False: crashes also roll back acknowledged batches (power loss)
    unsynced_batches: int = 1
    secret: str = "sim"
    aae_interval_s: float = 1.0  # one anti-entropy exchange per node per interval (0: off)
    hint_interval_s: float = 0.5  # hinted-handoff delivery rounds

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"nodes must be in [1, {MAX_NODES}], got {self.nodes}")
        if not 1 <= self.n <= self.nodes:
            raise ConfigError(f"n must be in [1, nodes={self.nodes}], got {self.n}")
        q = self.partitions
        if not 1 <= q <= MAX_PARTITIONS or q & (q - 1):
            raise ConfigError(f"partitions must be a power of two in [1, {MAX_PARTITIONS}]")
        if not 1 <= self.unsynced_batches <= MAX_UNSYNCED_BATCHES:
            raise ConfigError(f"unsynced_batches must be in [1, {MAX_UNSYNCED_BATCHES}]")
        if not 0 <= self.aae_interval_s <= MAX_INTERVAL_S:
            raise ConfigError(f"aae_interval_s must be in [0, {MAX_INTERVAL_S}] (0: off)")
        if not 0 < self.hint_interval_s <= MAX_INTERVAL_S:
            raise ConfigError(f"hint_interval_s must be in (0, {MAX_INTERVAL_S}]")
        self.limits()  # ConfigError for a bad timeout or sibling limit

    def limits(self) -> Limits:
        return Limits(
            request_timeout_s=self.request_timeout_s,
            siblings_max=self.siblings_max,
            siblings_warn=self.siblings_max,
        )

    def node_ids(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    def siblings_bound(self) -> int:
        """The most siblings a stored or read set may hold. siblings_max refuses client writes
        only (TooManySiblings); replication never refuses, so the sets of n replicas that each
        accepted writes up to the limit on their own (a partition) merge into up to n times it.
        """
        return self.siblings_max * self.n


def address_of(node_id: str) -> str:
    return f"{node_id}:{PORT}"


def _set_event() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


class SkewClock:
    """A node's wall clock: trio's (virtual) time from EPOCH_MS, plus an offset the faults set."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return max(0, EPOCH_MS + self.offset_ms + int(trio.current_time() * 1000))


@dataclass
class SimNode:
    """One node's lasting state: its disk and clock outlive each run of the node code."""

    node_id: str
    config: NodeConfig
    disk: MemoryDisk = field(default_factory=MemoryDisk)
    clock: SkewClock = field(default_factory=SkewClock)
    disk_delay_s: float = 0.0
    node: Node | None = None
    engine: MemoryEngine | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=_set_event)
    running: bool = False  # false from the instant of a crash, before its tasks have stopped
    starts: int = 0
    wipes: int = 0

    @property
    def address(self) -> str:
        return address_of(self.node_id)

    @property
    def up(self) -> bool:
        return self.running and self.node is not None


class SimCluster:
    """The running cluster; made by `open_sim_cluster`."""

    def __init__(
        self,
        config: ClusterConfig,
        network: SimNetwork,
        rng: random.Random,
        nursery: trio.Nursery,
    ) -> None:
        self.config = config
        self.network = network
        self._rng = rng
        self._nursery = nursery
        limits = config.limits()
        members = tuple((node_id, address_of(node_id)) for node_id in config.node_ids())
        self.nodes = {
            node_id: SimNode(
                node_id,
                NodeConfig(
                    node_id=node_id,
                    listen=address_of(node_id),
                    members=members,
                    partitions=config.partitions,
                    n=config.n,
                    cluster_secret=config.secret,
                    limits=limits,
                    aae_interval_s=config.aae_interval_s,
                    hint_interval_s=config.hint_interval_s,
                ),
            )
            for node_id in config.node_ids()
        }
        self.membership = Membership.static(members, partitions=config.partitions, n=config.n)
        self._homes: dict[str, str] = {}  # client address -> its home node id
        self.crashes = 0

    def _child_rng(self) -> random.Random:
        return random.Random(self._rng.getrandbits(64))

    # -- node lifecycle ------------------------------------------------------------------------

    async def start_all(self) -> None:
        for node_id in self.nodes:
            await self.start(node_id)

    async def start(self, node_id: str) -> None:
        sim_node = self.nodes[node_id]
        assert not sim_node.running, f"{node_id} is already up"
        await sim_node.stopped.wait()  # the previous run has finished its cleanup
        sim_node.stopped = trio.Event()
        await self._nursery.start(self._run_node, sim_node)
        sim_node.running = True

    async def _run_node(self, sim_node: SimNode, task_status: trio.TaskStatus[None]) -> None:
        try:
            with trio.CancelScope() as scope:
                sim_node.scope = scope
                async with open_memory_engine(
                    sim_node.disk,
                    commit_delay_s=sim_node.disk_delay_s,
                    durable=self.config.durable,
                    unsynced_batches=self.config.unsynced_batches,
                ) as engine:
                    transport = self.network.transport(sim_node.address)
                    async with open_node(
                        sim_node.config,
                        transport=transport,
                        clock=sim_node.clock,
                        rng=self._child_rng(),
                        engine=engine,
                        membership=self.membership,
                    ) as node:
                        sim_node.engine, sim_node.node = engine, node
                        sim_node.starts += 1
                        task_status.started()
                        await trio.sleep_forever()
        finally:
            sim_node.node = sim_node.engine = sim_node.scope = None
            sim_node.running = False
            sim_node.stopped.set()

    async def crash(self, node_id: str) -> None:
        """Power loss: the network drops the node, its disk loses what was not committed, its
        tasks stop. All of it happens before any other task runs. A node that is down: no-op."""
        sim_node = self.nodes[node_id]
        if not sim_node.up:
            return
        assert sim_node.engine is not None and sim_node.scope is not None
        sim_node.running = False
        self.network.crash(sim_node.address)
        sim_node.engine.crash()
        sim_node.scope.cancel()
        self.crashes += 1
        await sim_node.stopped.wait()

    async def restart(self, node_id: str, *, wipe: bool) -> None:
        """Start a down node on its disk, or on an empty one (a new epoch). A wipe of a node
        that is up crashes it first; a plain restart of a node that is up is a no-op."""
        sim_node = self.nodes[node_id]
        if sim_node.up:
            if not wipe:
                return
            await self.crash(node_id)
        if wipe:
            sim_node.disk = MemoryDisk()
            sim_node.wipes += 1
        self.network.restart(sim_node.address)
        await self.start(node_id)

    # -- network and clocks ----------------------------------------------------------------------

    def add_client(self, name: str, home: str) -> str:
        """Register a client; partitions put it on its home node's side. Returns its address."""
        if home not in self.nodes or len(self._homes) >= MAX_CLIENTS:
            raise ConfigError(f"unknown home node {home!r} or too many clients")
        address = f"{name}:{CLIENT_PORT}"
        self._homes[address] = home
        return address

    def _with_clients(self, node_ids: Sequence[str]) -> list[str]:
        chosen = set(node_ids)
        return [address_of(n) for n in node_ids] + [
            address for address, home in self._homes.items() if home in chosen
        ]

    def set_weather(self, drop: float, duplicate: float, delay_max_s: float) -> None:
        self.network.set_faults(
            SimFaults(
                drop_probability=drop,
                duplicate_probability=duplicate,
                delay_min_s=min(CALM.delay_min_s, delay_max_s),
                delay_max_s=delay_max_s,
            )
        )

    def partition(self, group_a: Sequence[str], group_b: Sequence[str]) -> None:
        self.network.partition(self._with_clients(group_a), self._with_clients(group_b))

    def partition_one_way(self, sources: Sequence[str], destinations: Sequence[str]) -> None:
        self.network.partition_one_way(
            self._with_clients(sources), self._with_clients(destinations)
        )

    def heal(self) -> None:
        self.network.heal()

    def set_skew(self, node_id: str, offset_ms: int) -> None:
        self.nodes[node_id].clock.offset_ms = offset_ms

    def set_disk_delay(self, node_id: str, delay_s: float) -> None:
        """A slow (or fast again) disk: the running engine and the ones after a restart."""
        sim_node = self.nodes[node_id]
        sim_node.disk_delay_s = delay_s
        if sim_node.engine is not None:
            sim_node.engine.commit_delay_s = delay_s

    async def heal_all(self) -> None:
        """The start of the liveness phase: every fault off, every node up."""
        self.network.heal()
        self.network.set_faults(CALM)
        for node_id in self.nodes:
            self.set_skew(node_id, 0)
            self.set_disk_delay(node_id, 0.0)
            if not self.nodes[node_id].up:
                await self.restart(node_id, wipe=False)

    # -- clients -------------------------------------------------------------------------------

    @asynccontextmanager
    async def client(self, name: str, home: str) -> AsyncIterator[AsyncClient]:
        """A real AsyncClient on the simulated network, seeded with every node."""
        address = self.add_client(name, home)
        client = AsyncClient(
            [address_of(node_id) for node_id in self.nodes],
            secret=self.config.secret,
            limits=self.config.limits(),
            transport=self.network.transport(address),
            rng=self._child_rng(),
            client_id=name,
        )
        async with client:
            yield client

    # -- liveness and the final state ------------------------------------------------------------

    def preference_list(self, key: bytes) -> tuple[str, ...]:
        return self.membership.preference_list(objects.object_key("", key), self.config.n)

    def stored(self, node_id: str, key: bytes) -> bytes | None:
        engine = self.nodes[node_id].engine
        assert engine is not None, f"{node_id} is down"
        return engine.get(DATA_DB, objects.object_key("", key))

    def replica_states(self, key: bytes) -> list[ReplicaState]:
        """What every replica of the key stores now (every node must be up)."""
        states = []
        for node_id in self.preference_list(key):
            raw = self.stored(node_id, key)
            now_ms = self.nodes[node_id].clock.now_ms()
            elements = union_of(objects.visible_values(raw, now_ms)) if raw else frozenset()
            states.append(ReplicaState(node_id, raw, versions.size(raw) if raw else 0, elements))
        return states

    def converged(self, keys: Sequence[bytes]) -> bool:
        return all(len({s.raw for s in self.replica_states(key)}) == 1 for key in keys)

    def pending_hints(self) -> int:
        """Hints not yet handed back, over every node (every node must be up)."""
        engines = [sim_node.engine for sim_node in self.nodes.values()]
        assert all(engine is not None for engine in engines), "a node is down"
        return sum(engine.count("hints") for engine in engines if engine is not None)

    def healed(self, keys: Sequence[bytes]) -> bool:
        """Every replica of every key stores the same set, every replica of every partition
        has the same Merkle root, and no hint is waiting for delivery."""
        roots = self.merkle_roots()
        return (
            self.converged(keys)
            and all(len(set(by_node.values())) == 1 for by_node in roots.values())
            and self.pending_hints() == 0
        )

    async def read_all(self, keys: Sequence[bytes]) -> int:
        """Read every key at r=all through every node (read repair fixes the stale replicas);
        returns how many of those reads failed."""
        failures = 0
        for node_id, sim_node in self.nodes.items():
            assert sim_node.node is not None, f"{node_id} is down"
            for key in keys:
                try:
                    await sim_node.node.coordinator.get("", key, r="all")
                except DynacoreError:
                    failures += 1
        return failures

    def merkle_roots(self) -> dict[int, dict[str, bytes]]:
        """partition -> node -> Merkle root over the node's keys of that partition, for every
        replica of every partition; empty while the merkle primitive is not built."""
        tree_type = getattr(merkle, "MerkleTree", None)
        if tree_type is None:
            return {}
        ring = self.membership.ring
        roots: dict[int, dict[str, bytes]] = {}
        for node_id, sim_node in self.nodes.items():
            assert sim_node.engine is not None, f"{node_id} is down"
            by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
            for key, raw in sim_node.engine.scan(DATA_DB):
                digest = objects.object_digest(raw)
                by_partition.setdefault(ring.partition_of(key), []).append((key, digest))
            for partition in range(ring.q):
                if node_id in ring.preference_list(partition, self.config.n):
                    tree = tree_type()
                    tree.rebuild(by_partition.get(partition, []))
                    roots.setdefault(partition, {})[node_id] = tree.root()
        return roots


@asynccontextmanager
async def open_sim_cluster(
    config: ClusterConfig, network: SimNetwork, rng: random.Random
) -> AsyncIterator[SimCluster]:
    """Start every node; leaving the block stops them all."""
    async with trio.open_nursery() as nursery:
        cluster = SimCluster(config, network, rng, nursery)
        await cluster.start_all()
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["ClusterConfig", "SimCluster", "SimNode", "SkewClock", "address_of", "open_sim_cluster"]
