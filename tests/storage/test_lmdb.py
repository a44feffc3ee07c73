"""LmdbEngine specifics: durability across processes, full disk, thread-safe reads, the format."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lmdb
import pytest
import trio

from dynacore.errors import ConfigError, StorageClosed, StorageError
from dynacore.storage import LmdbEngine, Update, open_lmdb_engine

MAP_SIZE_BYTES = 64 << 20
CHILD_TIMEOUT_S = 60


def put(value: bytes | None) -> Update:
    return lambda _old: value


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


READ_ALL = """
    import json, sys, trio
    from dynacore.storage import open_lmdb_engine

    async def main():
        async with open_lmdb_engine(sys.argv[1], map_size_bytes=64 << 20) as engine:
            out = {db: [[k.hex(), v.hex()] for k, v in engine.scan(db)]
                   for db in ("data", "hints", "meta")}
            out["count"] = engine.count("data")
        print(json.dumps(out))

    trio.run(main)
"""


async def test_a_new_process_reads_every_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "db"
    written: dict[str, list[list[str]]] = {"data": [], "hints": [], "meta": []}
    keys = [b"k%03d" % i for i in range(150)] + [b"L" * 700 + b"%03d" % i for i in range(50)]
    async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES) as engine:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(engine.update, "data", key, put(b"value-" + key[-3:]))
        await engine.update("hints", b"node-b\x00" + b"k001", put(b"hint"))
        await engine.update("meta", b"node/id", put(b"node-a"))
    written["data"] = [[k.hex(), (b"value-" + k[-3:]).hex()] for k in sorted(keys)]
    written["hints"] = [[(b"node-b\x00k001").hex(), b"hint".hex()]]
    written["meta"] = [[b"node/id".hex(), b"node-a".hex()]]
    proc = run_child(READ_ALL, str(path))
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found.pop("count") == len(keys)
    assert found == written


WRITE_UNTIL_KILLED = """
    import sys, trio
    from dynacore.storage import open_lmdb_engine

    async def writer(engine, w):
        for i in range(100000):
            key = b"w%02d-%06d" % (w, i)
            await engine.update("data", key, lambda _old: b"v" * 100)
            print(key.decode(), flush=True)

    async def main():
        async with open_lmdb_engine(sys.argv[1], map_size_bytes=64 << 20) as engine:
            async with trio.open_nursery() as nursery:
                for w in range(16):
                    nursery.start_soon(writer, engine, w)

    trio.run(main)
"""


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITE_UNTIL_KILLED), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: list[str] = []
    assert child.stdout is not None
    try:
        for line in child.stdout:
            acked.append(line.strip())
            if len(acked) >= 300:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=CHILD_TIMEOUT_S)
    assert len(acked) >= 300
    proc = run_child(READ_ALL, str(path))
    assert proc.returncode == 0, proc.stderr
    stored = {bytes.fromhex(k).decode() for k, _v in json.loads(proc.stdout)["data"]}
    assert set(acked) <= stored


DISK_FULL = """
    import resource, signal, sys, trio
    from dynacore.errors import StorageFull
    from dynacore.storage import open_lmdb_engine

    async def main():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the bound gets EFBIG
        async with open_lmdb_engine(sys.argv[1], map_size_bytes=256 << 20) as engine:
            await engine.update_many("data", [(b"early%d" % i, lambda _o: b"e" * 100)
                                              for i in range(50)])
            _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, hard))
            try:
                await engine.update_many("data", [(b"big%d" % i, lambda _o: b"b" * 100_000)
                                                  for i in range(100)])
            except StorageFull as exc:
                print("full:", exc)
            else:
                print("not full")
            assert engine.get("data", b"big0") is None
            assert all(engine.get("data", b"early%d" % i) == b"e" * 100 for i in range(50))
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space freed
            await engine.update("data", b"later", lambda _o: b"l" * 100_000)
            assert engine.get("data", b"later") == b"l" * 100_000
            print("count", engine.count("data"), "failed", engine.stats.failed_commits)

    trio.run(main)
"""


def test_full_disk_is_storage_full_and_the_engine_recovers(tmp_path: Path) -> None:
    proc = run_child(DISK_FULL, str(tmp_path / "db"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("full:"), proc.stdout
    assert lines[1] == "count 51 failed 1"


async def test_reads_are_thread_safe_during_writes(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(engine: LmdbEngine) -> None:
        last = 0
        try:
            while not stop.is_set():
                value = int(engine.get("data", b"counter") or b"0")
                assert value >= last, "a reader saw the counter go back"
                last = value
                page = engine.scan("data", limit=50)
                assert [k for k, _ in page] == sorted(k for k, _ in page)
        except BaseException as exc:
            errors.append(exc)

    async with open_lmdb_engine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES) as engine:
        threads = [threading.Thread(target=reader, args=(engine,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for i in range(200):
                await engine.update_many(
                    "data",
                    [
                        (b"counter", lambda old: str(int(old or b"0") + 1).encode()),
                        (b"k%03d" % i, put(b"v")),
                    ],
                )
        finally:
            stop.set()
            for thread in threads:
                await trio.to_thread.run_sync(thread.join)
        assert engine.get("data", b"counter") == b"200"
    assert errors == []


async def test_unsafe_fast_mode_keeps_data_on_clean_close(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES, sync=False) as engine:
        assert engine.sync is False
        await engine.update_many("data", [(b"k%d" % i, put(b"v")) for i in range(100)])
    async with open_lmdb_engine(path, map_size_bytes=MAP_SIZE_BYTES) as reopened:
        assert reopened.count("data") == 100


async def test_long_keys_sharing_a_prefix_share_a_bucket(tmp_path: Path) -> None:
    async with open_lmdb_engine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES) as engine:
        cut = engine.long_key_cut
        assert cut == lmdb_max_key_size(tmp_path) - 1
        prefix = b"p" * cut
        keys = [prefix + bytes([i]) + b"tail" * i for i in range(20)] + [prefix, prefix[:-1]]
        await engine.update_many("data", [(k, put(b"%d" % len(k))) for k in keys])
        assert engine.count("data") == len(keys)
        assert [k for k, _ in engine.scan("data")] == sorted(keys)
        assert [k for k, _ in engine.scan("data", prefix + b"\x05", prefix + b"\x08")] == [
            prefix + bytes([i]) + b"tail" * i for i in (5, 6, 7)
        ]
        await engine.update_many("data", [(k, put(None)) for k in keys[:20]])
        assert engine.count("data") == 2
        assert engine.scan("data") == [(prefix[:-1], b"%d" % (cut - 1)), (prefix, b"%d" % cut)]


def lmdb_max_key_size(tmp_path: Path) -> int:
    env = lmdb.open(str(tmp_path / "probe"), map_size=1 << 20)
    try:
        return env.max_key_size()
    finally:
        env.close()


async def test_bad_options_and_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        LmdbEngine(tmp_path / "db", map_size_bytes=10)
    env = lmdb.open(str(tmp_path / "foreign"), map_size=1 << 20, max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"_sys")) as txn:
        txn.put(b"format", b"something-else")
    env.close()
    with pytest.raises(StorageError):
        LmdbEngine(tmp_path / "foreign", map_size_bytes=1 << 20)
    (tmp_path / "file").write_bytes(b"not a directory")
    with pytest.raises(StorageError):
        LmdbEngine(tmp_path / "file", map_size_bytes=1 << 20)


async def test_a_directory_open_twice_in_one_process_is_refused(tmp_path: Path) -> None:
    async with open_lmdb_engine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES):
        with pytest.raises(StorageError):
            LmdbEngine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES)


async def test_the_event_loop_runs_while_a_batch_commits(tmp_path: Path) -> None:
    """The commit runs in a worker thread: an update function can wait for a trio task."""
    gate = threading.Event()
    threads: list[int] = []

    def wait_for_gate(_old: bytes | None) -> bytes:
        threads.append(threading.get_ident())
        return b"opened" if gate.wait(timeout=CHILD_TIMEOUT_S) else b"loop was blocked"

    async def open_gate() -> None:
        await trio.sleep(0.01)
        gate.set()

    async with open_lmdb_engine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES) as engine:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_gate)
            assert await engine.update("data", b"k", wait_for_gate) == b"opened"
    assert threads and threads[0] != threading.get_ident()


async def test_close_waits_for_reads_in_other_threads(tmp_path: Path) -> None:
    ended: list[BaseException] = []
    started = threading.Barrier(5)

    def reader(engine: LmdbEngine) -> None:
        started.wait()
        try:
            while True:
                assert len(engine.scan("data", limit=100)) == 100
        except BaseException as exc:
            ended.append(exc)

    async with open_lmdb_engine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES) as engine:
        await engine.update_many("data", [(b"k%04d" % i, put(b"v" * 100)) for i in range(1000)])
        threads = [threading.Thread(target=reader, args=(engine,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        await trio.to_thread.run_sync(started.wait)
        await engine.aclose()
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
    assert len(ended) == 4
    assert all(isinstance(exc, StorageClosed) for exc in ended), ended


async def test_an_update_that_changes_nothing_commits_nothing(tmp_path: Path) -> None:
    """A merge that brings nothing new (a read repair or a replica put that arrives after the
    same write) leaves the key unwritten: LMDB commits no transaction and syncs nothing."""
    async with open_lmdb_engine(tmp_path / "db", map_size_bytes=MAP_SIZE_BYTES) as engine:
        env, _db, _cut = engine.read_handle("data")
        await engine.update("data", b"k", lambda _old: b"v1")
        await engine.update("data", b"gone", lambda _old: None)
        before = env.info()["last_txnid"]
        assert await engine.update("data", b"k", lambda old: old) == b"v1"
        assert await engine.update("data", b"gone", lambda old: old) is None
        assert await engine.update_many("data", [(b"k", lambda old: old)]) == [b"v1"]
        assert env.info()["last_txnid"] == before
        assert await engine.update("data", b"k", lambda _old: b"v2") == b"v2"
        assert env.info()["last_txnid"] == before + 1
        assert engine.get("data", b"k") == b"v2"
