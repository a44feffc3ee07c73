"""The composition root of one node: `open_node` runs one trio nursery that owns the storage
engine, the RPC client and server, the coordinator and every background task; `Node.handle`
dispatches client and replica messages; `run_node_forever` is the CLI's `serve` (TCP, LMDB,
SIGTERM/SIGINT → clean stop).
"""

from __future__ import annotations

import functools
import gc
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar

import trio

from dynacore import cachewrite, messages, objects, readbatch
from dynacore._backend import versions
from dynacore.cluster.antientropy import ObservedEngine, SelfHealing
from dynacore.cluster.service import ClusterService
from dynacore.config import NodeConfig, QuorumSpec, check_quorum_spec
from dynacore.coordinator import Clock, Coordinator, PeerHealth, exception_leaves
from dynacore.errors import ProtocolError
from dynacore.membership import Membership
from dynacore.messages import NodeStatus, PeerStatus, expect
from dynacore.net.rpc import Respond, RpcServer, open_rpc_client
from dynacore.net.transport import TcpTransport, Transport
from dynacore.readbatch import ReadBatcher
from dynacore.storage import Engine, open_lmdb_engine, open_memory_engine, open_node_meta

log = logging.getLogger(__name__)

SPEC = (str, int, type(None))  # a quorum spec field: "one"/"quorum"/"all", an int, or None


class SystemClock:
    """Wall-clock milliseconds since the Unix epoch."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class TrioClock:
    """Milliseconds of trio's clock plus a fixed offset: virtual under trio.testing.MockClock."""

    def __init__(self, offset_ms: int = 1_700_000_000_000) -> None:
        assert offset_ms >= 0
        self._offset_ms = offset_ms

    def now_ms(self) -> int:
        return self._offset_ms + int(trio.current_time() * 1000)


class Node:
    """One running node; made by `open_node`, valid inside its `async with`."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        engine: Engine,
        coordinator: Coordinator,
        clock: Clock,
        cancel_scope: trio.CancelScope,
        cluster: ClusterService | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.engine = engine
        self.coordinator = coordinator
        self.clock = clock
        self.address = ""  # the bound "host:port", set once the server listens
        self._cancel_scope = cancel_scope
        self.extra_handlers: dict[int, Callable[[list[Any]], Awaitable[list[Any]]]] = {}
        self.cluster = cluster  # gossip, staged changes, handoff (cluster/service.py)
        self.healing: SelfHealing | None = None  # hints, anti-entropy, reaper (set by open_node)

    @property
    def membership(self) -> Membership:
        return self.coordinator.membership

    def set_membership(self, membership: Membership) -> None:
        """Replace the cluster view (tests that bind port 0 fill in addresses this way)."""
        if self.cluster is not None:  # the view follows the cluster state: take its addresses
            membership = self.cluster.adopt_addresses(membership)
        self.coordinator.membership = membership

    def stop(self) -> None:
        """Stop the node: the `async with open_node` block's tasks are cancelled."""
        self._cancel_scope.cancel()

    # -- dispatch ----------------------------------------------------------------------------------

    async def handle(self, msg_type: int, fields: list[Any], peer: str) -> list[Any]:
        """The RPC handler: one request in, its reply fields out; errors become ERROR replies."""
        handler = self._handlers.get(msg_type)
        if handler is None:
            extra = self.extra_handlers.get(msg_type)  # the self-healing services' messages
            if extra is None:
                raise ProtocolError(f"unknown message type {msg_type}")
            return await extra(fields)
        return await handler(self, fields)

    async def _client_get(self, fields: list[Any]) -> list[Any]:
        namespace, key, r = expect(fields, (str, bytes, SPEC), "CLIENT_GET")
        merged = await self.coordinator.get(namespace, key, r=_spec(r))
        return self._get_reply(merged)

    def client_get_deferred(self, fields: list[Any], peer: str, respond: Respond) -> bool:
        """CLIENT_GET without a task when the replicas' connections are up (else False)."""
        namespace, key, r = expect(fields, (str, bytes, SPEC), "CLIENT_GET")

        def done(merged: bytes | None, error: Exception | None) -> None:
            if error is None:
                try:
                    respond(self._get_reply(merged))
                except Exception as exc:
                    respond(exc)
            else:
                respond(error)

        return self.coordinator.get_soon(namespace, key, _spec(r), done)

    def _get_reply(self, merged: bytes | None) -> list[Any]:
        if merged is None:
            return [b"", [], 0]
        now_ms = self.clock.now_ms()
        return [
            versions.join(merged),
            objects.visible_envelopes(merged, now_ms),
            versions.size(merged),
        ]

    async def _client_put(self, fields: list[Any]) -> list[Any]:
        namespace, key, value, context, w, ttl_ms, forwarded = expect(
            fields, (str, bytes, bytes, bytes, SPEC, int, bool), "CLIENT_PUT"
        )
        new_context = await self.coordinator.put(
            namespace, key, value, context, w=_spec(w), ttl_ms=ttl_ms, forwarded=forwarded
        )
        return [new_context]

    def client_put_deferred(self, fields: list[Any], peer: str, respond: Respond) -> bool:
        """CLIENT_PUT without a task when this node replicates the key and the replicas'
        connections are up (else False: forwarding and the slow paths take a task)."""
        namespace, key, value, context, w, ttl_ms, _forwarded = expect(
            fields, (str, bytes, bytes, bytes, SPEC, int, bool), "CLIENT_PUT"
        )
        done = _context_reply(respond)
        return self.coordinator.put_soon(namespace, key, value, context, _spec(w), ttl_ms, done)

    def client_delete_deferred(self, fields: list[Any], peer: str, respond: Respond) -> bool:
        """CLIENT_DELETE without a task, as client_put_deferred."""
        namespace, key, context, w, _forwarded = expect(
            fields, (str, bytes, bytes, SPEC, bool), "CLIENT_DELETE"
        )
        done = _context_reply(respond)
        return self.coordinator.put_soon(namespace, key, None, context, _spec(w), 0, done)

    async def _client_delete(self, fields: list[Any]) -> list[Any]:
        namespace, key, context, w, forwarded = expect(
            fields, (str, bytes, bytes, SPEC, bool), "CLIENT_DELETE"
        )
        new_context = await self.coordinator.put(
            namespace, key, None, context, w=_spec(w), forwarded=forwarded
        )
        return [new_context]

    async def _ring_get(self, fields: list[Any]) -> list[Any]:
        expect(fields, (), "RING_GET")
        return self.membership.to_fields()

    async def _status(self, fields: list[Any]) -> list[Any]:
        expect(fields, (), "STATUS")
        return self.status().to_fields()

    async def _replica_get(self, fields: list[Any]) -> list[Any]:
        (stored_key,) = expect(fields, (bytes,), "REPLICA_GET")
        return [self.coordinator.replica_get(stored_key)]

    def replica_get_inline(self, fields: list[Any], peer: str) -> list[Any]:
        """REPLICA_GET answered in the connection's reader (a synchronous local read)."""
        (stored_key,) = expect(fields, (bytes,), "REPLICA_GET")
        return [self.coordinator.replica_get(stored_key)]

    def replica_get_many_inline(self, fields: list[Any], peer: str) -> list[Any]:
        """REPLICA_GET_MANY answered in the connection's reader (readbatch.py)."""
        read_many = self.coordinator.replica_get_many
        return readbatch.answer_many(fields, read_many, self.config.limits)

    def replica_put_deferred(self, fields: list[Any], peer: str, respond: Respond) -> bool:
        """REPLICA_PUT without a task when the commit queue has room (else False)."""
        stored_key, incoming = expect(fields, (bytes, bytes), "REPLICA_PUT")

        def done(error: Exception | None) -> None:
            respond([] if error is None else error)

        return self.coordinator.replica_put_soon(stored_key, incoming, done)

    async def _replica_put(self, fields: list[Any]) -> list[Any]:
        stored_key, incoming = expect(fields, (bytes, bytes), "REPLICA_PUT")
        await self.coordinator.replica_put(stored_key, incoming)
        return []

    async def _cache_write(self, fields: list[Any]) -> list[Any]:
        return await cachewrite.handle(self.coordinator, self.clock, self.config.limits, fields)

    _handlers: ClassVar[dict[int, Callable[[Node, list[Any]], Awaitable[list[Any]]]]] = {
        messages.CLIENT_GET: _client_get,
        messages.CLIENT_PUT: _client_put,
        messages.CLIENT_DELETE: _client_delete,
        messages.RING_GET: _ring_get,
        messages.STATUS: _status,
        messages.REPLICA_GET: _replica_get,
        messages.REPLICA_PUT: _replica_put,
        messages.CACHE_WRITE: _cache_write,
    }

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        """This node's view: ownership, key count, peers up/down from recent RPC outcomes."""
        view = self.membership
        health: PeerHealth = self.coordinator.health
        peers = tuple(
            PeerStatus(
                node_id=node,
                address=self.address if node == self.node_id else view.address_of(node),
                up=node == self.node_id or not health.is_down(node),
                partitions_owned=view.partitions_owned(node),
            )
            for node in view.nodes
        )
        return NodeStatus(
            node_id=self.node_id,
            address=self.address,
            partitions=view.ring.q,
            partitions_owned=view.partitions_owned(self.node_id),
            key_count=self.engine.count("data"),
            pending_hints=self.engine.count("hints"),
            peers=peers,
        )


def _context_reply(respond: Respond) -> Callable[[bytes | None, Exception | None], None]:
    """A put's outcome as the [context] reply (or the error)."""

    def done(context: bytes | None, error: Exception | None) -> None:
        respond([context] if error is None else error)

    return done


def _spec(value: str | int | None) -> QuorumSpec | None:
    return None if value is None else check_quorum_spec(value)


@asynccontextmanager
async def _open_engine(config: NodeConfig) -> AsyncIterator[Engine]:
    if config.data_dir is None:
        async with open_memory_engine() as engine:
            yield engine
    else:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        async with open_lmdb_engine(config.data_dir, sync=config.sync) as engine:
            yield engine


@asynccontextmanager
async def open_node(
    config: NodeConfig,
    *,
    transport: Transport | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    engine: Engine | None = None,
    membership: Membership | None = None,
) -> AsyncIterator[Node]:
    """Run one node for the duration of the block; `node.address` is the bound address.

    Defaults: TCP transport, the wall clock, a fresh Random, LMDB in config.data_dir (or a
    memory engine when it is None), the static membership of config.members. Leaving the block
    (or `node.stop()`, or cancellation) stops the server and the background tasks, then closes
    the engine once its queued commits are done.
    """
    transport = transport if transport is not None else TcpTransport(config.limits)
    clock = clock if clock is not None else SystemClock()
    rng = rng if rng is not None else random.Random()
    body_error: list[BaseException] = []  # what the caller's block raised, if anything
    try:
        async with _run_node(config, transport, clock, rng, engine, membership) as node:
            try:
                yield node
            except BaseException as exc:
                body_error.append(exc)
                raise
    except BaseExceptionGroup as group:
        # the node's nurseries wrap the caller's own error in groups: let it escape as itself
        if not body_error or exception_leaves(group) != body_error:
            raise
    if body_error:
        raise body_error[0]


@asynccontextmanager
async def _run_node(
    config: NodeConfig,
    transport: Transport,
    clock: Clock,
    rng: random.Random,
    engine: Engine | None,
    membership: Membership | None,
) -> AsyncIterator[Node]:
    async with AsyncExitStack() as stack:
        store: Engine = (
            engine if engine is not None else await stack.enter_async_context(_open_engine(config))
        )
        actor_id = (await open_node_meta(store, config.node_id, rng)).actor_id
        store = ObservedEngine(store)  # every data write marks its Merkle tree leaf dirty
        rpc = await stack.enter_async_context(
            open_rpc_client(
                transport,
                secret=config.cluster_secret.encode(),
                client_id=config.node_id,
                limits=config.limits,
                rng=rng,
            )
        )
        cluster = await ClusterService.open(
            config, store=store, rpc=rpc, rng=rng, membership=membership
        )
        async with trio.open_nursery() as nursery:
            coordinator = Coordinator(
                node_id=config.node_id,
                actor_id=actor_id,
                membership=cluster.view,
                rpc=rpc,
                store=store,
                clock=clock,
                limits=config.limits,
                background=nursery,
                default_r=config.r,
                default_w=config.w,
                health=cluster.health,
            )
            node = Node(
                config,
                engine=store,
                coordinator=coordinator,
                clock=clock,
                cancel_scope=nursery.cancel_scope,
                cluster=cluster,
            )
            cluster.on_view(lambda view: setattr(coordinator, "membership", view))
            node.extra_handlers.update(cluster.handlers())
            heal = SelfHealing(
                config,
                actor_id=actor_id,
                store=store,
                rpc=rpc,
                clock_ms=clock.now_ms,
                view=lambda: coordinator.membership,
                health=coordinator.health,
            )
            await heal.start(nursery)
            coordinator.fallback, coordinator.counter_floor = heal.handoff.fallback, heal.floor
            node.healing = heal
            assert not set(heal.handlers()) & set(node.extra_handlers), "message types collide"
            node.extra_handlers.update(heal.handlers())
            server = RpcServer(server_id=config.node_id, secret=config.cluster_secret.encode())
            inline = {
                messages.REPLICA_GET: node.replica_get_inline,
                messages.REPLICA_GET_MANY: node.replica_get_many_inline,
            }
            reads = ReadBatcher(
                rpc,
                coordinator.health,
                lambda peer: coordinator.membership.address_of(peer),
                lambda: coordinator.timeout_s,
                coordinator.read_single,
            )
            coordinator.read_batcher = reads
            nursery.start_soon(reads.run)
            deferred = {
                messages.CLIENT_GET: node.client_get_deferred,
                messages.REPLICA_PUT: node.replica_put_deferred,
                messages.CLIENT_PUT: node.client_put_deferred,
                messages.CLIENT_DELETE: node.client_delete_deferred,
            }
            serve = functools.partial(
                server.serve, inline_handlers=inline, deferred_handlers=deferred
            )
            node.address = await nursery.start(
                serve,
                transport,
                config.listen,
                node.handle,
            )
            await cluster.start(nursery, node.address)  # advertises the bound port
            log.info("node %s (actor %s) listening on %s", config.node_id, actor_id, node.address)
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()


def run_node_forever(config: NodeConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (the CLI's `serve`).

    `on_ready(address)` is called once the node listens (the CLI prints it; tests read it).
    """
    trio.run(_serve_until_signal, config, on_ready)


def freeze_startup_heap() -> None:
    """Move what a started node process holds (modules, classes, configuration: ~33k objects)
    out of the cyclic collector's reach, after one collection of start-up garbage. A full
    collection then walks only what the node allocated since: ~10 ms of CPU less per pass, a
    pause that stalled every request in flight. Only for processes the node owns (`serve`): an
    embedding program's heap is its own business."""
    gc.collect()
    gc.freeze()


async def _serve_until_signal(config: NodeConfig, on_ready: Callable[[str], None] | None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_node(config) as node:
            freeze_startup_heap()
            if on_ready is not None:
                on_ready(node.address)
            async for signum in signals:
                log.info("node %s: signal %d, stopping", node.node_id, signum)
                break
