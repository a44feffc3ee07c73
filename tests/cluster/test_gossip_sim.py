"""Gossip, staged changes and handoff of real nodes on the simulated network, in virtual time:
convergence from seeds, partitions that heal into one ring, a join and a leave with handoff that
leave every key on exactly its owners, refusals, and restart from the persisted state."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from dynacore import objects
from dynacore.client import AsyncClient
from dynacore.cluster import ClusterState, Status, protocol
from dynacore.cluster.gossip import shares_ring_node
from dynacore.cluster.view import ClusterView
from dynacore.config import NodeConfig
from dynacore.errors import ClusterError, DynacoreError, Unavailable, UnknownNode
from dynacore.limits import Limits
from dynacore.net.simnet import SimNetwork
from dynacore.node import Node, open_node
from dynacore.storage import MemoryDisk, open_memory_engine

INTERVAL_S = 0.2
Q = 16
SETTLE_S = 60.0  # virtual seconds: bound on every wait for convergence


def addr(node_id: str) -> str:
    return f"{node_id}:7000"


class SimCluster:
    """Nodes on one SimNetwork, each with a memory engine on a disk that survives restarts."""

    def __init__(self, nursery: trio.Nursery, sim: SimNetwork) -> None:
        self._nursery = nursery
        self.sim = sim
        self.nodes: dict[str, Node] = {}
        self.configs: dict[str, NodeConfig] = {}
        self.disks: dict[str, MemoryDisk] = {}
        self._done: dict[str, trio.Event] = {}

    async def start(self, node_id: str, **options: Any) -> Node:
        if node_id not in self.configs or options:
            self.configs[node_id] = NodeConfig(
                node_id=node_id,
                listen=addr(node_id),
                partitions=Q,
                n=3,
                gossip_interval_s=INTERVAL_S,
                cluster_secret="s",
                limits=Limits(request_timeout_s=2.0),
                **options,
            )
        node: Node = await self._nursery.start(self._run, node_id)
        return node

    async def _run(self, node_id: str, task_status: trio.TaskStatus[Node]) -> None:
        done = self._done[node_id] = trio.Event()
        config = self.configs[node_id]
        try:
            async with AsyncExitStack() as stack:
                disk = self.disks.setdefault(node_id, MemoryDisk())
                engine = await stack.enter_async_context(open_memory_engine(disk))
                node = await stack.enter_async_context(
                    open_node(
                        config,
                        transport=self.sim.transport(config.listen),
                        engine=engine,
                        rng=random.Random(f"{node_id}/{len(self._done)}"),
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

    def state(self, node_id: str) -> ClusterState | None:
        cluster = self.nodes[node_id].cluster
        assert cluster is not None
        return cluster.gossiper.state

    def digests(self) -> set[bytes]:
        out = set()
        for node_id in self.nodes:
            state = self.state(node_id)
            out.add(state.digest() if state is not None else b"")
        return out

    async def admin(self, node_id: str, msg_type: int, fields: list[Any]) -> list[Any]:
        cluster = self.nodes[node_id].cluster
        assert cluster is not None
        return await cluster.handlers()[msg_type](fields)

    def stored(self, node_id: str) -> dict[bytes, bytes]:
        return dict(self.nodes[node_id].engine.scan("data"))

    @asynccontextmanager
    async def client(self, name: str = "client") -> AsyncIterator[AsyncClient]:
        seeds = [addr(n) for n in sorted(self.nodes)]
        transport = self.sim.transport(f"{name}:1")
        async with AsyncClient(seeds, secret="s", transport=transport) as client:
            yield client


@asynccontextmanager
async def sim_cluster(seed: int = 1) -> AsyncIterator[SimCluster]:
    sim = SimNetwork(random.Random(seed))
    async with trio.open_nursery() as nursery:
        cluster = SimCluster(nursery, sim)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = SETTLE_S) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(INTERVAL_S / 2)


def members_of(ids: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((node_id, addr(node_id)) for node_id in ids)


def settled(cluster: SimCluster, ring_nodes: set[str]) -> bool:
    """One digest everywhere, no handoff pending, the expected ring, every sweep clean."""
    if len(cluster.digests()) != 1:
        return False
    for node_id, node in cluster.nodes.items():
        state = cluster.state(node_id)
        assert node.cluster is not None and state is not None
        if state.pending is not None or set(state.ring.nodes) != ring_nodes:
            return False
        if node.cluster.handoff.sweep_info().swept_epoch != state.epoch:
            return False
    return True


def owners_of(state: ClusterState, stored_key: bytes) -> set[str]:
    return set(state.ring.preference_list(state.ring.partition_of(stored_key), state.n_val))


# -- gossip ------------------------------------------------------------------------------------


async def test_seed_only_nodes_learn_the_state_along_a_chain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sim_cluster() as cluster:
        await cluster.start("n1", members=members_of(["n1"]))
        for i in range(2, 6):  # n2 seeds n1, n3 seeds n2, ...: one seed each
            await cluster.start(f"n{i}", seeds=(addr(f"n{i - 1}"),))
        assert cluster.state("n5") is None or cluster.state("n5") == cluster.state("n1")
        await wait_for(lambda: len(cluster.digests()) == 1 and cluster.state("n5") is not None)
        view = cluster.nodes["n5"].membership
        assert isinstance(view, ClusterView) and view.joined
        assert view.ring.nodes == ["n1"]
        # an unjoined node that knows the state coordinates: it forwards to the owner
        await cluster.nodes["n5"].coordinator.put("", b"k", b"v", b"", w=1)
        assert cluster.stored("n1") and not cluster.stored("n5")


async def test_unjoined_node_refuses_data_requests(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster() as cluster:
        lonely = await cluster.start("n9", seeds=(addr("nowhere"),))
        with pytest.raises(Unavailable, match="not joined"):
            await lonely.coordinator.put("", b"k", b"v", b"", w=1)
        with pytest.raises(Unavailable):
            await cluster.admin("n9", protocol.COMMIT, [False])
        with pytest.raises(Unavailable, match=r"did not answer|knows no cluster"):
            await cluster.admin("n9", protocol.CLUSTER_JOIN, [addr("nowhere")])


async def test_five_seeded_nodes_join_into_one_ring(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster() as cluster:
        await cluster.start("n1", members=members_of(["n1"]), seeds=(addr("n5"),))
        for i in range(2, 6):
            await cluster.start(f"n{i}", seeds=(addr(f"n{i - 1}"),))
        await wait_for(lambda: all(cluster.state(n) is not None for n in cluster.nodes))
        for i in range(2, 6):  # each joins through its one seed
            (claimant,) = await cluster.admin(f"n{i}", protocol.CLUSTER_JOIN, [addr(f"n{i - 1}")])
            assert claimant == "n1"
        state = cluster.state("n1")
        assert state is not None and state.staged_joins == {"n2", "n3", "n4", "n5"}
        await cluster.admin("n3", protocol.COMMIT, [False])  # forwarded to the claimant
        everyone = {f"n{i}" for i in range(1, 6)}
        await wait_for(lambda: settled(cluster, everyone))
        final = cluster.state("n4")
        assert final is not None and final.epoch == 2
        assert {m.status for m in final.members.values()} == {Status.VALID}


async def test_gossip_partition_heals_into_one_ring(autojump_clock: trio.testing.MockClock) -> None:
    ids = ["n1", "n2", "n3", "n4"]
    async with sim_cluster(seed=4) as cluster:
        for node_id in ids:
            await cluster.start(node_id, members=members_of(ids))
        await wait_for(lambda: len(cluster.digests()) == 1)
        left, right = [addr("n1"), addr("n2")], [addr("n3"), addr("n4")]
        cluster.sim.partition(left, right)
        # each side stages and commits its own change while cut off
        await cluster.admin("n1", protocol.STAGE_LEAVE, ["n2", False])
        await cluster.admin("n1", protocol.COMMIT, [False])
        side_b = cluster.state("n3")
        assert side_b is not None
        await cluster.nodes["n3"].cluster.gossiper.update(  # type: ignore[union-attr]
            lambda s: s.stage_leave("n4").commit()
        )
        await trio.sleep(10 * INTERVAL_S)
        assert len(cluster.digests()) == 2  # two views while partitioned
        cluster.sim.heal()
        await wait_for(lambda: len(cluster.digests()) == 1)
        merged = cluster.state("n2")
        assert merged is not None
        # one of the two commits won everywhere; the loser's leaver shows as stranded or not
        assert {merged.ring.nodes == cluster.state(n).ring.nodes for n in ids} == {True}  # type: ignore[union-attr]


async def test_foreign_states_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    a = ClusterState.bootstrap(Q, {"a": "a:1"})
    b = ClusterState.bootstrap(Q, {"b": "b:1"})
    assert not shares_ring_node(a, b) and shares_ring_node(a, a)
    async with sim_cluster() as cluster:
        node = await cluster.start("n1", members=members_of(["n1"]))
        fields = ["x", "x:1", b.digest(), b.encode(), True]
        with pytest.raises(ClusterError, match="shares no ring node"):
            await cluster.admin("n1", protocol.GOSSIP, fields)
        assert node.cluster is not None and node.cluster.gossiper.state is not None
        assert node.cluster.gossiper.state.ring.nodes == ["n1"]


# -- staged changes and handoff ----------------------------------------------------------------


def sk(i: int) -> bytes:
    return objects.object_key("", b"key-%d" % i)


async def write_range(client: AsyncClient, first: int, count: int, acked: list[int]) -> None:
    for i in range(first, first + count):
        try:
            await client.put(b"key-%d" % i, b"value-%d" % i, w=2)
        except DynacoreError:
            continue
        acked.append(i)


def check_placement(cluster: SimCluster, keys: list[int], holders: set[str]) -> None:
    """Every key is on exactly its owners (by the final ring) and nowhere else."""
    state = cluster.state(next(iter(holders)))
    assert state is not None
    stores = {node_id: cluster.stored(node_id) for node_id in cluster.nodes}
    for i in keys:
        where = {node_id for node_id, data in stores.items() if sk(i) in data}
        assert where == owners_of(state, sk(i)), (i, where)
    for data in stores.values():
        assert set(data) <= {sk(i) for i in keys}


async def test_join_then_leave_under_writes(autojump_clock: trio.testing.MockClock) -> None:
    ids = ["n1", "n2", "n3"]
    async with sim_cluster(seed=7) as cluster:
        for node_id in ids:
            await cluster.start(node_id, members=members_of(ids))
        acked: list[int] = []
        async with cluster.client() as client:
            await write_range(client, 0, 300, acked)
            await cluster.start("n4", seeds=(addr("n2"),))
            await cluster.admin("n4", protocol.CLUSTER_JOIN, [addr("n2")])
            plan_state = ClusterState.decode(
                (await cluster.admin("n4", protocol.CLUSTER_STATE, [True, False]))[0]
            )
            moves = plan_state.plan().moves
            assert moves and all(to == "n4" for _p, _from, to in moves)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_range, client, 300, 300, acked)
                await cluster.admin("n2", protocol.COMMIT, [False])
            await wait_for(lambda: settled(cluster, {"n1", "n2", "n3", "n4"}))
            check_placement(cluster, acked, {"n1"})
            assert len(acked) == 600
            rows = cluster.nodes["n1"].cluster.handoff.rows()  # type: ignore[union-attr]
            assert all(r.status == "sent" for r in rows)
            assert sum(r.objects for r in rows) > 0

            # then n2 leaves, under writes too
            await cluster.admin("n3", protocol.STAGE_LEAVE, ["n2", False])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_range, client, 600, 300, acked)
                await cluster.admin("n3", protocol.COMMIT, [False])
            await wait_for(lambda: settled(cluster, {"n1", "n3", "n4"}))
            left = cluster.state("n2")
            assert left is not None and left.members["n2"].status is Status.EXITING
            assert cluster.stored("n2") == {}
            check_placement(cluster, acked, {"n1"})
            results = await client.get_many([b"key-%d" % i for i in acked], r=2)
            assert [r.values for r in results] == [[b"value-%d" % i] for i in acked]


async def test_commit_refusals(autojump_clock: trio.testing.MockClock) -> None:
    ids = ["n1", "n2"]
    async with sim_cluster() as cluster:
        for node_id in ids:
            await cluster.start(node_id, members=members_of(ids))
        with pytest.raises(ClusterError, match="nothing is staged"):
            await cluster.admin("n2", protocol.COMMIT, [False])
        with pytest.raises(ClusterError, match="already in the ring"):
            await cluster.admin("n1", protocol.CLUSTER_JOIN, [addr("n2")])
        # a repeated leave request is accepted once
        await cluster.admin("n2", protocol.STAGE_LEAVE, ["", False])
        again = await cluster.admin("n2", protocol.STAGE_LEAVE, ["n2", False])
        assert ClusterState.decode(again[0]).staged_leaves == {"n2"}
        with pytest.raises(ClusterError, match=r"cannot leave|no node left"):
            await cluster.admin("n1", protocol.STAGE_LEAVE, ["n1", False])


async def test_restart_reloads_the_persisted_state(autojump_clock: trio.testing.MockClock) -> None:
    ids = ["n1", "n2", "n3"]
    async with sim_cluster(seed=2) as cluster:
        for node_id in ids:
            await cluster.start(node_id, members=members_of(ids))
        await cluster.start("n4", seeds=(addr("n1"),))
        await cluster.admin("n4", protocol.CLUSTER_JOIN, [addr("n1")])
        await cluster.admin("n1", protocol.COMMIT, [False])
        await wait_for(lambda: settled(cluster, set(ids) | {"n4"}))
        before = cluster.state("n4")
        await cluster.stop("n4")
        await cluster.start("n4")  # same config: seeds only, but the state is persisted
        assert cluster.state("n4") == before
        view = cluster.nodes["n4"].membership
        assert isinstance(view, ClusterView) and "n4" in view.ring.nodes


async def test_status_follows_the_detector_and_ownership_does_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ids = ["n1", "n2", "n3"]
    async with sim_cluster(seed=3) as cluster:
        for node_id in ids:
            await cluster.start(node_id, members=members_of(ids))
        await trio.sleep(20 * INTERVAL_S)  # the detectors learn the heartbeat interval

        def up_as_n1_sees() -> dict[str, bool]:
            return {p.node_id: p.up for p in cluster.nodes["n1"].status().peers}

        assert up_as_n1_sees() == {"n1": True, "n2": True, "n3": True}
        before = cluster.state("n1")
        cluster.sim.crash(addr("n3"))
        await wait_for(lambda: not up_as_n1_sees()["n3"], timeout_s=30)
        assert up_as_n1_sees() == {"n1": True, "n2": True, "n3": False}
        health = cluster.nodes["n1"].coordinator.health
        assert health.order(["n3", "n2"]) == ["n2", "n3"]  # routing tries n2 first
        await trio.sleep(60)  # however long n3 stays silent, ownership stays
        assert cluster.state("n1") == before
        cluster.sim.restart(addr("n3"))
        await wait_for(lambda: up_as_n1_sees()["n3"], timeout_s=30)


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_random_partitions_and_changes_converge_once_healed(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Random splits of 5 nodes, each side staging and committing changes on its own; once
    healed, gossip alone brings every node to one state and any handoff to its end."""
    ids = [f"n{i}" for i in range(1, 6)]
    rng = random.Random(seed)
    async with sim_cluster(seed=seed) as cluster:
        for node_id in ids[:3]:
            await cluster.start(node_id, members=members_of(ids[:3]))
        await cluster.start("n4", seeds=(addr("n2"),))  # unjoined
        await cluster.start("n5")  # a cluster of its own, given up to join
        for node_id in ids[3:]:
            await cluster.admin(node_id, protocol.CLUSTER_JOIN, [addr("n1")])
        acked: list[int] = []
        async with cluster.client() as client:
            await write_range(client, 0, 200, acked)
        assert len(acked) == 200
        applied: list[str] = []
        for _phase in range(3):
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randint(1, 4)
            cluster.sim.partition(
                [addr(n) for n in shuffled[:cut]], [addr(n) for n in shuffled[cut:]]
            )
            for _ in range(4):
                service = cluster.nodes[rng.choice(ids)].cluster
                assert service is not None
                change = random_change(rng, ids)
                with contextlib.suppress(ClusterError, UnknownNode):  # refused changes
                    await service.gossiper.update(change)
                    applied.append(change.__name__)
                await trio.sleep(rng.uniform(0, 5 * INTERVAL_S))
            cluster.sim.heal()
            await trio.sleep(rng.uniform(0, 10 * INTERVAL_S))
        assert "commit" in applied, applied

        def all_done() -> bool:
            states = [cluster.state(n) for n in ids]
            return len(cluster.digests()) == 1 and all(
                s is not None and s.pending is None for s in states
            )

        await wait_for(all_done)
        final = cluster.state("n1")
        assert final is not None
        ring_nodes = set(final.ring.nodes)
        await wait_for(lambda: settled(cluster, ring_nodes))
        check_placement(cluster, acked, {"n1"})
        final = cluster.state("n1")
        assert final is not None and final.ring.nodes


def random_change(rng: random.Random, ids: list[str]) -> Callable[[ClusterState], ClusterState]:
    """A staged leave or join of a random node, or a commit (ClusterError when refused)."""
    node_id = rng.choice(ids)

    def leave(state: ClusterState) -> ClusterState:
        return state.stage_leave(node_id)

    def join(state: ClusterState) -> ClusterState:
        return state.stage_join(node_id, addr(node_id))

    def commit(state: ClusterState) -> ClusterState:
        return state.commit()

    return rng.choice([leave, join, commit, commit])
