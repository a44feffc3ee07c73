"""The clients: `AsyncClient` (trio, `async with`) and `Client` (sync, one background thread with
its own trio.run), same methods. A client learns the ring from a seed, routes each request
straight to the key's first healthy preference-list node, moves on when one is down, and
refreshes the ring on errors. Also the resolvers `resolve_lww` and `resolve_with`.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import trio

from dynacore import messages, objects
from dynacore.config import QuorumSpec, check_address, check_quorum_spec
from dynacore.coordinator import UNREACHABLE, PeerHealth, exception_leaves
from dynacore.errors import (
    ConfigError,
    DynacoreError,
    ProtocolError,
    RequestTimeout,
    Unavailable,
)
from dynacore.limits import Limits
from dynacore.membership import Membership
from dynacore.messages import NodeStatus, expect
from dynacore.net.rpc import open_rpc_client
from dynacore.net.transport import TcpTransport, Transport

log = logging.getLogger(__name__)

KeyLike = bytes | str
Items = Mapping[bytes, KeyLike] | Mapping[str, KeyLike] | Iterable[tuple[KeyLike, KeyLike]]
T = TypeVar("T")
MAX_CONCURRENT_BATCH = 64  # requests in flight for one get_many / put_many
CLIENT_TIMEOUT_FACTOR = 3.0  # a client waits for the node's own timeout, plus a forward hop
MAX_TTL_S = 10 * 365 * 24 * 3600.0


@dataclass(frozen=True)
class GetResult:
    """A read: the visible sibling values (empty when absent, deleted or expired), the opaque
    context to write back with, and how many siblings the merged set holds (tombstones
    included). `timestamps_ms[i]` is the write time of `values[i]`."""

    values: list[bytes]
    context: bytes
    siblings: int
    timestamps_ms: list[int]

    @property
    def value(self) -> bytes | None:
        """The single value, None when absent; ValueError when there are siblings."""
        if len(self.values) > 1:
            raise ValueError(f"{len(self.values)} siblings: resolve them first (resolve_lww)")
        return self.values[0] if self.values else None


def resolve_lww(result: GetResult) -> bytes | None:
    """The newest visible value (ties: the larger bytes); None when there is none."""
    if not result.values:
        return None
    pairs = zip(result.timestamps_ms, result.values, strict=True)
    return max(pairs)[1]


def resolve_with(result: GetResult, merge: Callable[[list[bytes]], bytes]) -> bytes | None:
    """`merge(values)` of the visible siblings (a single value is returned as is); None when
    there is none. Write it back with `result.context` to replace the siblings."""
    if not result.values:
        return None
    if len(result.values) == 1:
        return result.values[0]
    merged = merge(list(result.values))
    return objects.as_bytes(merged, "merge result")


def _decode_get(fields: list[Any]) -> GetResult:
    context, envelopes, siblings = expect(fields, (bytes, list, int), "CLIENT_GET reply")
    if not all(isinstance(raw, bytes) for raw in envelopes):
        raise ProtocolError("CLIENT_GET reply: envelopes must be bytes")
    decoded = [objects.decode_envelope(raw) for raw in envelopes]
    return GetResult(
        values=[e.data for e in decoded],
        context=context,
        siblings=siblings,
        timestamps_ms=[e.timestamp_ms for e in decoded],
    )


def _ttl_ms(ttl: float | None) -> int:
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_S:
        raise ConfigError(f"ttl must be a number of seconds in (0, {MAX_TTL_S:.0f}], got {ttl!r}")
    return max(1, round(ttl * 1000))


def _spec(spec: QuorumSpec | None) -> QuorumSpec | None:
    return None if spec is None else check_quorum_spec(spec)


class AsyncClient:
    """A trio client of a dynacore cluster; use it as `async with AsyncClient(seeds) as c:`."""

    def __init__(
        self,
        seeds: Sequence[str] | str,
        *,
        secret: str = "",
        limits: Limits | None = None,
        timeout_s: float | None = None,
        namespace: str = "",
        transport: Transport | None = None,
        rng: random.Random | None = None,
        client_id: str = "client",
    ) -> None:
        seed_list = [seeds] if isinstance(seeds, str) else list(seeds)
        if not seed_list:
            raise ConfigError("a client needs at least one seed address")
        self._seeds = [check_address(seed) for seed in seed_list]
        self._secret = secret
        self._limits = limits if limits is not None else Limits()
        self._timeout_s = (
            timeout_s
            if timeout_s is not None
            else self._limits.request_timeout_s * CLIENT_TIMEOUT_FACTOR
        )
        if not 0 < self._timeout_s <= 3600:
            raise ConfigError(f"timeout_s must be in (0, 3600], got {self._timeout_s}")
        self._namespace = namespace
        self._transport = transport if transport is not None else TcpTransport(self._limits)
        self._rng = rng if rng is not None else random.Random()
        self._client_id = client_id
        self._health = PeerHealth()
        self._stack: AsyncExitStack | None = None
        self._rpc: Any = None
        self._membership: Membership | None = None

    async def __aenter__(self) -> AsyncClient:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._rpc = await stack.enter_async_context(
                open_rpc_client(
                    self._transport,
                    secret=self._secret.encode(),
                    client_id=self._client_id,
                    limits=self._limits,
                    rng=self._rng,
                )
            )
            await self.refresh_ring()
        except BaseException as exc:
            await _exit_unwrapped(stack, exc)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._rpc = None
        if stack is not None:
            await _exit_unwrapped(stack, exc)

    # -- the ring ----------------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        if self._membership is None:
            raise Unavailable("the client has not learned the ring (use `async with`)")
        return self._membership

    async def refresh_ring(self) -> Membership:
        """Ask the seeds (then every known node) for the ring; Unavailable if none answers."""
        known = list(self._membership.addresses.values()) if self._membership else []
        candidates = list(dict.fromkeys(self._seeds + known))
        for address in candidates:
            try:
                reply = await self._call(address, messages.RING_GET, [])
            except (*UNREACHABLE, Unavailable):  # Unavailable: a node that has not joined yet
                continue
            self._membership = Membership.from_fields(reply)
            return self._membership
        raise Unavailable(f"no seed or known node answered: {candidates}")

    async def ring(self) -> Membership:
        """The cluster view, freshly fetched."""
        return await self.refresh_ring()

    async def status(self, address: str | None = None) -> NodeStatus:
        """One node's STATUS (default: the first seed that answers)."""
        candidates = [check_address(address)] if address is not None else self._seeds
        for candidate in candidates:
            try:
                return NodeStatus.from_fields(await self._call(candidate, messages.STATUS, []))
            except UNREACHABLE:
                if address is not None:
                    raise
        raise Unavailable(f"no seed answered: {candidates}")

    # -- single-key operations ---------------------------------------------------------------------

    async def get(self, key: KeyLike, r: QuorumSpec | None = None) -> GetResult:
        """Read a key: every visible sibling value and the context to write back with."""
        raw_key = self._key(key)
        fields = [self._namespace, raw_key, _spec(r)]
        reply = await self._route(raw_key, messages.CLIENT_GET, fields, retry_on_timeout=True)
        return _decode_get(reply)

    async def put(
        self,
        key: KeyLike,
        value: KeyLike,
        context: bytes | None = None,
        w: QuorumSpec | None = None,
        ttl: float | None = None,
    ) -> bytes:
        """Write a value with the context of the read it replaces (None: a blind write that
        becomes a sibling of whatever is there); returns the context to use next."""
        raw_key, raw_value = self._key(key), objects.as_bytes(value, "value")
        objects.check_sizes(raw_key, raw_value, self._limits)
        fields = [
            self._namespace,
            raw_key,
            raw_value,
            self._context(context),
            _spec(w),
            _ttl_ms(ttl),
            False,
        ]
        reply = await self._route(raw_key, messages.CLIENT_PUT, fields, retry_on_timeout=False)
        return _single_bytes(reply)

    async def delete(
        self, key: KeyLike, context: bytes | None = None, w: QuorumSpec | None = None
    ) -> bytes:
        """Delete (a tombstone written with the context); returns the tombstone's context."""
        raw_key = self._key(key)
        fields = [self._namespace, raw_key, self._context(context), _spec(w), False]
        reply = await self._route(raw_key, messages.CLIENT_DELETE, fields, retry_on_timeout=False)
        return _single_bytes(reply)

    # -- batches -----------------------------------------------------------------------------------

    async def get_many(
        self, keys: Iterable[KeyLike], r: QuorumSpec | None = None
    ) -> list[GetResult]:
        """Concurrent gets; results in the order of `keys`. The first error is raised."""
        key_list = list(keys)
        return await self._gather([functools.partial(self.get, key, r) for key in key_list])

    async def put_many(
        self,
        items: Items,
        w: QuorumSpec | None = None,
        ttl: float | None = None,
    ) -> list[bytes]:
        """Concurrent blind puts; contexts in the order of `items`. The first error is raised."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        calls = [functools.partial(self.put, k, v, None, w, ttl) for k, v in pairs]
        return await self._gather(calls)

    async def _gather(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        results: list[T | None] = [None] * len(calls)
        limiter = trio.CapacityLimiter(MAX_CONCURRENT_BATCH)

        async def run(index: int) -> None:
            async with limiter:
                results[index] = await calls[index]()

        async with trio.open_nursery() as nursery:
            for index in range(len(calls)):
                nursery.start_soon(run, index)
        return results  # type: ignore[return-value]  # every slot was filled

    # -- routing -----------------------------------------------------------------------------------

    def _key(self, key: object) -> bytes:
        raw = objects.as_bytes(key, "key")
        objects.check_sizes(raw, None, self._limits)
        return raw

    @staticmethod
    def _context(context: bytes | None) -> bytes:
        if context is None:
            return b""
        if not isinstance(context, bytes):
            raise TypeError(f"context must be bytes from a get, got {type(context).__name__}")
        return context

    async def _route(
        self, key: bytes, msg_type: int, fields: list[Any], *, retry_on_timeout: bool
    ) -> list[Any]:
        """Send to the key's first healthy preference-list node, then the next ones (the
        extended list only once every preference-list node failed)."""
        view = self.membership
        stored_key = objects.object_key(self._namespace, key)
        n = view.n_for(self._namespace)
        order = self._health.order(view.preference_list(stored_key, n))
        tried = list(order)

        def candidates() -> Iterator[str]:
            yield from order
            extended = self._health.order(view.extended_list(stored_key, n))  # rarely needed
            tried.extend(extended)
            yield from extended

        # The first failure whose outcome is unknown (the node may have applied the request
        # before the connection dropped): once there is one, a later definite refusal must not
        # be reported as the request's fate, or a stored write would be reported as refused.
        ambiguous: BaseException | None = None
        for node in candidates():
            try:
                reply = await self._try_node(view, node, msg_type, fields, retry_on_timeout)
            except UNREACHABLE:
                raise
            except DynacoreError as exc:
                if ambiguous is not None:
                    raise ambiguous from exc
                raise
            if isinstance(reply, BaseException):
                ambiguous = ambiguous or reply
                continue
            return reply
        try:
            await self.refresh_ring()
        except Unavailable:
            pass
        raise Unavailable(f"no node could serve the request (tried {tried})")

    async def _try_node(
        self,
        view: Membership,
        node: str,
        msg_type: int,
        fields: list[Any],
        retry_on_timeout: bool,
    ) -> list[Any] | BaseException:
        """One node's reply; the error (marked down) when it could not answer and another may."""
        try:
            reply = await self._call(view.address_of(node), msg_type, fields)
        except RequestTimeout as exc:
            self._health.mark_failed(node)
            if not retry_on_timeout:
                raise
            return exc
        except UNREACHABLE as exc:
            self._health.mark_failed(node)
            return exc
        self._health.mark_ok(node)
        return reply

    async def _call(self, address: str, msg_type: int, fields: list[Any]) -> list[Any]:
        if self._rpc is None:
            raise Unavailable("the client is closed (use `async with`)")
        reply: list[Any] = await self._rpc.call(address, msg_type, fields, self._timeout_s)
        return reply


async def _exit_unwrapped(stack: AsyncExitStack, exc: BaseException | None) -> None:
    """Close `stack`; when its nursery merely wraps `exc` in a group, let `exc` itself escape
    (the caller re-raises it) so that users see the error they caused, not an ExceptionGroup."""
    try:
        await stack.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
    except BaseExceptionGroup as group:
        if exc is None or exception_leaves(group) != [exc]:
            raise


def _single_bytes(reply: list[Any]) -> bytes:
    (context,) = expect(reply, (bytes,), "put reply")
    assert isinstance(context, bytes)
    return context


class Client:
    """The synchronous client: the same methods as AsyncClient, run by one background thread
    with its own trio.run. Use it as a context manager, or call close()."""

    def __init__(self, seeds: Sequence[str] | str, **options: Any) -> None:
        self._async = AsyncClient(seeds, **options)  # validates the options in this thread
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dynacore-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the constructor, or logged after it
            if self._ready.is_set():
                log.error("dynacore client thread failed: %r", exc)
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with self._async:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._token is None or not self._thread.is_alive():
            raise Unavailable("the client is closed")
        return trio.from_thread.run(functools.partial(fn, *args), trio_token=self._token)

    def close(self) -> None:
        """Stop the background thread and close the connections (idempotent)."""
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()
        self._token = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def membership(self) -> Membership:
        return self._async.membership

    def get(self, key: KeyLike, r: QuorumSpec | None = None) -> GetResult:
        return self._call(self._async.get, key, r)

    def put(
        self,
        key: KeyLike,
        value: KeyLike,
        context: bytes | None = None,
        w: QuorumSpec | None = None,
        ttl: float | None = None,
    ) -> bytes:
        return self._call(self._async.put, key, value, context, w, ttl)

    def delete(
        self, key: KeyLike, context: bytes | None = None, w: QuorumSpec | None = None
    ) -> bytes:
        return self._call(self._async.delete, key, context, w)

    def get_many(self, keys: Iterable[KeyLike], r: QuorumSpec | None = None) -> list[GetResult]:
        return self._call(self._async.get_many, list(keys), r)

    def put_many(
        self,
        items: Items,
        w: QuorumSpec | None = None,
        ttl: float | None = None,
    ) -> list[bytes]:
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        return self._call(self._async.put_many, pairs, w, ttl)

    def ring(self) -> Membership:
        return self._call(self._async.ring)

    def status(self, address: str | None = None) -> NodeStatus:
        return self._call(self._async.status, address)
