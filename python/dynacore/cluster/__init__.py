"""Cluster membership as pure logic: the gossiped ClusterState (members, ring, staged changes,
ownership handoff) and the phi-accrual failure detector. No I/O and no clock here: the node layer
passes time in and does the gossip and the streaming."""

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
