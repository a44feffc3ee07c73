"""A cache member in its own process, driven by the real-process tests: JSON commands on stdin,
one JSON reply per line on stdout. Run as `python member_process.py NODE_ID LISTEN MEMBERS DIR`.

Commands: {"op": "set", "key", "value", "ttl", "w"}, {"op": "get", "key", "r"},
{"op": "incr_many", "key", "count", "threads"} (count increments from that many threads at
once), {"op": "versions", "key", "r"}, {"op": "quit"}. Replies: {"ok": result} or
{"error": "ClassName: message"}.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from dynacore import Cache


def incr_many(cache: Cache, key: str, count: int, threads: int) -> int:
    """`count` increments of `key` from `threads` threads started together."""
    assert count % threads == 0
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def bump() -> None:
        barrier.wait()
        try:
            for _ in range(count // threads):
                cache.incr(key)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return count


def run(cache: Cache, command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "set":
        cache.set(command["key"], command["value"], command.get("ttl"), w=command.get("w"))
        return None
    if op == "get":
        return cache.get(command["key"], r=command.get("r"))
    if op == "versions":
        return cache.get_versions(command["key"], r=command.get("r")).values
    if op == "incr_many":
        return incr_many(cache, command["key"], command["count"], command["threads"])
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    node_id, listen, members, data_dir = sys.argv[1:5]
    with Cache(data_dir, listen, node_id=node_id, members=members, n=2) as cache:
        print(json.dumps({"ready": cache.address}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            try:
                reply = {"ok": run(cache, command)}
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
