"""A node's static member list is its own address book: it reaches those members where it was
told to (a proxy, a NAT), whatever they advertise by gossip; port-0 placeholders are no address,
and members that joined later are reached where they advertise."""

from __future__ import annotations

import random
from collections.abc import Sequence

from dynacore.cluster import ClusterState
from dynacore.cluster.gossip import GossipConfig, Gossiper, advertised
from dynacore.cluster.health import DetectorHealth, make_detector
from dynacore.cluster.service import address_book
from dynacore.cluster.view import ClusterView
from dynacore.config import NodeConfig
from dynacore.net.messages import Value
from dynacore.storage import open_memory_engine

ADVERTISED = {"a": "h:1", "b": "h:2", "c": "h:3"}


def test_the_book_holds_the_configured_addresses_of_the_others() -> None:
    config = NodeConfig(
        node_id="a", members=(("a", "h:1"), ("b", "proxy:22"), ("c", "127.0.0.1:0"))
    )
    assert address_book(config) == {"b": "proxy:22"}  # not itself, not a placeholder
    assert address_book(NodeConfig(node_id="a", seeds=("h:2",))) == {}
    assert advertised("h:1") and not advertised("127.0.0.1:0") and not advertised("nonsense")


def test_the_view_routes_by_the_book_over_the_advertised_addresses() -> None:
    state = ClusterState.bootstrap(16, ADVERTISED, n_val=2)
    state = state.stage_join("d", "h:4")  # a later member, in no book
    view = ClusterView.of(state, n=2, book={"b": "proxy:22"})
    assert dict(view.addresses) == {"a": "h:1", "b": "proxy:22", "c": "h:3", "d": "h:4"}
    assert dict(ClusterView.of(state, n=2).addresses) == {**ADVERTISED, "d": "h:4"}


async def test_gossip_goes_where_the_book_says() -> None:
    async def no_call(
        address: str, msg_type: int, fields: Sequence[Value], timeout_s: float
    ) -> list[Value]:
        raise AssertionError("no call expected")

    state = ClusterState.bootstrap(16, {**ADVERTISED, "e": "127.0.0.1:0"}, n_val=2)
    async with open_memory_engine() as engine:
        gossiper = Gossiper(
            node_id="a",
            store=engine,
            call=no_call,
            health=DetectorHealth(make_detector(1.0), min_heartbeat_interval_s=1.0),
            rng=random.Random(1),
            config=GossipConfig(),
            state=state,
            book={"c": "proxy:33"},
        )
        # e has not advertised where it listens: it is not gossiped to until it does
        assert gossiper.peers() == [("b", "h:2"), ("c", "proxy:33")]
