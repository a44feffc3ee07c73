"""A standalone Cache behaves like a dict under any sequence of set/add/delete/incr/get (a
Hypothesis state machine over a small key space), on the memory engine and on LMDB."""

from __future__ import annotations

import tempfile
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dynacore import Cache
from dynacore.errors import WrongType

KEYS = st.sampled_from(["a", "b", "c", "ключ"])
VALUES = st.one_of(
    st.integers(-1000, 1000),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),  # msgpack's int range
)


class CacheMatchesDict(RuleBasedStateMachine):
    lmdb = False

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.cache = Cache(self.tmp.name + "/c" if self.lmdb else None, sync=False)
        self.model: dict[str, Any] = {}

    @rule(key=KEYS, value=VALUES)
    def set(self, key: str, value: Any) -> None:
        self.cache[key] = value
        self.model[key] = value

    @rule(key=KEYS, value=VALUES)
    def add(self, key: str, value: Any) -> None:
        assert self.cache.add(key, value) == (key not in self.model)
        self.model.setdefault(key, value)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.cache.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(key=KEYS, delta=st.integers(-5, 5))
    def incr(self, key: str, delta: int) -> None:
        current = self.model.get(key, 0)
        if type(current) is not int:
            try:
                self.cache.incr(key, delta)
            except WrongType:
                return
            raise AssertionError("incr on a value that is not an int must be refused")
        assert self.cache.incr(key, delta) == current + delta
        self.model[key] = current + delta

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        assert self.cache.get(key, default="<absent>") == self.model.get(key, "<absent>")

    @precondition(lambda self: bool(self.model))
    @rule()
    def popitem(self) -> None:
        key, value = self.cache.popitem()
        assert self.model.pop(key) == value

    @invariant()
    def same_contents(self) -> None:
        assert len(self.cache) == len(self.model)
        assert dict(self.cache.items()) == self.model

    def teardown(self) -> None:
        self.cache.close()
        self.tmp.cleanup()


class LmdbCacheMatchesDict(CacheMatchesDict):
    lmdb = True


TestMemoryCache = CacheMatchesDict.TestCase
TestMemoryCache.settings = settings(max_examples=15, stateful_step_count=20, deadline=None)
TestLmdbCache = LmdbCacheMatchesDict.TestCase
TestLmdbCache.settings = settings(max_examples=10, stateful_step_count=20, deadline=None)
