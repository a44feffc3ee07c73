"""Helpers of the self-healing tests (no tests here): the in-process cluster of tests/node with
the self-healing intervals of each test (background tasks off unless a test turns them on), and
direct access to each node's hinted handoff, anti-entropy and reaper."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from dynacore import objects
from dynacore.cluster.antientropy import SelfHealing
from dynacore.limits import Limits
from node.conftest import Cluster, ManualClock, wait_until

QUIET = {
    "aae_interval_s": 0.0,
    "hint_interval_s": 0.0,
    "reap_interval_s": 0.0,
    "tombstone_grace_s": 0.0,
}

__all__ = ["Cluster", "ManualClock", "healing", "healing_cluster", "sk", "wait_until"]


def sk(key: bytes) -> bytes:
    return objects.object_key("", key)


@asynccontextmanager
async def healing_cluster(
    base_dir: Path,
    count: int = 3,
    *,
    n: int = 3,
    partitions: int = 16,
    clock: ManualClock | None = None,
    **settings: float,
) -> AsyncIterator[Cluster]:
    """`count` in-process nodes on memory engines (their disks survive restarts)."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(
            nursery,
            base_dir,
            count,
            n=n,
            limits=Limits(request_timeout_s=2.0),
            partitions=partitions,
            lmdb=False,
            clock=clock or ManualClock(),
            secret="s3cret",
            sim=None,
            namespaces={},
        )
        for node_id, config in cluster.configs.items():
            cluster.configs[node_id] = dataclasses.replace(config, **{**QUIET, **settings})
        await cluster.start_all()
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


def healing(cluster: Cluster, node_id: str) -> SelfHealing:
    heal = cluster.nodes[node_id].healing
    assert heal is not None
    return heal


def keys_where(
    cluster: Cluster, want: Callable[[tuple[str, ...]], bool], count: int = 1
) -> list[bytes]:
    """The first `count` user keys key-0, key-1, ... whose preference list satisfies `want`."""
    found: list[bytes] = []
    i = 0
    while len(found) < count:
        key = f"key-{i}".encode()
        if want(cluster.replicas(sk(key))):
            found.append(key)
        i += 1
        assert i < 100_000
    return found
