"""The load driver process: one client of one target, `concurrency` requests in flight, replaying
the plans of `ycsb` and recording every latency. Run by `targets.DriverProcess` as
`python -m <package>.driver --target ... --address ...`; it talks JSON lines over stdio: one
command per stdin line, one JSON reply per stdout line (logs go to stderr). EOF on stdin quits.

The same `worker` coroutine drives every target; only the concurrency runtime differs:
- dynacore: `dynacore.AsyncClient` under trio (n=3, r, w as given), one trio nursery of workers;
- redis: redis-py's asyncio client (one connection per worker, hiredis when installed) under
  asyncio, one TaskGroup of workers;
- redis-threads: redis-py's blocking client from trio through a thread per worker.

Commands (a run may name `cpu_pids`: server processes whose CPU per op it reports):
  {"cmd": "prepare", "workload": "B", "records": N, "seed": S}   (build the plan ahead)
  {"cmd": "load", "records": N}
  {"cmd": "run", "workload": "B", "records": N, "warmup_s": 1.0, "duration_s": 10.0}
  {"cmd": "quit"}
Replies: {"ok": true, "summary": {...}} ({"ok": true} to prepare) or {"ok": false, "error": "..."};
the first line, once connected: {"ok": true, "ready": true, "info": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil
import trio

from . import ycsb

TARGETS = ("dynacore", "redis", "redis-threads")
MAX_ERRORS = 10_000  # a run with more failed ops than this is aborted: the target is broken
MAX_DURATION_S = 600.0


class Store(Protocol):
    """One target, seen by a worker: a read (True when a value was found) and an update."""

    async def read(self, key: bytes) -> bool: ...

    async def update(self, key: bytes, value: bytes) -> None: ...


class TooManyErrors(RuntimeError):
    pass


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds (user + system, all threads) used so far by this process and by servers."""

    driver_s: float
    servers_s: float

    @staticmethod
    def take(server_pids: list[int]) -> CpuSnapshot:
        own = os.times()
        servers = 0.0
        for pid in server_pids:
            try:
                cpu = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            servers += cpu.user + cpu.system
        return CpuSnapshot(own.user + own.system, servers)


@dataclass
class RunState:
    """Shared by the workers of one run (one event loop thread: no locks needed)."""

    plan: ycsb.Plan
    value: bytes
    record_from_ns: int  # ops that start before this are warm-up: run, not recorded
    stop_at_ns: int  # no op starts at or after this
    cpu_pids: list[int] = field(default_factory=list)  # server processes whose CPU is counted
    cpu_start: CpuSnapshot | None = None
    next_op: int = 0
    latencies_ns: list[int] = field(default_factory=list)  # reads
    update_latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    misses: int = 0
    last_done_ns: int = 0

    def take(self) -> tuple[bool, int] | None:
        """The next (is_read, record index), or None when the run is over."""
        now_ns = time.perf_counter_ns()
        if now_ns >= self.stop_at_ns:
            return None
        if self.cpu_start is None and now_ns >= self.record_from_ns:
            self.cpu_start = CpuSnapshot.take(self.cpu_pids)
        position = self.next_op
        if position >= len(self.plan.indexes):
            if not self.plan.cyclic:
                return None
            position %= len(self.plan.indexes)
        self.next_op += 1
        return self.plan.reads[position], self.plan.indexes[position]


async def worker(store: Store, state: RunState) -> None:
    """Run operations until the plan or the time is over; record each latency after warm-up."""
    while (op := state.take()) is not None:
        is_read, index = op
        key = ycsb.key_of(index)
        started_ns = time.perf_counter_ns()
        try:
            if is_read:
                if not await store.read(key):
                    state.misses += 1
            else:
                await store.update(key, state.value)
        except Exception as exc:  # counted and reported: a benchmark must finish to say so
            state.errors[type(exc).__name__] += 1
            if sum(state.errors.values()) > MAX_ERRORS:
                raise TooManyErrors(f"more than {MAX_ERRORS} errors: {dict(state.errors)}") from exc
            continue
        done_ns = time.perf_counter_ns()
        if started_ns >= state.record_from_ns:
            (state.latencies_ns if is_read else state.update_latencies_ns).append(
                done_ns - started_ns
            )
            state.last_done_ns = done_ns


class PlanCache:
    """The workload plans this driver built, by (workload, records, seed): a plan is built once
    (on `prepare`, before any measurement) and replayed by every later run."""

    def __init__(self) -> None:
        self.plans: dict[tuple[str, int, int], ycsb.Plan] = {}

    def get(self, command: dict[str, Any]) -> ycsb.Plan:
        mix = ycsb.workload(str(command["workload"]))
        key = (mix.name, int(command["records"]), int(command["seed"]))
        if key not in self.plans:
            self.plans[key] = ycsb.workload_plan(mix, key[1], key[2])
        return self.plans[key]


def new_state(command: dict[str, Any], value: bytes, plans: PlanCache) -> RunState:
    """The state of the run a command asks for (load or run)."""
    records = int(command["records"])
    cpu_pids = [int(pid) for pid in command.get("cpu_pids", [])]
    now_ns = time.perf_counter_ns()
    if command["cmd"] == "load":
        stop_at_ns = now_ns + int(MAX_DURATION_S * 1e9)
        return RunState(ycsb.load_plan(records), value, now_ns, stop_at_ns, cpu_pids)
    warmup_s = float(command["warmup_s"])
    duration_s = float(command["duration_s"])
    if not (0.0 <= warmup_s and 0.0 < duration_s and warmup_s + duration_s <= MAX_DURATION_S):
        raise ValueError(f"bad warmup_s/duration_s: {warmup_s}/{duration_s}")
    plan = plans.get(command)
    now_ns = time.perf_counter_ns()  # the plan may have taken a moment to build
    record_from_ns = now_ns + int(warmup_s * 1e9)
    stop_at_ns = record_from_ns + int(duration_s * 1e9)
    return RunState(plan, value, record_from_ns, stop_at_ns, cpu_pids)


def finish(state: RunState) -> ycsb.Summary:
    """The run's summary; CPU per op counts from the first recorded op to the end of the run
    (the last in-flight ops finish just after the window: a slight overcount)."""
    cpu_end = CpuSnapshot.take(state.cpu_pids)
    duration_s = max(state.last_done_ns - state.record_from_ns, 1) / 1e9
    reads, updates = state.latencies_ns, state.update_latencies_ns
    summary = ycsb.summarize(
        reads + updates, duration_s, dict(state.errors), state.misses, reads, updates
    )
    start = state.cpu_start
    if start is None or not summary.ops:
        return summary
    return dataclasses.replace(
        summary,
        driver_cpu_us_per_op=round((cpu_end.driver_s - start.driver_s) / summary.ops * 1e6, 1),
        server_cpu_us_per_op=round((cpu_end.servers_s - start.servers_s) / summary.ops * 1e6, 1),
    )


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# -- stores ---------------------------------------------------------------------------------------


class DynacoreStore:
    """dynacore.AsyncClient at fixed r and w. An update writes with the context of the latest
    read or write of that key that this client saw (as an application that keeps its contexts
    would), so that updates replace the value instead of piling up siblings; concurrent updates
    of one key may still make siblings, which the next update with a newer context collapses."""

    def __init__(self, client: Any, r: int, w: int) -> None:
        self.client = client
        self.r = r
        self.w = w
        self.contexts: dict[bytes, bytes] = {}

    async def read(self, key: bytes) -> bool:
        result = await self.client.get(key, r=self.r)
        self.contexts[key] = result.context
        return bool(result.values)

    async def update(self, key: bytes, value: bytes) -> None:
        context = await self.client.put(key, value, context=self.contexts.get(key), w=self.w)
        self.contexts[key] = context


class RedisAsyncStore:
    """redis-py's asyncio client: GET and SET on the primary."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def read(self, key: bytes) -> bool:
        return await self.client.get(key) is not None

    async def update(self, key: bytes, value: bytes) -> None:
        await self.client.set(key, value)


class RedisThreadStore:
    """redis-py's blocking client, each call in a trio worker thread."""

    def __init__(self, client: Any, limiter: trio.CapacityLimiter) -> None:
        self.client = client
        self.limiter = limiter

    async def read(self, key: bytes) -> bool:
        value = await trio.to_thread.run_sync(self.client.get, key, limiter=self.limiter)
        return value is not None

    async def update(self, key: bytes, value: bytes) -> None:
        await trio.to_thread.run_sync(self.client.set, key, value, limiter=self.limiter)


# -- the command loop, once per runtime ---------------------------------------------------------

Spawn = Callable[[Store, RunState, int], Awaitable[None]]


async def serve_commands(
    store: Store,
    spawn: Spawn,
    read_line: Callable[[], Awaitable[str]],
    args: argparse.Namespace,
    info: dict[str, Any],
) -> None:
    """Answer commands until quit or EOF; every run is `args.concurrency` workers."""
    value = ycsb.value_of(args.seed, args.value_size_bytes)
    plans = PlanCache()
    reply({"ok": True, "ready": True, "info": info})
    while line := await read_line():
        command = json.loads(line)
        if command.get("cmd") == "quit":
            break
        reply(await execute(store, spawn, command, value, plans, args.concurrency))


async def execute(
    store: Store,
    spawn: Spawn,
    command: dict[str, Any],
    value: bytes,
    plans: PlanCache,
    concurrency: int,
) -> dict[str, Any]:
    """Run one prepare, load or workload command; the reply to send."""
    try:
        if command["cmd"] == "prepare":
            plans.get(command)
            return {"ok": True}
        state = new_state(command, value, plans)
    except (ValueError, KeyError, TypeError) as exc:
        return {"ok": False, "error": f"bad command {command!r}: {type(exc).__name__}: {exc}"}
    failure = ""
    try:
        await spawn(store, state, concurrency)
    except* TooManyErrors as group:
        failure = str(group.exceptions[0])
    if failure:
        return {"ok": False, "error": failure}
    return {"ok": True, "summary": finish(state).to_json()}


async def trio_spawn(store: Store, state: RunState, concurrency: int) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, store, state)


async def asyncio_spawn(store: Store, state: RunState, concurrency: int) -> None:
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker(store, state))


async def trio_read_line() -> str:
    return await trio.to_thread.run_sync(sys.stdin.readline)


async def asyncio_read_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def main_dynacore(args: argparse.Namespace) -> None:
    from dynacore import AsyncClient, backend

    async with AsyncClient(args.address, secret=args.secret) as client:
        info = {"backend": backend, "pid": os.getpid(), "r": args.r, "w": args.w}
        store = DynacoreStore(client, args.r, args.w)
        await serve_commands(store, trio_spawn, trio_read_line, args, info)


def redis_info(pid: int) -> dict[str, Any]:
    import redis
    import redis.utils

    return {"redis_py": redis.__version__, "hiredis": redis.utils.HIREDIS_AVAILABLE, "pid": pid}


async def main_redis_asyncio(args: argparse.Namespace) -> None:
    import redis.asyncio

    host, port = args.address[0].rsplit(":", 1)
    pool = redis.asyncio.BlockingConnectionPool(
        host=host, port=int(port), max_connections=args.concurrency, timeout=10
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    try:
        await client.ping()
        info = {**redis_info(os.getpid()), "client": "redis.asyncio"}
        await serve_commands(RedisAsyncStore(client), asyncio_spawn, asyncio_read_line, args, info)
    finally:
        await client.aclose()
        await pool.aclose()


async def main_redis_threads(args: argparse.Namespace) -> None:
    import redis

    host, port = args.address[0].rsplit(":", 1)
    pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
        host=host, port=int(port), max_connections=args.concurrency, timeout=10
    )
    client = redis.Redis(connection_pool=pool)
    try:
        client.ping()
        info = {**redis_info(os.getpid()), "client": "redis (threads)"}
        store = RedisThreadStore(client, trio.CapacityLimiter(args.concurrency))
        await serve_commands(store, trio_spawn, trio_read_line, args, info)
    finally:
        client.close()
        pool.disconnect()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--address", action="append", required=True, help="host:port (repeat)")
    parser.add_argument("--concurrency", type=int, default=ycsb.DEFAULT_CONCURRENCY)
    parser.add_argument("--value-size-bytes", type=int, default=ycsb.DEFAULT_VALUE_SIZE_BYTES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--r", type=int, default=2)
    parser.add_argument("--w", type=int, default=2)
    parser.add_argument("--secret", default=os.environ.get("DYNACORE_CLUSTER_SECRET", ""))
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 4096:
        parser.error("--concurrency must be in [1, 4096]")
    if not 0 <= args.value_size_bytes <= 1 << 20:
        parser.error("--value-size-bytes must be in [0, 1 MiB]")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.target == "dynacore":
        trio.run(main_dynacore, args)
    elif args.target == "redis-threads":
        trio.run(main_redis_threads, args)
    else:
        asyncio.run(main_redis_asyncio(args))


if __name__ == "__main__":
    main()
