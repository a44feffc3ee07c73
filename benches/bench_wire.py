"""wire benchmarks: encode, decode, encode+decode and streaming feed, on every built backend.

The message is replication-sized: a 16 B key, an encoded version set (~120 B), a 100 B value, a few
ints and a short str. Outside baselines in the same groups: msgpack and ormsgpack packing and
unpacking the same field list (no header, no checksum), and msgpack's streaming Unpacker for feed.
Run: .venv/bin/python -m pytest benches/bench_wire.py --benchmark-columns=median,ops -q
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import ormsgpack
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from dynacore._backend import Backend

MSG_TYPE = 12
REQUEST_ID = 987_654_321
STREAM_FRAMES = 32
MAX_FRAME_BYTES = 4 * 1024 * 1024


def replication_fields() -> list[Any]:
    rng = random.Random(7)
    return [
        rng.randbytes(16),  # key
        rng.randbytes(120),  # encoded version set
        rng.randbytes(100),  # value
        3,  # n
        2,  # w
        1_700_000_000_123,  # timestamp, ms
        "node-a.dc1",  # coordinator
    ]


FIELDS = replication_fields()
PACKED = msgpack.packb(FIELDS)
assert ormsgpack.unpackb(ormsgpack.packb(FIELDS)) == FIELDS == msgpack.unpackb(PACKED)


def mark(benchmark: BenchmarkFixture, op: str, impl: str) -> None:
    benchmark.group = f"wire.{op}"
    benchmark.extra_info["impl"] = impl


def run(benchmark: BenchmarkFixture, fn: Any, *args: Any, iterations: int = 200) -> Any:
    """Times `iterations` calls per round, the same way for every contender of a group: left to
    calibrate, pytest-benchmark times single sub-microsecond calls, and its own timer overhead
    (~0.1 µs) then swamps the fast contenders."""
    rounds = max(20, 20_000 // iterations)
    return benchmark.pedantic(  # type: ignore[no-untyped-call]
        fn, args=args, iterations=iterations, rounds=rounds, warmup_rounds=1
    )


# -- encode ----------------------------------------------------------------------------------------


def test_encode(benchmark: BenchmarkFixture, backend: Backend) -> None:
    mark(benchmark, "encode", backend.name)
    frame = run(benchmark, backend.wire.encode_frame, MSG_TYPE, REQUEST_ID, FIELDS)
    assert backend.wire.decode_frame(frame, MAX_FRAME_BYTES)[2] == FIELDS


def test_encode_msgpack(benchmark: BenchmarkFixture) -> None:
    mark(benchmark, "encode", "msgpack (baseline)")
    assert run(benchmark, msgpack.packb, FIELDS) == PACKED


def test_encode_ormsgpack(benchmark: BenchmarkFixture) -> None:
    mark(benchmark, "encode", "ormsgpack (baseline)")
    assert run(benchmark, ormsgpack.packb, FIELDS) == PACKED


# -- decode ----------------------------------------------------------------------------------------


def test_decode(benchmark: BenchmarkFixture, backend: Backend) -> None:
    mark(benchmark, "decode", backend.name)
    frame = backend.wire.encode_frame(MSG_TYPE, REQUEST_ID, FIELDS)
    result = run(benchmark, backend.wire.decode_frame, frame, MAX_FRAME_BYTES)
    assert result == (MSG_TYPE, REQUEST_ID, FIELDS)


def test_decode_msgpack(benchmark: BenchmarkFixture) -> None:
    mark(benchmark, "decode", "msgpack (baseline)")
    assert run(benchmark, msgpack.unpackb, PACKED) == FIELDS


def test_decode_ormsgpack(benchmark: BenchmarkFixture) -> None:
    mark(benchmark, "decode", "ormsgpack (baseline)")
    assert run(benchmark, ormsgpack.unpackb, PACKED) == FIELDS


# -- encode + decode -------------------------------------------------------------------------------


def test_roundtrip(benchmark: BenchmarkFixture, backend: Backend) -> None:
    mark(benchmark, "roundtrip", backend.name)
    encode, decode = backend.wire.encode_frame, backend.wire.decode_frame

    def roundtrip() -> Any:
        return decode(encode(MSG_TYPE, REQUEST_ID, FIELDS), MAX_FRAME_BYTES)

    assert run(benchmark, roundtrip) == (MSG_TYPE, REQUEST_ID, FIELDS)


@pytest.mark.parametrize(
    ("impl", "pack", "unpack"),
    [
        ("msgpack (baseline)", msgpack.packb, msgpack.unpackb),
        ("ormsgpack (baseline)", ormsgpack.packb, ormsgpack.unpackb),
    ],
    ids=["msgpack", "ormsgpack"],
)
def test_roundtrip_baseline(benchmark: BenchmarkFixture, impl: str, pack: Any, unpack: Any) -> None:
    mark(benchmark, "roundtrip", impl)

    def roundtrip() -> Any:
        return unpack(pack(FIELDS))

    assert run(benchmark, roundtrip) == FIELDS


# -- streaming: a batch of frames arriving in one chunk --------------------------------------------


def test_feed(benchmark: BenchmarkFixture, backend: Backend) -> None:
    mark(benchmark, "feed32", backend.name)
    stream = b"".join(backend.wire.encode_frame(MSG_TYPE, i, FIELDS) for i in range(STREAM_FRAMES))
    decoder = backend.wire.FrameDecoder(MAX_FRAME_BYTES)
    frames = run(benchmark, decoder.feed, stream, iterations=20)
    assert len(frames) == STREAM_FRAMES and frames[-1][2] == FIELDS
    assert decoder.pending_bytes == 0


def test_feed_msgpack(benchmark: BenchmarkFixture) -> None:
    mark(benchmark, "feed32", "msgpack Unpacker (baseline)")
    stream = PACKED * STREAM_FRAMES
    unpacker = msgpack.Unpacker(max_buffer_size=MAX_FRAME_BYTES)

    def feed() -> list[Any]:
        unpacker.feed(stream)
        return list(unpacker)

    frames = run(benchmark, feed, iterations=20)
    assert len(frames) == STREAM_FRAMES and frames[-1] == FIELDS
