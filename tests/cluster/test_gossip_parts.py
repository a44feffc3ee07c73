"""The membership parts on their own: the routing view, detector-fed health, the handoff stream
and its receiver (bounds, retries, bad input), the drop sweep, message layouts, configuration."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import pytest
import trio
import trio.testing

from dynacore import objects
from dynacore._backend import ring as ring_mod
from dynacore._backend import versions
from dynacore.cluster import ClusterState, protocol
from dynacore.cluster.gossip import GossipConfig, Gossiper, decode_state
from dynacore.cluster.handoff import (
    ALL_PARTITIONS,
    Handoff,
    HandoffConfig,
    apply_batch,
    stream_partitions,
)
from dynacore.cluster.health import DetectorHealth, make_detector
from dynacore.cluster.protocol import SweepInfo, TransferRow, TransfersReport
from dynacore.cluster.service import initial_state
from dynacore.cluster.view import ClusterView
from dynacore.config import NodeConfig, load_config
from dynacore.errors import (
    ClusterError,
    ConfigError,
    ConnectionLost,
    DynacoreError,
    ProtocolError,
    Unavailable,
    VersionError,
)
from dynacore.membership import Membership
from dynacore.net.messages import Value
from dynacore.storage import Engine, open_memory_engine

Q = 16
ABC = {"a": "h:1", "b": "h:2", "c": "h:3"}


def stored_set(value: bytes, actor: str = "a.1") -> bytes:
    envelope = objects.encode_envelope(value, timestamp_ms=1)
    return versions.update(versions.empty(), b"", envelope, actor)


def keys_in(partition: int, count: int, q: int = Q) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while len(out) < count:
        key = objects.object_key("", b"k%d" % i)
        if ring_mod.partition_of(key, q) == partition:
            out.append(key)
        i += 1
    return out


async def fill(engine: Engine, pairs: Mapping[bytes, bytes]) -> None:
    def put(value: bytes) -> Callable[[bytes | None], bytes]:
        return lambda _old: value

    await engine.update_many("data", [(k, put(v)) for k, v in pairs.items()])


# -- the view ----------------------------------------------------------------------------------


def test_view_routes_writes_to_old_and_new_owners_and_reads_by_confirmation() -> None:
    state = ClusterState.bootstrap(Q, ABC).stage_join("d", "h:4").commit()
    view = ClusterView.of(state, n=3)
    moving = state.moving_partitions()
    assert moving
    key = keys_in(moving[0], 1)[0]
    assert view.preference_list(key, 3) == state.owners_for(moving[0], 3)
    assert len(view.preference_list(key, 3)) == 4  # 3 old + the new node
    assert view.read_list(key, 3) == state.ring.preference_list(moving[0], 3)
    confirmed = ClusterView.of(state.confirm_handoff(moving[0]), n=3)
    assert confirmed.read_list(key, 3) == state.pending.preference_list(moving[0], 3)  # type: ignore[union-attr]
    assert set(view.extended_list(key, 3)).isdisjoint(view.preference_list(key, 3))
    assert view.nodes == ["a", "b", "c", "d"] and view.address_of("d") == "h:4"
    static = Membership.static(list(ABC.items()), partitions=Q, n=3)
    assert static.read_list(key, 3) == static.preference_list(key, 3)
    assert ClusterView.of(ClusterState.bootstrap(Q, ABC), n=2).ring.owners == static.ring.owners


def test_unjoined_view_refuses_routing() -> None:
    view = ClusterView.unjoined("x", "h:9", q=Q, n=3, namespaces={})
    assert not view.joined and view.nodes == ["x"]
    for call in (view.preference_list, view.read_list, view.extended_list):
        with pytest.raises(Unavailable, match="not joined"):
            call(b"\x00k", 3)
    with pytest.raises(Unavailable):
        view.to_fields()


def test_initial_state_from_configuration() -> None:
    members = tuple(ABC.items())
    static = initial_state(NodeConfig(node_id="a", members=members, partitions=Q))
    assert static == ClusterState.bootstrap(Q, ABC)
    seeded = NodeConfig(node_id="z", seeds=("h:1",), partitions=Q)
    assert initial_state(seeded) is None
    alone = initial_state(NodeConfig(node_id="z", listen="h:7", partitions=Q, n=2))
    assert alone is not None and alone.ring.nodes == ["z"] and alone.n_val == 2
    wide = initial_state(NodeConfig(node_id="a", members=members, namespaces={"x": 5}))
    assert wide is not None and wide.n_val == 5


def test_gossip_interval_configuration() -> None:
    config = load_config(env={"DYNACORE_NODE_ID": "a", "DYNACORE_GOSSIP_INTERVAL_S": "0.25"})
    assert config.gossip_interval_s == 0.25
    for bad in (0, -1.0, 61.0, True, "x"):
        with pytest.raises(ConfigError):
            NodeConfig(node_id="a", gossip_interval_s=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        GossipConfig(interval_s=0)
    with pytest.raises(ConfigError):
        HandoffConfig(batch_max_objects=0)
    with pytest.raises(ConfigError):
        HandoffConfig(tick_s=-1.0)


# -- health ------------------------------------------------------------------------------------


async def test_detector_health_goes_down_with_silence_and_throttles_replies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    health = DetectorHealth(make_detector(0.5), min_heartbeat_interval_s=0.5)
    assert health.is_up("b") and not health.is_down("b")  # unknown: up
    for _ in range(20):
        health.heartbeat("b")
        for _ in range(10):  # a burst of replies between heartbeats does not count
            health.mark_ok("b")
        await trio.sleep(0.5)
    status = health.detector.status(trio.current_time())["b"]
    assert status.mean_interval_s is not None and status.mean_interval_s >= 0.45
    assert health.is_up("b")
    await trio.sleep(30)
    assert health.is_down("b") and not health.is_up("b")
    assert health.phi("b") > health.detector.threshold
    health.heartbeat("b")
    assert health.is_up("b")
    health.mark_failed("c")  # never heard from, and a call failed: down
    assert health.is_down("c") and not health.is_up("c")
    health.forget("c")
    assert health.is_up("c")


# -- handoff stream and receiver ---------------------------------------------------------------


async def test_stream_sends_exactly_the_partition_in_bounded_batches() -> None:
    config = HandoffConfig(batch_max_objects=7, batch_max_bytes=2048, in_flight_batches=2)
    ring = ring_mod.Ring.claim(Q, ["a", "b", "c"])
    wanted = {k: stored_set(b"v" * (k[-1] % 200)) for k in keys_in(3, 40)}
    others = {k: stored_set(b"o") for k in keys_in(4, 25)}
    received: dict[str, dict[bytes, bytes]] = {"t1": {}, "t2": {}}
    sizes: list[tuple[int, int]] = []
    acked: list[tuple[str, int]] = []
    async with open_memory_engine() as engine:
        await fill(engine, {**wanted, **others})

        async def send(target: str, partition: int, keys: list[bytes], sets: list[bytes]) -> None:
            assert partition == 3
            sizes.append((len(keys), sum(len(k) + len(s) for k, s in zip(keys, sets, strict=True))))
            received[target].update(zip(keys, sets, strict=True))

        await stream_partitions(
            engine,
            ring,
            {3: ["t1", "t2"]},
            send,
            config,
            lambda target, counts: acked.append((target, counts[3][0])),
        )
    assert received["t1"] == wanted and received["t2"] == wanted
    assert all(count <= 7 and (count == 1 or size <= 2048) for count, size in sizes)
    assert sum(n for t, n in acked if t == "t1") == 40 == sum(n for t, n in acked if t == "t2")


async def test_stream_retries_then_gives_up_with_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = HandoffConfig(send_attempts=3, retry_backoff_s=0.1)
    ring = ring_mod.Ring.claim(Q, ["a"])
    attempts: list[int] = []
    async with open_memory_engine() as engine:
        await fill(engine, {k: stored_set(b"v") for k in keys_in(0, 3)})

        async def flaky(target: str, partition: int, keys: list[bytes], sets: list[bytes]) -> None:
            attempts.append(len(keys))
            if len(attempts) < 3:
                raise ConnectionLost("gone")

        await stream_partitions(engine, ring, {0: ["t"]}, flaky, config)
        assert attempts == [3, 3, 3]

        async def dead(target: str, partition: int, keys: list[bytes], sets: list[bytes]) -> None:
            raise ConnectionLost("gone for good")

        with pytest.raises(Unavailable, match="failed 3 times"):
            await stream_partitions(engine, ring, {0: ["t"]}, dead, config)


async def test_apply_batch_merges_like_a_replica_put_and_refuses_bad_batches() -> None:
    key = b"\x00k"
    older = stored_set(b"old", "a.1")
    newer = versions.update(
        older, versions.join(older), objects.encode_envelope(b"new", timestamp_ms=2), "a.1"
    )
    concurrent = stored_set(b"other", "b.1")
    async with open_memory_engine() as engine:
        assert await apply_batch(engine, [key], [newer]) == 1
        assert await apply_batch(engine, [key], [older]) == 1  # an older copy changes nothing
        assert engine.get("data", key) == newer
        await apply_batch(engine, [key], [concurrent])  # concurrent: siblings
        stored = engine.get("data", key)
        assert stored is not None and versions.size(stored) == 2
        bad: list[tuple[list[object], list[object], type[DynacoreError]]] = [
            ([b"x"], [], ProtocolError),
            ([b"x"], ["not bytes"], ProtocolError),
            ([b""], [newer], ProtocolError),
            ([b"x", b"y"], [newer, b"garbage"], VersionError),
        ]
        for keys, sets, error in bad:
            with pytest.raises(error):
                await apply_batch(engine, keys, sets)
        assert engine.get("data", b"x") is None  # nothing of a refused batch was written


# -- the drop sweep ----------------------------------------------------------------------------


class FakeGossiper:
    def __init__(self, state: ClusterState) -> None:
        self.state = state


async def test_sweep_hands_over_then_drops_only_what_every_owner_acked() -> None:
    state = ClusterState.bootstrap(Q, {"a": "h:1", "b": "h:2"}, n_val=1)
    mine = [p for p in range(Q) if state.ring.owner(p) == "a"]
    theirs = [p for p in range(Q) if state.ring.owner(p) == "b"]
    kept_keys = keys_in(mine[0], 5)
    stale_keys = keys_in(theirs[0], 5) + keys_in(theirs[1], 5)
    sent: dict[bytes, bytes] = {}
    changed_key = stale_keys[0]

    async with open_memory_engine() as engine:
        await fill(engine, {k: stored_set(b"v") for k in kept_keys + stale_keys})

        async def send(target: str, partition: int, keys: list[bytes], sets: list[bytes]) -> None:
            assert target == "b" and partition == ALL_PARTITIONS
            sent.update(zip(keys, sets, strict=True))
            # a write lands on the old owner while its copy is on the way: it must stay
            await engine.update("data", changed_key, lambda _old: stored_set(b"late", "a.2"))

        handoff = Handoff(
            node_id="a",
            store=engine,
            gossiper=FakeGossiper(state),  # type: ignore[arg-type]
            health=DetectorHealth(make_detector(1.0), min_heartbeat_interval_s=1.0),
            send=send,
            n_for=lambda _namespace: 1,
            config=HandoffConfig(),
        )
        stale, kept = await handoff.sweep(state)
        assert (stale, kept) == (10, 0)
        assert set(sent) == set(stale_keys)
        left = {k for k, _ in engine.scan("data")}
        assert left == set(kept_keys) | {changed_key}  # changed meanwhile: not dropped

        async def refusing(
            target: str, partition: int, keys: list[bytes], sets: list[bytes]
        ) -> None:
            raise ConnectionLost("owner down")

        handoff._send = refusing
        handoff.config = HandoffConfig(send_attempts=1)
        assert await handoff.sweep(state) == (1, 1)  # found, but kept: the owner did not ack
        assert engine.get("data", changed_key) is not None


# -- gossip handler input ----------------------------------------------------------------------


async def test_gossip_handler_refuses_malformed_requests() -> None:
    state = ClusterState.bootstrap(Q, ABC)
    health = DetectorHealth(make_detector(1.0), min_heartbeat_interval_s=1.0)

    async def no_call(*_args: object) -> list[Value]:
        raise ConnectionLost("no network here")

    async with open_memory_engine() as engine:
        gossiper = Gossiper(
            node_id="a",
            store=engine,
            call=no_call,
            health=health,
            rng=random.Random(1),
            config=GossipConfig(),
            state=state,
        )
        malformed: list[list[object]] = [
            [],
            ["b", "h:2", b"", b"", "yes"],
            ["b", "h:2", b"", "state", True],
            [1, "h:2", b"", b"", True],
        ]
        for fields in malformed:
            with pytest.raises(ProtocolError):
                await gossiper.handle(fields)
        with pytest.raises(ClusterError):
            await gossiper.handle(["b", "h:2", b"", b"DCST garbage", True])
        digest, raw = await gossiper.handle(["b", "h:2", b"", b"", True])
        assert digest == state.digest() and decode_state(raw) == state
        assert await gossiper.handle(["b", "h:2", state.digest(), b"", True]) == [digest, b""]
        assert not await gossiper.exchange("h:2", "b")  # unreachable: False, health told
        assert health.is_down("b")
    with pytest.raises(ProtocolError):
        decode_state("text")


def test_message_layouts_round_trip_and_refuse_malformed() -> None:
    row = TransferRow(3, "a", "d", 10, 1000, 0.5, "sent")
    assert row.objects_per_s == 20.0 and row.mb_per_s == pytest.approx(0.002)
    assert TransferRow(3, "a", "d", 0, 0, 0.0, "waiting").objects_per_s == 0.0
    report = TransfersReport(b"", (row,), SweepInfo(2, 0, 5))
    assert TransfersReport.from_fields(report.to_fields()) == report
    for bad in ([], [b"", [["x"]], [1, 2, 3]], [b"", [], [1, 2]], [b"", "rows", [1, 2, 3]]):
        with pytest.raises(ProtocolError):
            TransfersReport.from_fields(bad)
    assert all(protocol.FIRST <= t <= protocol.LAST for t in protocol.NAMES)
