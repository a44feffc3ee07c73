"""Throwaway stand-in for the wire codec (docs/contracts.md `wire`) until core/wire.py lands.

Used by tests/net only when the selected backend's wire module has no `encode_frame` yet. Layout:
magic "DCF1" | type u8 | request id u64 | body length u32 | xxh3-64 of body | msgpack body.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack
import xxhash

from dynacore.errors import ChecksumMismatch, EncodeError, FrameError, FrameTooLarge

MAGIC = b"DCF1"
_HEADER = struct.Struct(">4sBQIQ")
HEADER_SIZE = _HEADER.size
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


def _check(value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, float | bytes | str):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise EncodeError(f"int out of i64 range: {value}")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check(item)
        return
    raise EncodeError(f"cannot encode {type(value).__name__}")


def encode_frame(msg_type: int, request_id: int, fields: Sequence[Any]) -> bytes:
    if not 0 <= msg_type <= 255 or not 0 <= request_id < 1 << 64:
        raise EncodeError("msg_type is u8, request_id u64")
    _check(list(fields))
    body = bytes(msgpack.packb(list(fields), use_bin_type=True))
    header = _HEADER.pack(MAGIC, msg_type, request_id, len(body), xxhash.xxh3_64_intdigest(body))
    return header + body


def _parse_header(data: bytes | bytearray, max_frame_bytes: int) -> tuple[int, int, int, int]:
    magic, msg_type, request_id, size, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("bad magic")
    if HEADER_SIZE + size > max_frame_bytes:
        raise FrameTooLarge(f"frame of {HEADER_SIZE + size} bytes > {max_frame_bytes}")
    return msg_type, request_id, size, checksum


def _body(body: bytes, checksum: int) -> list[Any]:
    if xxhash.xxh3_64_intdigest(body) != checksum:
        raise ChecksumMismatch("checksum mismatch")
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:
        raise FrameError(f"bad body: {exc}") from exc
    if not isinstance(fields, list):
        raise FrameError("body is not a list")
    return fields


def decode_frame(frame: bytes, max_frame_bytes: int) -> tuple[int, int, list[Any]]:
    if len(frame) < HEADER_SIZE:
        raise FrameError("truncated header")
    msg_type, request_id, size, checksum = _parse_header(frame, max_frame_bytes)
    if len(frame) != HEADER_SIZE + size:
        raise FrameError("frame length mismatch")
    return msg_type, request_id, _body(frame[HEADER_SIZE:], checksum)


class FrameDecoder:
    def __init__(self, max_frame_bytes: int) -> None:
        self._max = max_frame_bytes
        self._buffer = bytearray()
        self._error: FrameError | None = None

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[int, int, list[Any]]]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        out = []
        try:
            while len(self._buffer) >= HEADER_SIZE:
                msg_type, request_id, size, checksum = _parse_header(self._buffer, self._max)
                if len(self._buffer) < HEADER_SIZE + size:
                    break
                body = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + size])
                del self._buffer[: HEADER_SIZE + size]
                out.append((msg_type, request_id, _body(body, checksum)))
        except FrameError as exc:
            self._error = exc
            raise
        return out
