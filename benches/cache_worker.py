"""A Cache in its own process for benches/bench_cache.py, so that each dynacore row runs on the
backend its DYNACORE_BACKEND names: JSON commands on stdin, one JSON reply per line on stdout.

Commands:
- {"op": "open", "dir", "node_id"?, "listen"?, "members"?, "n"?, "sync"?} -> {"address", "backend"}
- {"op": "load", "keys", "value_bytes", "w"?} -> {}                       (set every key)
- {"op": "raw_open", "dir"} -> {}        (a raw lmdb environment holding the loaded keys)
- {"op": "gets", "count", "keys"} -> {"elapsed_s", "cpu_s"}  (count Cache.get calls cycling over
  keys; wall time and this thread's CPU time, which a loaded machine's preemptions leave out)
- {"op": "raw_gets", "count", "keys"} -> {"elapsed_s", "cpu_s"}  (the same on the raw environment)
- {"op": "sets", "count", "keys", "value_bytes", "w"} -> {"elapsed_s"}     (sequential sets)
- {"op": "set_many", "count", "keys", "value_bytes", "w"} -> {"elapsed_s"}  (one set_many)
- {"op": "quit"}
Errors reply {"error": "..."}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import lmdb

import dynacore
from dynacore import Cache

MAP_SIZE_BYTES = 1 << 28


def key_list(count: int) -> list[bytes]:
    return [b"user%010d" % i for i in range(count)]


class Worker:
    def __init__(self) -> None:
        self.cache: Cache | None = None
        self.raw: tuple[lmdb.Environment, Any] | None = None
        self.loaded: tuple[int, bytes] = (0, b"")

    def raw_gets(self, batch: list[bytes]) -> dict[str, float]:
        assert self.raw is not None, "raw_open first"
        env, db = self.raw
        start, start_cpu = time.perf_counter(), time.thread_time()
        for key in batch:
            txn = env.begin(db=db)
            txn.get(key)
            txn.abort()
        return {"elapsed_s": time.perf_counter() - start, "cpu_s": time.thread_time() - start_cpu}

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "open":
            self.cache = Cache(
                command["dir"],
                command.get("listen", "127.0.0.1:0"),
                node_id=command.get("node_id"),
                members=command.get("members"),
                n=command.get("n"),
                sync=command.get("sync", True),
            )
            return {"address": self.cache.address, "backend": dynacore.backend}
        cache = self.cache
        assert cache is not None, "open first"
        if op == "load":
            value = b"v" * command["value_bytes"]
            cache.set_many({key: value for key in key_list(command["keys"])}, w=command.get("w"))
            self.loaded = (command["keys"], value)
            return {}
        if op == "raw_open":
            env = lmdb.open(command["dir"], map_size=MAP_SIZE_BYTES, max_dbs=2)
            db = env.open_db(b"data")
            count, value = self.loaded
            with env.begin(write=True, db=db) as txn:
                for key in key_list(count):
                    txn.put(key, value)
            self.raw = (env, db)
            return {}
        if op in ("gets", "raw_gets"):
            keys = key_list(command["keys"])
            rounds, rest = divmod(command["count"], len(keys))
            batch = keys * rounds + keys[:rest]
            if op == "raw_gets":
                return self.raw_gets(batch)
            get = cache.get
            start, start_cpu = time.perf_counter(), time.thread_time()
            for key in batch:
                get(key)
            return {
                "elapsed_s": time.perf_counter() - start,
                "cpu_s": time.thread_time() - start_cpu,
            }
        if op == "sets":
            keys = key_list(command["keys"])
            value = b"w" * command["value_bytes"]
            w = command["w"]
            count = command["count"]
            start = time.perf_counter()
            for i in range(count):
                cache.set(keys[i % len(keys)], value, w=w)
            return {"elapsed_s": time.perf_counter() - start}
        if op == "set_many":
            keys = key_list(command["keys"])
            value = b"w" * command["value_bytes"]
            items = [(keys[i % len(keys)], value) for i in range(command["count"])]
            start = time.perf_counter()
            cache.set_many(items, w=command["w"])
            return {"elapsed_s": time.perf_counter() - start}
        raise ValueError(f"unknown op {op!r}")


def main() -> None:
    worker = Worker()
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            try:
                reply = worker.run(command)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
    finally:
        if worker.cache is not None:
            worker.cache.close()
        if worker.raw is not None:
            worker.raw[0].close()


if __name__ == "__main__":
    main()
