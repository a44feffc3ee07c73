"""The stored object: the value envelope inside each version-set value, object keys (namespace +
user key), visibility (tombstones, expiry) and the Merkle digest of an object.

Envelope layout (all big-endian): ``timestamp_ms u64 ‖ flags u8 ‖ expiry_ms u64 ‖ data``;
flags bit 0 marks a tombstone, expiry 0 means "never". The timestamp comes first so that the
byte order of two envelopes is their age order, and `versions.lww` ("keeps the value that sorts
last") keeps the newest write, a delete included; at equal timestamps a tombstone sorts last.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dynacore._backend import merkle, versions
from dynacore.errors import ConfigError, KeyTooLarge, ValueTooLarge, VersionError
from dynacore.limits import Limits

_HEADER = struct.Struct(">QBQ")
HEADER_SIZE = _HEADER.size  # 17 bytes
FLAG_TOMBSTONE = 0x01
KNOWN_FLAGS = FLAG_TOMBSTONE
MAX_TIMESTAMP_MS = (1 << 64) - 1
MAX_NAMESPACE_BYTES = 255


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded version value."""

    timestamp_ms: int
    tombstone: bool
    expiry_ms: int  # 0: never expires
    data: bytes

    def visible(self, now_ms: int) -> bool:
        """True when this value is neither a tombstone nor expired at `now_ms`."""
        return not self.tombstone and not (self.expiry_ms and self.expiry_ms <= now_ms)


def as_bytes(value: object, what: str) -> bytes:
    """`value` as bytes: bytes-like as is, str as UTF-8; anything else is a TypeError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


def check_sizes(key: bytes, value: bytes | None, limits: Limits) -> None:
    """KeyTooLarge / ValueTooLarge when the user key or value breaks the limits."""
    if len(key) > limits.key_size_bytes:
        raise KeyTooLarge(f"key is {len(key)} bytes; the limit is {limits.key_size_bytes}")
    if value is not None and len(value) > limits.value_size_bytes:
        raise ValueTooLarge(f"value is {len(value)} bytes; the limit is {limits.value_size_bytes}")


def object_key(namespace: str, key: bytes) -> bytes:
    """The stored (and hashed) key of a user key in a namespace: ``len(ns) u8 ‖ ns ‖ key``.

    Every namespace, the default "" included, gets the prefix, so keys of different namespaces
    never collide.
    """
    ns = namespace.encode("utf-8")
    if len(ns) > MAX_NAMESPACE_BYTES:
        raise ConfigError(f"namespace is {len(ns)} bytes; the limit is {MAX_NAMESPACE_BYTES}")
    return bytes((len(ns),)) + ns + key


def split_object_key(stored: bytes) -> tuple[str, bytes]:
    """The inverse of object_key: (namespace, user key)."""
    if not stored or len(stored) < 1 + stored[0]:
        raise VersionError("stored key is shorter than its namespace prefix")
    size = stored[0]
    try:
        namespace = stored[1 : 1 + size].decode("utf-8")
    except UnicodeDecodeError:
        raise VersionError("stored key has a namespace that is not UTF-8") from None
    return namespace, stored[1 + size :]


def encode_envelope(
    data: bytes, *, timestamp_ms: int, expiry_ms: int = 0, tombstone: bool = False
) -> bytes:
    """Wrap a value (or a tombstone, whose data is empty) for storage in a version set."""
    if not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS or not 0 <= expiry_ms <= MAX_TIMESTAMP_MS:
        raise ConfigError("timestamps must fit in u64 milliseconds")
    flags = FLAG_TOMBSTONE if tombstone else 0
    return _HEADER.pack(timestamp_ms, flags, expiry_ms) + (b"" if tombstone else data)


def decode_envelope(raw: bytes) -> Envelope:
    """Decode one stored value; VersionError when it is not an envelope."""
    if len(raw) < HEADER_SIZE:
        raise VersionError(
            f"envelope of {len(raw)} bytes is shorter than its {HEADER_SIZE}-byte header"
        )
    timestamp_ms, flags, expiry_ms = _HEADER.unpack_from(raw)
    if flags & ~KNOWN_FLAGS:
        raise VersionError(f"envelope has unknown flags {flags:#04x}")
    return Envelope(timestamp_ms, bool(flags & FLAG_TOMBSTONE), expiry_ms, raw[HEADER_SIZE:])


def envelope_visible(raw: bytes, now_ms: int) -> bool:
    """True when an encoded envelope is neither a tombstone nor expired at now_ms."""
    return decode_envelope(raw).visible(now_ms)


def visible_envelopes(set_bytes: bytes | None, now_ms: int) -> list[bytes]:
    """The encoded envelopes of a version set that are live at now_ms, in the set's order."""
    if set_bytes is None:
        return []
    return [raw for raw in versions.values(set_bytes) if envelope_visible(raw, now_ms)]


def visible_values(set_bytes: bytes | None, now_ms: int) -> list[bytes]:
    """The user values of a version set that are live at now_ms (no tombstones, not expired)."""
    return [decode_envelope(raw).data for raw in visible_envelopes(set_bytes, now_ms)]


def is_dead(set_bytes: bytes | None, now_ms: int) -> bool:
    """True when the set holds no live value (absent, all tombstones or expired)."""
    return not visible_envelopes(set_bytes, now_ms)


def object_digest(set_bytes: bytes) -> bytes:
    """The Merkle leaf digest of a stored object (equal sets have equal encodings)."""
    return merkle.digest(set_bytes)
