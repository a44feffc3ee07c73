"""The embedded Cache's value codec: how a Python value becomes the bytes stored in a version set
(one tag byte, then the payload) and back, and the pluggable serializers for objects that are
neither bytes, str nor int. The default serializer is msgpack (safe); JSON is the other safe one;
pickle is used only when a caller passes `PickleSerializer()` explicitly, and a cache with another
serializer refuses to unpickle a value it finds.

Stored layout: ``tag u8 ‖ payload``, tag one of

- ``B`` bytes (payload as is), ``S`` str (UTF-8), ``C`` counter (see counters.py; ints are
  counters, so that ``incr`` works on them);
- the tag of a serializer: ``M`` msgpack, ``J`` JSON, ``P`` pickle, or a custom serializer's
  own byte (any byte but B, S, C, M, J, P).

Values written through `dynacore.Client` carry no tag: `encode_value`/`decode_value` are public
so that Client users can read and write a Cache's values.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Final, Protocol, runtime_checkable

import msgpack

from dynacore import counters
from dynacore.errors import SerializationError

TAG_BYTES: Final = ord("B")
TAG_STR: Final = ord("S")
TAG_COUNTER: Final = ord("C")
TAG_MSGPACK: Final = ord("M")
TAG_JSON: Final = ord("J")
TAG_PICKLE: Final = ord("P")
_B: Final = b"B"
_S: Final = b"S"


@runtime_checkable
class Serializer(Protocol):
    """Turns objects that are not bytes, str or int into bytes and back.

    `tag` is the byte stored in front of every value it wrote, so that a reader knows the
    format. `dumps` raises SerializationError (or TypeError/ValueError, which the cache turns
    into SerializationError) for objects it cannot encode.
    """

    tag: int
    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class MsgpackSerializer:
    """msgpack: None, bool, int, float, str, bytes, lists, tuples (read back as lists), dicts."""

    tag = TAG_MSGPACK
    name = "msgpack"

    def dumps(self, obj: Any) -> bytes:
        try:
            data: bytes = msgpack.packb(obj, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"msgpack cannot encode {type(obj).__name__}: {exc}") from exc
        return data

    def loads(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise SerializationError(f"corrupt msgpack value: {exc}") from exc


class JsonSerializer:
    """JSON (UTF-8, compact): None, bool, int, float, str, lists, tuples (as lists), str-keyed
    dicts."""

    tag = TAG_JSON
    name = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"JSON cannot encode {type(obj).__name__}: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SerializationError(f"corrupt JSON value: {exc}") from exc


class PickleSerializer:
    """pickle: any picklable object. Unpickling runs code named by the data: use it only when
    every member of the cluster is trusted. Never the default; pass it explicitly."""

    tag = TAG_PICKLE
    name = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        if not 2 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise SerializationError(f"pickle protocol must be in [2, {pickle.HIGHEST_PROTOCOL}]")
        self.protocol = protocol

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=self.protocol)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(f"pickle cannot encode {type(obj).__name__}: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)  # the user chose pickle explicitly
        except Exception as exc:
            raise SerializationError(f"corrupt pickle value: {exc}") from exc


_SAFE_READERS: Final[dict[int, Serializer]] = {
    TAG_MSGPACK: MsgpackSerializer(),
    TAG_JSON: JsonSerializer(),
}


def default_serializer() -> Serializer:
    """The serializer a Cache uses when none is given: msgpack (never pickle)."""
    return MsgpackSerializer()


def check_serializer(serializer: object) -> Serializer:
    """`serializer` if it has a usable tag, name, dumps and loads; else SerializationError."""
    if not isinstance(serializer, Serializer):
        raise SerializationError(
            f"a serializer has tag, name, dumps and loads; got {type(serializer).__name__}"
        )
    tag = serializer.tag
    if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag <= 255:
        raise SerializationError(f"a serializer's tag is one byte (0..255), got {tag!r}")
    if tag in (TAG_BYTES, TAG_STR, TAG_COUNTER):
        raise SerializationError(f"tag {chr(tag)!r} is reserved for bytes, str and counters")
    builtin = {
        TAG_MSGPACK: MsgpackSerializer,
        TAG_JSON: JsonSerializer,
        TAG_PICKLE: PickleSerializer,
    }
    if tag in builtin and not isinstance(serializer, builtin[tag]):
        raise SerializationError(f"tag {chr(tag)!r} belongs to the {builtin[tag].__name__}")
    return serializer


class ValueCodec:
    """Encodes values for storage and decodes stored values, with one chosen serializer.

    bytes, bytearray and memoryview come back as bytes; str as str; int (not bool) as int
    (stored as a counter); everything else goes through the serializer. Values written with
    pickle are refused unless this codec's serializer is pickle; values written with msgpack or
    JSON are always readable (both are safe).
    """

    def __init__(self, serializer: Serializer | None = None) -> None:
        self.serializer = check_serializer(serializer or default_serializer())
        self._tag = bytes((self.serializer.tag,))

    def encode(self, value: Any, *, now_ms: int) -> bytes:
        """The stored bytes of a value; SerializationError when the serializer refuses it."""
        kind = type(value)
        if isinstance(value, bytes):
            return _B + value
        if isinstance(value, str):
            return _S + value.encode("utf-8")
        if isinstance(value, bytearray | memoryview):
            return _B + bytes(value)
        if kind is int and counters.fits(value):
            return bytes((TAG_COUNTER,)) + counters.of_value(value, now_ms).encode()
        try:
            return self._tag + self.serializer.dumps(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"{self.serializer.name} cannot encode {kind.__name__}: {exc}"
            ) from exc

    def decode(self, data: bytes) -> Any:
        """The value of stored bytes; SerializationError for an unknown tag, a refused pickle or a
        corrupt payload."""
        if not data:
            raise SerializationError("empty stored value (no type tag): not written by a Cache")
        tag = data[0]
        if tag == TAG_BYTES:
            return data[1:]
        if tag == TAG_STR:
            try:
                return data[1:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SerializationError(f"stored str is not UTF-8: {exc}") from exc
        if tag == TAG_COUNTER:
            return counters.decode(data[1:]).value
        return self._reader(tag).loads(data[1:])

    def _reader(self, tag: int) -> Serializer:
        if tag == self.serializer.tag:
            return self.serializer
        reader = _SAFE_READERS.get(tag)
        if reader is not None:
            return reader
        if tag == TAG_PICKLE:
            raise SerializationError(
                "the value was written with pickle; this cache refuses to unpickle "
                "(pass serializer=PickleSerializer() to read it, only if you trust every writer)"
            )
        raise SerializationError(f"unknown value tag {tag:#04x}: not written by a Cache")


def is_counter(data: bytes) -> bool:
    """True when stored bytes hold a counter (an int)."""
    return bool(data) and data[0] == TAG_COUNTER


def encode_value(value: Any, serializer: Serializer | None = None, *, now_ms: int = 0) -> bytes:
    """The stored bytes of `value`, as a Cache with `serializer` writes them."""
    return ValueCodec(serializer).encode(value, now_ms=now_ms)


def decode_value(data: bytes, serializer: Serializer | None = None) -> Any:
    """The value of bytes a Cache stored (read through dynacore.Client, for instance)."""
    return ValueCodec(serializer).decode(data)


__all__ = [
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "ValueCodec",
    "decode_value",
    "default_serializer",
    "encode_value",
    "is_counter",
]
