"""Node metadata: the epoch is new on a fresh or wiped directory and stable across reopen."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from dynacore.errors import ConfigError, LimitExceeded
from dynacore.storage import (
    Engine,
    MemoryDisk,
    get_meta,
    get_ring,
    open_lmdb_engine,
    open_memory_engine,
    open_node_meta,
    put_meta,
    put_ring,
    read_node_meta,
)

MAP_SIZE_BYTES = 16 << 20


async def test_epoch_is_new_on_a_fresh_dir_stable_on_reopen_new_when_wiped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node-a"
    rng = random.Random(7)
    async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES) as engine:
        assert read_node_meta(engine) is None
        first = await open_node_meta(engine, "node-a", rng)
        assert read_node_meta(engine) == first
        assert await open_node_meta(engine, "node-a", rng) == first  # idempotent while open
    async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES) as engine:
        assert await open_node_meta(engine, "node-a", rng) == first
    shutil.rmtree(path)
    async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES) as engine:
        wiped = await open_node_meta(engine, "node-a", rng)
    assert wiped.node_id == "node-a"
    assert wiped.epoch != first.epoch
    assert wiped.actor_id != first.actor_id


async def test_actor_id_is_node_id_dot_16_hex_digits() -> None:
    async with open_memory_engine() as engine:
        meta = await open_node_meta(engine, "n1", random.Random(1))
    assert 0 <= meta.epoch < 1 << 64
    assert meta.actor_id == f"n1.{meta.epoch:016x}"
    node, _, epoch_hex = meta.actor_id.rpartition(".")
    assert node == "n1" and len(epoch_hex) == 16 and int(epoch_hex, 16) == meta.epoch


async def test_memory_disk_keeps_its_epoch_across_a_crash() -> None:
    disk = MemoryDisk()
    async with open_memory_engine(disk) as engine:
        first = await open_node_meta(engine, "n1", random.Random(1))
        engine.crash()
    async with open_memory_engine(disk) as engine:
        assert await open_node_meta(engine, "n1", random.Random(2)) == first
    async with open_memory_engine(MemoryDisk()) as engine:  # a wiped disk
        assert (await open_node_meta(engine, "n1", random.Random(2))).epoch != first.epoch


async def test_a_directory_of_another_node_is_refused(engine: Engine) -> None:
    await open_node_meta(engine, "node-a", random.Random(1))
    with pytest.raises(ConfigError):
        await open_node_meta(engine, "node-b", random.Random(1))
    meta = read_node_meta(engine)
    assert meta is not None and meta.node_id == "node-a"


async def test_bad_node_ids(engine: Engine) -> None:
    for bad in ["", "x" * 256, b"bytes"]:
        with pytest.raises(ConfigError):
            await open_node_meta(engine, bad, random.Random(1))  # type: ignore[arg-type]
    assert read_node_meta(engine) is None


async def test_ring_and_named_values_round_trip(engine: Engine) -> None:
    assert get_ring(engine) is None
    await put_ring(engine, b"\x01ring-bytes" * 1000)
    assert get_ring(engine) == b"\x01ring-bytes" * 1000
    assert get_meta(engine, "cluster") is None
    await put_meta(engine, "cluster", b"prod")
    assert get_meta(engine, "cluster") == b"prod"
    await put_meta(engine, "cluster", None)
    assert get_meta(engine, "cluster") is None
    with pytest.raises(ConfigError):
        await put_meta(engine, "", b"x")
    with pytest.raises(LimitExceeded):
        await put_meta(engine, "big", b"x" * (64 * 1024 + 1))
    # Named values cannot clobber the node's identity.
    await open_node_meta(engine, "n", random.Random(3))
    await put_meta(engine, "node/id", b"evil")
    meta = read_node_meta(engine)
    assert meta is not None and meta.node_id == "n"
