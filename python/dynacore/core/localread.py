"""localread: reads of one LMDB database from any thread, fenced against close, and the decode of
what a read finds. This is the embedded cache's local get (dynacore.cacheread) in one call.

This module owns two things. The fence: a read in flight finishes before `close` returns, and a
read after `close` raises StorageClosed, with no lock on the read path. The decode: a stored version
set that holds exactly one value, live and never expiring, whose data starts with the plain tag, is
returned as that data after the tag; any other set as its values (versions.values order), for the
caller to resolve; no set as None.

It is the pure-Python twin; the same file compiles with Cython as dynacore._cy.localread, and
native/src/localread.rs (with its bindings in lib.rs) is the Rust twin. The reader calls
`begin(db)` and the transaction type's `get(txn, key)` (py-lmdb's Environment.begin and
Transaction.get; the type is taken from one transaction begun at construction), and lets the
transaction abort as it is freed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from dynacore.core.versions import values
from dynacore.errors import StorageClosed

FLAGS_OFFSET: Final = 8
"""Where an envelope's flags byte starts (after its 8-byte timestamp)."""
PLAIN_MARKER_SIZE: Final = 9
"""The flags byte and the 8-byte expiry: all zero for a live value that never expires."""
_PLAIN_MARKER: Final = bytes(PLAIN_MARKER_SIZE)
_CLOSE_POLL_S: Final = 0.0001


def _check(header_size: int, tag: int) -> None:
    if header_size < FLAGS_OFFSET + PLAIN_MARKER_SIZE:
        raise ValueError(f"header_size {header_size} does not cover the flags and the expiry")
    if not 0 <= tag <= 255:
        raise OverflowError(f"tag {tag} is not a byte")


def classify(set_bytes: bytes, header_size: int, tag: int) -> bytes | list[bytes]:
    """A set's plain data (exactly one value: live, no expiry, data tagged `tag`, returned
    after the tag), or else every value of the set."""
    if type(set_bytes) is not bytes:
        raise TypeError(f"a version set must be bytes, got {type(set_bytes).__name__}")
    _check(header_size, tag)
    found = values(set_bytes)
    if len(found) == 1:
        only = found[0]
        if (
            len(only) > header_size
            and only[header_size] == tag
            and only.startswith(_PLAIN_MARKER, FLAGS_OFFSET)
        ):
            return only[header_size + 1 :]
    return found


class FencedReader:
    """Reads of one LMDB database from any thread, fenced against close.

    The fence without a lock: a reader appends to `_inflight`, then checks `_closed`; `close`
    sets `_closed`, then waits for `_inflight` to drain. list.append/pop are atomic under the
    GIL, so either the reader sees `_closed` or `close` sees the reader."""

    def __init__(
        self,
        begin: Callable[[Any], Any],
        db: Any,
        header_size: int,
        tag: int,
        prefix: bytes | None = None,
        max_stored_bytes: int = 0,
    ) -> None:
        if not callable(begin):
            raise TypeError("begin must be callable")
        _check(header_size, tag)
        self._begin = begin
        self._db = db
        self._get = type(begin(db)).get  # the transaction type's unbound get
        self._header_size = header_size
        self._tag = tag
        self._prefix = b"" if prefix is None else bytes(prefix)
        if max_stored_bytes < 0:
            raise OverflowError("max_stored_bytes is negative")
        self._max_stored_bytes = max_stored_bytes
        self._closed = False
        self._inflight: list[None] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self, key: Any) -> bytes | list[bytes] | None:
        """None: no set under the stored `key`; bytes: the set's plain data; list: the set's
        values. StorageClosed once closed."""
        inflight = self._inflight
        inflight.append(None)
        try:
            if self._closed:
                raise StorageClosed("the store is closed")
            found = self._get(self._begin(self._db), key)  # (it aborts as it is freed)
        finally:
            inflight.pop()
        if found is None:
            return None
        return classify(found, self._header_size, self._tag)

    def read_key(self, key: Any) -> bytes | list[bytes] | bool | None:
        """`read(prefix + key)` for a bytes or str key (str: UTF-8) whose stored key is at most
        `max_stored_bytes` long; False for any other key (the caller reads it another way)."""
        kind = type(key)
        if kind is bytes:
            stored = self._prefix + key
        elif kind is str:
            stored = self._prefix + key.encode()
        else:
            return False
        if len(stored) > self._max_stored_bytes:
            return False
        return self.read(stored)

    def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new reads and wait for the reads in flight; TimeoutError after `timeout_s`."""
        self._closed = True
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while self._inflight:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"a read did not finish within {timeout_s} s")
            time.sleep(_CLOSE_POLL_S)


__all__ = ["FLAGS_OFFSET", "PLAIN_MARKER_SIZE", "FencedReader", "classify"]
