"""The README's main job: a 3-node local cluster on 127.0.0.1 and a short workload against it.

Starts real `dynacore serve` processes (LMDB in a temp dir), writes and reads keys through
`dynacore.Client`, makes two concurrent writes that become siblings, resolves them, stops a node
and keeps writing, restarts it, and stops the cluster. Returns 0 when every check held.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from dynacore.client import Client
from dynacore.localcluster import LocalCluster

DEMO_KEYS = 200


def run_demo(nodes_count: int, console: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="dynacore-demo-") as tmp:
        cluster = LocalCluster(Path(tmp), nodes_count=nodes_count, partitions=64, n=3)
        console.rule("dynacore demo")
        started = time.monotonic()
        with cluster:
            console.print(
                f"started {nodes_count} nodes in {time.monotonic() - started:.1f}s: "
                + ", ".join(f"{node.node_id}@{node.address}" for node in cluster.nodes)
            )
            ok = _workload(cluster, console)
        console.print("cluster stopped cleanly" if ok else "[red]demo found a problem[/red]")
        return 0 if ok else 1


def _workload(cluster: LocalCluster, console: Console) -> bool:
    checks: list[bool] = []
    seeds = cluster.addresses
    with Client(seeds) as alice, Client(list(reversed(seeds))) as bob:
        started = time.monotonic()
        for i in range(DEMO_KEYS):
            alice.put(f"user:{i}", f"profile {i}", w=2)
        elapsed = time.monotonic() - started
        console.print(f"put {DEMO_KEYS} keys at w=2 in {elapsed:.2f}s")
        got = [bob.get(f"user:{i}", r=2).values for i in range(DEMO_KEYS)]
        readable = all(v == [f"profile {i}".encode()] for i, v in enumerate(got))
        console.print(
            f"read them back at r=2 through other nodes: {'ok' if readable else 'MISMATCH'}"
        )
        checks.append(readable)

        console.rule("concurrent writes become siblings")
        base = alice.get("cart")
        alice.put("cart", "apples", context=base.context)
        bob.put("cart", "pears", context=base.context)
        both = alice.get("cart", r=2)
        console.print(escape(f"two writes with the same context -> siblings {sorted(both.values)}"))
        checks.append(sorted(both.values) == [b"apples", b"pears"])
        merged = b",".join(sorted(both.values))
        alice.put("cart", merged, context=both.context)
        resolved = bob.get("cart", r=2)
        console.print(escape(f"a write with the merged context -> {resolved.values}"))
        checks.append(resolved.values == [merged])

        console.rule("a replica goes down")
        victim = cluster.nodes[-1]
        victim.stop()
        console.print(f"stopped {victim.node_id}; writing at w=2 goes on")
        for i in range(20):
            alice.put(f"while-down:{i}", f"v{i}", w=2)
        cluster.restart(victim)
        back = [bob.get(f"while-down:{i}", r=3).values for i in range(20)]
        healed = all(v == [f"v{i}".encode()] for i, v in enumerate(back))
        console.print(
            f"restarted {victim.node_id}; reads at r=3 (with read repair): "
            f"{'ok' if healed else 'MISMATCH'}"
        )
        checks.append(healed)

        alice.delete("cart", context=resolved.context)
        gone = bob.get("cart", r=2).values == []
        console.print(f"deleted 'cart': {'gone' if gone else 'STILL THERE'}")
        checks.append(gone)
    return all(checks)
