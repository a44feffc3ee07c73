"""Anti-entropy exchange benchmark: two replicas of one partition holding 100,000 keys, 100 of
which differ, exchanged through the real protocol (every request and reply through the wire
codec, the remote side's handlers called in-process), on every built backend, beside the outside
baseline of a full transfer (every (key, set) shipped in SETS_PUT frames and merged).

Reported per run: time (pytest-benchmark), `bytes_on_wire` (requests and replies, as frames),
`full_transfer_bytes` and their ratio `bytes_vs_full` (target ≤ 0.05), `keys_repaired` (100).
The stores are dicts behind the Engine protocol: this measures the exchange and its codec, not
storage. Run: `.venv/bin/python -m pytest benches/bench_aae.py --benchmark-columns=median -q -s`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
import trio
from pytest_benchmark.fixture import BenchmarkFixture

from dynacore import _backend, objects
from dynacore.cluster import antientropy, hints
from dynacore.cluster.antientropy import FieldsRemote, Replica, Trees, direct_send, exchange
from dynacore.cluster.hints import SETS_PUT, SETS_PUT_MAX_PAIRS
from dynacore.limits import MIB
from dynacore.membership import Membership
from dynacore.storage import EngineStats, Update

KEYS = 100_000
DIFFERING = 100
FRAME_BYTES = 4 * MIB
VIEW = Membership.static([("a", "127.0.0.1:1")], partitions=1, n=1)  # one partition, one tree
TID = (0, 1)
FULL_TRANSFER = "full-transfer (outside: every key shipped, no trees)"


class DictEngine:
    """The Engine protocol over dicts: writes apply at once (no durability, no group commit)."""

    def __init__(self) -> None:
        self.dbs: dict[str, dict[bytes, bytes]] = {"data": {}, "hints": {}, "meta": {}}
        self.stats = EngineStats()

    def get(self, db: str, key: bytes) -> bytes | None:
        return self.dbs[db].get(key)

    def scan(
        self, db: str, start: bytes = b"", end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        table = self.dbs[db]
        keys = sorted(k for k in table if k >= start and (end is None or k < end))
        return [(k, table[k]) for k in keys[:limit]]

    def count(self, db: str) -> int:
        return len(self.dbs[db])

    async def update(self, db: str, key: bytes, fn: Update) -> bytes | None:
        return (await self.update_many(db, [(key, fn)]))[0]

    async def update_many(self, db: str, ops: Sequence[tuple[bytes, Update]]) -> list[bytes | None]:
        table = self.dbs[db]
        out: list[bytes | None] = []
        for key, fn in ops:
            new = fn(table.get(key))
            if new is None:
                table.pop(key, None)
            else:
                table[key] = new
            out.append(new)
        await trio.lowlevel.checkpoint()
        return out

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@dataclass
class Side:
    store: antientropy.ObservedEngine
    replica: Replica


@pytest.fixture
def use_backend(backend: _backend.Backend) -> Iterator[str]:
    """The self-healing modules on `backend`'s merkle, wire and versions."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(antientropy, "merkle", backend.merkle)
        patch.setattr(antientropy, "wire", backend.wire)
        patch.setattr(objects, "merkle", backend.merkle)
        patch.setattr(hints, "versions", backend.versions)
        yield backend.name


def value_set(i: int, salt: str, versions: object) -> bytes:
    envelope = objects.encode_envelope(b"value-%d-%s" % (i, salt.encode()), timestamp_ms=1)
    return versions.update(versions.empty(), versions.vv_empty(), envelope, "a")  # type: ignore[attr-defined, no-any-return]


def key(i: int) -> bytes:
    return objects.object_key("", b"user%010d" % i)


def make_side(pairs: dict[bytes, bytes]) -> Side:
    engine = DictEngine()
    engine.dbs["data"] = dict(pairs)
    store = antientropy.ObservedEngine(engine)
    trees = Trees(store, lambda: VIEW)
    store.observers.append(trees.mark)
    trio.run(trees.build)
    return Side(store, Replica(store, trees, FRAME_BYTES - 16 * 1024))


def full_transfer_bytes(pairs: dict[bytes, bytes]) -> int:
    items = sorted(pairs.items())
    total = 0
    for start in range(0, len(items), SETS_PUT_MAX_PAIRS):
        batch = [[k, s] for k, s in items[start : start + SETS_PUT_MAX_PAIRS]]
        total += len(antientropy.wire.encode_frame(SETS_PUT, 0, [batch]))
    return total


def test_exchange_100k_keys_100_differ(benchmark: BenchmarkFixture, use_backend: str) -> None:
    benchmark.group = "aae.exchange_100k_diff_100"
    benchmark.extra_info["impl"] = use_backend
    versions = hints.versions
    pairs = {key(i): value_set(i, "base", versions) for i in range(KEYS)}
    a, b = make_side(pairs), make_side(pairs)
    rng = random.Random(42)
    results: list[antientropy.ExchangeResult] = []
    rounds = iter(range(1_000_000))

    def diverge() -> None:
        salt = f"round-{next(rounds)}"
        changes = {key(i): value_set(i, salt, versions) for i in rng.sample(range(KEYS), DIFFERING)}

        async def write() -> None:
            await b.store.update_many("data", [(k, _const(s)) for k, s in changes.items()])

        trio.run(write)

    def run() -> None:
        remote = FieldsRemote(
            direct_send(b.replica.handlers(), FRAME_BYTES), (16, 3), FRAME_BYTES // 2
        )
        results.append(trio.run(exchange, a.replica, remote, TID))

    benchmark.pedantic(run, setup=diverge, rounds=5, iterations=1)
    assert all(r.keys_repaired == DIFFERING for r in results)
    assert a.store.inner.dbs["data"] == b.store.inner.dbs["data"]  # type: ignore[attr-defined]
    full_bytes = full_transfer_bytes(pairs)
    sent = max(r.bytes_sent for r in results)
    benchmark.extra_info.update(
        keys=KEYS,
        differing=DIFFERING,
        keys_repaired=DIFFERING,
        bytes_on_wire=sent,
        full_transfer_bytes=full_bytes,
        bytes_vs_full=round(sent / full_bytes, 4),
        segments_differing=results[-1].segments_differing,
        keys_compared=results[-1].keys_differing,
    )
    print(f"\n[{use_backend}] {benchmark.extra_info}")
    assert sent <= 0.05 * full_bytes


def test_full_transfer_baseline(benchmark: BenchmarkFixture) -> None:
    """Ship all 100,000 (key, set) pairs in SETS_PUT frames and merge them into the replica."""
    benchmark.group = "aae.exchange_100k_diff_100"
    benchmark.extra_info["impl"] = FULL_TRANSFER
    versions = hints.versions
    pairs = {key(i): value_set(i, "base", versions) for i in range(KEYS)}
    b = make_side(pairs)
    items = sorted(pairs.items())
    send = direct_send(b.replica.handlers(), FRAME_BYTES)

    async def ship() -> None:
        for start in range(0, len(items), SETS_PUT_MAX_PAIRS):
            batch: list[object] = [[k, s] for k, s in items[start : start + SETS_PUT_MAX_PAIRS]]
            await send(SETS_PUT, [batch])  # type: ignore[list-item]

    benchmark.pedantic(lambda: trio.run(ship), rounds=3, iterations=1)
    benchmark.extra_info["bytes_on_wire"] = full_transfer_bytes(pairs)


def _const(value: bytes) -> Update:
    return lambda _old: value
