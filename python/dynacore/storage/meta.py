"""Node metadata in the "meta" database: node id, epoch, encoded ring, small named values.

The epoch is a random 64-bit number drawn when a data directory is new (or was wiped) and kept
for its life. `actor_id = f"{node_id}.{epoch:016x}"` is the name a node's writes carry in version
vectors, so a node that lost its disk comes back as a new actor and never reuses dots it issued
before. Randomness is handed in (`rng`), so the simulator stays deterministic.

Keys in "meta": b"node/id", b"node/epoch" (8 bytes, big-endian), b"ring", b"cluster/state" (the
encoded ClusterState, see cluster/gossip.py), and b"user/" + name for `get_meta`/`put_meta`.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from dynacore.errors import ConfigError, LimitExceeded, StorageError
from dynacore.limits import KIB, MIB
from dynacore.storage.engine import Engine

NODE_ID_KEY = b"node/id"
EPOCH_KEY = b"node/epoch"
RING_KEY = b"ring"
CLUSTER_STATE_KEY = b"cluster/state"
USER_PREFIX = b"user/"
MAX_NODE_ID_BYTES = 255
MAX_META_NAME_BYTES = 255
MAX_META_VALUE_BYTES = 16 * MIB  # an encoded ring of 65536 partitions fits with room
MAX_SMALL_META_VALUE_BYTES = 64 * KIB

_EPOCH = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """Who this data directory belongs to."""

    node_id: str
    epoch: int

    @property
    def actor_id(self) -> str:
        return f"{self.node_id}.{self.epoch:016x}"


def check_node_id(node_id: str) -> bytes:
    if not isinstance(node_id, str) or not node_id:
        raise ConfigError(f"a node id is a non-empty str, got {node_id!r}")
    encoded = node_id.encode()
    if len(encoded) > MAX_NODE_ID_BYTES:
        raise ConfigError(f"node id of {len(encoded)} bytes exceeds {MAX_NODE_ID_BYTES}")
    return encoded


async def open_node_meta(engine: Engine, node_id: str, rng: random.Random) -> NodeMeta:
    """Read this directory's identity, creating it (with a new epoch) if the directory is new.

    ConfigError if the directory belongs to another node id. Node id and epoch are created in one
    atomic write, so a crash never leaves one without the other.
    """
    wanted = check_node_id(node_id)
    fresh_epoch = _EPOCH.pack(rng.getrandbits(64))

    def claim_node_id(old: bytes | None) -> bytes:
        if old is not None and old != wanted:
            raise ConfigError(f"this data directory belongs to node {old!r}, not {node_id!r}")
        return wanted

    def keep_or_create_epoch(old: bytes | None) -> bytes:
        return fresh_epoch if old is None else old

    _id, epoch = await engine.update_many(
        "meta", [(NODE_ID_KEY, claim_node_id), (EPOCH_KEY, keep_or_create_epoch)]
    )
    if epoch is None or len(epoch) != _EPOCH.size:
        raise StorageError(f"corrupt epoch in the meta database: {epoch!r}")
    return NodeMeta(node_id=node_id, epoch=_EPOCH.unpack(epoch)[0])


def read_node_meta(engine: Engine) -> NodeMeta | None:
    """The stored identity, or None if the directory has none yet."""
    raw_id = engine.get("meta", NODE_ID_KEY)
    raw_epoch = engine.get("meta", EPOCH_KEY)
    if raw_id is None or raw_epoch is None:
        return None
    if len(raw_epoch) != _EPOCH.size:
        raise StorageError(f"corrupt epoch in the meta database: {raw_epoch!r}")
    return NodeMeta(node_id=raw_id.decode(), epoch=_EPOCH.unpack(raw_epoch)[0])


def get_ring(engine: Engine) -> bytes | None:
    """The encoded ring last stored, or None."""
    return engine.get("meta", RING_KEY)


async def put_ring(engine: Engine, encoded_ring: bytes) -> None:
    _check_value(encoded_ring, MAX_META_VALUE_BYTES)
    await engine.update("meta", RING_KEY, lambda _old: encoded_ring)


def get_cluster_state(engine: Engine) -> bytes | None:
    """The encoded cluster state last stored, or None."""
    return engine.get("meta", CLUSTER_STATE_KEY)


async def put_cluster_state(engine: Engine, encoded_state: bytes) -> None:
    """Store the encoded cluster state, durably."""
    _check_value(encoded_state, MAX_META_VALUE_BYTES)
    await engine.update("meta", CLUSTER_STATE_KEY, lambda _old: encoded_state)


def _user_key(name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a meta name is a non-empty str, got {name!r}")
    encoded = name.encode()
    if len(encoded) > MAX_META_NAME_BYTES:
        raise ConfigError(f"meta name of {len(encoded)} bytes exceeds {MAX_META_NAME_BYTES}")
    return USER_PREFIX + encoded


def _check_value(value: bytes, limit_bytes: int) -> None:
    if not isinstance(value, bytes):
        raise ConfigError(f"meta values are bytes, got {type(value).__name__}")
    if len(value) > limit_bytes:
        raise LimitExceeded(f"meta value of {len(value)} bytes exceeds {limit_bytes}")


def get_meta(engine: Engine, name: str) -> bytes | None:
    """A small named value, or None."""
    return engine.get("meta", _user_key(name))


async def put_meta(engine: Engine, name: str, value: bytes | None) -> None:
    """Store (None: delete) a small named value, durably."""
    key = _user_key(name)
    if value is not None:
        _check_value(value, MAX_SMALL_META_VALUE_BYTES)
    await engine.update("meta", key, lambda _old: value)
