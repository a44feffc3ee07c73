"""Membership (the shared cluster view) and the node-level message layouts."""

from __future__ import annotations

import pytest

from dynacore import objects
from dynacore.config import NodeConfig
from dynacore.errors import ConfigError, ProtocolError, UnknownNode
from dynacore.membership import Membership
from dynacore.messages import NodeStatus, PeerStatus, expect

MEMBERS = [("c", "h:3"), ("a", "h:1"), ("b", "h:2")]


def test_every_node_computes_the_same_view() -> None:
    views = [
        Membership.from_config(
            NodeConfig(node_id=node_id, members=tuple(MEMBERS), partitions=32, n=2)
        )
        for node_id, _ in MEMBERS
    ]
    assert all(v.ring == views[0].ring for v in views)
    assert views[0].nodes == ["a", "b", "c"] and views[0].ring.q == 32
    key = objects.object_key("", b"some key")
    pref = views[0].preference_list(key, 2)
    assert len(pref) == 2 and len(set(pref)) == 2
    assert views[0].extended_list(key, 2) == tuple(n for n in "abc" if n not in pref)
    assert sum(views[0].partitions_owned(n) for n in "abc") == 32


def test_fields_round_trip() -> None:
    view = Membership.static(MEMBERS, partitions=16, n=3, namespaces={"cache": 1})
    back = Membership.from_fields(view.to_fields())
    assert back.ring == view.ring and dict(back.addresses) == dict(view.addresses)
    assert back.n == 3 and back.n_for("cache") == 1
    with pytest.raises(ConfigError):
        back.n_for("nope")


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [2, b"", [], 3, []],
        [1, b"not a ring", [], 3, []],
        [1, "ring", [], 3, []],
        [1, None, [["a", "h:1"]], 0, []],
        "xyz",
    ],
)
def test_malformed_fields(fields: list[object]) -> None:
    with pytest.raises(ProtocolError):
        Membership.from_fields(fields)


def test_pairs_are_checked() -> None:
    good = Membership.static(MEMBERS, partitions=4, n=1).to_fields()
    for bad in ([["a"]], [["a", 1]], "a", [[1, "h:1"]]):
        fields = list(good)
        fields[2] = bad
        with pytest.raises(ProtocolError):
            Membership.from_fields(fields)


def test_addresses() -> None:
    view = Membership.static(MEMBERS, partitions=4, n=1)
    assert view.address_of("a") == "h:1"
    with pytest.raises(UnknownNode):
        view.address_of("z")
    moved = view.with_addresses({"a": "h:9"})
    assert moved.address_of("a") == "h:9" and moved.ring == view.ring
    with pytest.raises(ConfigError):
        Membership(ring=view.ring, addresses={"a": "h:1"}, n=1)
    with pytest.raises(ConfigError):
        Membership.static([], partitions=4, n=1)


def test_status_round_trip_and_checks() -> None:
    status = NodeStatus(
        node_id="a",
        address="h:1",
        partitions=64,
        partitions_owned=22,
        key_count=7,
        pending_hints=0,
        peers=(PeerStatus("a", "h:1", True, 22), PeerStatus("b", "h:2", False, 21)),
    )
    assert NodeStatus.from_fields(status.to_fields()) == status
    broken = status.to_fields()
    broken[6] = [["b", "h:2", 1, 21]]  # up must be a bool
    with pytest.raises(ProtocolError):
        NodeStatus.from_fields(broken)
    with pytest.raises(ProtocolError):
        NodeStatus.from_fields(status.to_fields()[:-1])


def test_expect() -> None:
    assert expect([b"k", 3, None], (bytes, int, (int, type(None))), "x") == [b"k", 3, None]
    with pytest.raises(ProtocolError, match="expected 2 fields"):
        expect([1], (int, int), "x")
    with pytest.raises(ProtocolError, match="wrong type bool"):
        expect([True], (int,), "x")
