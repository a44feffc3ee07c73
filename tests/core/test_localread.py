"""localread on every backend: the plain-value decode (examples and parity with the pure twin on
random sets, malformed ones included), and FencedReader over a real LMDB environment: reads by
stored key and by user key, the cut, and the fence (reads refused after close; close waits for a
read in flight in another thread).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacore import _backend
from dynacore.errors import DynacoreError, StorageClosed, VersionError

HEADER = 17
TAG = 1
PREFIX = b"ns\x00"
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PURE = _backend.load("python")


def envelope(data: bytes, *, flags: int = 0, expiry_ms: int = 0, ts_ms: int = 42) -> bytes:
    return struct.pack(">QBQ", ts_ms, flags, expiry_ms) + data


def one(backend: _backend.Backend, value: bytes) -> bytes:
    return backend.versions.update(backend.versions.empty(), b"", value, "n1")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[lmdb.Environment, Any]]:
    environment = lmdb.open(str(tmp_path / "db"), map_size=1 << 24, max_dbs=2)
    db = environment.open_db(b"data")
    try:
        yield environment, db
    finally:
        environment.close()


def put(env: tuple[lmdb.Environment, Any], key: bytes, value: bytes) -> None:
    environment, db = env
    with environment.begin(write=True, db=db) as txn:
        txn.put(key, value)


def reader(backend: _backend.Backend, env: tuple[lmdb.Environment, Any], cut: int = 64) -> Any:
    environment, db = env
    return backend.localread.FencedReader(environment.begin, db, HEADER, TAG, PREFIX, cut)


# -- classify --------------------------------------------------------------------------------------


def test_one_plain_value_is_its_data(backend: _backend.Backend) -> None:
    classify = backend.localread.classify
    assert classify(one(backend, envelope(b"\x01hello")), HEADER, TAG) == b"hello"
    assert classify(one(backend, envelope(b"\x01")), HEADER, TAG) == b""


@pytest.mark.parametrize(
    "value",
    [
        envelope(b"", flags=1),  # a tombstone
        envelope(b"\x01x", expiry_ms=7),  # an expiry
        envelope(b"\x02x"),  # another tag
        envelope(b""),  # no data
        b"short",  # no header
    ],
)
def test_anything_else_is_its_values(backend: _backend.Backend, value: bytes) -> None:
    assert backend.localread.classify(one(backend, value), HEADER, TAG) == [value]


def test_siblings_are_their_values(backend: _backend.Backend) -> None:
    v = backend.versions
    a, b = envelope(b"\x01a"), envelope(b"\x01b")
    two = v.update(v.update(v.empty(), b"", a, "n1"), b"", b, "n2")
    assert sorted(backend.localread.classify(two, HEADER, TAG)) == sorted([a, b])


def test_bad_arguments(backend: _backend.Backend) -> None:
    classify = backend.localread.classify
    with pytest.raises(VersionError):
        classify(b"\xff\xff\xff", HEADER, TAG)
    with pytest.raises(TypeError):
        classify("text", HEADER, TAG)
    with pytest.raises(ValueError):
        classify(one(backend, envelope(b"\x01x")), 8, TAG)
    with pytest.raises(OverflowError):
        classify(one(backend, envelope(b"\x01x")), HEADER, 256)


@SETTINGS
@given(
    data=st.binary(max_size=24),
    flags=st.integers(0, 2),
    expiry=st.sampled_from([0, 1, 1 << 40]),
    siblings=st.integers(1, 3),
    garbage=st.binary(max_size=12),
)
def test_parity_with_the_pure_twin(
    backend: _backend.Backend,
    data: bytes,
    flags: int,
    expiry: int,
    siblings: int,
    garbage: bytes,
) -> None:
    v = PURE.versions
    stored = v.empty()
    for i in range(siblings):
        stored = v.update(
            stored, b"", envelope(data + bytes([i]), flags=flags, expiry_ms=expiry), f"n{i}"
        )
    for candidate in (stored, garbage):
        expected: Any
        try:
            expected = PURE.localread.classify(candidate, HEADER, TAG)
        except DynacoreError as exc:
            expected = type(exc)
        try:
            got: Any = backend.localread.classify(candidate, HEADER, TAG)
        except DynacoreError as exc:
            got = type(exc)
        assert got == expected


# -- FencedReader ----------------------------------------------------------------------------------


def test_reads_by_stored_key_and_by_user_key(
    backend: _backend.Backend, env: tuple[lmdb.Environment, Any]
) -> None:
    put(env, PREFIX + b"k", one(backend, envelope(b"\x01value")))
    put(env, PREFIX + "ключ".encode(), one(backend, envelope(b"\x01" + "юникод".encode())))
    sibling = envelope(b"\x01x", expiry_ms=5)
    put(env, PREFIX + b"e", one(backend, sibling))
    fenced = reader(backend, env)
    assert fenced.read(PREFIX + b"k") == b"value"
    assert fenced.read_key(b"k") == b"value"
    assert fenced.read_key("ключ") == "юникод".encode()
    assert fenced.read_key(b"e") == [sibling]
    assert fenced.read(PREFIX + b"absent") is None
    assert fenced.read_key(b"absent") is None


def test_read_key_declines_what_it_does_not_serve(
    backend: _backend.Backend, env: tuple[lmdb.Environment, Any]
) -> None:
    put(env, PREFIX + b"k" * 10, one(backend, envelope(b"\x01v")))
    fenced = reader(backend, env, cut=len(PREFIX) + 10)
    assert fenced.read_key(b"k" * 10) == b"v"  # exactly at the cut
    assert fenced.read_key(b"k" * 11) is False  # past the cut
    assert fenced.read_key(bytearray(b"k" * 10)) is False  # another type
    assert fenced.read_key(7) is False
    with pytest.raises(UnicodeEncodeError):
        fenced.read_key("\ud800")


def test_a_corrupt_stored_set_is_an_error(
    backend: _backend.Backend, env: tuple[lmdb.Environment, Any]
) -> None:
    put(env, PREFIX + b"bad", b"\xff\xff\xff")
    with pytest.raises(VersionError):
        reader(backend, env).read_key(b"bad")


def test_reads_after_close_are_refused(
    backend: _backend.Backend, env: tuple[lmdb.Environment, Any]
) -> None:
    put(env, PREFIX + b"k", one(backend, envelope(b"\x01v")))
    fenced = reader(backend, env)
    assert not fenced.closed
    fenced.close()
    assert fenced.closed
    with pytest.raises(StorageClosed):
        fenced.read_key(b"k")
    with pytest.raises(StorageClosed):
        fenced.read(PREFIX + b"k")


class BlockingBegin:
    """A `begin` that blocks once `armed` until `release` is set: a slow read in flight."""

    def __init__(self, environment: lmdb.Environment) -> None:
        self.environment = environment
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, database: Any) -> Any:
        if self.armed:
            self.entered.set()
            assert self.release.wait(10)
        return self.environment.begin(db=database)


def blocked_read(
    backend: _backend.Backend, env: tuple[lmdb.Environment, Any]
) -> tuple[Any, BlockingBegin, threading.Thread, list[object]]:
    """A reader with one read of b"k" started in another thread and blocked inside it."""
    environment, db = env
    begin = BlockingBegin(environment)
    fenced = backend.localread.FencedReader(begin, db, HEADER, TAG, PREFIX, 64)
    begin.armed = True
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(fenced.read_key(b"k")))
    thread.start()
    assert begin.entered.wait(10)
    return fenced, begin, thread, results


def test_close_waits_for_a_read_in_flight(
    backend: _backend.Backend, env: tuple[lmdb.Environment, Any]
) -> None:
    put(env, PREFIX + b"k", one(backend, envelope(b"\x01v")))
    fenced, begin, thread, results = blocked_read(backend, env)
    closed_at: list[float] = []
    closer = threading.Thread(
        target=lambda: (fenced.close(10.0), closed_at.append(time.monotonic()))
    )
    closer.start()
    time.sleep(0.05)
    assert not closed_at  # still waiting for the read
    released_at = time.monotonic()
    begin.release.set()
    thread.join(10)
    closer.join(10)
    assert results == [b"v"]
    assert closed_at and closed_at[0] >= released_at


def test_close_gives_up_after_its_timeout(
    backend: _backend.Backend, env: tuple[lmdb.Environment, Any]
) -> None:
    fenced, begin, thread, _ = blocked_read(backend, env)
    try:
        with pytest.raises(TimeoutError):
            fenced.close(0.05)
    finally:
        begin.release.set()
        thread.join(10)


def test_constructor_checks(backend: _backend.Backend, env: tuple[lmdb.Environment, Any]) -> None:
    environment, db = env
    with pytest.raises(TypeError):
        backend.localread.FencedReader(42, db, HEADER, TAG)
    with pytest.raises(ValueError):
        backend.localread.FencedReader(environment.begin, db, 3, TAG)
