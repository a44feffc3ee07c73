"""MemoryEngine specifics: slow-disk delay, crash, the non-durable mode, determinism, the disk."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dynacore.errors import ConfigError, StorageClosed, StorageError, StorageFull
from dynacore.storage import MemoryDisk, MemoryEngine, Update, open_memory_engine


def put(value: bytes | None) -> Update:
    return lambda _old: value


Outcomes = dict[bytes, bytes | BaseException | None]


async def write_into(engine: MemoryEngine, key: bytes, value: bytes, outcomes: Outcomes) -> None:
    try:
        outcomes[key] = await engine.update("data", key, put(value))
    except StorageError as exc:
        outcomes[key] = exc


async def test_commit_delay_makes_writes_wait_and_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: Outcomes = {}
    async with open_memory_engine(commit_delay_s=1.0) as engine:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_into, engine, b"first", b"1", outcomes)
            await trio.sleep(0.5)  # "first" is being synced alone; the rest queue meanwhile
            assert engine.get("data", b"first") is None  # not visible before its commit
            for i in range(50):
                nursery.start_soon(write_into, engine, b"k%d" % i, b"v", outcomes)
        assert trio.current_time() - start == pytest.approx(2.0)
        assert engine.stats.commits == 2
        assert engine.stats.max_batch_ops == 50
        assert len(outcomes) == 51 and all(v in (b"1", b"v") for v in outcomes.values())


async def test_crash_drops_only_uncommitted_writes(autojump_clock: trio.testing.MockClock) -> None:
    disk = MemoryDisk()
    outcomes: Outcomes = {}
    async with open_memory_engine(disk, commit_delay_s=1.0) as engine:
        await engine.update("data", b"committed", put(b"c"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_into, engine, b"in-flight", b"x", outcomes)
            await trio.sleep(0.5)
            for i in range(10):
                nursery.start_soon(write_into, engine, b"queued%d" % i, b"q", outcomes)
            await trio.testing.wait_all_tasks_blocked()
            engine.crash()
        assert len(outcomes) == 11
        assert all(isinstance(o, StorageClosed) for o in outcomes.values())
        with pytest.raises(StorageClosed):
            engine.get("data", b"committed")
        with pytest.raises(StorageClosed):
            await engine.update("data", b"after", put(b"a"))
    async with open_memory_engine(disk) as restarted:
        assert restarted.scan("data") == [(b"committed", b"c")]


async def test_non_durable_crash_loses_the_last_acknowledged_batches() -> None:
    disk = MemoryDisk()
    async with open_memory_engine(disk, durable=False, unsynced_batches=2) as engine:
        for i in range(5):  # five acknowledged batches, one write each
            assert await engine.update("data", b"k%d" % i, put(b"v%d" % i)) == b"v%d" % i
        await engine.update("data", b"k0", put(b"overwritten"))
        engine.crash()
    async with open_memory_engine(disk) as restarted:
        # The last two batches (k4, and the overwrite of k0) are gone, although acknowledged.
        assert restarted.scan("data") == [(b"k%d" % i, b"v%d" % i) for i in range(4)]


async def test_durable_crash_keeps_every_acknowledged_write() -> None:
    disk = MemoryDisk()
    async with open_memory_engine(disk) as engine:
        for i in range(5):
            await engine.update("data", b"k%d" % i, put(b"v%d" % i))
        engine.crash()
    async with open_memory_engine(disk) as restarted:
        assert restarted.count("data") == 5


async def test_clean_close_syncs_a_non_durable_engine() -> None:
    disk = MemoryDisk()
    async with open_memory_engine(disk, durable=False) as engine:
        await engine.update("data", b"k", put(b"v"))
    async with open_memory_engine(disk, durable=False) as restarted:
        restarted.crash()
    async with open_memory_engine(disk) as again:
        assert again.get("data", b"k") == b"v"


async def test_a_disk_is_open_in_one_engine_at_a_time() -> None:
    disk = MemoryDisk()
    async with open_memory_engine(disk):
        with pytest.raises(StorageError):
            MemoryEngine(disk)
    async with open_memory_engine(disk):
        pass


async def test_every_writer_of_a_full_batch_gets_storage_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: Outcomes = {}
    disk = MemoryDisk(capacity_bytes=10_000)
    async with open_memory_engine(disk, commit_delay_s=1.0) as engine:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_into, engine, b"first", b"1", outcomes)
            await trio.sleep(0.5)  # the next six writers share the second batch
            for i in range(5):
                nursery.start_soon(write_into, engine, b"k%d" % i, b"x", outcomes)
            nursery.start_soon(write_into, engine, b"big", b"b" * 20_000, outcomes)
        assert outcomes.pop(b"first") == b"1"
        assert len(outcomes) == 6
        assert all(isinstance(o, StorageFull) for o in outcomes.values())
        assert engine.scan("data") == [(b"first", b"1")]
        assert disk.size_bytes == len(b"first1")
        assert engine.stats.failed_commits == 1


def run_scenario() -> list[tuple[str, float]]:
    """A crash scenario under MockClock; its event log, by virtual time."""
    log: list[tuple[str, float]] = []

    async def writer(engine: MemoryEngine, i: int) -> None:
        try:
            await engine.update("data", b"k%d" % (i % 7), lambda old: (old or b"") + b"%d," % i)
            log.append((f"ack {i}", trio.current_time()))
        except StorageClosed:
            log.append((f"closed {i}", trio.current_time()))

    async def main() -> None:
        disk = MemoryDisk()
        async with open_memory_engine(disk, commit_delay_s=0.25) as engine:
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(writer, engine, i)
                    await trio.sleep(0.1)
                    if i == 30:
                        engine.crash()
        log.extend((f"{k!r}={v!r}", 0.0) for k, v in disk.tables["data"].scan(b"", None, None))

    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, clock=clock)
    return sorted(log, key=lambda item: (item[1], item[0]))


def test_memory_engine_is_deterministic_under_mock_clock() -> None:
    # Trio may order tasks woken together differently run to run; what each write sees and when
    # it is acknowledged is fixed by virtual time alone.
    first = run_scenario()
    assert run_scenario() == first
    assert any(entry.startswith("closed") for entry, _t in first)
    assert any(entry.startswith("ack") for entry, _t in first)


def test_bad_memory_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        MemoryEngine(commit_delay_s=-1.0)
    with pytest.raises(ConfigError):
        MemoryEngine(unsynced_batches=0)
    with pytest.raises(ConfigError):
        MemoryDisk(capacity_bytes=-5)
