"""The value envelope, object keys, visibility (tombstones, expiry) and LWW order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynacore import objects
from dynacore._backend import versions
from dynacore.errors import ConfigError, KeyTooLarge, ValueTooLarge, VersionError
from dynacore.limits import Limits

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@settings(max_examples=200)
@given(data=st.binary(max_size=64), ts=U64, expiry=U64, tombstone=st.booleans())
def test_envelope_round_trip(data: bytes, ts: int, expiry: int, tombstone: bool) -> None:
    raw = objects.encode_envelope(data, timestamp_ms=ts, expiry_ms=expiry, tombstone=tombstone)
    env = objects.decode_envelope(raw)
    assert env.timestamp_ms == ts and env.expiry_ms == expiry and env.tombstone == tombstone
    assert env.data == (b"" if tombstone else data)


@settings(max_examples=200)
@given(a=st.binary(max_size=8), b=st.binary(max_size=8), ta=U64, tb=U64, da=st.booleans())
def test_byte_order_is_age_order(a: bytes, b: bytes, ta: int, tb: int, da: bool) -> None:
    """A later timestamp always sorts after an earlier one, tombstone or not (what lww needs)."""
    raw_a = objects.encode_envelope(a, timestamp_ms=ta, tombstone=da)
    raw_b = objects.encode_envelope(b, timestamp_ms=tb)
    if ta < tb:
        assert raw_a < raw_b
    elif ta > tb:
        assert raw_a > raw_b


def test_tombstone_wins_a_timestamp_tie() -> None:
    live = objects.encode_envelope(b"\xff" * 4, timestamp_ms=5)
    dead = objects.encode_envelope(b"", timestamp_ms=5, tombstone=True)
    assert dead > live


@pytest.mark.parametrize(
    "raw", [b"", b"\x00" * 16, b"\x00" * 8 + b"\x02" + b"\x00" * 8, b"\x00" * 8 + b"\x80" * 9]
)
def test_decode_rejects(raw: bytes) -> None:
    with pytest.raises(VersionError):
        objects.decode_envelope(raw)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ConfigError):
        objects.encode_envelope(b"x", timestamp_ms=-1)
    with pytest.raises(ConfigError):
        objects.encode_envelope(b"x", timestamp_ms=0, expiry_ms=1 << 64)


def test_visibility() -> None:
    live = objects.decode_envelope(objects.encode_envelope(b"v", timestamp_ms=1))
    expiring = objects.decode_envelope(objects.encode_envelope(b"v", timestamp_ms=1, expiry_ms=10))
    dead = objects.decode_envelope(objects.encode_envelope(b"", timestamp_ms=1, tombstone=True))
    assert live.visible(10**15)
    assert expiring.visible(9) and not expiring.visible(10)
    assert not dead.visible(0)


def test_object_keys() -> None:
    assert objects.object_key("", b"k") == b"\x00k"
    assert objects.object_key("ns", b"k") == b"\x02nsk"
    # keys of different namespaces never collide
    assert objects.object_key("", b"\x02nsk") != objects.object_key("ns", b"k")
    for ns, key in [("", b""), ("ns", b"k"), ("é", b"\x00\xff")]:
        assert objects.split_object_key(objects.object_key(ns, key)) == (ns, key)
    with pytest.raises(ConfigError):
        objects.object_key("x" * 256, b"k")
    with pytest.raises(VersionError):
        objects.split_object_key(b"\x05ab")


def test_as_bytes() -> None:
    assert objects.as_bytes("é", "key") == "é".encode()
    assert objects.as_bytes(bytearray(b"ab"), "key") == b"ab"
    with pytest.raises(TypeError, match="key must be bytes or str, got int"):
        objects.as_bytes(3, "key")


def test_check_sizes() -> None:
    limits = Limits(key_size_bytes=4, value_size_bytes=8)
    objects.check_sizes(b"1234", b"12345678", limits)
    with pytest.raises(KeyTooLarge):
        objects.check_sizes(b"12345", None, limits)
    with pytest.raises(ValueTooLarge):
        objects.check_sizes(b"k", b"123456789", limits)


def _set_of(*envelopes: bytes) -> bytes:
    """Concurrent siblings: each written by its own node with an empty context."""
    result = versions.empty()
    for index, envelope in enumerate(envelopes):
        result = versions.sync(
            result, versions.update(versions.empty(), b"", envelope, f"n{index}")
        )
    return result


def test_visible_values_and_is_dead() -> None:
    live = objects.encode_envelope(b"live", timestamp_ms=100)
    expiring = objects.encode_envelope(b"soon", timestamp_ms=100, expiry_ms=200)
    tomb = objects.encode_envelope(b"", timestamp_ms=150, tombstone=True)
    both = _set_of(live, expiring, tomb)
    assert versions.size(both) == 3
    assert sorted(objects.visible_values(both, 150)) == [b"live", b"soon"]
    assert objects.visible_values(both, 200) == [b"live"]
    assert not objects.is_dead(both, 10**12)
    assert objects.is_dead(_set_of(tomb, expiring), 200)
    assert objects.is_dead(None, 0) and objects.visible_values(None, 0) == []


def test_lww_keeps_the_newest_even_against_a_tombstone() -> None:
    old_tomb = objects.encode_envelope(b"", timestamp_ms=100, tombstone=True)
    newer = objects.encode_envelope(b"new", timestamp_ms=200)
    resolved = versions.lww(_set_of(newer, old_tomb))
    assert objects.visible_values(resolved, 0) == [b"new"]


def test_digest_is_of_the_encoded_set() -> None:
    s = _set_of(objects.encode_envelope(b"x", timestamp_ms=1))
    assert objects.object_digest(s) == objects.object_digest(bytes(s))
    assert len(objects.object_digest(s)) == 32
