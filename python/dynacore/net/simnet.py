"""SimNetwork: an in-memory, fault-injecting network between simulated nodes in one trio.run.

Each node gets a `SimTransport` (the Transport protocol of transport.py). Messages are encoded
and decoded with the wire codec (real sizes, real codec errors) and delivered after a random
delay, so channels reorder; faults are injected per message (drop, duplicate), per link
(symmetric and one-way partitions) and per node (`crash`/`restart`). Every random choice comes
from the one `random.Random` handed in and time is trio's clock, so under
`trio.testing.MockClock` a run is a function of its seed — given a reproducible trio scheduler,
see `deterministic_scheduling`. The trace (a bounded tail of event lines plus a running digest
of all of them) lets a simulator prove it.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from dynacore.errors import ConfigError, ConnectionLost, FrameError, RequestTimeout
from dynacore.limits import Limits
from dynacore.net.config import NetConfig
from dynacore.net.messages import Message
from dynacore.net.transport import (
    ChannelHandler,
    WireCodec,
    default_codec,
    encode_messages,
    parse_address,
    run_channel_handler,
)


@dataclass(frozen=True, slots=True)
class SimFaults:
    """Per-message faults; delays are drawn uniformly from [delay_min_s, delay_max_s]."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay_min_s: float = 0.001
    delay_max_s: float = 0.005

    def __post_init__(self) -> None:
        for name in ("drop_probability", "duplicate_probability"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if not 0.0 <= self.delay_min_s <= self.delay_max_s <= 3600.0:
            raise ConfigError("need 0 <= delay_min_s <= delay_max_s <= 3600")


@dataclass(slots=True)
class SimStats:
    """Counters of what the network did to messages (frames) and connections."""

    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    cut: int = 0  # lost to a partition
    overflowed: int = 0  # the receiving end's inbox was full
    connects: int = 0
    refused: int = 0


@dataclass(slots=True)
class _Listener:
    handler: ChannelHandler
    nursery: trio.Nursery


@dataclass(order=True, slots=True)
class _Arrival:
    at_s: float
    seq: int
    frame: bytes | None = field(compare=False)  # None is the end of stream


class SimChannel:
    """One end of a simulated connection (the Channel protocol)."""

    def __init__(self, network: SimNetwork, serial: int, node: str, remote_node: str) -> None:
        self._network = network
        self.serial = serial
        self.node = node
        self.remote_node = remote_node
        self.other: SimChannel | None = None
        self.key = 0  # the network's registry key, set when paired
        self._inbox: list[_Arrival] = []
        self._last_arrival_s = -math.inf
        self._wakeup = trio.Event()
        self._closed: str | None = None

    @property
    def peer(self) -> str:
        return self.remote_node

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def send(self, messages: Sequence[Message]) -> None:
        if self._closed is not None:
            raise ConnectionLost(f"{self.remote_node}: {self._closed}")
        net = self._network
        frames = encode_messages(net.codec, messages, net.max_frame_bytes)
        for (msg_type, request_id, _), frame in zip(messages, frames, strict=True):
            net._transmit(self, msg_type, request_id, frame)
        await trio.lowlevel.checkpoint()

    async def receive(self) -> Message:
        while True:
            if self._closed is not None:
                raise ConnectionLost(f"{self.remote_node}: {self._closed}")
            if self._inbox and self._inbox[0].at_s <= trio.current_time():
                return self._take(heapq.heappop(self._inbox))
            self._wakeup = trio.Event()
            deadline = self._inbox[0].at_s if self._inbox else math.inf
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    def _take(self, arrival: _Arrival) -> Message:
        net = self._network
        if arrival.frame is None:
            self._break("closed by peer")
            raise ConnectionLost(f"{self.remote_node}: closed by peer")
        try:
            message = net.codec.decode_frame(arrival.frame, net.max_frame_bytes)
        except FrameError as exc:
            net._record("malformed", f"c{self.serial} {self.node} {type(exc).__name__}")
            self._break(f"malformed frame ({exc})")
            if self.other is not None:
                self.other._break("closed by peer after a malformed frame")
            raise ConnectionLost(f"{self.remote_node}: malformed frame ({exc})") from exc
        net.stats.delivered += 1
        net._record("recv", f"c{self.serial} {self.remote_node}->{self.node} t{message[0]}")
        return message

    async def aclose(self) -> None:
        if self._closed is None:
            self._break("closed")
            if self.other is not None and not self.other.closed:
                self.other._enqueue(self._network._eof_time(self.other), None)
        await trio.lowlevel.checkpoint()

    def _enqueue(self, at_s: float, frame: bytes | None) -> bool:
        if self._closed is not None:
            return False
        if frame is not None and len(self._inbox) >= self._network.config.sim_inbox_messages:
            return False
        self._last_arrival_s = max(self._last_arrival_s, at_s)
        heapq.heappush(self._inbox, _Arrival(at_s, self._network._next_seq(), frame))
        self._wakeup.set()
        return True

    def _break(self, reason: str) -> None:
        """Close this end at once (crash, error): queued messages are lost."""
        if self._closed is None:
            self._closed = reason
            self._inbox.clear()
            self._wakeup.set()
            self._network._forget(self)


class SimTransport:
    """The Transport of one simulated node, whose identity is its address."""

    def __init__(self, network: SimNetwork, address: str) -> None:
        self._network = network
        self.address = address

    def _bind(self, address: str) -> str:
        host, port = parse_address(address)
        own_host, _ = parse_address(self.address)
        if address == self.address or (port == 0 and host == own_host):
            return self.address
        raise ConfigError(f"node {self.address} cannot serve {address!r}")

    async def serve(
        self,
        address: str,
        handler: ChannelHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        bound = self._bind(address)
        self._network._check_free(bound)
        async with trio.open_nursery() as nursery:
            self._network._listen(bound, _Listener(handler, nursery))
            try:
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                self._network._unlisten(bound)

    async def connect(self, address: str, timeout_s: float) -> SimChannel:
        parse_address(address)
        with trio.move_on_after(timeout_s):
            return await self._network._connect(self.address, address)
        raise RequestTimeout(f"{address}: connect took longer than {timeout_s} s")


class SimNetwork:
    """The in-memory network; see the module docstring."""

    def __init__(
        self,
        rng: random.Random,
        *,
        limits: Limits | None = None,
        config: NetConfig | None = None,
        codec: WireCodec | None = None,
        faults: SimFaults | None = None,
    ) -> None:
        self.rng = rng
        self.config = config if config is not None else NetConfig()
        self.codec = codec if codec is not None else default_codec()
        self.max_frame_bytes = (limits if limits is not None else Limits()).frame_size_bytes
        self.faults = faults if faults is not None else SimFaults()
        self.stats = SimStats()
        self._listeners: dict[str, _Listener] = {}
        self._channels: dict[int, SimChannel] = {}  # insertion order: deterministic iteration
        self._blocked: set[tuple[str, str]] = set()
        self._down: set[str] = set()
        self._serial = 0
        self._seq = 0
        self._trace: deque[str] = deque(maxlen=self.config.sim_trace_lines)
        self._digest = hashlib.blake2b(digest_size=16)

    # -- public controls ---------------------------------------------------------------------

    def transport(self, address: str) -> SimTransport:
        parse_address(address)
        return SimTransport(self, address)

    def set_faults(self, faults: SimFaults) -> None:
        self.faults = faults
        self._record("faults", repr(faults))

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Cut every link between the two groups, both ways."""
        a, b = sorted(group_a), sorted(group_b)
        self.partition_one_way(a, b)
        self.partition_one_way(b, a)

    def partition_one_way(self, sources: Iterable[str], destinations: Iterable[str]) -> None:
        """Lose every message (and connection attempt) from a source to a destination."""
        src, dst = sorted(sources), sorted(destinations)
        self._blocked.update((s, d) for s in src for d in dst if s != d)
        self._record("partition", f"{','.join(src)} -> {','.join(dst)}")

    def heal(self) -> None:
        """Remove every partition (crashed nodes stay down until restarted)."""
        self._blocked.clear()
        self._record("heal", "")

    def crash(self, address: str) -> None:
        """Close every channel of the node and refuse its connections until `restart`."""
        self._down.add(address)
        for channel in list(self._channels.values()):
            if channel.node == address:
                channel._break("node crashed")
                if channel.other is not None:
                    channel.other._break("peer crashed")
        self._record("crash", address)

    def restart(self, address: str) -> None:
        self._down.discard(address)
        self._record("restart", address)

    def is_up(self, address: str) -> bool:
        return address not in self._down

    def link_open(self, source: str, destination: str) -> bool:
        return (source, destination) not in self._blocked

    @property
    def trace(self) -> list[str]:
        """The most recent trace lines (at most config.sim_trace_lines)."""
        return list(self._trace)

    @property
    def trace_digest(self) -> str:
        """A running digest of every trace line since the network was made."""
        return self._digest.hexdigest()

    # -- internals used by SimChannel / SimTransport -----------------------------------------

    def _record(self, event: str, detail: str) -> None:
        line = f"{trio.current_time():.9f} {event} {detail}"
        self._trace.append(line)
        self._digest.update(line.encode() + b"\n")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _delay_s(self) -> float:
        return self.rng.uniform(self.faults.delay_min_s, self.faults.delay_max_s)

    def _eof_time(self, receiver: SimChannel) -> float:
        return max(receiver._last_arrival_s, trio.current_time() + self._delay_s())

    def _transmit(self, sender: SimChannel, msg_type: int, request_id: int, frame: bytes) -> None:
        receiver = sender.other
        assert receiver is not None, "a channel end is always paired"
        label = f"c{sender.serial} {sender.node}->{sender.remote_node} t{msg_type} id{request_id}"
        label += f" {len(frame)}B"
        self.stats.sent += 1
        if receiver.closed:
            self._record("unread", label)  # the other end is closed: the bytes go nowhere
            return
        if not self.link_open(sender.node, sender.remote_node):
            self.stats.cut += 1
            self._record("cut", label)
            return
        faults = self.faults
        if faults.drop_probability and self.rng.random() < faults.drop_probability:
            self.stats.dropped += 1
            self._record("drop", label)
            return
        copies = 1
        if faults.duplicate_probability and self.rng.random() < faults.duplicate_probability:
            copies = 2
            self.stats.duplicated += 1
        for copy in range(copies):
            at_s = trio.current_time() + self._delay_s()
            if not receiver._enqueue(at_s, frame):
                self.stats.overflowed += 1
                self._record("lost", label)
                continue
            self._record("dup" if copy else "send", f"{label} at {at_s:.9f}")

    async def _connect(self, source: str, destination: str) -> SimChannel:
        self.stats.connects += 1
        self._record("connect", f"{source}->{destination}")
        if source in self._down:
            raise ConnectionLost(f"{destination}: local node {source} is down")
        if not (self.link_open(source, destination) and self.link_open(destination, source)):
            await trio.sleep_forever()  # the SYN (or its answer) is lost; the caller times out
        await trio.sleep(self._delay_s())
        listener = self._listeners.get(destination)
        if listener is None or destination in self._down or source in self._down:
            await trio.sleep(self._delay_s())
            self.stats.refused += 1
            self._record("refused", f"{source}->{destination}")
            raise ConnectionLost(f"{destination}: connection refused")
        client, server = self._pair(source, destination)
        listener.nursery.start_soon(run_channel_handler, listener.handler, server)
        try:
            await trio.sleep(self._delay_s())
        except BaseException:
            client._break("connect cancelled")
            server._enqueue(self._eof_time(server), None)
            raise
        if client.closed:
            raise ConnectionLost(f"{destination}: connection reset while connecting")
        return client

    def _pair(self, source: str, destination: str) -> tuple[SimChannel, SimChannel]:
        self._serial += 1
        client = SimChannel(self, self._serial, source, destination)
        server = SimChannel(self, self._serial, destination, source)
        client.other, server.other = server, client
        for end in (client, server):
            end.key = self._next_seq()
            self._channels[end.key] = end
        self._record("accept", f"c{self._serial} {source}->{destination}")
        return client, server

    def _forget(self, channel: SimChannel) -> None:
        self._channels.pop(channel.key, None)

    def _check_free(self, address: str) -> None:
        if address in self._listeners:
            raise ConfigError(f"{address} is already served")

    def _listen(self, address: str, listener: _Listener) -> None:
        self._check_free(address)
        self._listeners[address] = listener
        self._record("listen", address)

    def _unlisten(self, address: str) -> None:
        self._listeners.pop(address, None)
        self._record("unlisten", address)


@contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Make trio's scheduler order a function of `seed` for the trio.run calls inside.

    trio shuffles each batch of runnable tasks with a module-level random.Random (and sorts the
    batch first only in its deterministic mode, which Hypothesis switches on). A simulation that
    must replay exactly needs both: this seeds that generator and turns the mode on, restoring
    both afterwards. It reaches into trio's private `_core._run`; it is for simulations and tests.
    """
    from trio._core import _run

    state = _run._r.getstate()
    flag = _run._ALLOW_DETERMINISTIC_SCHEDULING
    _run._r.seed(seed)
    setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 - it is Final in trio
    try:
        yield
    finally:
        _run._r.setstate(state)
        setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", flag)  # noqa: B010
