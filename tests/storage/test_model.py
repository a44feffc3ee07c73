"""Both engines against a dict model: random writes and deletes (keys around LMDB's key-size
bound, so that long-key buckets are exercised), then get, count and bounded scans."""

from __future__ import annotations

import tempfile
from contextlib import AbstractAsyncContextManager

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynacore.storage import Engine, Update, open_lmdb_engine, open_memory_engine

LMDB_CUT = 510  # keys longer than this live in buckets in the default LMDB build
PREFIXES = [b"", b"a" * (LMDB_CUT - 2), b"a" * LMDB_CUT, b"a" * (LMDB_CUT + 3), b"b" * 700]

keys = st.builds(
    lambda prefix, tail: (prefix + tail) or b"\x00",
    st.sampled_from(PREFIXES),
    st.binary(min_size=0, max_size=3),
)
ops = st.lists(st.tuples(keys, st.none() | st.binary(max_size=20)), min_size=1, max_size=40)
bounds = st.tuples(st.none() | keys, st.none() | keys, st.none() | st.integers(0, 10))


def put(value: bytes | None) -> Update:
    return lambda _old: value


def open_kind(kind: str, path: str) -> AbstractAsyncContextManager[Engine]:
    if kind == "lmdb":
        return open_lmdb_engine(path, map_size_bytes=16 << 20)
    return open_memory_engine()


def model_scan(
    model: dict[bytes, bytes], start: bytes, end: bytes | None, limit: int | None
) -> list[tuple[bytes, bytes]]:
    hits = sorted((k, v) for k, v in model.items() if k >= start and (end is None or k < end))
    return hits if limit is None else hits[:limit]


@pytest.mark.parametrize("kind", ["lmdb", "memory"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=ops, scans=st.lists(bounds, min_size=1, max_size=5))
def test_engine_matches_a_dict_model(
    kind: str,
    writes: list[tuple[bytes, bytes | None]],
    scans: list[tuple[bytes | None, bytes | None, int | None]],
) -> None:
    model: dict[bytes, bytes] = {}
    for key, value in writes:
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value

    async def main(path: str) -> None:
        async with open_kind(kind, path) as engine:
            half = len(writes) // 2
            await engine.update_many("data", [(k, put(v)) for k, v in writes[:half]])
            for key, value in writes[half:]:  # the rest one by one, in order
                await engine.update("data", key, put(value))
            assert engine.count("data") == len(model)
            for key, _value in writes:
                assert engine.get("data", key) == model.get(key)
            assert engine.scan("data") == sorted(model.items())
            for start, end, limit in scans:
                got = engine.scan("data", start or b"", end, limit)
                assert got == model_scan(model, start or b"", end, limit)

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, tmp + "/db")
