"""versions: dotted version vector sets (DVV sets) and plain version vectors, as canonical bytes.

This module owns the causality of one key: which values are siblings, which a write replaces, and
how replicas merge. It is the pure-Python twin; the same file compiles with Cython as
dynacore._cy.versions, and native/src/versions.rs is the Rust twin. All three give the same bytes
and raise the same `VersionError` for any malformed input.

Model
-----
A set is a list of entries (node, counter, values), sorted by node, plus anonymous values. The
entry says: this set knows every event (node, 1..counter); value i of the entry (newest first)
has the dot (node, counter - i); the older dots of the node were overwritten. The join of a set
(its context) is the version vector node -> counter. A context covers a dot (node, c) when its
counter for node is >= c.

- sync(a, b): per node, the counter is the max, and a value survives unless the other side knows
  its dot without holding it. When both sides hold values for the same dots (same counter), the
  value lists cut to the shorter length are compared lexicographically and the larger kept, so
  that sync is commutative and associative even on sets that disagree about a dot.
- update(stored, context, value, node): the result knows stored ∨ context; every stored value
  whose dot the context covers is dropped; value gets the dot
  (node, 1 + max(stored[node], context[node])).
- Anonymous values (from new()) have no dot, so no context covers them: sync keeps the union,
  update keeps them, covers() is False while a set holds any. Only lww and reconcile fold them
  away, locally. The write path should always give values a dot (update), never store new().
- lww(s) keeps the clock and the one value that sorts last (first in values() order on ties); a
  dotted winner takes its entry's newest dot (node, counter), an anonymous winner stays anonymous.
- reconcile(s, merge, node) keeps the clock, drops every value, and adds merge(values(s)) under
  node's next counter.
- less(a, b) is the order of the sync lattice: sync(a, b) == b and a != b. equal(a, b) is
  identity of the two sets (their canonical bytes).

Canonical encoding (version 1)
------------------------------
varint = unsigned LEB128, minimal (no trailing 0x80 groups; the last byte of a multi-byte varint
is non-zero), at most 10 bytes, value < 2**64. node = varint length (1..255) then the UTF-8 bytes
of the node id.

    set := 0x11  varint n_entries  entry*  varint n_anon  bytes*
    entry := node  varint counter (>= 1)  varint n_values (<= counter)  bytes*   (newest first)
    bytes := varint length  the bytes
    vv  := 0x21  varint n_entries  (node  varint counter (>= 1))*

Entries are sorted by node id bytes, strictly (no duplicates); anonymous values are sorted by
bytes, strictly (no duplicates); no bytes follow the end. Decoding checks every rule above and
raises VersionError otherwise, so that equal sets have equal bytes and every accepted input is
canonical. Wherever a context or vv is taken, b"" is accepted as the empty vv. The empty set is
b"\\x11\\x00\\x00" and the empty vv b"\\x21\\x00".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dynacore.errors import VersionError

SET_TAG = 0x11
VV_TAG = 0x21
MAX_COUNTER = (1 << 64) - 1
MAX_NODE_BYTES = 255

_EMPTY_SET = b"\x11\x00\x00"
_EMPTY_VV = b"\x21\x00"

# Decoded forms, never leaked to callers:
#   entries: list of (node: bytes, counter: int, values: list[bytes]), sorted by node
#   anon:    list[bytes], sorted, unique
#   vv:      list of (node: bytes, counter: int), sorted by node
_Entry = tuple[bytes, int, list[bytes]]
_VvEntry = tuple[bytes, int]


# -- varints and decoding -------------------------------------------------------------------------


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read one minimal LEB128 varint at pos; return (value, position after it)."""
    if pos >= end:
        raise VersionError("truncated: varint past the end")
    b = data[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    result = b & 0x7F
    shift = 7
    while True:
        if pos >= end:
            raise VersionError("truncated: varint past the end")
        b = data[pos]
        pos += 1
        low = b & 0x7F
        if shift == 63 and low > 1:
            raise VersionError("varint exceeds 64 bits")
        result |= low << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise VersionError("varint longer than 10 bytes")
    if b == 0:
        raise VersionError("varint not minimal")
    return result, pos


def _node_at(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """Read one length-prefixed node id; check its length and UTF-8."""
    if pos < end and data[pos] < 0x80:  # fast path: a one-byte length
        length = data[pos]
        pos += 1
    else:
        length, pos = _varint(data, pos, end)
    if length == 0 or length > MAX_NODE_BYTES:
        raise VersionError(f"node id length {length} outside 1..{MAX_NODE_BYTES}")
    if length > end - pos:
        raise VersionError("truncated: node id past the end")
    stop = pos + length
    node = data[pos:stop]
    if not node.isascii():
        _check_utf8(node)
    return node, stop


def _check_utf8(node: bytes) -> None:
    try:
        node.decode("utf-8")
    except UnicodeDecodeError:
        raise VersionError("node id is not UTF-8") from None


def _bytes_at(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """Read one length-prefixed byte string."""
    if pos < end and data[pos] < 0x80:  # fast path: a one-byte length
        length = data[pos]
        pos += 1
    else:
        length, pos = _varint(data, pos, end)
    if length > end - pos:
        raise VersionError("truncated: value past the end")
    stop = pos + length
    return data[pos:stop], stop


def _decode_set(data: object) -> tuple[list[_Entry], list[bytes]]:
    """Decode and validate an encoded set (any object: non-bytes is a VersionError)."""
    if not isinstance(data, bytes):
        raise VersionError(f"a version set must be bytes, not {type(data).__name__}")
    return _decode_set_bytes(data if type(data) is bytes else bytes(data))


def _decode_set_bytes(data: bytes) -> tuple[list[_Entry], list[bytes]]:
    # The common case (one-byte lengths and counters, all within the buffer) is read inline;
    # anything else goes through the helpers, which also raise the errors.
    end = len(data)
    if end < 3 or data[0] != SET_TAG:
        raise VersionError("not an encoded version set (bad tag, version or size)")
    count, pos = _varint(data, 1, end)
    if count > end - pos:
        raise VersionError("truncated: more entries announced than bytes left")
    entries: list[_Entry] = []
    prev = b""
    for _k in range(count):
        length = data[pos] if pos < end else 0
        if 0 < length < 0x80 and length < end - pos:
            pos += 1
            stop = pos + length
            node = data[pos:stop]
            pos = stop
            if not node.isascii():
                _check_utf8(node)
        else:
            node, pos = _node_at(data, pos, end)
        if node <= prev:
            raise VersionError("entries not strictly sorted by node id")
        prev = node
        if pos < end and 0 < data[pos] < 0x80:
            counter = data[pos]
            pos += 1
        else:
            counter, pos = _varint(data, pos, end)
            if counter == 0:
                raise VersionError("entry counter is 0")
        if pos < end and data[pos] < 0x80:
            n_values = data[pos]
            pos += 1
        else:
            n_values, pos = _varint(data, pos, end)
        if n_values > counter:
            raise VersionError("entry has more values than its counter")
        if n_values > end - pos:
            raise VersionError("truncated: more values announced than bytes left")
        vals: list[bytes] = []
        for _k in range(n_values):
            length = data[pos] if pos < end else 0x80
            if length < 0x80 and length < end - pos:
                pos += 1
                stop = pos + length
                vals.append(data[pos:stop])
                pos = stop
            else:
                value, pos = _bytes_at(data, pos, end)
                vals.append(value)
        entries.append((node, counter, vals))
    if pos == end - 1 and data[pos] == 0:  # no anonymous values
        return entries, []
    return entries, _decode_anon(data, pos, end)


def _decode_anon(data: bytes, pos: int, end: int) -> list[bytes]:
    """Decode the anonymous values that end a set; check order, uniqueness, no trailing bytes."""
    count, pos = _varint(data, pos, end)
    if count > end - pos:
        raise VersionError("truncated: more anonymous values announced than bytes left")
    anon: list[bytes] = []
    for k in range(count):
        value, pos = _bytes_at(data, pos, end)
        if k and value <= anon[k - 1]:
            raise VersionError("anonymous values not strictly sorted")
        anon.append(value)
    if pos != end:
        raise VersionError("trailing bytes after the version set")
    return anon


def _decode_vv(data: object) -> list[_VvEntry]:
    """Decode and validate an encoded version vector (b"" is the empty vv)."""
    if not isinstance(data, bytes):
        raise VersionError(f"a version vector must be bytes, not {type(data).__name__}")
    return _decode_vv_bytes(data if type(data) is bytes else bytes(data))


def _decode_vv_bytes(data: bytes) -> list[_VvEntry]:
    end = len(data)
    if end == 0:
        return []
    if data[0] != VV_TAG:
        raise VersionError("not an encoded version vector (bad tag or version)")
    count, pos = _varint(data, 1, end)
    if count > end - pos:
        raise VersionError("truncated: more entries announced than bytes left")
    out: list[_VvEntry] = []
    prev = b""
    for _k in range(count):
        node, pos = _node_at(data, pos, end)
        if node <= prev:
            raise VersionError("entries not strictly sorted by node id")
        prev = node
        if pos < end and 0 < data[pos] < 0x80:
            counter = data[pos]
            pos += 1
        else:
            counter, pos = _varint(data, pos, end)
            if counter == 0:
                raise VersionError("entry counter is 0")
        out.append((node, counter))
    if pos != end:
        raise VersionError("trailing bytes after the version vector")
    return out


# -- encoding -------------------------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _encode_set(entries: list[_Entry], anon: list[bytes]) -> bytes:
    # Lengths and counters below 128 are one varint byte, appended inline.
    out = bytearray(b"\x11")
    _put_varint(out, len(entries))
    for node, counter, vals in entries:
        length = len(node)
        if length < 0x80:
            out.append(length)
        else:
            _put_varint(out, length)
        out += node
        if counter < 0x80:
            out.append(counter)
        else:
            _put_varint(out, counter)
        _put_varint(out, len(vals))
        for value in vals:
            length = len(value)
            if length < 0x80:
                out.append(length)
            else:
                _put_varint(out, length)
            out += value
    _put_varint(out, len(anon))
    for value in anon:
        _put_varint(out, len(value))
        out += value
    return bytes(out)


def _encode_vv(vv: list[_VvEntry]) -> bytes:
    out = bytearray(b"\x21")
    _put_varint(out, len(vv))
    for node, counter in vv:
        _put_varint(out, len(node))
        out += node
        if counter < 0x80:
            out.append(counter)
        else:
            _put_varint(out, counter)
    return bytes(out)


# -- argument checks ------------------------------------------------------------------------------


def _node_bytes(node: object) -> bytes:
    if not isinstance(node, str):
        raise VersionError(f"a node id must be str, not {type(node).__name__}")
    try:
        raw = node.encode("utf-8")
    except UnicodeEncodeError:
        raise VersionError("node id is not encodable as UTF-8") from None
    if not raw or len(raw) > MAX_NODE_BYTES:
        raise VersionError(f"node id must be 1..{MAX_NODE_BYTES} UTF-8 bytes, got {len(raw)}")
    return raw


def _check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise VersionError(f"a value must be bytes, not {type(value).__name__}")
    return value if type(value) is bytes else bytes(value)


def _check_counter(counter: object) -> int:
    if isinstance(counter, bool) or not isinstance(counter, int):
        raise VersionError(f"a counter must be int, not {type(counter).__name__}")
    if counter < 0 or counter > MAX_COUNTER:
        raise VersionError(f"counter {counter} outside 0..2**64-1")
    return counter


# -- the algorithms on decoded sets ---------------------------------------------------------------


def _merge_entry(a: _Entry, b: _Entry) -> _Entry:
    """sync of one node's entries from both sides (same node)."""
    node, ca, la = a
    cb = b[1]
    lb = b[2]
    if ca > cb:
        keep = ca - cb + len(lb)
        return a if keep >= len(la) else (node, ca, la[:keep])
    if cb > ca:
        keep = cb - ca + len(la)
        return b if keep >= len(lb) else (node, cb, lb[:keep])
    if len(la) < len(lb):
        lb = lb[: len(la)]
    elif len(lb) < len(la):
        la = la[: len(lb)]
    return (node, ca, la if la >= lb else lb)


def _sync_entries(ea: list[_Entry], eb: list[_Entry]) -> list[_Entry]:
    if not eb:
        return ea
    if not ea:
        return eb
    out: list[_Entry] = []
    i = 0
    j = 0
    na = len(ea)
    nb = len(eb)
    while i < na and j < nb:
        a = ea[i]
        b = eb[j]
        if a[0] < b[0]:
            out.append(a)
            i += 1
        elif b[0] < a[0]:
            out.append(b)
            j += 1
        else:
            out.append(_merge_entry(a, b))
            i += 1
            j += 1
    if i < na:
        out.extend(ea[i:])
    if j < nb:
        out.extend(eb[j:])
    return out


def _union_anon(a: list[bytes], b: list[bytes]) -> list[bytes]:
    if not b or a == b:
        return a
    if not a:
        return b
    return sorted(set(a).union(b))


def _counter_in(vv: list[_VvEntry], node: bytes) -> int:
    for name, counter in vv:
        if name == node:
            return counter
    return 0


def _apply_context(entries: list[_Entry], ctx: list[_VvEntry]) -> list[_Entry]:
    """stored ∨ context, without the stored values the context covers."""
    if not ctx:
        return entries
    out: list[_Entry] = []
    i = 0
    j = 0
    ne = len(entries)
    nc = len(ctx)
    while i < ne or j < nc:
        if j >= nc or (i < ne and entries[i][0] < ctx[j][0]):
            out.append(entries[i])
            i += 1
        elif i >= ne or ctx[j][0] < entries[i][0]:
            out.append((ctx[j][0], ctx[j][1], []))
            j += 1
        else:
            node, counter, vals = entries[i]
            seen = ctx[j][1]
            if seen >= counter:
                out.append((node, seen, []))
            elif counter - seen < len(vals):
                out.append((node, counter, vals[: counter - seen]))
            else:
                out.append(entries[i])
            i += 1
            j += 1
    return out


def _add_event(entries: list[_Entry], node: bytes, value: bytes) -> list[_Entry]:
    """Add value under node's next counter (entries already hold the context)."""
    out = list(entries)
    for i in range(len(out)):
        name, counter, vals = out[i]
        if name == node:
            if counter >= MAX_COUNTER:
                raise VersionError("counter overflow: node's counter is at 2**64-1")
            out[i] = (node, counter + 1, [value, *vals])
            return out
        if node < name:
            out.insert(i, (node, 1, [value]))
            return out
    out.append((node, 1, [value]))
    return out


def _all_values(entries: list[_Entry], anon: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for entry in entries:
        out.extend(entry[2])
    out.extend(anon)
    return out


def _clock_only(entries: list[_Entry]) -> list[_Entry]:
    return [(node, counter, []) for node, counter, _ in entries]


def _sync_decoded(
    a: tuple[list[_Entry], list[bytes]], b: tuple[list[_Entry], list[bytes]]
) -> tuple[list[_Entry], list[bytes]]:
    return _sync_entries(a[0], b[0]), _union_anon(a[1], b[1])


# -- the public API: sets -------------------------------------------------------------------------


def empty() -> bytes:
    """The set with no entries and no values."""
    return _EMPTY_SET


def new(value: bytes) -> bytes:
    """A set holding one anonymous value (no dot, no context)."""
    return _encode_set([], [_check_value(value)])


def update(stored: bytes, context: bytes, value: bytes, node: str) -> bytes:
    """Drop the stored values the context covers; add value under node's next counter."""
    entries, anon = _decode_set(stored)
    ctx = _decode_vv(context)
    raw_value = _check_value(value)
    raw = _node_bytes(node)
    merged = _apply_context(entries, ctx)
    return _encode_set(_add_event(merged, raw, raw_value), anon)


def sync(a: bytes, b: bytes) -> bytes:
    """The merge of two replicas' sets: commutative, associative, idempotent."""
    ea, aa = _decode_set(a)
    eb, ab = _decode_set(b)
    if a == b:
        return bytes(a)
    return _encode_set(_sync_entries(ea, eb), _union_anon(aa, ab))


def sync_many(sets: Sequence[bytes]) -> bytes:
    """sync over any number of sets (the empty set for none)."""
    try:
        items = list(sets)
    except TypeError:
        raise VersionError("sync_many takes a sequence of encoded sets") from None
    if not items:
        return _EMPTY_SET
    acc = _decode_set(items[0])
    for item in items[1:]:
        acc = _sync_decoded(acc, _decode_set(item))
    return _encode_set(acc[0], acc[1])


def join(s: bytes) -> bytes:
    """The causal context of a set: the version vector node -> counter."""
    entries, _ = _decode_set(s)
    return _encode_vv([(node, counter) for node, counter, _ in entries])


def values(s: bytes) -> list[bytes]:
    """Every value: entries by node, newest first; then the anonymous values."""
    entries, anon = _decode_set(s)
    return _all_values(entries, anon)


def size(s: bytes) -> int:
    """The number of values (siblings)."""
    entries, anon = _decode_set(s)
    total = len(anon)
    for entry in entries:
        total += len(entry[2])
    return total


def ids(s: bytes) -> list[str]:
    """The node ids of the entries, sorted."""
    entries, _ = _decode_set(s)
    return [entry[0].decode("utf-8") for entry in entries]


def lww(s: bytes) -> bytes:
    """Keep the clock and only the value that sorts last."""
    entries, anon = _decode_set(s)
    best: bytes | None = None
    best_entry = -1
    for i in range(len(entries)):
        for value in entries[i][2]:
            if best is None or value > best:
                best = value
                best_entry = i
    for value in anon:
        if best is None or value > best:
            best = value
            best_entry = -1
    if best is None:
        return _encode_set(entries, anon)
    out = _clock_only(entries)
    if best_entry < 0:
        return _encode_set(out, [best])
    node, counter, _ = out[best_entry]
    out[best_entry] = (node, counter, [best])
    return _encode_set(out, [])


def reconcile(s: bytes, merge: Callable[[list[bytes]], bytes], node: str) -> bytes:
    """Replace every value by merge(values(s)), written as a new event of node."""
    entries, anon = _decode_set(s)
    raw = _node_bytes(node)
    merged = merge(_all_values(entries, anon))
    if not isinstance(merged, bytes):
        raise VersionError(f"reconcile's merge must return bytes, not {type(merged).__name__}")
    return _encode_set(_add_event(_clock_only(entries), raw, _check_value(merged)), [])


def _leq(a: tuple[list[_Entry], list[bytes]], b: tuple[list[_Entry], list[bytes]]) -> bool:
    """a <= b in the sync lattice: sync(a, b) == b."""
    return _sync_decoded(a, b) == b


def less(a: bytes, b: bytes) -> bool:
    """a is strictly dominated by b: sync(a, b) == b and a != b."""
    da = _decode_set(a)
    db = _decode_set(b)
    return a != b and _leq(da, db)


def equal(a: bytes, b: bytes) -> bool:
    """a and b are the same set (same canonical bytes)."""
    _decode_set(a)
    _decode_set(b)
    return a == b


def covers(context: bytes, s: bytes) -> bool:
    """The context covers the dot of every value of s (never an anonymous value)."""
    ctx = _decode_vv(context)
    entries, anon = _decode_set(s)
    if anon:
        return False
    j = 0
    nc = len(ctx)
    for node, counter, vals in entries:
        if not vals:
            continue
        while j < nc and ctx[j][0] < node:
            j += 1
        if j >= nc or ctx[j][0] != node or ctx[j][1] < counter:
            return False
    return True


# -- the public API: version vectors --------------------------------------------------------------


def vv_empty() -> bytes:
    """The version vector with no entries."""
    return _EMPTY_VV


def vv_from(pairs: Sequence[tuple[str, int]]) -> bytes:
    """A version vector from (node, counter) pairs; zero counters are left out."""
    try:
        items = list(pairs)
    except TypeError:
        raise VersionError("vv_from takes a sequence of (node, counter) pairs") from None
    out: list[_VvEntry] = []
    for pair in items:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise VersionError("vv_from takes (node, counter) tuples")
        raw = _node_bytes(pair[0])
        counter = _check_counter(pair[1])
        out.append((raw, counter))
    out.sort()
    for i in range(1, len(out)):
        if out[i][0] == out[i - 1][0]:
            raise VersionError(f"node id {out[i][0].decode('utf-8')!r} appears twice")
    return _encode_vv([entry for entry in out if entry[1]])


def vv_to(vv: bytes) -> list[tuple[str, int]]:
    """The (node, counter) pairs of a version vector, sorted by node."""
    return [(node.decode("utf-8"), counter) for node, counter in _decode_vv(vv)]


def _descends(a: list[_VvEntry], b: list[_VvEntry]) -> bool:
    i = 0
    na = len(a)
    for node, counter in b:
        while i < na and a[i][0] < node:
            i += 1
        if i >= na or a[i][0] != node or a[i][1] < counter:
            return False
    return True


def vv_descends(a: bytes, b: bytes) -> bool:
    """a >= b pointwise."""
    return _descends(_decode_vv(a), _decode_vv(b))


def vv_concurrent(a: bytes, b: bytes) -> bool:
    """Neither descends from the other."""
    da = _decode_vv(a)
    db = _decode_vv(b)
    return not _descends(da, db) and not _descends(db, da)


def vv_equal(a: bytes, b: bytes) -> bool:
    """Same version vector (b"" equals the empty vv)."""
    return _decode_vv(a) == _decode_vv(b)


def vv_merge(a: bytes, b: bytes) -> bytes:
    """The pointwise max (least upper bound)."""
    da = _decode_vv(a)
    db = _decode_vv(b)
    out: list[_VvEntry] = []
    i = 0
    j = 0
    na = len(da)
    nb = len(db)
    while i < na and j < nb:
        x = da[i]
        y = db[j]
        if x[0] < y[0]:
            out.append(x)
            i += 1
        elif y[0] < x[0]:
            out.append(y)
            j += 1
        else:
            out.append(x if x[1] >= y[1] else y)
            i += 1
            j += 1
    out.extend(da[i:])
    out.extend(db[j:])
    return _encode_vv(out)


def vv_increment(vv: bytes, node: str) -> bytes:
    """vv with node's counter one higher."""
    entries = _decode_vv(vv)
    raw = _node_bytes(node)
    counter = _counter_in(entries, raw)
    if counter >= MAX_COUNTER:
        raise VersionError("counter overflow: node's counter is at 2**64-1")
    out = [entry for entry in entries if entry[0] != raw]
    out.append((raw, counter + 1))
    out.sort()
    return _encode_vv(out)
