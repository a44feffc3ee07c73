"""Byte-level helpers for the canonical cluster-state encoding: a bounds-checked reader and writer.

Every malformed input raises ClusterError (never IndexError, struct.error or UnicodeDecodeError),
so that a gossiped state from a faulty or hostile peer is refused with a typed error.
"""

from __future__ import annotations

import struct

from dynacore.errors import ClusterError

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
U64_MAX = (1 << 64) - 1


class Writer:
    """Appends big-endian integers and length-prefixed byte strings to a buffer."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        self._parts.append(data)

    def u8(self, value: int) -> None:
        self._parts.append(_U8.pack(value))

    def u32(self, value: int) -> None:
        self._parts.append(_U32.pack(value))

    def u64(self, value: int) -> None:
        self._parts.append(_U64.pack(value))

    def text(self, value: str) -> None:
        """A UTF-8 string of at most 65535 bytes, prefixed by its u16 length."""
        data = value.encode("utf-8")
        self._parts.append(_U16.pack(len(data)))
        self._parts.append(data)

    def blob(self, data: bytes) -> None:
        """A byte string prefixed by its u32 length."""
        self._parts.append(_U32.pack(len(data)))
        self._parts.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads what Writer wrote; every read checks the remaining length first."""

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ClusterError(f"a cluster state decodes from bytes, not {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, size: int, what: str) -> bytes:
        if size > self.remaining:
            raise ClusterError(f"truncated cluster state: {what} needs {size} bytes")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def raw(self, size: int, what: str) -> bytes:
        return self._take(size, what)

    def u8(self, what: str) -> int:
        value: int = _U8.unpack(self._take(1, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self._take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = _U64.unpack(self._take(8, what))[0]
        return value

    def text(self, what: str) -> str:
        size: int = _U16.unpack(self._take(2, what))[0]
        data = self._take(size, what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ClusterError(f"{what} is not valid UTF-8") from exc

    def blob(self, what: str) -> bytes:
        return self._take(self.u32(what), what)

    def count(self, what: str, min_item_bytes: int, max_items: int) -> int:
        """A u32 item count, refused if above max_items or if the rest cannot hold that many."""
        assert min_item_bytes >= 1
        items = self.u32(what)
        if items > max_items:
            raise ClusterError(f"{what}: {items} items exceed the limit of {max_items}")
        if items * min_item_bytes > self.remaining:
            raise ClusterError(f"truncated cluster state: {what} announces {items} items")
        return items

    def finish(self) -> None:
        if self.remaining:
            raise ClusterError(f"{self.remaining} trailing bytes after the cluster state")
