"""Hinted handoff as cassandra-dtest checks it, on real processes: 3 nodes, n=3, w=2; stop C;
write 5,000 keys; restart C; within 30 s C's own store holds all 5,000 and no hints remain."""

from __future__ import annotations

from pathlib import Path

from test_aae_helpers import (
    healing_cluster,
    hints_left,
    key_count,
    node,
    pending_hints,
    sk,
    stored_items,
    visible,
    wait_for,
)

from dynacore import Client

KEYS = 5000
HANDOFF_TIMEOUT_S = 30.0


def test_hinted_handoff_brings_a_stopped_node_every_write(tmp_path: Path) -> None:
    # anti-entropy and read repair are out of the picture: only hints can bring C its keys
    with healing_cluster(tmp_path, hint_interval_s=0.2) as cluster:
        c = node(cluster, "n3")
        c.stop()
        keys = [f"handoff-{i:05d}" for i in range(KEYS)]
        with Client(cluster.addresses[:2]) as client:
            client.put_many([(k, "value-" + k) for k in keys], w=2)
        wait_for(
            lambda: sum(pending_hints_of_running(cluster)) == KEYS,
            HANDOFF_TIMEOUT_S,
            "a hint for C of every write",
        )

        cluster.restart(c)
        took_s = wait_for(
            lambda: key_count(c.address) == KEYS and pending_hints(cluster) == [0, 0, 0],
            HANDOFF_TIMEOUT_S,
            "C holds every key and no hints remain",
        )
        print(f"hinted handoff of {KEYS} keys took {took_s:.1f} s")
    for local in cluster.nodes:
        assert hints_left(local.data_dir) == 0, local.node_id
    stored = stored_items(c.data_dir)
    assert set(stored) == {sk(k) for k in keys}
    assert all(visible(stored[sk(k)]) == [f"value-{k}".encode()] for k in keys)


def pending_hints_of_running(cluster: object) -> list[int]:
    running = [x for x in cluster.nodes if x.running]  # type: ignore[attr-defined]
    with Client([x.address for x in running]) as client:
        return [client.status(x.address).pending_hints for x in running]
