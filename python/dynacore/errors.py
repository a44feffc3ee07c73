"""Every exception class of dynacore. The Rust core raises these same classes.

The tree is flat and shallow: catch `DynacoreError` for anything of ours, or one of the families
below. Classes that are also a builtin error (`ValueError`, `TimeoutError`, ...) derive from it too,
so that callers who think in builtins are served.
"""

from __future__ import annotations


class DynacoreError(Exception):
    """Base class of every dynacore error."""


# -- configuration and backends ------------------------------------------------------------------


class ConfigError(DynacoreError, ValueError):
    """A configuration value is missing, malformed or out of its bounds."""


class BackendUnavailable(DynacoreError, ImportError):
    """The backend asked for (DYNACORE_BACKEND) is not built or failed to load."""


# -- limits ----------------------------------------------------------------------------------------


class LimitExceeded(DynacoreError, ValueError):
    """A request breaks a configured bound; nothing was written."""


class KeyTooLarge(LimitExceeded):
    """The key is longer than the configured maximum key size."""


class ValueTooLarge(LimitExceeded):
    """The value is longer than the configured maximum value size."""


class TooManySiblings(LimitExceeded):
    """A client write would leave more siblings than the configured maximum."""


# -- primitives ------------------------------------------------------------------------------------


class RingError(DynacoreError, ValueError):
    """A ring is malformed: bad partition count, unknown node, bad encoding."""


class VersionError(DynacoreError, ValueError):
    """An encoded version set, context or version vector is malformed."""


class MerkleError(DynacoreError, ValueError):
    """A Merkle tree operation got bad arguments (depth, index, digest size, shape)."""


class FrameError(DynacoreError, ValueError):
    """A wire frame is malformed: bad magic, version, field tag, length or truncation."""


class FrameTooLarge(FrameError):
    """A frame announces (or would need) more bytes than the configured maximum."""


class ChecksumMismatch(FrameError):
    """A frame's xxh3 checksum does not match its bytes."""


class EncodeError(DynacoreError, ValueError):
    """A value cannot be encoded on the wire (unsupported type, integer out of range)."""


# -- storage ---------------------------------------------------------------------------------------


class StorageError(DynacoreError):
    """The storage engine failed; what was committed before stays intact."""


class StorageFull(StorageError):
    """The disk or the LMDB map is full; the write was not committed."""


class StorageClosed(StorageError):
    """The storage engine was closed."""


# -- network and requests --------------------------------------------------------------------------


class ProtocolError(DynacoreError):
    """A peer sent a message that breaks the protocol (unknown type, bad fields)."""


class AuthError(DynacoreError):
    """The peer did not present the cluster secret."""


class UnknownNode(DynacoreError, LookupError):
    """A node id that is not a member of the ring."""


class ConnectionLost(DynacoreError, ConnectionError):
    """The connection to a peer closed before the reply arrived."""


class RequestTimeout(DynacoreError, TimeoutError):
    """A request did not complete within its timeout."""


class Unavailable(DynacoreError):
    """Too few replicas could be reached to even try the request."""


class QuorumNotMet(DynacoreError):
    """A put/get/delete did not get enough replies in time; `acked` says how many did."""

    def __init__(self, message: str, *, acked: int, required: int) -> None:
        super().__init__(message)
        self.acked = acked
        self.required = required


class RemoteError(DynacoreError):
    """A node answered a request with an error that has no more specific class here."""


# -- cluster membership ----------------------------------------------------------------------------


class ClusterError(DynacoreError, ValueError):
    """A membership change is refused (bad plan, handoff in progress) or a gossiped cluster state
    is malformed."""


# -- the embedded cache ----------------------------------------------------------------------------


class SerializationError(DynacoreError, TypeError):
    """A value cannot be encoded by the cache's serializer, or stored bytes cannot (or may not,
    like pickle data in a cache that did not opt in to pickle) be decoded."""


class WrongType(DynacoreError, TypeError):
    """A counter operation (incr/decr) on a key whose value is not an int."""


class CacheClosed(DynacoreError):
    """The embedded cache was closed (or its node stopped)."""
