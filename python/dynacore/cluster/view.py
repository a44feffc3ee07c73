"""ClusterView: the routing view (a `Membership`) that a node derives from its gossiped
ClusterState. Writes go to `owners_for` (the current preference list plus, during a handoff, the
nodes the pending ring adds), reads to `read_owners`; addresses come from the member records.

A node that has not learned any cluster state yet (started with --seeds only) has an *unjoined*
view: it knows only itself and refuses to route data requests (Unavailable) until gossip brings
it a state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dynacore._backend import ring as ring_mod
from dynacore.cluster.state import ClusterState, Status
from dynacore.errors import Unavailable
from dynacore.membership import Membership


@dataclass(frozen=True)
class ClusterView(Membership):
    """A Membership whose routing follows a ClusterState (None: not joined, no routing)."""

    state: ClusterState | None = None

    @classmethod
    def of(
        cls, state: ClusterState, *, n: int, namespaces: Mapping[str, int] | None = None
    ) -> ClusterView:
        """The view of `state` for replication factor `n` (and per-namespace factors)."""
        addresses = {node_id: member.address for node_id, member in state.members.items()}
        return cls(
            ring=state.ring,
            addresses=addresses,
            n=min(n, state.n_val),
            namespaces={name: min(k, state.n_val) for name, k in (namespaces or {}).items()},
            state=state,
        )

    @classmethod
    def unjoined(
        cls, node_id: str, address: str, *, q: int, n: int, namespaces: Mapping[str, int]
    ) -> ClusterView:
        """The view of a node that knows no cluster yet: itself only, routing refused."""
        ring = ring_mod.Ring.claim(q, [node_id])
        return cls(ring=ring, addresses={node_id: address}, n=n, namespaces=dict(namespaces))

    def _require_state(self) -> ClusterState:
        if self.state is None:
            raise Unavailable(
                "this node has not joined a cluster yet (it is learning one by gossip)"
            )
        return self.state

    @property
    def joined(self) -> bool:
        return self.state is not None

    @property
    def nodes(self) -> list[str]:
        """Every member that serves requests (joining, valid, leaving), sorted."""
        if self.state is None:
            return list(self.ring.nodes)
        serving = (Status.JOINING, Status.VALID, Status.LEAVING)
        return [n for n, m in self.state.members.items() if m.status in serving]

    def preference_list(self, stored_key: bytes, n: int) -> tuple[str, ...]:
        """Where writes of the key go: its preference list, plus the nodes a pending handoff
        adds (so that no write made during the move is missing on the new owners)."""
        state = self._require_state()
        if state.pending is None:  # the common case: one native lookup
            return tuple(state.ring.lookup(stored_key, n))
        return state.owners_for(state.ring.partition_of(stored_key), n)

    def read_list(self, stored_key: bytes, n: int) -> tuple[str, ...]:
        """Where reads of the key go: the new preference list once its partition's handoff is
        confirmed, else the current one."""
        state = self._require_state()
        if state.pending is None:
            return tuple(state.ring.lookup(stored_key, n))
        return state.read_owners(state.ring.partition_of(stored_key), n)

    def extended_list(self, stored_key: bytes, n: int) -> tuple[str, ...]:
        """The rest of the current ring's clockwise walk, minus the nodes writes already go to."""
        state = self._require_state()
        partition = state.ring.partition_of(stored_key)
        taken = set(state.owners_for(partition, n))
        return tuple(x for x in state.ring.extended_list(partition, n) if x not in taken)

    def to_fields(self) -> list[object]:
        """The RING_GET reply; Unavailable while unjoined (a client then asks another seed)."""
        self._require_state()
        return super().to_fields()
