"""Cluster membership. Pure logic, no I/O and no clock: the gossiped ClusterState (members, ring,
staged changes, ownership handoff; state.py) and the phi-accrual failure detector (failure.py).
The node-side services built on them (imported by their module, not from here): gossip.py,
handoff.py, health.py, view.py, protocol.py, service.py (wired by node.py) and admin.py (the
client side of the membership commands)."""

from dynacore.cluster.failure import PeerStatus, PhiAccrualDetector
from dynacore.cluster.state import ClusterState, Member, Plan, Status, Transfer

__all__ = [
    "ClusterState",
    "Member",
    "PeerStatus",
    "PhiAccrualDetector",
    "Plan",
    "Status",
    "Transfer",
]
