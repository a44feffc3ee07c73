"""The cache's value codec: native bytes/str/int, safe serializers by default, pickle only on
request, typed errors for everything else."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynacore import serializers
from dynacore.errors import SerializationError
from dynacore.serializers import (
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    ValueCodec,
    decode_value,
    encode_value,
)

TRIGGERED: list[str] = []


class Exploit:
    """Unpickling this records a side effect: proof that a cache unpickled it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (TRIGGERED.append, ("unpickled!",))


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.binary() | st.text() | st.integers(-(1 << 63), (1 << 63) - 1))
def test_native_types_round_trip_with_their_type(value: bytes | str | int) -> None:
    stored = encode_value(value)
    back = decode_value(stored)
    assert back == value
    assert type(back) is type(value)


@given(JSONISH)
def test_msgpack_and_json_round_trip(value: Any) -> None:
    for serializer in (MsgpackSerializer(), JsonSerializer()):
        assert decode_value(encode_value(value, serializer), serializer) == value


def test_default_serializer_is_msgpack_not_pickle() -> None:
    codec = ValueCodec()
    assert isinstance(codec.serializer, MsgpackSerializer)
    assert encode_value([1, "a"])[0] == serializers.TAG_MSGPACK


def test_arbitrary_objects_are_refused_by_default() -> None:
    with pytest.raises(SerializationError):
        encode_value(Point(1, 2))
    with pytest.raises(SerializationError):
        encode_value({1, 2})
    with pytest.raises(SerializationError):
        encode_value(Point(1, 2), JsonSerializer())


def test_pickle_data_is_never_unpickled_by_default() -> None:
    stored = encode_value(Exploit(), PickleSerializer())
    assert stored[0] == serializers.TAG_PICKLE
    TRIGGERED.clear()
    for reader in (None, MsgpackSerializer(), JsonSerializer()):
        with pytest.raises(SerializationError, match="refuses to unpickle"):
            decode_value(stored, reader)
    assert TRIGGERED == []  # no code ran


def test_pickle_works_when_asked_for_explicitly() -> None:
    codec = ValueCodec(PickleSerializer())
    assert codec.decode(codec.encode(Point(3, 4), now_ms=0)) == Point(3, 4)
    # safe formats stay readable by a pickle cache
    assert codec.decode(encode_value({"a": 1})) == {"a": 1}


def test_ints_are_counters_and_huge_ints_use_the_serializer() -> None:
    assert serializers.is_counter(encode_value(7))
    assert not serializers.is_counter(encode_value(True))  # bool is not a counter
    assert decode_value(encode_value(True)) is True
    big = 1 << 63
    assert not serializers.is_counter(encode_value(big))
    assert decode_value(encode_value(big)) == big
    with pytest.raises(SerializationError):
        encode_value(1 << 70)  # msgpack stops at 64 bits


@pytest.mark.parametrize(
    "stored",
    [b"", b"\x00", b"Zabc", b"S\xff\xfe", b"M\xc1", b"J{", b"C\x00"],
)
def test_malformed_stored_values_are_typed_errors(stored: bytes) -> None:
    with pytest.raises(SerializationError):
        decode_value(stored)


def test_custom_serializers_need_a_free_tag() -> None:
    class Upper:
        tag = ord("U")
        name = "upper"

        def dumps(self, obj: Any) -> bytes:
            return str(obj).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    codec = ValueCodec(Upper())
    assert codec.decode(codec.encode(Point(1, 2), now_ms=0)).startswith("<")
    for bad_tag in (ord("B"), ord("S"), ord("C"), ord("P"), 256, -1):
        custom = Upper()
        custom.tag = bad_tag
        with pytest.raises(SerializationError):
            ValueCodec(custom)
    with pytest.raises(SerializationError):
        ValueCodec(object())  # type: ignore[arg-type]
    # a value written by a serializer this codec does not know is refused, not guessed
    with pytest.raises(SerializationError, match="unknown value tag"):
        ValueCodec().decode(codec.encode(Point(1, 2), now_ms=0))


def test_pickle_protocol_is_checked() -> None:
    with pytest.raises(SerializationError):
        PickleSerializer(protocol=1)
    assert PickleSerializer().protocol == pickle.HIGHEST_PROTOCOL
