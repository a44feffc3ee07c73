"""Transport-level message types (u8) and their field layouts: handshake, REPLY, ERROR, PING/PONG.

Every message on a connection is one wire frame `(msg_type, request_id, fields)`. This module owns
the numbers 1–31 and the layouts below; 32–127 are reserved for the node's own messages (the
coordinator defines them) and are handed to the server's handler; anything else is answered with
ERROR(ProtocolError) and the connection stays up.

Layouts (request id 0 for the handshake, the request's id for REPLY/ERROR/PONG):

    CHALLENGE  server -> client  [protocol_version: int, nonce: bytes]
    AUTH       client -> server  [mac: bytes, client_id: str]   mac = HMAC-SHA256(secret, nonce)
    HELLO      server -> client  [protocol_version: int, server_id: str]   (auth accepted)
    REPLY      server -> client  the handler's result fields, verbatim
    ERROR      server -> client  [class_name: str, message: str, attrs: list]
                                 attrs = [name, value, name, value, ...] (scalar attributes of the
                                 exception, e.g. QuorumNotMet's acked/required)
    PING       client -> server  []
    PONG       server -> client  []
"""

from __future__ import annotations

import hashlib
import hmac
from enum import IntEnum
from typing import TypeAlias

from dynacore import errors
from dynacore.errors import DynacoreError, ProtocolError, RemoteError

# The field value type of the wire codec (see docs/contracts.md `wire`).
Value: TypeAlias = "bool | int | float | bytes | str | list[Value] | None"
Fields: TypeAlias = list[Value]
Message: TypeAlias = tuple[int, int, list[Value]]

PROTOCOL_VERSION = 1
NONCE_SIZE_BYTES = 16
MAC_SIZE_BYTES = 32
CLIENT_ID_MAX_BYTES = 255
ERROR_MESSAGE_MAX_CHARS = 500
ERROR_ATTRS_MAX = 8
HANDSHAKE_REQUEST_ID = 0
REQUEST_ID_MAX = (1 << 64) - 1


class MsgType(IntEnum):
    """The transport-level message types."""

    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    REPLY = 4
    ERROR = 5
    PING = 6
    PONG = 7


TRANSPORT_TYPES_LAST = 31
NODE_TYPES_FIRST = 32
NODE_TYPES_LAST = 127
# Types a client may not use as a request: they are handshake steps or replies.
NOT_REQUESTS = frozenset(
    {MsgType.HELLO, MsgType.CHALLENGE, MsgType.AUTH, MsgType.REPLY, MsgType.ERROR, MsgType.PONG}
)
_SCALARS = (type(None), bool, int, float, bytes, str)


def is_node_type(msg_type: int) -> bool:
    """True for the types reserved to the node's own messages (handed to the server handler)."""
    return NODE_TYPES_FIRST <= msg_type <= NODE_TYPES_LAST


def check_request_type(msg_type: int) -> None:
    """ProtocolError unless `msg_type` is a u8 that a client may send as a request."""
    if not isinstance(msg_type, int) or isinstance(msg_type, bool) or not 0 <= msg_type <= 255:
        raise ProtocolError(f"message type must be an integer in [0, 255], got {msg_type!r}")
    if msg_type in NOT_REQUESTS:
        raise ProtocolError(f"message type {MsgType(msg_type).name} is not a request")


# -- handshake ---------------------------------------------------------------------------------


def auth_mac(secret: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256 of the server's nonce under the cluster secret (an empty secret still works)."""
    return hmac.new(secret, nonce, hashlib.sha256).digest()


def mac_matches(secret: bytes, nonce: bytes, mac: bytes) -> bool:
    """Constant-time check of a client's AUTH mac."""
    return hmac.compare_digest(auth_mac(secret, nonce), mac)


def check_client_id(client_id: str) -> None:
    """ProtocolError unless `client_id` is a non-empty str of at most 255 UTF-8 bytes."""
    if not isinstance(client_id, str) or not client_id:
        raise ProtocolError(f"client id must be a non-empty str, got {client_id!r}")
    if len(client_id.encode("utf-8", "surrogatepass")) > CLIENT_ID_MAX_BYTES:
        raise ProtocolError(f"client id longer than {CLIENT_ID_MAX_BYTES} bytes")


def challenge(nonce: bytes) -> Message:
    assert len(nonce) == NONCE_SIZE_BYTES, "the nonce has a fixed size"
    return (MsgType.CHALLENGE, HANDSHAKE_REQUEST_ID, [PROTOCOL_VERSION, nonce])


def parse_challenge(message: Message) -> bytes:
    """The nonce of a CHALLENGE; ProtocolError for anything else (an ERROR is raised as itself)."""
    msg_type, _, fields = message
    raise_if_error(message)
    if msg_type != MsgType.CHALLENGE or len(fields) != 2:
        raise ProtocolError(f"expected CHALLENGE, got type {msg_type} with {len(fields)} fields")
    version, nonce = fields
    _check_version(version)
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE_BYTES:
        raise ProtocolError("CHALLENGE nonce must be 16 bytes")
    return nonce


def auth(mac: bytes, client_id: str) -> Message:
    return (MsgType.AUTH, HANDSHAKE_REQUEST_ID, [mac, client_id])


def parse_auth(message: Message) -> tuple[bytes, str]:
    """(mac, client_id) of an AUTH message; ProtocolError when the layout is wrong."""
    _, _, fields = message
    if len(fields) != 2:
        raise ProtocolError(f"AUTH has 2 fields, got {len(fields)}")
    mac, client_id = fields
    if not isinstance(mac, bytes) or len(mac) != MAC_SIZE_BYTES:
        raise ProtocolError("AUTH mac must be 32 bytes")
    if not isinstance(client_id, str):
        raise ProtocolError("AUTH client id must be a str")
    check_client_id(client_id)
    return mac, client_id


def hello(server_id: str) -> Message:
    return (MsgType.HELLO, HANDSHAKE_REQUEST_ID, [PROTOCOL_VERSION, server_id])


def parse_hello(message: Message) -> str:
    """The server id of a HELLO; an ERROR (e.g. AuthError) is raised as its class."""
    msg_type, _, fields = message
    raise_if_error(message)
    if msg_type != MsgType.HELLO or len(fields) != 2:
        raise ProtocolError(f"expected HELLO, got type {msg_type} with {len(fields)} fields")
    version, server_id = fields
    _check_version(version)
    if not isinstance(server_id, str):
        raise ProtocolError("HELLO server id must be a str")
    return server_id


def _check_version(version: Value) -> None:
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")


# -- replies -----------------------------------------------------------------------------------


def reply(request_id: int, fields: Fields) -> Message:
    return (MsgType.REPLY, request_id, fields)


def ping(request_id: int) -> Message:
    return (MsgType.PING, request_id, [])


def pong(request_id: int) -> Message:
    return (MsgType.PONG, request_id, [])


def error(request_id: int, exc: BaseException) -> Message:
    """ERROR for `exc`: a DynacoreError travels by class name, anything else as RemoteError."""
    if isinstance(exc, DynacoreError):
        name = type(exc).__name__
        text = str(exc)
    else:
        name = RemoteError.__name__
        text = f"{type(exc).__name__}: {exc}"
    return (MsgType.ERROR, request_id, [name, text[:ERROR_MESSAGE_MAX_CHARS], _error_attrs(exc)])


def _error_attrs(exc: BaseException) -> list[Value]:
    if not isinstance(exc, DynacoreError):
        return []
    flat: list[Value] = []
    for key, value in list(vars(exc).items())[:ERROR_ATTRS_MAX]:
        if isinstance(key, str) and not key.startswith("_") and isinstance(value, _SCALARS):
            flat.extend((key, value))
    return flat


def raise_if_error(message: Message) -> None:
    """Raise the exception an ERROR message carries; do nothing for any other message."""
    if message[0] == MsgType.ERROR:
        raise exception_from_error(message[2])


def exception_from_error(fields: Fields) -> DynacoreError:
    """The exception an ERROR's fields name: that dynacore.errors class if there is one (built with
    the carried attributes when its constructor takes them), else RemoteError."""
    if len(fields) < 2 or not isinstance(fields[0], str) or not isinstance(fields[1], str):
        return RemoteError(f"malformed ERROR reply: {fields!r:.200}")
    name, text = fields[0], fields[1]
    attrs = _parse_attrs(fields[2] if len(fields) > 2 else [])
    cls = getattr(errors, name, None)
    if not isinstance(cls, type) or not issubclass(cls, DynacoreError):
        return RemoteError(f"{name}: {text}")
    try:
        return cls(text, **attrs)
    except TypeError:
        pass
    try:
        return cls(text)
    except TypeError:
        return RemoteError(f"{name}: {text}")


def _parse_attrs(flat: Value) -> dict[str, Value]:
    if not isinstance(flat, list) or len(flat) % 2 or len(flat) > 2 * ERROR_ATTRS_MAX:
        return {}
    pairs = zip(flat[0::2], flat[1::2], strict=True)
    return {k: v for k, v in pairs if isinstance(k, str) and k.isidentifier()}
