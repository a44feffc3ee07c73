"""Sloppy quorum and hinted handoff on in-process nodes (real TCP on 127.0.0.1, memory engines),
plus the hints database on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from test_aae_support import healing, healing_cluster, keys_where, sk, wait_until

from dynacore import objects
from dynacore._backend import versions
from dynacore.cluster.hints import (
    HINT_PUT,
    HintedHandoff,
    HintStore,
    Peers,
    hint_key,
    prefix_end,
    split_hint_key,
    target_prefix,
)
from dynacore.cluster.state import ClusterState, Status
from dynacore.cluster.view import ClusterView
from dynacore.coordinator import PeerHealth
from dynacore.errors import ConfigError, ConnectionLost, ProtocolError, QuorumNotMet, VersionError
from dynacore.limits import Limits
from dynacore.storage import open_memory_engine


def value_set(text: str, actor: str) -> bytes:
    envelope = objects.encode_envelope(text.encode(), timestamp_ms=1)
    return versions.update(versions.empty(), versions.vv_empty(), envelope, actor)


async def deliver_until(handoff: HintedHandoff, expected: int) -> None:
    """Delivery rounds until `expected` hints went out (the coordinator retries a peer it saw
    fail only after PeerHealth's retry period)."""
    delivered = 0
    with trio.fail_after(10):
        while delivered < expected:
            delivered += await handoff.deliver_round()
            await trio.sleep(0.05)
    assert delivered == expected


def hint_count(cluster: object, node_id: str) -> int:
    return cluster.nodes[node_id].engine.count("hints")  # type: ignore[attr-defined, no-any-return]


async def test_a_fallback_takes_the_write_counts_toward_w_and_hands_it_back(
    tmp_path: Path,
) -> None:
    async with healing_cluster(tmp_path, count=4, n=3) as cluster:
        (key,) = keys_where(cluster, lambda pref: pref[0] == "n1")
        primary, second, down = cluster.replicas(sk(key))
        (fallback,) = [node for node in cluster.ids if node not in (primary, second, down)]
        await cluster.stop(down)
        async with cluster.client() as client:
            await client.put(key, b"sloppy", w=3)  # 2 replicas + the fallback's hint
            assert (await client.get(key, r=2)).values == [b"sloppy"]
        fallback_engine = cluster.nodes[fallback].engine
        assert fallback_engine.get("hints", hint_key(down, sk(key))) is not None
        assert cluster.stored(fallback, sk(key)) is None  # a hint, not a replica
        assert cluster.nodes[fallback].status().pending_hints == 1

        await cluster.start(down)
        # gossip heartbeats told the fallback that `down` went away: it hands hints back once
        # they tell it that `down` is back
        await wait_until(lambda: cluster.nodes[fallback].coordinator.health.is_up(down))
        assert await healing(cluster, fallback).handoff.deliver_round() == 1
        stored = cluster.stored(down, sk(key))
        assert objects.visible_values(stored, cluster.clock.now_ms()) == [b"sloppy"]
        assert all(hint_count(cluster, node) == 0 for node in cluster.ids)


async def test_without_a_fallback_the_coordinator_keeps_the_hint_but_it_does_not_count(
    tmp_path: Path,
) -> None:
    async with healing_cluster(tmp_path, count=3, n=3) as cluster:
        first, second = keys_where(cluster, lambda pref: pref[0] == "n1" and pref[2] == "n3", 2)
        await cluster.stop("n3")
        async with cluster.client() as client:
            await client.put(first, b"one", w=2)
            with pytest.raises(QuorumNotMet):
                await client.put(second, b"two", w=3)
        await wait_until(lambda: hint_count(cluster, "n1") == 2)  # stored after the w=2 reply
        await cluster.start("n3")
        await deliver_until(healing(cluster, "n1").handoff, 2)
        now_ms = cluster.clock.now_ms()
        assert objects.visible_values(cluster.stored("n3", sk(first)), now_ms) == [b"one"]
        assert objects.visible_values(cluster.stored("n3", sk(second)), now_ms) == [b"two"]
        assert all(hint_count(cluster, node) == 0 for node in cluster.ids)


async def test_delivery_to_an_unreachable_target_keeps_every_hint(tmp_path: Path) -> None:
    async with healing_cluster(tmp_path, count=3, n=3) as cluster:
        keys = keys_where(cluster, lambda pref: pref[0] == "n1" and pref[2] == "n3", 20)
        await cluster.stop("n3")
        async with cluster.client() as client:
            await client.put_many([(k, b"v") for k in keys], w=2)
        await wait_until(lambda: hint_count(cluster, "n1") == 20)
        assert await healing(cluster, "n1").handoff.deliver_round() == 0
        await trio.sleep(2.1)  # past the retry period: the delivery is tried, and fails
        assert await healing(cluster, "n1").handoff.deliver_round() == 0
        assert hint_count(cluster, "n1") == 20


async def test_the_background_task_delivers_and_status_shows_pending_hints(
    tmp_path: Path,
) -> None:
    async with healing_cluster(tmp_path, count=3, n=3, hint_interval_s=0.05) as cluster:
        keys = [f"bg-{i}".encode() for i in range(60)]
        await cluster.stop("n3")
        async with cluster.client() as client:
            await client.put_many([(k, b"v-" + k) for k in keys], w=2)
            await wait_until(lambda: sum(hint_count(cluster, n) for n in ("n1", "n2")) == 60)
            statuses = [await client.status(cluster.nodes[n].address) for n in ("n1", "n2")]
            assert sum(status.pending_hints for status in statuses) == 60
            await cluster.start("n3")
            await wait_until(lambda: all(hint_count(cluster, n) == 0 for n in cluster.ids))
            assert cluster.stored_keys("n3") == {sk(k) for k in keys}
            statuses = [await client.status(address) for address in cluster.addresses]
            assert [status.pending_hints for status in statuses] == [0, 0, 0]


async def test_a_hint_that_changed_during_delivery_is_kept() -> None:
    async with open_memory_engine() as engine:
        hints = HintStore(engine)
        await hints.add("n3", b"\x00k", value_set("first", "n1"))
        batch = hints.batch("n3")
        await hints.add("n3", b"\x00k", value_set("concurrent", "n2"))  # lands meanwhile
        await hints.remove_delivered("n3", batch)
        kept = engine.get("hints", hint_key("n3", b"\x00k"))
        assert kept is not None
        assert sorted(objects.visible_values(kept, 0)) == [b"concurrent", b"first"]
        await hints.remove_delivered("n3", hints.batch("n3"))
        assert hints.pending() == 0


async def test_hint_batches_are_bounded_and_targets_are_listed() -> None:
    async with open_memory_engine() as engine:
        hints = HintStore(engine)
        for i in range(300):
            await hints.add("n2", objects.object_key("", b"%d" % i), value_set("v", "n1"))
        await hints.add("n10", b"\x00z", value_set("v", "n1"))
        await hints.add("n\xff", b"\x00z", value_set("v", "n1"))
        assert sorted(hints.targets()) == ["n10", "n2", "n\xff"]
        assert hints.by_target() == {"n2": 300, "n10": 1, "n\xff": 1}
        assert len(hints.batch("n2")) == 256
        assert hints.batch("n1") == []


def test_hint_keys_round_trip_and_refuse_garbage() -> None:
    raw = hint_key("node-7", b"\x00key")
    assert split_hint_key(raw) == ("node-7", b"\x00key")
    assert raw.startswith(target_prefix("node-7"))
    end = prefix_end(target_prefix("node-7"))
    assert end is not None and raw < end and target_prefix("node-8") >= end
    assert prefix_end(b"\xff\xff") is None
    for bad in (b"", b"\x05ab", b"\x00xyz", b"\x02\xff\xfeq"):
        with pytest.raises(ProtocolError):
            split_hint_key(bad)
    with pytest.raises(ProtocolError):
        target_prefix("")


async def test_hint_put_refuses_bad_input_with_typed_errors(tmp_path: Path) -> None:
    async with healing_cluster(tmp_path, count=2, n=2) as cluster:
        handler = healing(cluster, "n1").handlers()[HINT_PUT]
        good = value_set("v", "n2")
        with pytest.raises(ProtocolError):
            await handler(["n2", b"\x00k"])
        with pytest.raises(ConfigError):
            await handler(["bad id", b"\x00k", good])
        with pytest.raises(ProtocolError):
            await handler(["n2", b"", good])
        with pytest.raises(VersionError):
            await handler(["n2", b"\x00k", b"garbage"])
        assert hint_count(cluster, "n1") == 0
        await handler(["n1", b"\x00k", good])  # a hint for the node itself is just data
        assert cluster.stored("n1", b"\x00k") == good
        with trio.fail_after(5):
            await handler(["n2", b"\x00k", good])
        assert hint_count(cluster, "n1") == 1


class Unreachable:
    """An RpcClient whose every call fails as if the peer were gone."""

    async def call(self, address: str, *_args: object) -> list[object]:
        raise ConnectionLost(f"{address}: gone")


async def test_hints_for_a_member_that_exited_go_to_the_current_owners() -> None:
    state = ClusterState.bootstrap(4, {"a": "a:1", "gone": "g:1"}, n_val=1)
    state = state.stage_leave("gone").commit()
    state = state.confirm_handoffs(state.moving_partitions()).finish_if_done()
    assert state.members["gone"].status is Status.EXITING and state.ring.nodes == ["a"]
    view = ClusterView.of(state, n=1)
    assert "gone" in view.addresses and "gone" not in view.nodes  # its record stays
    async with open_memory_engine() as engine:
        peers = Peers(Unreachable(), lambda: view, PeerHealth(), Limits())  # type: ignore[arg-type]
        handoff = HintedHandoff(node_id="a", store=engine, peers=peers, interval_s=0)
        await handoff.hints.add("gone", b"\x00k", value_set("late", "a"))
        assert await handoff.deliver_round() == 1  # to the owner (here: a itself)
        stored = engine.get("data", b"\x00k")
        assert stored is not None and objects.visible_values(stored, 0) == [b"late"]
        assert handoff.hints.pending() == 0
