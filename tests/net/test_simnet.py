"""SimNetwork under trio.testing.MockClock: delivery, faults, partitions, crashes, determinism."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from dynacore.errors import ConfigError, ConnectionLost, RequestTimeout
from dynacore.net import (
    Channel,
    Message,
    RpcServer,
    SimFaults,
    SimNetwork,
    Value,
    WireCodec,
    deterministic_scheduling,
    open_rpc_client,
)

from .conftest import FAST_CONFIG, SMALL_LIMITS, codec_in_use

A, B, C = "a:7000", "b:7000", "c:7000"
DATA = 40


def make_net(seed: int, codec: WireCodec, faults: SimFaults | None = None) -> SimNetwork:
    return SimNetwork(
        random.Random(seed), limits=SMALL_LIMITS, config=FAST_CONFIG, codec=codec, faults=faults
    )


async def collector(into: list[Message]) -> Callable[[Channel], Awaitable[None]]:
    async def handler(channel: Channel) -> None:
        while True:
            into.append(await channel.receive())

    return handler


async def serve_collecting(nursery: trio.Nursery, net: SimNetwork, address: str) -> list[Message]:
    received: list[Message] = []
    await nursery.start(net.transport(address).serve, address, await collector(received))
    return received


async def send_numbered(channel: Channel, count: int) -> None:
    await channel.send([(DATA, i, [i]) for i in range(1, count + 1)])


async def test_delivery_after_a_delay_with_reordering(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    faults = SimFaults(delay_min_s=0.01, delay_max_s=0.5)
    net = make_net(1, codec, faults)
    received = await serve_collecting(nursery, net, B)
    channel = await net.transport(A).connect(B, timeout_s=5)
    start = trio.current_time()
    await send_numbered(channel, 50)
    await trio.sleep(0.009)
    assert received == []  # nothing arrives before the minimum delay
    await trio.sleep(1)
    ids = [request_id for _, request_id, _ in received]
    assert sorted(ids) == list(range(1, 51))
    assert ids != sorted(ids)  # random delays reorder
    assert all(fields == [request_id] for _, request_id, fields in received)
    assert trio.current_time() - start < 2
    assert (net.stats.sent, net.stats.delivered) == (50, 50)


async def test_echo_both_ways(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(2, codec)

    async def echo(channel: Channel) -> None:
        while True:
            message = await channel.receive()
            await channel.send([message])

    await nursery.start(net.transport(B).serve, "b:0", echo)
    channel = await net.transport(A).connect(B, timeout_s=5)
    await channel.send([(DATA, 9, [b"ping", [1, None]])])
    assert await channel.receive() == (DATA, 9, [b"ping", [1, None]])
    assert channel.peer == B


async def test_drop_everything_then_some(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(3, codec, SimFaults(drop_probability=1.0))
    received = await serve_collecting(nursery, net, B)
    channel = await net.transport(A).connect(B, timeout_s=5)
    await send_numbered(channel, 20)
    await trio.sleep(1)
    assert received == []
    assert net.stats.dropped == 20

    net.set_faults(SimFaults(drop_probability=0.5))
    await send_numbered(channel, 200)
    await trio.sleep(1)
    assert 50 < len(received) < 150
    assert len(received) + net.stats.dropped == 220
    assert any("drop" in line for line in net.trace)


async def test_duplicates(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(4, codec, SimFaults(duplicate_probability=1.0))
    received = await serve_collecting(nursery, net, B)
    channel = await net.transport(A).connect(B, timeout_s=5)
    await send_numbered(channel, 10)
    await trio.sleep(1)
    ids = sorted(request_id for _, request_id, _ in received)
    assert ids == sorted(list(range(1, 11)) * 2)
    assert net.stats.duplicated == 10


async def test_symmetric_partition_and_heal(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(5, codec)
    at_b = await serve_collecting(nursery, net, B)
    at_a = await serve_collecting(nursery, net, A)
    a_to_b = await net.transport(A).connect(B, timeout_s=5)
    b_to_a = await net.transport(B).connect(A, timeout_s=5)

    net.partition([A, C], [B])
    await send_numbered(a_to_b, 3)
    await send_numbered(b_to_a, 3)
    await trio.sleep(1)
    assert at_a == [] and at_b == []
    assert net.stats.cut == 6
    with pytest.raises(RequestTimeout):
        await net.transport(C).connect(B, timeout_s=2)

    net.heal()
    await send_numbered(a_to_b, 3)
    await trio.sleep(1)
    assert len(at_b) == 3
    await net.transport(C).connect(B, timeout_s=2)


async def test_one_way_partition(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(6, codec)
    at_b = await serve_collecting(nursery, net, B)
    at_a = await serve_collecting(nursery, net, A)
    a_to_b = await net.transport(A).connect(B, timeout_s=5)
    b_to_a = await net.transport(B).connect(A, timeout_s=5)

    net.partition_one_way([A], [B])
    await send_numbered(a_to_b, 4)
    await send_numbered(b_to_a, 4)
    await trio.sleep(1)
    assert at_b == []
    assert len(at_a) == 4
    assert not net.link_open(A, B) and net.link_open(B, A)
    # A connection needs both directions.
    with pytest.raises(RequestTimeout):
        await net.transport(B).connect(A, timeout_s=1)


async def test_crash_closes_channels_and_refuses_until_restart(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(7, codec)
    at_b = await serve_collecting(nursery, net, B)
    channel = await net.transport(A).connect(B, timeout_s=5)
    await send_numbered(channel, 2)
    await trio.sleep(1)
    assert len(at_b) == 2

    net.crash(B)
    assert not net.is_up(B)
    with pytest.raises(ConnectionLost, match="crashed"):
        await channel.receive()
    with pytest.raises(ConnectionLost):
        await channel.send([(DATA, 3, [])])
    with pytest.raises(ConnectionLost, match="refused"):
        await net.transport(A).connect(B, timeout_s=5)
    with pytest.raises(ConnectionLost, match="down"):
        await net.transport(B).connect(A, timeout_s=5)

    net.restart(B)
    channel = await net.transport(A).connect(B, timeout_s=5)
    await send_numbered(channel, 1)
    await trio.sleep(1)
    assert len(at_b) == 3
    assert net.stats.refused == 1


async def test_close_delivers_in_flight_data_then_end_of_stream(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(8, codec, SimFaults(delay_min_s=0.01, delay_max_s=0.3))
    received: list[Message] = []
    ended = trio.Event()

    async def handler(channel: Channel) -> None:
        try:
            while True:
                received.append(await channel.receive())
        finally:
            ended.set()

    await nursery.start(net.transport(B).serve, B, handler)
    channel = await net.transport(A).connect(B, timeout_s=5)
    await send_numbered(channel, 20)
    await channel.aclose()
    await ended.wait()
    assert len(received) == 20
    with pytest.raises(ConnectionLost):
        await channel.receive()


async def test_oversized_frames_and_bad_addresses(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    from dynacore.errors import FrameTooLarge

    net = make_net(9, codec)
    await serve_collecting(nursery, net, B)
    channel = await net.transport(A).connect(B, timeout_s=5)
    with pytest.raises(FrameTooLarge):
        await channel.send([(DATA, 1, [b"x" * SMALL_LIMITS.frame_size_bytes])])
    await channel.send([(DATA, 2, [])])  # the channel is still usable
    with pytest.raises(ConfigError):
        net.transport("no-port")
    with pytest.raises(ConfigError):
        await net.transport(A).serve(B, await collector([]))
    with pytest.raises(ConfigError):
        await net.transport(B).serve(B, await collector([]))  # already served
    with pytest.raises(ConfigError):
        SimFaults(drop_probability=1.5)


# -- RPC over the simulated network --------------------------------------------------------


async def rpc_handler(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
    return [peer, *fields]


async def start_rpc_node(
    nursery: trio.Nursery, net: SimNetwork, address: str, seed: int, secret: bytes = b"k"
) -> RpcServer:
    nonces = random.Random(seed)
    server = RpcServer(
        server_id=address, secret=secret, config=FAST_CONFIG, nonce_source=nonces.randbytes
    )
    await nursery.start(server.serve, net.transport(address), address, rpc_handler)
    return server


async def test_rpc_over_a_lossy_network(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(10, codec)
    await start_rpc_node(nursery, net, B, 1)
    async with open_rpc_client(
        net.transport(A), client_id=A, rng=random.Random(2), secret=b"k", config=FAST_CONFIG
    ) as rpc:
        assert await rpc.call(B, DATA, [1], timeout_s=1) == [A, 1]
        net.set_faults(SimFaults(drop_probability=0.3, duplicate_probability=0.3))
        outcomes = {"ok": 0, "timeout": 0}

        async def one(i: int) -> None:
            try:
                assert await rpc.call(B, DATA, [i], timeout_s=1) == [A, i]
                outcomes["ok"] += 1
            except RequestTimeout:
                outcomes["timeout"] += 1

        async with trio.open_nursery() as calls:
            for i in range(100):
                calls.start_soon(one, i)
        assert outcomes["ok"] > 20 and outcomes["timeout"] > 20
        assert outcomes["ok"] + outcomes["timeout"] == 100
        assert rpc.stats.connects == 1  # loss makes timeouts, never a second connection


async def test_rpc_reconnects_after_crash_and_restart(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(11, codec)
    await start_rpc_node(nursery, net, B, 1)
    async with open_rpc_client(
        net.transport(A), client_id=A, rng=random.Random(2), secret=b"k", config=FAST_CONFIG
    ) as rpc:
        assert await rpc.call(B, DATA, [1], timeout_s=1) == [A, 1]
        net.crash(B)
        with pytest.raises(ConnectionLost):
            await rpc.call(B, DATA, [2], timeout_s=1)
        net.restart(B)
        assert await rpc.call(B, DATA, [3], timeout_s=1) == [A, 3]
        assert rpc.stats.connects == 2


async def test_rpc_wrong_secret_over_sim(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    from dynacore.errors import AuthError

    net = make_net(12, codec)
    await start_rpc_node(nursery, net, B, 1, secret=b"right")
    async with open_rpc_client(
        net.transport(A), client_id=A, rng=random.Random(2), secret=b"wrong", config=FAST_CONFIG
    ) as rpc:
        with pytest.raises(AuthError):
            await rpc.call(B, DATA, [1], timeout_s=1)


# -- determinism -----------------------------------------------------------------------------


async def _scenario(seed: int) -> tuple[str, list[str], list[str]]:
    """Three nodes calling each other through faults, a partition and a crash."""
    net = make_net(seed, codec_in_use(), SimFaults(drop_probability=0.1, duplicate_probability=0.1))
    rng = random.Random(seed)
    nodes = [A, B, C]
    outcomes: list[str] = []
    async with trio.open_nursery() as nursery:
        for i, node in enumerate(nodes):
            await start_rpc_node(nursery, net, node, seed * 10 + i)
        async with (
            open_rpc_client(
                net.transport(A),
                client_id=A,
                rng=random.Random(rng.random()),
                secret=b"k",
                config=FAST_CONFIG,
            ) as from_a,
            open_rpc_client(
                net.transport(B),
                client_id=B,
                rng=random.Random(rng.random()),
                secret=b"k",
                config=FAST_CONFIG,
            ) as from_b,
        ):

            async def one(i: int) -> None:
                client, target = (
                    (from_a, rng.choice([B, C])) if i % 2 else (from_b, rng.choice([A, C]))
                )
                await trio.sleep(rng.uniform(0, 2))
                try:
                    reply = await client.call(target, DATA, [i], timeout_s=0.5)
                    outcomes.append(f"{i} ok {reply}")
                except (RequestTimeout, ConnectionLost) as exc:
                    outcomes.append(f"{i} {type(exc).__name__}")

            async def faults() -> None:
                await trio.sleep(0.5)
                net.partition([A], [C])
                await trio.sleep(0.5)
                net.crash(B)
                await trio.sleep(0.3)
                net.restart(B)
                net.heal()

            async with trio.open_nursery() as calls:
                calls.start_soon(faults)
                for i in range(60):
                    calls.start_soon(one, i)
        nursery.cancel_scope.cancel()
    return net.trace_digest, net.trace, outcomes


def run_scenario(seed: int) -> tuple[str, list[str], list[str]]:
    with deterministic_scheduling(seed):
        return trio.run(_scenario, seed, clock=trio.testing.MockClock(autojump_threshold=0))


def test_same_seed_same_trace_other_seed_differs() -> None:
    digest1, trace1, outcomes1 = run_scenario(42)
    digest2, trace2, outcomes2 = run_scenario(42)
    assert trace1 == trace2
    assert digest1 == digest2
    assert outcomes1 == outcomes2
    assert len(trace1) > 100
    # The run exercised the faults it claims to.
    assert any(" drop " in line for line in trace1)
    assert any(" dup " in line for line in trace1)
    assert any(" cut " in line for line in trace1)
    assert any(" crash " in line for line in trace1)
    assert {o.split()[1] for o in outcomes1} >= {"ok", "RequestTimeout"}

    digest3, _, _ = run_scenario(43)
    assert digest3 != digest1


def test_replay_in_another_process_with_another_hash_seed() -> None:
    """A seed replays exactly in a fresh interpreter (string hashing randomized differently)."""
    digest, _, _ = run_scenario(7)
    script = "from tests.net.test_simnet import run_scenario; print(run_scenario(7)[0])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == digest


async def test_rpc_drops_a_silent_connection_and_reconnects_after_heal(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, codec: WireCodec
) -> None:
    net = make_net(13, codec)
    await start_rpc_node(nursery, net, B, 1)
    config = dataclasses.replace(FAST_CONFIG, silent_connection_s=3.0)
    async with open_rpc_client(
        net.transport(A), client_id=A, rng=random.Random(2), secret=b"k", config=config
    ) as rpc:
        assert await rpc.call(B, DATA, [1], timeout_s=1) == [A, 1]
        net.partition_one_way([B], [A])  # requests arrive, replies are lost: a half-open link
        for i in range(2):
            with pytest.raises(RequestTimeout):
                await rpc.call(B, DATA, [i], timeout_s=1)
        assert rpc.connected(B)  # 3 s of silence not reached yet: the connection is kept
        with pytest.raises(RequestTimeout):
            await rpc.call(B, DATA, [4], timeout_s=1)
        assert rpc.stats.silent_drops == 1
        assert not rpc.connected(B)
        net.heal()
        assert await rpc.call(B, DATA, [5], timeout_s=1) == [A, 5]
        assert rpc.stats.connects == 2
