"""Helpers of the real-process self-healing tests (no tests here): a LocalCluster whose nodes read
their self-healing intervals from a TOML config file, and ways to look into each node's store
(REPLICA_GET while it runs, its LMDB once it stopped)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from dynacore import Client, objects
from dynacore.config import parse_members
from dynacore.limits import Limits
from dynacore.localcluster import LocalCluster, LocalNode
from dynacore.membership import Membership
from dynacore.messages import REPLICA_GET
from dynacore.net.rpc import open_rpc_client
from dynacore.net.transport import TcpTransport
from dynacore.storage.lmdb_engine import open_lmdb_engine

OFF = {"aae_interval_s": 0.0, "hint_interval_s": 0.0, "reap_interval_s": 0.0}
PARTITIONS = 64
POLL_S = 0.2


def healing_cluster(
    base_dir: Path, *, nodes: int = 3, n: int = 3, **settings: float
) -> LocalCluster:
    """A LocalCluster (not started) whose nodes run with `settings` (others off)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    config = base_dir / "healing.toml"
    lines = [f"{name} = {value!r}" for name, value in {**OFF, **settings}.items()]
    config.write_text("\n".join(lines) + "\n")
    return LocalCluster(
        base_dir / "cluster",
        nodes_count=nodes,
        partitions=PARTITIONS,
        n=n,
        extra_args=["--config", str(config)],
    )


def membership_of(cluster: LocalCluster) -> Membership:
    members = parse_members(",".join(f"{x.node_id}@{x.address}" for x in cluster.nodes))
    return Membership.static(members, partitions=PARTITIONS, n=cluster.n)


def sk(key: str) -> bytes:
    return objects.object_key("", key.encode())


def node(cluster: LocalCluster, node_id: str) -> LocalNode:
    return next(x for x in cluster.nodes if x.node_id == node_id)


def replica_sets(address: str, stored_keys: Sequence[bytes]) -> list[bytes | None]:
    """What one running node stores for each key (REPLICA_GET, no read repair)."""

    async def fetch() -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(stored_keys)
        async with open_rpc_client(
            TcpTransport(Limits()), client_id="probe", rng=random.Random(0)
        ) as rpc:

            async def one(index: int) -> None:
                reply = await rpc.call(address, REPLICA_GET, [stored_keys[index]], 10.0)
                out[index] = reply[0]  # type: ignore[assignment]

            limiter = trio.CapacityLimiter(256)

            async def bounded(index: int) -> None:
                async with limiter:
                    await one(index)

            async with trio.open_nursery() as nursery:
                for index in range(len(stored_keys)):
                    nursery.start_soon(bounded, index)
        return out

    return trio.run(fetch)


def stored_items(data_dir: Path) -> dict[bytes, bytes]:
    """Every (stored key, set) of a stopped node's data db."""

    async def scan() -> dict[bytes, bytes]:
        async with open_lmdb_engine(data_dir) as engine:
            return dict(engine.scan("data"))

    return trio.run(scan)


def hints_left(data_dir: Path) -> int:
    async def count() -> int:
        async with open_lmdb_engine(data_dir) as engine:
            return engine.count("hints")

    return trio.run(count)


def pending_hints(cluster: LocalCluster) -> list[int]:
    with Client(cluster.addresses[:1]) as client:
        return [client.status(address).pending_hints for address in cluster.addresses]


def key_count(address: str) -> int:
    with Client([address]) as client:
        return client.status(address).key_count


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until true; the seconds it took. AssertionError naming `what` after timeout_s."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(POLL_S)
    return time.monotonic() - start


def visible(set_bytes: bytes | None) -> list[bytes]:
    return objects.visible_values(set_bytes, time.time_ns() // 1_000_000)
