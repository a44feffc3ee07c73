"""Node-level message types (32–127, the range net/messages.py reserves for the node) and the
field layouts of their requests and replies.

Every request is ``rpc.call(address, TYPE, fields)``; the reply is the field list shown after
"->". Quorum specs travel as sent by the user ("one", "quorum", "all", an int) or None for the
node's default; the namespace "" is the default namespace. Keys are user keys (the node adds the
namespace prefix, see objects.object_key), except in replica messages, which carry stored keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from dynacore.errors import ProtocolError

# -- client requests (any node answers; a put is forwarded to a preference-list node) ----------

CLIENT_GET: Final = 32
"""[namespace: str, key: bytes, r: spec|None] -> [context: bytes, envelopes: list[bytes],
siblings: int]  (envelopes: the visible values' envelopes, objects.decode_envelope)"""

CLIENT_PUT: Final = 33
"""[namespace: str, key: bytes, value: bytes, context: bytes, w: spec|None, ttl_ms: int (0 none),
forwarded: bool] -> [context: bytes]"""

CLIENT_DELETE: Final = 34
"""[namespace: str, key: bytes, context: bytes, w: spec|None, forwarded: bool] -> [context]"""

RING_GET: Final = 35
"""[] -> Membership.to_fields()"""

STATUS: Final = 36
"""[] -> NodeStatus.to_fields()"""

# -- replica requests (node to node) ------------------------------------------------------------

REPLICA_GET: Final = 48
"""[stored_key: bytes] -> [set: bytes | None]"""

REPLICA_PUT: Final = 49
"""[stored_key: bytes, set: bytes] -> []  (answered once the merged set is durable)"""

# -- the embedded cache (96-103; cachewrite.py) -------------------------------------------------

CACHE_WRITE: Final = 96
"""[namespace: str, key: bytes, op: int (1 set, 2 delete, 3 incr), payload: bytes, delta: int,
ttl_ms: int, w: spec|None, forwarded: bool] -> [existed: bool, value: int]  (set and delete replace
what the coordinator holds; incr adds delta to the coordinator's own counter entry)"""

# -- data-path batching (104-111; readbatch.py) ----------------------------------------------------

REPLICA_GET_MANY: Final = 104
"""[stored_keys: list[bytes]] -> [sets: list[bytes | None]]  (the sets of a prefix of the keys,
in order: all of them unless they pass the reply budget; the caller reads the rest one by one)"""

FIRST_NODE_TYPE: Final = 32
LAST_NODE_TYPE: Final = 127

NAMES: Final = {
    CLIENT_GET: "CLIENT_GET",
    CLIENT_PUT: "CLIENT_PUT",
    CLIENT_DELETE: "CLIENT_DELETE",
    RING_GET: "RING_GET",
    STATUS: "STATUS",
    REPLICA_GET: "REPLICA_GET",
    REPLICA_PUT: "REPLICA_PUT",
    CACHE_WRITE: "CACHE_WRITE",
    REPLICA_GET_MANY: "REPLICA_GET_MANY",
}
assert all(FIRST_NODE_TYPE <= t <= LAST_NODE_TYPE for t in NAMES)


# -- STATUS reply ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerStatus:
    """One cluster member as the answering node sees it."""

    node_id: str
    address: str
    up: bool
    partitions_owned: int


@dataclass(frozen=True)
class NodeStatus:
    """What `dynacore status` shows for one node (the STATUS reply)."""

    node_id: str
    address: str
    partitions: int  # Q
    partitions_owned: int
    key_count: int
    pending_hints: int
    peers: tuple[PeerStatus, ...]

    def to_fields(self) -> list[object]:
        return [
            self.node_id,
            self.address,
            self.partitions,
            self.partitions_owned,
            self.key_count,
            self.pending_hints,
            [[p.node_id, p.address, p.up, p.partitions_owned] for p in self.peers],
        ]

    @classmethod
    def from_fields(cls, fields: Sequence[object]) -> NodeStatus:
        """Decode a STATUS reply; ProtocolError when malformed."""
        node_id, address, q, owned, keys, hints, peers = expect(
            fields, (str, str, int, int, int, int, list), "STATUS reply"
        )
        peer_list = []
        for peer in peers:
            if not isinstance(peer, list):
                raise ProtocolError(f"malformed STATUS peer {peer!r}")
            pid, paddr, up, powned = expect(peer, (str, str, bool, int), "STATUS peer")
            peer_list.append(PeerStatus(pid, paddr, up, powned))
        return cls(node_id, address, q, owned, keys, hints, tuple(peer_list))


def expect(fields: Sequence[object], types: Sequence[Any], what: str) -> list[Any]:
    """`fields` as a list when it has exactly len(types) items of those types, else ProtocolError.

    A type may be a tuple of types (isinstance semantics); `bool` is never accepted as an int.
    """
    if len(fields) != len(types):
        raise ProtocolError(f"{what}: expected {len(types)} fields, got {len(fields)}")
    for value, kind in zip(fields, types, strict=True):  # on every request: kept lean
        if not isinstance(value, kind) or (kind is int and value.__class__ is bool):
            _raise_wrong_type(fields, types, what)
    return list(fields)


def _raise_wrong_type(fields: Sequence[object], types: Sequence[Any], what: str) -> None:
    for index, (value, kind) in enumerate(zip(fields, types, strict=True)):
        if not isinstance(value, kind) or (kind is int and value.__class__ is bool):
            raise ProtocolError(f"{what}: field {index} has the wrong type {type(value).__name__}")
