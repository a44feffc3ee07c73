"""One standalone Cache (sync API): the verbs, TTLs on a hand-moved clock, counters, memoize,
the MutableMapping contract, bad input, persistence, and a clean close."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from dynacore import Cache
from dynacore.cacheread import REMOTE
from dynacore.errors import (
    CacheClosed,
    ConfigError,
    DynacoreError,
    KeyTooLarge,
    SerializationError,
    StorageClosed,
    ValueTooLarge,
    WrongType,
)
from dynacore.limits import Limits
from dynacore.localcluster import free_ports
from dynacore.serializers import JsonSerializer, PickleSerializer

from .conftest import ManualClock


def test_values_come_back_with_their_type(cache: Cache) -> None:
    values: dict[str, Any] = {
        "bytes": b"\x00\xff",
        "str": "héllo",
        "int": -42,
        "float": 2.5,
        "none": None,
        "bool": True,
        "list": [1, "a", [b"x"]],
        "dict": {"k": {"n": 1}},
    }
    for key, value in values.items():
        cache.set(key, value)
    for key, value in values.items():
        got = cache.get(key, default="absent")
        assert got == value
        assert type(got) is type(value)
    assert cache.get("nope") is None
    assert cache.get("nope", default=7) == 7


def test_str_and_bytes_keys_name_the_same_entry(cache: Cache) -> None:
    cache.set("ключ", b"v")
    assert cache.get("ключ".encode()) == b"v"
    assert cache.get(bytearray("ключ".encode())) == b"v"


def test_set_overwrites_without_piling_up_siblings(cache: Cache) -> None:
    for i in range(300):  # more than siblings_max: a blind write would have failed long ago
        cache.set("k", i)
    assert cache.get("k") == 299
    versions = cache.get_versions("k")
    assert versions.values == [299]
    assert versions.siblings == 1


def test_ttl_expires_on_the_clock(cache: Cache, clock: ManualClock) -> None:
    cache.set("k", "v", ttl=2)
    clock.advance(1999)
    assert cache.get("k") == "v"
    clock.advance(1)
    assert cache.get("k") is None
    assert "k" not in cache
    assert len(cache) == 0


def test_touch_gives_a_new_ttl(cache: Cache, clock: ManualClock) -> None:
    cache.set("k", "v", ttl=1)
    assert cache.touch("k", 10)
    clock.advance(5000)
    assert cache.get("k") == "v"
    assert cache.touch("k", None)  # no expiry any more
    clock.advance(10**8)
    assert cache.get("k") == "v"
    assert not cache.touch("missing", 5)


def test_touch_keeps_a_counter_counting(cache: Cache, clock: ManualClock) -> None:
    cache.incr("c", 5)
    assert cache.touch("c", 1)
    assert cache.incr("c") == 6
    clock.advance(1000)
    assert cache.get("c") is None  # incr kept the ttl touch gave


def test_add_only_when_absent(cache: Cache, clock: ManualClock) -> None:
    assert cache.add("k", "first")
    assert not cache.add("k", "second")
    assert cache.get("k") == "first"
    cache.delete("k")
    assert cache.add("k", "third")  # a tombstone is no value
    cache.set("t", "x", ttl=1)
    clock.advance(1000)
    assert cache.add("t", "after expiry")
    assert cache.get("t") == "after expiry"


def test_delete_reports_whether_there_was_a_value(cache: Cache) -> None:
    cache.set("k", 1)
    assert cache.delete("k")
    assert not cache.delete("k")
    assert cache.get("k") is None


def test_counters(cache: Cache) -> None:
    assert cache.incr("hits") == 1
    assert cache.incr("hits", 10) == 11
    assert cache.decr("hits", 3) == 8
    assert cache.decr("hits") == 7
    assert cache.get("hits") == 7
    cache.set("hits", 100)  # a set of an int resets the counter
    assert cache.incr("hits") == 101
    cache["n"] = 5
    assert cache.incr("n", -10) == -5
    cache.delete("n")
    assert cache.incr("n") == 1


def test_incr_on_a_value_that_is_not_an_int_is_refused(cache: Cache) -> None:
    cache.set("s", "text")
    with pytest.raises(WrongType):
        cache.incr("s")
    assert cache.get("s") == "text"
    for bad in (True, 1.5, "1", 1 << 63):
        with pytest.raises(ConfigError):
            cache.incr("c", bad)  # type: ignore[arg-type]


def test_get_many_and_set_many(cache: Cache) -> None:
    cache.set_many({"a": 1, "b": "two", b"c": b"3"})
    cache.set_many([("d", [4])], ttl=100)
    assert cache.get_many(["a", "b", b"c", "d", "missing"]) == {
        "a": 1,
        "b": "two",
        b"c": b"3",
        "d": [4],
    }


def test_clear_deletes_every_local_key(cache: Cache) -> None:
    cache.set_many({f"k{i}": i for i in range(2500)})  # more than one scan chunk
    assert len(cache) == 2500
    cache.clear()
    assert len(cache) == 0
    assert cache.get("k1") is None
    cache.set("after", 1)
    assert list(cache) == ["after"]


def test_memoize_caches_per_arguments_with_a_ttl(cache: Cache, clock: ManualClock) -> None:
    calls: list[tuple[int, str]] = []

    @cache.memoize(ttl=10)
    def slow(x: int, unit: str = "m") -> dict[str, Any]:
        calls.append((x, unit))
        return {"x": x * 2, "unit": unit}

    assert slow(2) == {"x": 4, "unit": "m"}
    assert slow(2) == {"x": 4, "unit": "m"}
    assert slow(2, unit="s") == {"x": 4, "unit": "s"}
    assert calls == [(2, "m"), (2, "s")]
    clock.advance(10_000)
    assert slow(2) == {"x": 4, "unit": "m"}
    assert calls == [(2, "m"), (2, "s"), (2, "m")]
    assert slow.__name__ == "slow"


def test_memoize_caches_none_results(cache: Cache) -> None:
    calls = []

    @cache.memoize()
    def nothing(x: int) -> None:
        calls.append(x)

    nothing(1)
    nothing(1)
    assert calls == [1]


def test_memoize_needs_serializable_arguments(cache: Cache) -> None:
    @cache.memoize(ttl=1)
    def f(x: object) -> int:
        return 1

    with pytest.raises(SerializationError):
        f(object())


def test_resolver_and_get_versions(clock: ManualClock) -> None:
    with Cache(clock=clock, resolver=lambda values: sorted(values)[0]) as c:
        c.set("k", "b")
        first = c.get_versions("k")
        clock.advance(1)
        c.set("k", "z", context=b"")  # a blind write beside the existing value: siblings
        clock.advance(1)
        c.set("k", "a", context=b"")
        versions = c.get_versions("k")
        assert versions.values == ["b", "z", "a"]  # oldest first
        assert versions.timestamps_ms == sorted(versions.timestamps_ms)
        assert c.get("k") == "a"  # the resolver's choice, not the newest... nor the oldest
        c.set("k", "merged", context=versions.context)
        assert c.get_versions("k").values == ["merged"]
        assert first.values == ["b"]


def test_default_resolution_is_newest_write_and_newest_delete(
    cache: Cache, clock: ManualClock
) -> None:
    cache.set("k", "old")
    clock.advance(5)
    cache.set("k", "new", context=b"")
    assert cache.get_versions("k").values == ["old", "new"]
    assert cache.get("k") == "new"
    ctx_before_delete = cache.get_versions("k").context
    clock.advance(5)
    cache.delete("k")
    clock.advance(5)
    cache.set("k", "concurrent", context=ctx_before_delete)
    assert cache.get("k") == "concurrent"  # newer than the tombstone


def test_mutable_mapping_contract(cache: Cache) -> None:
    assert isinstance(cache, MutableMapping)
    reference: dict[str, Any] = {}
    for mapping in (cache, reference):
        mapping["a"] = 1
        mapping["b"] = "two"
        mapping.update({"c": b"3"}, d=[4])
        assert mapping.setdefault("a", 99) == 1
        assert mapping.setdefault("e", 5) == 5
        assert mapping.pop("b") == "two"
        assert mapping.pop("b", "gone") == "gone"
        del mapping["e"]
    assert dict(cache) == reference
    assert cache == reference
    assert len(cache) == len(reference) == 3
    assert sorted(cache) == sorted(reference)
    assert sorted(cache.keys()) == sorted(reference.keys())
    assert sorted(map(repr, cache.values())) == sorted(map(repr, reference.values()))
    assert ("a", 1) in cache.items()
    assert "a" in cache and "zzz" not in cache
    with pytest.raises(KeyError):
        cache["zzz"]
    with pytest.raises(KeyError):
        del cache["zzz"]
    with pytest.raises(KeyError):
        cache.pop("zzz")
    key, value = cache.popitem()
    assert reference.pop(key) == value
    assert dict(cache) == reference


def test_iteration_key_types(clock: ManualClock) -> None:
    with Cache(clock=clock, key_type=bytes) as c:
        c["a"] = 1
        c[b"\xff"] = 2
        assert sorted(c) == [b"a", b"\xff"]
    with Cache(clock=clock) as c:
        c["a"] = 1
        c[b"\xff"] = 2
        assert sorted(c, key=repr) == ["a", b"\xff"]  # str where the key is UTF-8


def test_bad_input_is_a_typed_error() -> None:
    with Cache(limits=Limits(key_size_bytes=16, value_size_bytes=64)) as c:
        with pytest.raises(KeyTooLarge):
            c.set("k" * 17, 1)
        with pytest.raises(KeyTooLarge):
            c.get("k" * 17)
        with pytest.raises(ValueTooLarge):
            c.set("k", b"v" * 65)
        with pytest.raises(SerializationError):
            c.get(3.5)
        with pytest.raises(SerializationError):
            c.set(object(), 1)
        with pytest.raises(SerializationError):
            c.set("k", object())
        for ttl in (0, -1, True, "1", 1e12):
            with pytest.raises(ConfigError):
                c.set("k", 1, ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            c.set("k", 1, w=0)
        with pytest.raises(ConfigError):
            c.get("k", r="most")
        with pytest.raises(ConfigError):
            c.set("k", 1, context="ctx")  # type: ignore[arg-type]
        c.set("k", "still works")
        assert c.get("k") == "still works"
    with pytest.raises(ConfigError):
        Cache(members="a@127.0.0.1:1")  # joining needs a node id
    with pytest.raises(ConfigError):
        Cache(resolver=42)
    with pytest.raises(ConfigError):
        Cache(key_type=int)
    with pytest.raises(SerializationError):
        Cache(serializer=object())
    with pytest.raises(ConfigError):
        Cache(listen="nowhere")


class Box:
    def __init__(self, v: int) -> None:
        self.v = v


def test_a_pickle_cache_is_opt_in(tmp_path: Path) -> None:
    with Cache(tmp_path / "p", serializer=PickleSerializer(), sync=False) as c:
        c.set("box", Box(3))
        assert c.get("box").v == 3
    with Cache(tmp_path / "p", sync=False) as c:  # the same data, default serializer
        with pytest.raises(SerializationError, match="refuses to unpickle"):
            c.get("box")
        with pytest.raises(SerializationError):
            c.set("other", Box(4))
    with Cache(tmp_path / "p", serializer=JsonSerializer(), sync=False) as c:
        c.set("j", {"a": [1]})
        assert c.get("j") == {"a": [1]}


def test_lmdb_cache_keeps_its_data_across_reopen(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as c:
        c.set("k", "durable")
        c.incr("n", 3)
    with Cache(tmp_path / "c") as c:
        assert c.get("k") == "durable"
        assert c.incr("n") == 4
        assert c.replicates("k")


def _lmdb_fds(path: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            out.append(target)
    return out


def _our_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since `before`, except trio's idle worker-thread cache (process-wide,
    shared by every trio.run, each exits after 10 s idle)."""
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("Trio thread")
    ]


def test_close_stops_threads_and_releases_lmdb(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    c = Cache(tmp_path / "c")
    c.set("k", "v")
    assert c.get("k") == "v"
    assert _lmdb_fds(tmp_path / "c"), "the open cache holds its LMDB files"
    assert any(t.name.startswith("dynacore-cache") for t in _our_threads(before))
    c.close()
    assert _our_threads(before) == []
    assert _lmdb_fds(tmp_path / "c") == []
    for t in threading.enumerate():
        if t not in before:
            assert t.daemon and t.name.startswith("Trio thread")
    c.close()  # idempotent
    with pytest.raises(CacheClosed):
        c.get("k")
    with pytest.raises(CacheClosed):
        c.set("k", 1)
    with pytest.raises(CacheClosed):
        len(c)
    assert issubclass(CacheClosed, DynacoreError)


def test_a_cache_that_cannot_start_raises_and_leaves_nothing(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DynacoreError):
        Cache(blocker / "sub")
    with Cache(tmp_path / "one", node_id="alpha"):
        pass
    with pytest.raises(ConfigError):  # the directory belongs to another node id
        Cache(tmp_path / "one", node_id="beta", members="beta@127.0.0.1:0")
    assert _our_threads(before) == []


def test_closing_under_concurrent_local_reads_is_clean(tmp_path: Path) -> None:
    c = Cache(tmp_path / "c", sync=False)
    c.set_many({f"k{i}": b"v" * 50 for i in range(100)})
    outcomes: list[str] = []
    started = threading.Barrier(5)

    def reader() -> None:
        started.wait()
        try:
            while True:
                for i in range(100):
                    assert c.get(f"k{i}") == b"v" * 50
        except CacheClosed:
            outcomes.append("closed")
        except BaseException as exc:
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    c.close()
    for t in threads:
        t.join()
    assert outcomes == ["closed"] * 4
    assert _lmdb_fds(tmp_path / "c") == []


def test_closing_under_concurrent_writes_answers_every_writer(tmp_path: Path) -> None:
    """Sync writes wait on the node's loop by callback (no task): a close in the middle ends
    every one of them, with a typed error, and no writer is left waiting."""
    c = Cache(tmp_path / "c", sync=False)
    outcomes: list[str] = []
    written = [0] * 4
    started = threading.Barrier(5)

    def writer(slot: int) -> None:
        started.wait()
        try:
            while True:
                c.set(f"w{slot}-{written[slot] % 50}", written[slot])
                c.incr(f"n{slot}")
                written[slot] += 1
        except (CacheClosed, StorageClosed):
            outcomes.append("closed")
        except BaseException as exc:
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(4)]
    for t in threads:
        t.start()
    started.wait()
    while min(written) < 20:
        time.sleep(0.001)
    c.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a writer is still waiting"
    assert outcomes == ["closed"] * 4
    with Cache(tmp_path / "c", sync=False) as reopened:  # every acknowledged incr is there
        for slot in range(4):
            assert reopened.get(f"n{slot}") >= written[slot]


def test_two_sync_caches_in_one_process_share_a_cluster(tmp_path: Path) -> None:
    ports = free_ports(2)
    members = f"a@127.0.0.1:{ports[0]},b@127.0.0.1:{ports[1]}"
    with (
        Cache(tmp_path / "a", f"127.0.0.1:{ports[0]}", node_id="a", members=members, n=1) as a,
        Cache(tmp_path / "b", f"127.0.0.1:{ports[1]}", node_id="b", members=members, n=1) as b,
    ):
        mine = next(k for k in (f"k{i}" for i in range(1000)) if a.replicates(k))
        theirs = next(k for k in (f"k{i}" for i in range(1000)) if not a.replicates(k))
        assert b.replicates(theirs) and not b.replicates(mine)
        a.set_many({mine: 1, theirs: 2})
        assert a.lookup_local(mine) == 1
        assert a.lookup_local(theirs) is REMOTE
        assert b.lookup_local(theirs) == 2
        assert a.get_many([mine, theirs, "absent"]) == {mine: 1, theirs: 2}
        assert a.get(theirs) == 2 and a[theirs] == 2 and theirs in a
        assert b.get(mine, r=1) == 1
        assert b.incr(mine) == 2
        assert a.get(mine) == 2
        assert list(a) == [mine]  # iteration covers this member's own keys
        assert len(b) == 1
