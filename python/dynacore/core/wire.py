"""wire: the frame and field codec of every dynacore message (pure-Python twin).

Owns the frame layout (docs/wire.md), the field encoding, the bounds the decoder enforces and the
streaming FrameDecoder. Cython compiles this same file as dynacore._cy.wire; native/src/wire.rs is
the Rust twin. All three produce the same bytes, and the same error class and message, for every
input. Frame: magic "DY", format version, msg type (u8), flags (u8, 0), request id (u64), body
length (u32), body, xxh3-64 of header+body (u64); every integer big-endian.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any, TypeAlias

from xxhash import xxh3_64_intdigest

from dynacore.errors import ChecksumMismatch, ConfigError, EncodeError, FrameError, FrameTooLarge
from dynacore.limits import MAX_FRAME_SIZE_BYTES

Value: TypeAlias = "bool | int | float | bytes | str | list[Value] | None"
Frame: TypeAlias = tuple[int, int, list[Value]]

MAGIC = b"DY"
FORMAT_VERSION = 1
HEADER_SIZE = 17  # magic 2, version 1, msg type 1, flags 1, request id 8, body length 4
CHECKSUM_SIZE = 8
FIELD_COUNT_SIZE = 4
MIN_FRAME_SIZE_BYTES = HEADER_SIZE + FIELD_COUNT_SIZE + CHECKSUM_SIZE
MAX_DEPTH = 32

TAG_NONE = 0
TAG_FALSE = 1
TAG_TRUE = 2
TAG_INT = 3
TAG_FLOAT = 4
TAG_BYTES = 5
TAG_STR = 6
TAG_LIST = 7

_MAGIC0 = MAGIC[0]
_MAGIC1 = MAGIC[1]
_BODY_LENGTH_OFFSET = 13
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1
# A bytes or str field of n bytes fits while len(out) + n <= _BLOB_ROOM (tag, length, checksum);
# checked before the field is copied, at the same points as the Rust twin's FrameSizer.
_BLOB_ROOM = MAX_FRAME_SIZE_BYTES - 1 - 4 - CHECKSUM_SIZE

_HEADER = Struct(">2sBBBQI")  # magic, version, msg type, flags, request id, body length
_U32 = Struct(">I")
_U64 = Struct(">Q")
_I64 = Struct(">q")
_F64 = Struct(">d")
_TAG_U32 = Struct(">BI")
_TAG_I64 = Struct(">Bq")
_TAG_F64 = Struct(">Bd")

# Messages shared with native/src/wire.rs (the parity tests compare them).
_MSG_TRUNCATED_FIELD = "truncated field"
_MSG_BAD_UTF8 = "str field is not valid UTF-8"
_MSG_CHECKSUM = "checksum mismatch"
_MSG_BAD_MAGIC = "bad magic: not a dynacore frame"
_MSG_BAD_DATA = "frame data must be bytes, bytearray or memoryview"
_MSG_MSG_TYPE = "msg_type must be an int in [0, 255]"
_MSG_REQUEST_ID = "request_id must be an int in [0, 2**64 - 1]"
_MSG_FIELDS = "fields must be a list or tuple"
_MSG_INT_RANGE = "int field out of the signed 64-bit range"
_MSG_SURROGATES = "str field is not valid UTF-8 (it holds surrogates)"
_MSG_TOO_DEEP = f"lists nested deeper than {MAX_DEPTH}"
_MSG_ENCODE_TOO_LARGE = f"encoded frame exceeds {MAX_FRAME_SIZE_BYTES} bytes"
_MSG_MAX_FRAME = (
    f"max_frame_bytes must be an int in [{MIN_FRAME_SIZE_BYTES}, {MAX_FRAME_SIZE_BYTES}]"
)


def _is_plain_int(obj: object) -> bool:
    return isinstance(obj, int) and not isinstance(obj, bool)


def _check_max_frame_bytes(max_frame_bytes: int) -> None:
    if not _is_plain_int(max_frame_bytes) or not (
        MIN_FRAME_SIZE_BYTES <= max_frame_bytes <= MAX_FRAME_SIZE_BYTES
    ):
        raise ConfigError(_MSG_MAX_FRAME)


# -- encoding --------------------------------------------------------------------------------------


def encode_frame(msg_type: int, request_id: int, fields: Sequence[Value]) -> bytes:
    """One frame holding `fields`; EncodeError for a value the wire cannot carry."""
    if not _is_plain_int(msg_type) or not 0 <= msg_type <= 255:
        raise EncodeError(_MSG_MSG_TYPE)
    if not _is_plain_int(request_id) or not 0 <= request_id <= _U64_MAX:
        raise EncodeError(_MSG_REQUEST_ID)
    if not isinstance(fields, (list, tuple)):
        raise EncodeError(_MSG_FIELDS)
    out = bytearray(_HEADER.pack(MAGIC, FORMAT_VERSION, msg_type, 0, request_id, 0))
    _put_items(out, fields, 0)
    if len(out) + CHECKSUM_SIZE > MAX_FRAME_SIZE_BYTES:
        raise EncodeError(_MSG_ENCODE_TOO_LARGE)
    _U32.pack_into(out, _BODY_LENGTH_OFFSET, len(out) - HEADER_SIZE)
    out += _U64.pack(xxh3_64_intdigest(out))
    return bytes(out)


def _put_items(out: bytearray, items: list[Any] | tuple[Any, ...], depth: int) -> None:
    """Appends a count and then every item (pre-order); `depth` counts the enclosing lists.

    Items are `Any` because the exact-type dispatch below (one `type()` call per item, the fast
    path) is not a narrowing mypy follows; each branch only uses what its type check proves.
    """
    count = len(items)
    if count > MAX_FRAME_SIZE_BYTES:
        raise EncodeError(_MSG_ENCODE_TOO_LARGE)
    out += _U32.pack(count)
    for v in items:
        t = type(v)
        if t is bytes:
            if len(out) + len(v) > _BLOB_ROOM:
                raise EncodeError(_MSG_ENCODE_TOO_LARGE)
            out += _TAG_U32.pack(TAG_BYTES, len(v))
            out += v
        elif t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                raise EncodeError(_MSG_INT_RANGE)
            out += _TAG_I64.pack(TAG_INT, v)
        elif t is str:
            _put_str(out, v)
        elif v is None:
            out.append(TAG_NONE)
        elif t is bool:
            out.append(TAG_TRUE if v else TAG_FALSE)
        elif t is float:
            out += _TAG_F64.pack(TAG_FLOAT, v)
        elif t is list or t is tuple:
            _put_list(out, v, depth)
        else:
            _put_subclass(out, v, depth)


def _put_str(out: bytearray, v: str) -> None:
    try:
        raw = v.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(_MSG_SURROGATES) from None
    if len(out) + len(raw) > _BLOB_ROOM:
        raise EncodeError(_MSG_ENCODE_TOO_LARGE)
    out += _TAG_U32.pack(TAG_STR, len(raw))
    out += raw


def _put_list(out: bytearray, v: list[Value] | tuple[Value, ...], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise EncodeError(_MSG_TOO_DEEP)
    out.append(TAG_LIST)
    _put_items(out, v, depth + 1)


def _put_subclass(out: bytearray, v: object, depth: int) -> None:
    """Values of a subclass of a supported type are encoded as that type; others are refused."""
    if isinstance(v, int):  # bool cannot be subclassed, so this is never a bool
        if not _INT_MIN <= v <= _INT_MAX:
            raise EncodeError(_MSG_INT_RANGE)
        out += _TAG_I64.pack(TAG_INT, v)
    elif isinstance(v, float):
        out += _TAG_F64.pack(TAG_FLOAT, v)
    elif isinstance(v, bytes):
        if len(out) + len(v) > _BLOB_ROOM:
            raise EncodeError(_MSG_ENCODE_TOO_LARGE)
        out += _TAG_U32.pack(TAG_BYTES, len(v))
        out += v
    elif isinstance(v, str):
        _put_str(out, v)
    elif isinstance(v, (list, tuple)):
        _put_list(out, v, depth)
    else:
        raise EncodeError(f"cannot encode a value of type {type(v).__name__}")


# -- decoding --------------------------------------------------------------------------------------


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes):
        return bytes(data)
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise FrameError(_MSG_BAD_DATA)


def _check_header(data: bytes | bytearray, pos: int, avail: int, max_frame_bytes: int) -> int:
    """Checks the `avail` bytes of a frame start at `pos`: the frame's total size once the whole
    header is there, -1 while it is incomplete; an error as soon as a present byte is wrong."""
    if avail <= 0:
        return -1
    if data[pos] != _MAGIC0 or (avail > 1 and data[pos + 1] != _MAGIC1):
        raise FrameError(_MSG_BAD_MAGIC)
    if avail > 2 and data[pos + 2] != FORMAT_VERSION:
        raise FrameError(f"unsupported wire format version {data[pos + 2]}")
    if avail > 4 and data[pos + 4] != 0:
        raise FrameError(f"reserved flags are set: {data[pos + 4]}")
    if avail < HEADER_SIZE:
        return -1
    body_len: int = _U32.unpack_from(data, pos + _BODY_LENGTH_OFFSET)[0]
    total = HEADER_SIZE + body_len + CHECKSUM_SIZE
    if total > max_frame_bytes:
        raise FrameTooLarge(f"frame of {total} bytes exceeds max_frame_bytes {max_frame_bytes}")
    if body_len < FIELD_COUNT_SIZE:
        raise FrameError(f"body of {body_len} bytes is shorter than its field count")
    return total


def decode_frame(frame: bytes, max_frame_bytes: int) -> Frame:
    """Decodes exactly one whole frame: (msg_type, request_id, fields)."""
    _check_max_frame_bytes(max_frame_bytes)
    data = _as_bytes(frame)
    n = len(data)
    total = _check_header(data, 0, n, max_frame_bytes)
    if total < 0:
        raise FrameError(f"truncated frame: {n} bytes, the header needs {HEADER_SIZE}")
    if n < total:
        raise FrameError(f"truncated frame: {n} of {total} bytes")
    if n > total:
        raise FrameError(f"{n - total} trailing bytes after the frame")
    return _decode_checked(data, 0, total)


def _decode_checked(data: bytes, pos: int, total: int) -> Frame:
    """Decodes the frame of `total` bytes at `pos`, whose header passed _check_header."""
    assert total >= MIN_FRAME_SIZE_BYTES and pos + total <= len(data)
    end = pos + total - CHECKSUM_SIZE
    if pos == 0 and total == len(data):
        actual = xxh3_64_intdigest(data[:end]) if total < 4096 else _digest_view(data, pos, end)
    else:
        actual = _digest_view(data, pos, end)
    if actual != _U64.unpack_from(data, end)[0]:
        raise ChecksumMismatch(_MSG_CHECKSUM)
    start = pos + HEADER_SIZE
    count: int = _U32.unpack_from(data, start)[0]
    start += FIELD_COUNT_SIZE
    if count > end - start:
        raise FrameError(f"field count {count} exceeds the body")
    fields, stop = _decode_items(data, start, end, count, 0)
    if stop != end:
        raise FrameError(f"{end - stop} trailing bytes in the body")
    request_id: int = _U64.unpack_from(data, pos + 5)[0]
    return (data[pos + 3], request_id, fields)


def _digest_view(data: bytes, pos: int, end: int) -> int:
    with memoryview(data) as view:
        return int(xxh3_64_intdigest(view[pos:end]))


def _decode_items(
    data: bytes, pos: int, end: int, count: int, depth: int
) -> tuple[list[Value], int]:
    """Decodes `count` items from `pos` (list nesting `depth`); returns them and the next pos."""
    items: list[Value] = []
    append = items.append
    for _ in range(count):
        if pos >= end:
            raise FrameError(_MSG_TRUNCATED_FIELD)
        tag = data[pos]
        pos += 1
        if tag == TAG_BYTES or tag == TAG_STR:
            if end - pos < 4:
                raise FrameError(_MSG_TRUNCATED_FIELD)
            n = _U32.unpack_from(data, pos)[0]
            pos += 4
            if n > end - pos:
                raise FrameError(_MSG_TRUNCATED_FIELD)
            raw = data[pos : pos + n]
            pos += n
            if tag == TAG_BYTES:
                append(raw)
            else:
                try:
                    append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise FrameError(_MSG_BAD_UTF8) from None
        elif tag == TAG_INT or tag == TAG_FLOAT:
            if end - pos < 8:
                raise FrameError(_MSG_TRUNCATED_FIELD)
            append((_I64 if tag == TAG_INT else _F64).unpack_from(data, pos)[0])
            pos += 8
        elif tag == TAG_NONE:
            append(None)
        elif tag == TAG_FALSE:
            append(False)
        elif tag == TAG_TRUE:
            append(True)
        elif tag == TAG_LIST:
            if depth >= MAX_DEPTH:
                raise FrameError(_MSG_TOO_DEEP)
            if end - pos < 4:
                raise FrameError(_MSG_TRUNCATED_FIELD)
            n = _U32.unpack_from(data, pos)[0]
            pos += 4
            if n > end - pos:
                raise FrameError(f"list of {n} items exceeds the body")
            sub, pos = _decode_items(data, pos, end, n, depth + 1)
            append(sub)
        else:
            raise FrameError(f"unknown field tag {tag}")
    return items, pos


# -- streaming -------------------------------------------------------------------------------------


class FrameDecoder:
    """Cuts a byte stream into frames: any split into chunks yields the same frames.

    Holds at most one incomplete frame, and checks a frame's announced size against
    max_frame_bytes as soon as its header is in, before buffering its body. After any error the
    decoder is poisoned: every later feed raises the same error (class and message).
    """

    __slots__ = ("_buf", "_error", "_max_frame_bytes", "_need")

    def __init__(self, max_frame_bytes: int) -> None:
        _check_max_frame_bytes(max_frame_bytes)
        self._max_frame_bytes: int = max_frame_bytes
        self._buf = bytearray()
        self._need = 0  # total size of the buffered frame once its header is in, else 0
        self._error: FrameError | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes of the incomplete frame held back."""
        return len(self._buf)

    def __repr__(self) -> str:
        return (
            f"FrameDecoder(max_frame_bytes={self._max_frame_bytes}, "
            f"pending_bytes={len(self._buf)}, poisoned={self._error is not None})"
        )

    def feed(self, data: bytes) -> list[Frame]:
        """Feeds the next bytes of the stream; returns every frame they complete."""
        error = self._error
        if error is not None:
            raise type(error)(*error.args)
        try:
            return self._feed(_as_bytes(data))
        except FrameError as exc:
            self._error = exc
            self._buf = bytearray()
            self._need = 0
            raise

    def _feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        pos = 0
        if self._buf:
            pos = self._complete_pending(data, frames)
            if self._buf:
                return frames
        n = len(data)
        max_frame_bytes = self._max_frame_bytes
        while pos < n:
            total = _check_header(data, pos, n - pos, max_frame_bytes)
            if 0 < total <= n - pos:
                frames.append(_decode_checked(data, pos, total))
                pos += total
            else:
                self._need = max(total, 0)
                with memoryview(data) as view:
                    self._buf += view[pos:]
                break
        assert len(self._buf) < max(self._need, HEADER_SIZE)
        return frames

    def _complete_pending(self, data: bytes, frames: list[Frame]) -> int:
        """Completes the buffered frame from the start of `data`; returns the bytes used."""
        buf = self._buf
        pos = 0
        if len(buf) < HEADER_SIZE:
            pos = min(HEADER_SIZE - len(buf), len(data))
            buf += data[:pos]
            total = _check_header(buf, 0, len(buf), self._max_frame_bytes)
            if total < 0:
                return pos
            self._need = total
        take = min(self._need - len(buf), len(data) - pos)
        with memoryview(data) as view:
            buf += view[pos : pos + take]
        pos += take
        if len(buf) < self._need:
            return pos
        frame = bytes(buf)
        self._buf = bytearray()
        self._need = 0
        frames.append(_decode_checked(frame, 0, len(frame)))
        return pos


__all__ = [
    "CHECKSUM_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_FRAME_SIZE_BYTES",
    "MIN_FRAME_SIZE_BYTES",
    "Frame",
    "FrameDecoder",
    "Value",
    "decode_frame",
    "encode_frame",
]
