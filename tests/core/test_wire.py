"""wire: the frame codec on every backend (rust, cython, python) — layout, laws, bounds, parity.

Every test takes the `backend` fixture; the parity properties load all built backends side by side
and require identical bytes, identical values and identical errors (class and message).
"""

from __future__ import annotations

import enum
import functools
import math
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacore import errors, limits
from dynacore._backend import Backend, available, load

BACKENDS = [load(name) for name in available()]
MAX = limits.MAX_FRAME_SIZE_BYTES
HEADER = 17
CHECKSUM = 8

# The frame of docs/wire.md's worked example: msg type 7, request id 258, fields
# [b"k", -1, None, True, False, 1.5, "é", [1]]. Pins the format on every backend.
GOLDEN_FIELDS: list[Any] = [b"k", -1, None, True, False, 1.5, "é", [1]]
GOLDEN_HEX = (
    "4459010700"  # magic "DY", format version 1, msg type 7, flags 0
    "0000000000000102"  # request id 258
    "00000034"  # body length 52
    "00000008"  # field count 8
    "05000000016b"  # bytes b"k"
    "03ffffffffffffffff"  # int -1
    "000201"  # None, True, False
    "043ff8000000000000"  # float 1.5
    "0600000002c3a9"  # str "é"
    "0700000001030000000000000001"  # list [1]
)


def golden_frame() -> bytes:
    head_body = bytes.fromhex(GOLDEN_HEX)
    return head_body + struct.pack(">Q", xxhash.xxh3_64_intdigest(head_body))


def raw_frame(body: bytes, msg_type: int = 7, request_id: int = 9) -> bytes:
    """A frame around a hand-built (possibly malformed) body, with a correct checksum."""
    head = b"DY\x01" + bytes([msg_type, 0]) + struct.pack(">QI", request_id, len(body))
    return head + body + struct.pack(">Q", xxhash.xxh3_64_intdigest(head + body))


def norm(value: Any) -> Any:
    """A comparable form of a value: types kept apart (True is not 1), floats by their bits."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [norm(v) for v in value])
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    return (type(value).__name__, value)


def as_decoded(value: Any) -> Any:
    """What a value decodes to: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [as_decoded(v) for v in value]
    return value


def outcome(fn: Callable[[], Any]) -> Any:
    """The result (normalised) or the error (class and message) of one call."""
    try:
        result = fn()
    except errors.DynacoreError as exc:
        return ("error", type(exc), str(exc))
    return ("ok", norm(result))


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def flat_sample() -> list[Any]:
    return [b"key-0123456789ab", b"\x00" * 120, b"v" * 100, 2**40, 3, -7, "node-a", None, True]


# -- strategies ------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=48)
    | st.text(max_size=24)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.tuples(children, children),
    max_leaves=25,
)
field_lists = st.lists(values, max_size=8)
msg_types = st.integers(min_value=0, max_value=255)
request_ids = st.integers(min_value=0, max_value=2**64 - 1)


# -- layout ----------------------------------------------------------------------------------------


def test_constants(backend: Backend) -> None:
    w = backend.wire
    assert w.HEADER_SIZE == HEADER
    assert w.CHECKSUM_SIZE == CHECKSUM
    assert w.MIN_FRAME_SIZE_BYTES == HEADER + 4 + CHECKSUM
    assert w.MAX_FRAME_SIZE_BYTES == limits.MAX_FRAME_SIZE_BYTES
    assert w.MAX_DEPTH == 32
    assert w.MAGIC == b"DY"
    assert w.FORMAT_VERSION == 1


def test_golden_frame(backend: Backend) -> None:
    frame = backend.wire.encode_frame(7, 258, GOLDEN_FIELDS)
    assert frame == golden_frame()
    msg_type, request_id, fields = backend.wire.decode_frame(frame, 1024)
    assert (msg_type, request_id) == (7, 258)
    assert norm(fields) == norm(GOLDEN_FIELDS)


def test_header_fields_and_checksum(backend: Backend) -> None:
    frame = backend.wire.encode_frame(255, 2**64 - 1, flat_sample())
    magic, version, msg_type, flags, request_id, body_len = struct.unpack(">2sBBBQI", frame[:17])
    assert (magic, version, msg_type, flags, request_id) == (b"DY", 1, 255, 0, 2**64 - 1)
    assert len(frame) == HEADER + body_len + CHECKSUM
    assert frame[17:21] == struct.pack(">I", len(flat_sample()))
    (checksum,) = struct.unpack(">Q", frame[-8:])
    assert checksum == xxhash.xxh3_64_intdigest(frame[:-8])


def test_empty_frame_is_minimal(backend: Backend) -> None:
    frame = backend.wire.encode_frame(0, 0, [])
    assert len(frame) == backend.wire.MIN_FRAME_SIZE_BYTES
    assert backend.wire.decode_frame(frame, backend.wire.MIN_FRAME_SIZE_BYTES) == (0, 0, [])


def test_round_trip_sample(backend: Backend) -> None:
    fields = [*flat_sample(), [1, [b"", ""], []], "😀 ü", -0.0, math.inf, 2**63 - 1, -(2**63)]
    result = backend.wire.decode_frame(backend.wire.encode_frame(3, 99, fields), 4096)
    assert type(result) is tuple
    assert result[:2] == (3, 99)
    assert norm(result[2]) == norm(as_decoded(fields))


def test_nan_keeps_its_bits(backend: Backend) -> None:
    nan = struct.unpack(">d", bytes.fromhex("7ff8deadbeef0001"))[0]
    frame = backend.wire.encode_frame(1, 1, [nan])
    (value,) = backend.wire.decode_frame(frame, 1024)[2]
    assert math.isnan(value)
    assert struct.pack(">d", value).hex() == "7ff8deadbeef0001"


def test_tuples_encode_as_lists(backend: Backend) -> None:
    w = backend.wire
    assert w.encode_frame(1, 2, (1, (b"x", ()))) == w.encode_frame(1, 2, [1, [b"x", []]])
    assert w.decode_frame(w.encode_frame(1, 2, ((1, 2),)), 1024)[2] == [[1, 2]]


def test_bool_stays_bool(backend: Backend) -> None:
    w = backend.wire
    assert w.encode_frame(1, 1, [True]) != w.encode_frame(1, 1, [1])
    assert w.encode_frame(1, 1, [False]) != w.encode_frame(1, 1, [0])
    fields = w.decode_frame(w.encode_frame(1, 1, [True, 1, False, 0]), 1024)[2]
    assert [type(v) for v in fields] == [bool, int, bool, int]
    assert fields[0] is True and fields[2] is False


def test_subclasses_encode_as_their_base(backend: Backend) -> None:
    class Color(enum.IntEnum):
        RED = 5

    class Name(str):
        pass

    class Blob(bytes):
        pass

    class Items(list[Any]):
        pass

    w = backend.wire
    assert w.encode_frame(1, 1, [Color.RED, Name("n"), Blob(b"b"), Items([1])]) == w.encode_frame(
        1, 1, [5, "n", b"b", [1]]
    )


# -- encoding errors -------------------------------------------------------------------------------


def test_int_range(backend: Backend) -> None:
    w = backend.wire
    for ok in (2**63 - 1, -(2**63), 0):
        assert w.decode_frame(w.encode_frame(1, 1, [ok]), 1024)[2] == [ok]
    for bad in (2**63, -(2**63) - 1, 10**100):
        with pytest.raises(errors.EncodeError, match="signed 64-bit"):
            w.encode_frame(1, 1, [bad])
        with pytest.raises(errors.EncodeError):
            w.encode_frame(1, 1, [[1, [bad]]])


@pytest.mark.parametrize(
    "bad",
    [{}, {1: 2}, set(), frozenset(), object(), bytearray(b"x"), memoryview(b"x"), 1j, Decimal(1)],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_types(backend: Backend, bad: object) -> None:
    with pytest.raises(errors.EncodeError, match=f"type {type(bad).__name__}$"):
        backend.wire.encode_frame(1, 1, [b"ok", [bad]])


@pytest.mark.parametrize("msg_type", [-1, 256, True, 1.0, "1", None, 2**70])
def test_bad_msg_type(backend: Backend, msg_type: Any) -> None:
    with pytest.raises(errors.EncodeError, match="msg_type"):
        backend.wire.encode_frame(msg_type, 1, [])


@pytest.mark.parametrize("request_id", [-1, 2**64, False, 1.0, b"1", None])
def test_bad_request_id(backend: Backend, request_id: Any) -> None:
    with pytest.raises(errors.EncodeError, match="request_id"):
        backend.wire.encode_frame(1, request_id, [])


@pytest.mark.parametrize("fields", ["abc", b"ab", None, 3, {"a": 1}, iter([1]), range(2)])
def test_fields_must_be_list_or_tuple(backend: Backend, fields: Any) -> None:
    with pytest.raises(errors.EncodeError, match="fields must be a list or tuple"):
        backend.wire.encode_frame(1, 1, fields)


def test_surrogates_cannot_be_encoded(backend: Backend) -> None:
    with pytest.raises(errors.EncodeError, match="surrogates"):
        backend.wire.encode_frame(1, 1, ["ok\ud800"])


def test_depth_bound_on_encode(backend: Backend) -> None:
    w = backend.wire
    deepest = nested(32)
    assert w.decode_frame(w.encode_frame(1, 1, [deepest]), 4096)[2] == [deepest]
    with pytest.raises(errors.EncodeError, match="nested deeper than 32"):
        w.encode_frame(1, 1, [nested(33)])


def test_self_referential_list_is_an_encode_error(backend: Backend) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(errors.EncodeError, match="nested deeper than 32"):
        backend.wire.encode_frame(1, 1, [loop])


def test_frame_size_ceiling_on_encode(backend: Backend) -> None:
    # bytes(n) is calloc'd: no page is touched, and the encoder refuses it before copying.
    room = MAX - HEADER - 4 - 5 - CHECKSUM
    too_big = bytes(room + 1)
    with pytest.raises(errors.EncodeError, match="encoded frame exceeds"):
        backend.wire.encode_frame(1, 1, [too_big])
    with pytest.raises(errors.EncodeError, match="encoded frame exceeds"):
        backend.wire.encode_frame(1, 1, [b"x", bytes(room - 1)])


# -- decoding errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_frame_bytes", [28, MAX + 1, -1, 0, True, 4096.0, "4096", None])
def test_bad_max_frame_bytes(backend: Backend, max_frame_bytes: Any) -> None:
    with pytest.raises(errors.ConfigError, match="max_frame_bytes"):
        backend.wire.decode_frame(golden_frame(), max_frame_bytes)
    with pytest.raises(errors.ConfigError, match="max_frame_bytes"):
        backend.wire.FrameDecoder(max_frame_bytes)


def test_decode_accepts_bytes_like(backend: Backend) -> None:
    frame = golden_frame()
    want = backend.wire.decode_frame(frame, 1024)
    assert backend.wire.decode_frame(bytearray(frame), 1024) == want
    assert backend.wire.decode_frame(memoryview(frame), 1024) == want
    assert backend.wire.FrameDecoder(1024).feed(bytearray(frame)) == [want]


@pytest.mark.parametrize("data", ["DY", 17, None, [68, 89]], ids=repr)
def test_decode_rejects_non_bytes(backend: Backend, data: Any) -> None:
    with pytest.raises(errors.FrameError, match="must be bytes"):
        backend.wire.decode_frame(data, 1024)


def test_truncation_at_every_offset(backend: Backend) -> None:
    frame = backend.wire.encode_frame(2, 5, [*flat_sample(), [1, [b"z"]]])
    for cut in range(len(frame)):
        with pytest.raises(errors.FrameError, match="truncated frame"):
            backend.wire.decode_frame(frame[:cut], 4096)
        decoder = backend.wire.FrameDecoder(4096)
        assert decoder.feed(frame[:cut]) == []
        assert decoder.pending_bytes == cut


def test_trailing_bytes_after_frame(backend: Backend) -> None:
    with pytest.raises(errors.FrameError, match=r"^2 trailing bytes after the frame$"):
        backend.wire.decode_frame(golden_frame() + b"DY", 1024)


def test_every_byte_flip_is_detected(backend: Backend) -> None:
    frame = golden_frame()
    for i in range(len(frame)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(frame)
            bad[i] ^= mask
            with pytest.raises(errors.FrameError):  # ChecksumMismatch is a FrameError
                backend.wire.decode_frame(bytes(bad), 1024)
    body_flip = bytearray(frame)
    body_flip[30] ^= 1
    with pytest.raises(errors.ChecksumMismatch):
        backend.wire.decode_frame(bytes(body_flip), 1024)


def test_header_checks_come_first(backend: Backend) -> None:
    w = backend.wire
    cases = [
        (b"X", "bad magic: not a dynacore frame"),
        (b"DX", "bad magic: not a dynacore frame"),
        (b"DY\x02", "unsupported wire format version 2"),
        (b"DY\x01\x00\x04", "reserved flags are set: 4"),
    ]
    for prefix, message in cases:
        with pytest.raises(errors.FrameError) as excinfo:
            w.FrameDecoder(1024).feed(prefix)
        assert str(excinfo.value) == message
        assert type(excinfo.value) is errors.FrameError
        with pytest.raises(errors.FrameError, match=message):
            w.decode_frame(prefix + bytes(40), 1024)


def test_oversized_length_rejected_from_the_header_alone(backend: Backend) -> None:
    header = b"DY\x01\x07\x00" + struct.pack(">QI", 1, 2**32 - 1)
    decoder = backend.wire.FrameDecoder(4 * 1024 * 1024)
    with pytest.raises(errors.FrameTooLarge, match=r"^frame of 4294967320 bytes exceeds"):
        decoder.feed(header)  # no body byte was ever sent: nothing buffered, nothing allocated
    assert decoder.pending_bytes == 0
    with pytest.raises(errors.FrameTooLarge):
        backend.wire.decode_frame(header, 4 * 1024 * 1024)
    split = backend.wire.FrameDecoder(1024)
    assert split.feed(header[:16]) == []
    with pytest.raises(errors.FrameTooLarge):
        split.feed(header[16:])


def test_max_frame_bytes_is_inclusive(backend: Backend) -> None:
    frame = golden_frame()
    assert backend.wire.decode_frame(frame, len(frame))[1] == 258
    assert backend.wire.FrameDecoder(len(frame)).feed(frame)[0][1] == 258
    with pytest.raises(errors.FrameTooLarge):
        backend.wire.decode_frame(frame, len(frame) - 1)
    with pytest.raises(errors.FrameTooLarge):
        backend.wire.FrameDecoder(len(frame) - 1).feed(frame)


MALFORMED_BODIES = [
    (b"\x00\x00\x00", "body of 3 bytes is shorter than its field count"),
    (b"\x00\x00\x00\x02\x00", "field count 2 exceeds the body"),
    (b"\x00\x00\x00\x01\x08", "unknown field tag 8"),
    (b"\x00\x00\x00\x01\xff", "unknown field tag 255"),
    (b"\x00\x00\x00\x01\x05\x00\x00\x00\x09ab", "truncated field"),
    (b"\x00\x00\x00\x01\x05\x00\x00", "truncated field"),
    (b"\x00\x00\x00\x01\x03\x00\x00\x00", "truncated field"),
    (b"\x00\x00\x00\x01\x04\x00", "truncated field"),
    (b"\x00\x00\x00\x01\x07\x00\x00\x03\xe8", "list of 1000 items exceeds the body"),
    (b"\x00\x00\x00\x01\x07\x00\x00\x00\x02\x00", "list of 2 items exceeds the body"),
    (b"\x00\x00\x00\x01\x07\x00\x00\x00\x02\x05\x00", "truncated field"),
    (b"\x00\x00\x00\x02\x07\x00\x00\x00\x00", "truncated field"),
    (b"\x00\x00\x00\x01\x00\x00", "1 trailing bytes in the body"),
    (b"\x00\x00\x00\x01\x06\x00\x00\x00\x03\xed\xa0\x80", "str field is not valid UTF-8"),
    (b"\x00\x00\x00\x01\x06\x00\x00\x00\x02\xc0\x80", "str field is not valid UTF-8"),
    (b"\x00\x00\x00\x01\x06\x00\x00\x00\x01\x80", "str field is not valid UTF-8"),
    (b"\x00\x00\x00\x01\x06\x00\x00\x00\x01\xff", "str field is not valid UTF-8"),
    (
        b"\x00\x00\x00\x01" + b"\x07\x00\x00\x00\x01" * 32 + b"\x07\x00\x00\x00\x00",
        "deeper than 32",
    ),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED_BODIES)
def test_malformed_bodies(backend: Backend, body: bytes, message: str) -> None:
    frame = raw_frame(body)
    with pytest.raises(errors.FrameError) as excinfo:
        backend.wire.decode_frame(frame, 4096)
    assert type(excinfo.value) is errors.FrameError
    assert message in str(excinfo.value)
    with pytest.raises(errors.FrameError, match=message):
        backend.wire.FrameDecoder(4096).feed(frame)


def test_deepest_legal_nesting_decodes(backend: Backend) -> None:
    body = b"\x00\x00\x00\x01" + b"\x07\x00\x00\x00\x01" * 31 + b"\x07\x00\x00\x00\x00"
    assert backend.wire.decode_frame(raw_frame(body), 4096)[2] == [nested(32)]


# -- streaming -------------------------------------------------------------------------------------


def test_stream_in_one_chunk_and_byte_by_byte(backend: Backend) -> None:
    w = backend.wire
    frames = [w.encode_frame(i, 1000 + i, [i, b"x" * i, [str(i)]]) for i in range(6)]
    want = [(i, 1000 + i, [i, b"x" * i, [str(i)]]) for i in range(6)]
    stream = b"".join(frames)
    assert w.FrameDecoder(4096).feed(stream) == want
    decoder = w.FrameDecoder(4096)
    got = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert got == want
    assert decoder.pending_bytes == 0


def test_decoder_holds_at_most_one_partial_frame(backend: Backend) -> None:
    w = backend.wire
    first = w.encode_frame(1, 1, [b"a" * 50])
    second = w.encode_frame(2, 2, [b"b" * 80])
    decoder = w.FrameDecoder(4096)
    assert decoder.feed(first + second[:30]) == [(1, 1, [b"a" * 50])]
    assert decoder.pending_bytes == 30
    assert decoder.feed(second[30:40]) == []
    assert decoder.pending_bytes == 40
    assert decoder.feed(second[40:] + first[:5]) == [(2, 2, [b"b" * 80])]
    assert decoder.pending_bytes == 5


def test_big_frame_across_many_chunks(backend: Backend) -> None:
    w = backend.wire
    value = bytes(range(256)) * 4096  # 1 MiB
    frame = w.encode_frame(9, 9, [value, "tail"])
    decoder = w.FrameDecoder(limits.DEFAULT_FRAME_SIZE_BYTES)
    got = []
    chunk = 65536
    for start in range(0, len(frame), chunk):
        got.extend(decoder.feed(frame[start : start + chunk]))
        assert decoder.pending_bytes < len(frame)
    assert got == [(9, 9, [value, "tail"])]
    assert decoder.pending_bytes == 0


def test_feed_empty_chunk(backend: Backend) -> None:
    decoder = backend.wire.FrameDecoder(1024)
    assert decoder.feed(b"") == []
    assert decoder.feed(golden_frame()[:3]) == []
    assert decoder.feed(b"") == []
    assert decoder.pending_bytes == 3


def test_decoder_stays_poisoned(backend: Backend) -> None:
    w = backend.wire
    decoder = w.FrameDecoder(1024)
    bad = bytearray(golden_frame())
    bad[-1] ^= 1
    with pytest.raises(errors.ChecksumMismatch) as first:
        decoder.feed(golden_frame() + bytes(bad))
    assert decoder.pending_bytes == 0
    for _ in range(2):
        with pytest.raises(errors.ChecksumMismatch) as again:
            decoder.feed(golden_frame())
        assert str(again.value) == str(first.value)
    assert "poisoned=True" in repr(decoder)


def test_bad_chunk_type_poisons(backend: Backend) -> None:
    decoder = backend.wire.FrameDecoder(1024)
    with pytest.raises(errors.FrameError, match="must be bytes"):
        decoder.feed("text")
    with pytest.raises(errors.FrameError, match="must be bytes"):
        decoder.feed(golden_frame())


def test_decoder_repr(backend: Backend) -> None:
    decoder = backend.wire.FrameDecoder(1024)
    decoder.feed(golden_frame()[:4])
    assert "max_frame_bytes=1024" in repr(decoder)
    assert "pending_bytes=4" in repr(decoder)


# -- properties: laws on each backend --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(msg_type=msg_types, request_id=request_ids, fields=field_lists)
def test_law_round_trip(
    backend: Backend, msg_type: int, request_id: int, fields: list[Any]
) -> None:
    frame = backend.wire.encode_frame(msg_type, request_id, fields)
    got_type, got_id, got_fields = backend.wire.decode_frame(frame, MAX)
    assert (got_type, got_id) == (msg_type, request_id)
    assert norm(got_fields) == norm(as_decoded(fields))


@settings(max_examples=25, deadline=None)
@given(fields=field_lists)
def test_law_truncation_is_incomplete_or_error(backend: Backend, fields: list[Any]) -> None:
    frame = backend.wire.encode_frame(1, 2, fields)
    for cut in range(len(frame)):
        decoder = backend.wire.FrameDecoder(MAX)
        assert decoder.feed(frame[:cut]) == []
        with pytest.raises(errors.FrameError):
            backend.wire.decode_frame(frame[:cut], MAX)


@settings(max_examples=60, deadline=None)
@given(fields=field_lists, data=st.data())
def test_law_byte_flips_are_detected(backend: Backend, fields: list[Any], data: Any) -> None:
    frame = bytearray(backend.wire.encode_frame(1, 2, fields))
    flips = data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=4, unique=True))
    for i in flips:
        frame[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(errors.FrameError):  # ChecksumMismatch, FrameTooLarge or FrameError
        backend.wire.decode_frame(bytes(frame), MAX)


@settings(max_examples=40, deadline=None)
@given(frames=st.lists(st.tuples(msg_types, request_ids, field_lists), max_size=5), data=st.data())
def test_law_any_split_gives_the_same_frames(
    backend: Backend, frames: list[tuple[int, int, list[Any]]], data: Any
) -> None:
    stream = b"".join(backend.wire.encode_frame(*f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = backend.wire.FrameDecoder(MAX)
    got = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(decoder.feed(stream[start:stop]))
    assert norm(got) == norm([(t, i, as_decoded(v)) for t, i, v in frames])
    assert decoder.pending_bytes == 0


@settings(max_examples=60, deadline=None)
@given(body_len=st.integers(0, 2**32 - 1), max_frame_bytes=st.integers(29, 1 << 20))
def test_law_oversized_length_is_too_large(
    backend: Backend, body_len: int, max_frame_bytes: int
) -> None:
    header = b"DY\x01\x01\x00" + struct.pack(">QI", 5, body_len)
    total = HEADER + body_len + CHECKSUM
    decoder = backend.wire.FrameDecoder(max_frame_bytes)
    if total > max_frame_bytes:
        with pytest.raises(errors.FrameTooLarge):
            decoder.feed(header)
        assert decoder.pending_bytes == 0
    elif body_len < 4:
        with pytest.raises(errors.FrameError, match="shorter than its field count"):
            decoder.feed(header)
    else:
        assert decoder.feed(header) == []
        assert decoder.pending_bytes == HEADER


@settings(max_examples=40, deadline=None)
@given(bad=st.sampled_from([{}, set(), object(), bytearray(), 2**63, -(2**63) - 1]), data=st.data())
def test_law_unencodable_values_are_encode_errors(backend: Backend, bad: Any, data: Any) -> None:
    fields = data.draw(field_lists)
    position = data.draw(st.integers(0, len(fields)))
    fields.insert(position, bad if data.draw(st.booleans()) else [bad])
    with pytest.raises(errors.EncodeError):
        backend.wire.encode_frame(1, 1, fields)


# -- properties: every built backend agrees --------------------------------------------------------


def all_agree(call: Callable[[Backend], Any]) -> Any:
    results = [outcome(functools.partial(call, b)) for b in BACKENDS]
    for backend, result in zip(BACKENDS, results, strict=True):
        assert result == results[0], f"{backend.name} differs from {BACKENDS[0].name}"
    return results[0]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg_type=msg_types, request_id=request_ids, fields=field_lists)
def test_backends_encode_identical_bytes(msg_type: int, request_id: int, fields: list[Any]) -> None:
    result = all_agree(lambda b: b.wire.encode_frame(msg_type, request_id, fields))
    assert result[0] == "ok"
    frame = result[1][1]
    assert all_agree(lambda b: b.wire.decode_frame(frame, MAX))[0] == "ok"


@settings(max_examples=80, deadline=None)
@given(
    msg_type=st.integers(-2, 258) | st.booleans(),
    request_id=st.integers(-2, 2**64 + 1),
    fields=st.lists(values | st.sampled_from([{}, object(), 2**64, "\udcff"]), max_size=4),
)
def test_backends_agree_on_encode_errors(msg_type: Any, request_id: int, fields: list[Any]) -> None:
    all_agree(lambda b: b.wire.encode_frame(msg_type, request_id, fields))


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200), max_frame_bytes=st.integers(29, 4096))
def test_backends_agree_on_random_bytes(data: bytes, max_frame_bytes: int) -> None:
    all_agree(lambda b: b.wire.decode_frame(data, max_frame_bytes))
    all_agree(lambda b: b.wire.FrameDecoder(max_frame_bytes).feed(data))


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=120), prefix=st.sampled_from([b"", b"\x00\x00\x00\x01"]))
def test_backends_agree_on_random_bodies(body: bytes, prefix: bytes) -> None:
    # A correct checksum, so the body parser itself is fuzzed: same value or same error.
    frame = raw_frame(prefix + body)
    all_agree(lambda b: b.wire.decode_frame(frame, MAX))


@settings(max_examples=80, deadline=None)
@given(fields=field_lists, data=st.data())
def test_backends_agree_on_mutated_frames(fields: list[Any], data: Any) -> None:
    frame = bytearray(BACKENDS[-1].wire.encode_frame(4, 4, fields))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # re-seal, so that the body parser sees the damage
        frame[-8:] = struct.pack(">Q", xxhash.xxh3_64_intdigest(bytes(frame[:-8])))
    cut = data.draw(st.integers(0, len(frame) + 3))
    damaged = bytes(frame[:cut]) + b"\x00" * max(0, cut - len(frame))
    all_agree(lambda b: b.wire.decode_frame(damaged, MAX))
    chunks = data.draw(st.lists(st.integers(1, 40), max_size=6))

    def feed_in_chunks(b: Backend) -> Any:
        decoder = b.wire.FrameDecoder(MAX)
        got, pos = [], 0
        for size in [*chunks, len(damaged)]:
            got.extend(decoder.feed(damaged[pos : pos + size]))
            pos += size
        return got, decoder.pending_bytes

    all_agree(feed_in_chunks)


def test_backends_agree_after_poisoning() -> None:
    def poisoned_twice(b: Backend) -> Any:
        decoder = b.wire.FrameDecoder(1024)
        first = outcome(lambda: decoder.feed(b"DY\x01\x00\x00" + struct.pack(">QI", 0, 2000)))
        second = outcome(lambda: decoder.feed(golden_frame()))
        return first, second, decoder.pending_bytes

    results = [poisoned_twice(b) for b in BACKENDS]
    assert all(r == results[0] for r in results)
    first, second, pending = results[0]
    assert first == second
    assert first[:2] == ("error", errors.FrameTooLarge)
    assert pending == 0
