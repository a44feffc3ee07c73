"""The request-path fast paths of net/rpc.py over real TCP: `RpcClient.call_soon` (callbacks,
no task), the connection-level deadlines, and the server's inline and deferred handlers."""

from __future__ import annotations

import functools
import random

import pytest
import trio

from dynacore.errors import ConfigError, ConnectionLost, ProtocolError, RequestTimeout
from dynacore.limits import Limits
from dynacore.net import NetConfig, RpcServer, TcpTransport, Value, open_rpc_client
from dynacore.net.rpc import DeferredHandler, InlineHandler, Respond

from .conftest import FAST_CONFIG, echo_handler

ECHO = 40
INLINE = 41
DEFERRED = 42
SLOW = 43

Outcome = tuple[list[Value] | None, Exception | None]


async def start(
    nursery: trio.Nursery,
    tcp: TcpTransport,
    *,
    inline: dict[int, InlineHandler] | None = None,
    deferred: dict[int, DeferredHandler] | None = None,
    config: NetConfig = FAST_CONFIG,
) -> tuple[RpcServer, str]:
    server = RpcServer(server_id="server-1", config=config)
    serve = functools.partial(server.serve, inline_handlers=inline, deferred_handlers=deferred)
    bound = await nursery.start(serve, tcp, "127.0.0.1:0", echo_handler)
    assert isinstance(bound, str)
    return server, bound


class Collector:
    """Callbacks of call_soon: every outcome, and an event when `expected` arrived."""

    def __init__(self, expected: int) -> None:
        self.outcomes: list[Outcome] = []
        self.expected = expected
        self.done = trio.Event()

    def __call__(self, result: list[Value] | None, error: Exception | None) -> None:
        assert (result is None) != (error is None), "exactly one of result and error"
        self.outcomes.append((result, error))
        if len(self.outcomes) == self.expected:
            self.done.set()


async def test_call_soon_needs_a_live_connection_then_calls_back_once_each(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    _, address = await start(nursery, tcp)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        collect = Collector(100)
        assert not rpc.can_call_soon(address)
        assert not rpc.call_soon(address, ECHO, [b"x"], 5.0, collect)  # not connected yet
        await rpc.call(address, ECHO, [])  # connects
        assert rpc.can_call_soon(address)
        for i in range(100):
            assert rpc.call_soon(address, ECHO, [i], 5.0, collect)
        with trio.fail_after(5):
            await collect.done.wait()
        echoed = [result[1] for result, _ in collect.outcomes if result]
        assert sorted(n for n in echoed if isinstance(n, int)) == list(range(100))
        assert all(error is None for _, error in collect.outcomes)
        assert rpc.stats.connects == 1


async def test_call_soon_bounded_by_the_peer_slots(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    release = trio.Event()

    async def slow(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        await release.wait()
        return [msg_type]

    server = RpcServer(server_id="server-1", config=FAST_CONFIG)
    address = await nursery.start(server.serve, tcp, "127.0.0.1:0", slow)
    limits = Limits(in_flight_per_peer=4)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1), limits=limits) as rpc:
        async with trio.open_nursery() as inner:
            inner.start_soon(rpc.ping, address)  # connects (PING needs no handler)
        collect = Collector(4)
        sent = [rpc.call_soon(address, SLOW, [], 5.0, collect) for _ in range(6)]
        assert sent == [True] * 4 + [False] * 2
        assert not rpc.can_call_soon(address)
        release.set()
        with trio.fail_after(5):
            await collect.done.wait()
        assert rpc.can_call_soon(address)  # the slots came back with the replies
        assert rpc.call_soon(address, ECHO, [], 5.0, Collector(1))


async def test_deadlines_fail_waiting_calls_and_callbacks_alike(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    async def never(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    server = RpcServer(server_id="server-1", config=FAST_CONFIG)
    address = await nursery.start(server.serve, tcp, "127.0.0.1:0", never)
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        await rpc.ping(address)
        collect = Collector(2)
        assert rpc.call_soon(address, SLOW, [], 0.2, collect)
        assert rpc.call_soon(address, SLOW, [], 0.1, collect)  # an earlier deadline, later
        with pytest.raises(RequestTimeout):
            await rpc.call(address, SLOW, [], timeout_s=0.15)
        with trio.fail_after(5):
            await collect.done.wait()
        assert all(isinstance(error, RequestTimeout) for _, error in collect.outcomes)
        assert rpc.stats.timeouts == 3
        assert rpc.connected(address)  # timeouts alone keep the connection
        await rpc.ping(address)


async def test_callbacks_fail_with_connection_lost_when_the_peer_goes(
    tcp: TcpTransport,
) -> None:
    hold = trio.Event()

    async def slow(msg_type: int, fields: list[Value], peer: str) -> list[Value]:
        await hold.wait()
        return []

    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        collect = Collector(3)
        async with trio.open_nursery() as server_nursery:
            server = RpcServer(server_id="server-1", config=FAST_CONFIG)
            address = await server_nursery.start(server.serve, tcp, "127.0.0.1:0", slow)
            await rpc.ping(address)
            for _ in range(3):
                assert rpc.call_soon(address, SLOW, [], 30.0, collect)
            await trio.sleep(0.05)
            server_nursery.cancel_scope.cancel()  # the server and its connections go
        with trio.fail_after(5):
            await collect.done.wait()
        assert all(isinstance(error, ConnectionLost) for _, error in collect.outcomes)
        assert not rpc.can_call_soon(address)


async def test_a_raising_callback_is_logged_and_the_connection_lives_on(
    nursery: trio.Nursery, tcp: TcpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    _, address = await start(nursery, tcp)

    def broken(result: list[Value] | None, error: Exception | None) -> None:
        raise RuntimeError("a bug in a callback")

    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        await rpc.ping(address)
        assert rpc.call_soon(address, ECHO, [], 5.0, broken)
        assert await rpc.call(address, ECHO, [1]) == [ECHO, 1, "c"]
        assert rpc.stats.connects == 1
    assert "RPC callback failed" in caplog.text


async def test_inline_handlers_answer_in_the_reader_errors_typed(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    def inline(fields: list[Value], peer: str) -> list[Value]:
        if fields == [b"bad"]:
            raise ProtocolError("bad input")
        if fields == [b"bug"]:
            raise ValueError("a handler bug")
        return [b"inline", *fields, peer]

    server, address = await start(nursery, tcp, inline={INLINE: inline})
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        assert await rpc.call(address, INLINE, [1]) == [b"inline", 1, "c"]
        with pytest.raises(ProtocolError, match="bad input"):
            await rpc.call(address, INLINE, [b"bad"])
        with pytest.raises(Exception, match="a handler bug"):
            await rpc.call(address, INLINE, [b"bug"])
        assert await rpc.call(address, ECHO, [2]) == [ECHO, 2, "c"]  # the others: the handler
    assert server.stats.handler_errors == 2
    assert server.stats.requests == 4


async def test_deferred_handlers_answer_later_or_hand_over_to_the_task_handler(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    later: list[Respond] = []

    def deferred(fields: list[Value], peer: str, respond: Respond) -> bool:
        if fields == [b"task"]:
            return False  # nothing started: the task handler answers
        if fields == [b"now"]:
            respond([b"now"])
        elif fields == [b"raise"]:
            raise ProtocolError("refused at once")
        else:
            later.append(respond)
        return True

    server, address = await start(nursery, tcp, deferred={DEFERRED: deferred})
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        assert await rpc.call(address, DEFERRED, [b"task"]) == [DEFERRED, b"task", "c"]
        assert await rpc.call(address, DEFERRED, [b"now"]) == [b"now"]
        with pytest.raises(ProtocolError, match="refused at once"):
            await rpc.call(address, DEFERRED, [b"raise"])
        results: dict[bytes, list[Value] | Exception] = {}

        async def wait_later(tag: bytes) -> None:
            try:
                results[tag] = await rpc.call(address, DEFERRED, [tag])
            except ProtocolError as exc:
                results[tag] = exc

        with trio.fail_after(5):
            async with trio.open_nursery() as inner:
                inner.start_soon(wait_later, b"a")
                while len(later) < 1:
                    await trio.sleep(0.01)
                inner.start_soon(wait_later, b"b")
                while len(later) < 2:
                    await trio.sleep(0.01)
                later[1]([b"second"])  # answered out of order
                later[0](ProtocolError("answered with an error"))
        assert results[b"b"] == [b"second"]
        assert isinstance(results[b"a"], ProtocolError)
    assert server.stats.handler_errors == 2  # the raise at once, and the error answered later


async def test_deferred_error_reply_reaches_the_caller(
    nursery: trio.Nursery, tcp: TcpTransport
) -> None:
    pending: list[Respond] = []

    def deferred(fields: list[Value], peer: str, respond: Respond) -> bool:
        pending.append(respond)
        return True

    _, address = await start(nursery, tcp, deferred={DEFERRED: deferred})
    async with open_rpc_client(tcp, client_id="c", rng=random.Random(1)) as rpc:
        await rpc.ping(address)
        collect = Collector(1)
        assert rpc.call_soon(address, DEFERRED, [], 5.0, collect)
        while not pending:
            await trio.sleep(0.01)
        pending[0](ProtocolError("no such thing"))
        with trio.fail_after(5):
            await collect.done.wait()
        ((_, error),) = collect.outcomes
        assert isinstance(error, ProtocolError) and "no such thing" in str(error)


async def test_fast_handlers_only_for_node_message_types(tcp: TcpTransport) -> None:
    server = RpcServer(server_id="server-1", config=FAST_CONFIG)

    def inline(fields: list[Value], peer: str) -> list[Value]:
        return []

    with pytest.raises(ConfigError):
        await server.serve(tcp, "127.0.0.1:0", echo_handler, inline_handlers={5: inline})
