"""Transport-level message layouts: errors by class name, handshake parsing, type checks."""

from __future__ import annotations

import pytest

from dynacore.errors import (
    AuthError,
    DynacoreError,
    ProtocolError,
    QuorumNotMet,
    RemoteError,
    StorageFull,
)
from dynacore.net import MsgType, Value
from dynacore.net import messages as m


def roundtrip(exc: BaseException) -> DynacoreError:
    msg_type, request_id, fields = m.error(9, exc)
    assert (msg_type, request_id) == (MsgType.ERROR, 9)
    return m.exception_from_error(fields)


def test_dynacore_errors_travel_by_class_name() -> None:
    back = roundtrip(StorageFull("map full"))
    assert type(back) is StorageFull
    assert str(back) == "map full"


def test_error_attributes_travel() -> None:
    back = roundtrip(QuorumNotMet("w=2 not met", acked=1, required=2))
    assert isinstance(back, QuorumNotMet)
    assert (back.acked, back.required, str(back)) == (1, 2, "w=2 not met")


def test_other_exceptions_become_remote_errors() -> None:
    back = roundtrip(ZeroDivisionError("division by zero"))
    assert type(back) is RemoteError
    assert str(back) == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize(
    "fields",
    [
        ["NoSuchError", "x", []],
        ["annotations", "x", []],  # a name in dynacore.errors that is not an exception class
        ["QuorumNotMet", "x", ["acked", 1]],  # missing a required attribute
    ],
)
def test_unknown_or_unbuildable_names_become_remote_errors(fields: list[Value]) -> None:
    back = m.exception_from_error(fields)
    assert type(back) is RemoteError
    assert "x" in str(back)


@pytest.mark.parametrize("fields", [[], [1, 2], ["AuthError"], [b"AuthError", "x"]])
def test_malformed_error_fields_are_remote_errors(fields: list[Value]) -> None:
    assert type(m.exception_from_error(fields)) is RemoteError


def test_bad_attrs_are_ignored() -> None:
    back = m.exception_from_error(["AuthError", "no", ["odd"]])
    assert type(back) is AuthError
    back = m.exception_from_error(["AuthError", "no", ["not an identifier", 1]])
    assert type(back) is AuthError


def test_error_messages_are_bounded() -> None:
    _, _, fields = m.error(1, AuthError("x" * 10_000))
    assert isinstance(fields[1], str)
    assert len(fields[1]) == m.ERROR_MESSAGE_MAX_CHARS


def test_handshake_round_trip() -> None:
    nonce = bytes(range(16))
    assert m.parse_challenge(m.challenge(nonce)) == nonce
    mac = m.auth_mac(b"secret", nonce)
    assert m.parse_auth(m.auth(mac, "node-1")) == (mac, "node-1")
    assert m.mac_matches(b"secret", nonce, mac)
    assert not m.mac_matches(b"other", nonce, mac)
    assert not m.mac_matches(b"secret", bytes(16), mac)
    assert m.parse_hello(m.hello("srv")) == "srv"


@pytest.mark.parametrize(
    "message",
    [
        (MsgType.CHALLENGE, 0, [2, bytes(16)]),  # other protocol version
        (MsgType.CHALLENGE, 0, [1, bytes(15)]),
        (MsgType.CHALLENGE, 0, [True, bytes(16)]),
        (MsgType.HELLO, 0, [1, bytes(16)]),  # a HELLO where the CHALLENGE should be
        (MsgType.CHALLENGE, 0, [1]),
    ],
)
def test_bad_challenges_are_protocol_errors(message: m.Message) -> None:
    with pytest.raises(ProtocolError):
        m.parse_challenge(message)


def test_an_error_in_place_of_a_handshake_step_raises_its_class() -> None:
    with pytest.raises(AuthError, match="wrong"):
        m.parse_hello(m.error(0, AuthError("wrong cluster secret")))


@pytest.mark.parametrize(
    "fields",
    [[bytes(32)], [bytes(31), "id"], [bytes(32), ""], [bytes(32), 5], [bytes(32), "x" * 256]],
)
def test_bad_auth_is_a_protocol_error(fields: list[Value]) -> None:
    with pytest.raises(ProtocolError):
        m.parse_auth((MsgType.AUTH, 0, fields))


@pytest.mark.parametrize("msg_type", [-1, 256, True, 1.0, MsgType.REPLY, MsgType.HELLO])
def test_request_types_are_checked(msg_type: int) -> None:
    with pytest.raises(ProtocolError):
        m.check_request_type(msg_type)


def test_node_types_are_32_to_127() -> None:
    assert [t for t in range(256) if m.is_node_type(t)] == list(range(32, 128))
    assert all(t <= m.TRANSPORT_TYPES_LAST for t in MsgType)
