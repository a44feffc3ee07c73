"""Fixtures of the cache tests: a hand-moved clock, a standalone sync Cache, and in-process
clusters of async caches (and plain nodes) over the simulated network, in one trio.run."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dynacore.cache import AsyncCache, Cache, open_cache
from dynacore.config import NodeConfig
from dynacore.errors import QuorumNotMet
from dynacore.limits import Limits
from dynacore.net.simnet import SimNetwork
from dynacore.node import Node, open_node

SETTLE_TIMEOUT_S = 10.0  # bound on waits for background replication
SIM_LIMITS = Limits(request_timeout_s=1.0)


class ManualClock:
    """A wall clock the test moves by hand (write timestamps and TTLs)."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, delta_ms: int) -> None:
        assert delta_ms >= 0
        self.ms += delta_ms


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cache(clock: ManualClock) -> Iterator[Cache]:
    """A standalone in-memory cache on the manual clock."""
    with Cache(clock=clock) as c:
        yield c


@pytest.fixture
def lmdb_cache(tmp_path: Path, clock: ManualClock) -> Iterator[Cache]:
    """A standalone LMDB cache on the manual clock."""
    with Cache(tmp_path / "cache", clock=clock, sync=False) as c:
        yield c


def members(ids: list[str]) -> list[tuple[str, str]]:
    return [(node_id, f"{node_id}:7000") for node_id in ids]


@asynccontextmanager
async def sim_caches(
    ids: list[str],
    *,
    n: int,
    clock: ManualClock | None = None,
    servers: tuple[str, ...] = (),
    seed: int = 1,
    **options: Any,
) -> AsyncIterator[tuple[SimNetwork, dict[str, AsyncCache], dict[str, Node]]]:
    """Caches named `ids` and plain nodes named `servers` (like `dynacore serve`), all members
    of one static cluster on a SimNetwork."""
    sim = SimNetwork(random.Random(seed))
    everyone = members(sorted([*ids, *servers]))
    caches: dict[str, AsyncCache] = {}
    nodes: dict[str, Node] = {}
    async with AsyncExitStack() as stack:
        for node_id in servers:
            config = NodeConfig(
                node_id=node_id,
                listen=f"{node_id}:7000",
                members=tuple(everyone),
                n=n,
                partitions=16,
                limits=SIM_LIMITS,
            )
            nodes[node_id] = await stack.enter_async_context(
                open_node(config, transport=sim.transport(config.listen), clock=clock)
            )
        for node_id in ids:
            caches[node_id] = await stack.enter_async_context(
                open_cache(
                    None,
                    f"{node_id}:7000",
                    node_id=node_id,
                    members=everyone,
                    n=n,
                    partitions=16,
                    limits=SIM_LIMITS,
                    transport=sim.transport(f"{node_id}:7000"),
                    clock=clock,
                    rng=random.Random(f"{seed}/{node_id}"),
                    **options,
                )
            )
        await wait_formed([*nodes.values(), *(cache.node for cache in caches.values())])
        yield sim, caches, nodes


async def wait_formed(members: list[Node], timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Return once every member has exchanged gossip with every other one, so that each has a
    live connection to each. Members start one after the other: the first gossip rounds of the
    early ones reach peers that do not listen yet, and a call that joins such a connection
    attempt fails with it (or, if a test cuts the network at once, waits on a handshake whose
    frames were lost). Tests of partitions and quorums start from a formed cluster."""
    with trio.fail_after(timeout_s):
        for member in members:
            cluster = member.cluster
            assert cluster is not None
            peers = sorted(node_id for node_id, _ in cluster.gossiper.peers())
            while await cluster.gossiper.announce() != peers:
                await trio.sleep(0.01)


async def wait_until(predicate: Any, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Poll `predicate()` until true; fail (trio.TooSlowError) after timeout_s."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


async def retry_quorum(
    fn: Any, *args: Any, timeout_s: float = SETTLE_TIMEOUT_S, **kwargs: Any
) -> Any:
    """`await fn(*args, **kwargs)`, retried while QuorumNotMet (peers reconnecting after a
    healed partition back off for a while); fails after timeout_s."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                return await fn(*args, **kwargs)
            except QuorumNotMet:
                await trio.sleep(0.05)
