"""The cluster view a node and a client share: the ring, node id → address, replication factors
per namespace, and its encoding in RING_GET replies. Static for now: every node of a static
cluster computes `Ring.claim(Q, sorted member ids)` and so agrees on the same ring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from dynacore._backend import ring as ring_mod
from dynacore.config import NodeConfig, check_address, check_node_id, resolve_quorum
from dynacore.errors import ConfigError, ProtocolError, UnknownNode
from dynacore.limits import MAX_N

MEMBERSHIP_FORMAT = 1
T = TypeVar("T")


@dataclass(frozen=True)
class Membership:
    """One consistent view of the cluster; replaced as a whole, never mutated."""

    ring: ring_mod.Ring
    addresses: Mapping[str, str]
    n: int
    namespaces: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(self.ring.nodes) - set(self.addresses)
        if missing:
            raise ConfigError(f"ring nodes without an address: {sorted(missing)}")
        resolve_quorum("all", self.n)
        for n in self.namespaces.values():
            resolve_quorum("all", n)

    @classmethod
    def static(
        cls,
        members: Sequence[tuple[str, str]],
        *,
        partitions: int,
        n: int,
        namespaces: Mapping[str, int] | None = None,
    ) -> Membership:
        """The view of a static cluster: a fresh balanced claim over the sorted member ids."""
        if not members:
            raise ConfigError("a cluster needs at least one member")
        addresses = {check_node_id(node): check_address(address) for node, address in members}
        ring = ring_mod.Ring.claim(partitions, sorted(addresses))
        return cls(ring=ring, addresses=addresses, n=n, namespaces=dict(namespaces or {}))

    @classmethod
    def from_config(cls, config: NodeConfig) -> Membership:
        """The static view a node computes from its configuration."""
        return cls.static(
            config.member_list(),
            partitions=config.partitions,
            n=config.n,
            namespaces=config.namespaces,
        )

    def with_addresses(self, addresses: Mapping[str, str]) -> Membership:
        """The same ring with some node addresses replaced (e.g. ports bound at start)."""
        merged = {**self.addresses, **{k: check_address(v) for k, v in addresses.items()}}
        return Membership(ring=self.ring, addresses=merged, n=self.n, namespaces=self.namespaces)

    @property
    def nodes(self) -> list[str]:
        """The distinct ring members, sorted."""
        return list(self.ring.nodes)

    def address_of(self, node: str) -> str:
        """The "host:port" of a member; UnknownNode if it is not one."""
        try:
            return self.addresses[node]
        except KeyError:
            raise UnknownNode(f"node {node!r} is not a member of the cluster") from None

    def n_for(self, namespace: str) -> int:
        """The replication factor of a namespace ("" is the default)."""
        if namespace == "":
            return self.n
        try:
            return self.namespaces[namespace]
        except KeyError:
            raise ConfigError(f"unknown namespace {namespace!r}") from None

    def preference_list(self, stored_key: bytes, n: int) -> tuple[str, ...]:
        """The first n distinct nodes clockwise from the key's partition (fewer if the ring is
        smaller)."""
        return tuple(self.ring.lookup(stored_key, n))

    def read_list(self, stored_key: bytes, n: int) -> tuple[str, ...]:
        """Where reads of the key go (a ClusterView: not the write list during a handoff)."""
        return self.preference_list(stored_key, n)

    def extended_list(self, stored_key: bytes, n: int) -> tuple[str, ...]:
        """The rest of the clockwise walk after the preference list (sloppy-quorum fallbacks)."""
        return tuple(self.ring.extended_list(self.ring.partition_of(stored_key), n))

    def partitions_owned(self, node: str) -> int:
        """How many partitions `node` owns."""
        return len(self.ring.partitions_owned(node))

    def to_fields(self) -> list[object]:
        """The RING_GET reply fields."""
        return [
            MEMBERSHIP_FORMAT,
            self.ring.encode(),
            [[node, address] for node, address in sorted(self.addresses.items())],
            self.n,
            [[name, n] for name, n in sorted(self.namespaces.items())],
        ]

    @classmethod
    def from_fields(cls, fields: Sequence[object]) -> Membership:
        """Decode a RING_GET reply; ProtocolError when it is malformed."""
        try:
            fmt, ring_bytes, addresses, n, namespaces = fields
            if fmt != MEMBERSHIP_FORMAT or not isinstance(ring_bytes, bytes):
                raise ProtocolError(f"unsupported membership format {fmt!r}")
            if not isinstance(n, int) or not 1 <= n <= MAX_N:
                raise ProtocolError(f"bad replication factor {n!r}")
            return cls(
                ring=ring_mod.Ring.decode(ring_bytes),
                addresses=dict(_pairs(addresses, str)),
                n=n,
                namespaces=dict(_pairs(namespaces, int)),
            )
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"malformed membership: {exc}") from exc


def _pairs(items: object, second: type[T]) -> list[tuple[str, T]]:
    if not isinstance(items, list):
        raise ProtocolError("membership pairs must be a list")
    out: list[tuple[str, T]] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], second)
        ):
            raise ProtocolError(f"malformed membership pair {item!r}")
        out.append((item[0], item[1]))
    return out
