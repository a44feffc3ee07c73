"""An in-process cluster harness: nodes on 127.0.0.1 port 0, one trio.run, LMDB in tmp dirs;
each node can be stopped and restarted on its data dir and its port."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from dynacore.client import AsyncClient
from dynacore.config import NodeConfig
from dynacore.limits import Limits
from dynacore.membership import Membership
from dynacore.net.simnet import SimNetwork
from dynacore.node import Node, open_node
from dynacore.storage import MemoryDisk, open_memory_engine

SETTLE_TIMEOUT_S = 10.0  # bound on waits for background replication / repair


class ManualClock:
    """A wall clock the test moves by hand (envelope timestamps, TTL)."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, delta_ms: int) -> None:
        self.ms += delta_ms


class Cluster:
    """Nodes n1..nK; `start`/`stop` one node, `client()` a connected AsyncClient."""

    def __init__(
        self,
        nursery: trio.Nursery,
        base_dir: Path,
        count: int,
        *,
        n: int,
        limits: Limits,
        partitions: int,
        lmdb: bool,
        clock: ManualClock,
        secret: str,
        sim: SimNetwork | None,
        namespaces: dict[str, int],
    ) -> None:
        self._nursery = nursery
        self.sim = sim
        self.seed = sim.rng.getrandbits(64) if sim is not None else 0
        self.ids = [f"n{i + 1}" for i in range(count)]
        self.clock = clock
        self.nodes: dict[str, Node] = {}
        self._done: dict[str, trio.Event] = {}
        placeholder = tuple((node_id, "127.0.0.1:0") for node_id in self.ids)
        self.configs = {
            node_id: NodeConfig(
                node_id=node_id,
                listen=f"{node_id}:7000" if sim else "127.0.0.1:0",
                data_dir=base_dir / node_id if lmdb and not sim else None,
                members=placeholder,
                partitions=partitions,
                n=n,
                cluster_secret=secret,
                limits=limits,
                namespaces=namespaces,
            )
            for node_id in self.ids
        }
        self.membership: Membership | None = None
        self._clients = 0
        self.disks: dict[str, MemoryDisk] = {}

    async def start_all(self) -> None:
        for node_id in self.ids:
            await self.start(node_id)
        addresses = [(node_id, self.nodes[node_id].address) for node_id in self.ids]
        config = self.configs[self.ids[0]]
        self.membership = Membership.static(
            addresses, partitions=config.partitions, n=config.n, namespaces=config.namespaces
        )
        for node_id in self.ids:
            # from now on, restarts listen on the port first bound
            self.configs[node_id] = dataclasses.replace(
                self.configs[node_id], listen=self.nodes[node_id].address
            )
            self.nodes[node_id].set_membership(self.membership)

    async def start(self, node_id: str) -> Node:
        assert node_id not in self.nodes, f"{node_id} is running"
        node: Node = await self._nursery.start(self._run, node_id)
        if self.membership is not None:
            node.set_membership(self.membership)
        return node

    async def _run(self, node_id: str, task_status: trio.TaskStatus[Node]) -> None:
        done = self._done[node_id] = trio.Event()
        try:
            config = self.configs[node_id]
            transport = self.sim.transport(config.listen) if self.sim else None
            async with AsyncExitStack() as stack:
                engine = None
                if config.data_dir is None:  # memory engine on a disk that survives restarts
                    disk = self.disks.setdefault(node_id, MemoryDisk())
                    engine = await stack.enter_async_context(open_memory_engine(disk))
                node = await stack.enter_async_context(
                    open_node(
                        config,
                        clock=self.clock,
                        transport=transport,
                        engine=engine,
                        rng=random.Random(f"{self.seed}/{node_id}"),
                    )
                )
                self.nodes[node_id] = node
                task_status.started(node)
                await trio.sleep_forever()
        finally:
            self.nodes.pop(node_id, None)
            done.set()

    async def stop(self, node_id: str) -> None:
        self.nodes[node_id].stop()
        await self._done[node_id].wait()

    @property
    def addresses(self) -> list[str]:
        return [self.nodes[node_id].address for node_id in self.ids if node_id in self.nodes]

    @asynccontextmanager
    async def client(self, **options: object) -> AsyncIterator[AsyncClient]:
        secret = self.configs[self.ids[0]].cluster_secret
        if self.sim is not None:
            self._clients += 1
            options.setdefault("transport", self.sim.transport(f"client{self._clients}:1"))
        async with AsyncClient(self.addresses, secret=secret, **options) as client:  # type: ignore[arg-type]
            yield client

    def stored_keys(self, node_id: str) -> set[bytes]:
        return {key for key, _ in self.nodes[node_id].engine.scan("data")}

    def stored(self, node_id: str, stored_key: bytes) -> bytes | None:
        return self.nodes[node_id].engine.get("data", stored_key)

    def replicas(self, stored_key: bytes) -> tuple[str, ...]:
        assert self.membership is not None
        return self.membership.preference_list(stored_key, self.membership.n)


@asynccontextmanager
async def open_cluster(
    base_dir: Path,
    count: int = 3,
    *,
    n: int = 3,
    limits: Limits | None = None,
    partitions: int = 16,
    lmdb: bool = True,
    clock: ManualClock | None = None,
    secret: str = "s3cret",
    sim: SimNetwork | None = None,
    namespaces: dict[str, int] | None = None,
) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(
            nursery,
            base_dir,
            count,
            n=n,
            limits=limits or Limits(request_timeout_s=2.0),
            partitions=partitions,
            lmdb=lmdb,
            clock=clock or ManualClock(),
            secret=secret,
            sim=sim,
            namespaces=namespaces or {},
        )
        await cluster.start_all()
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


async def wait_until(predicate: object, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Poll `predicate()` until true; fail (trio.TooSlowError) after timeout_s."""
    assert callable(predicate)
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)
