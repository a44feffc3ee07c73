"""Deletes on real processes: a node that missed the deletes rejoins with the old values; the
tombstones reach it (hints, anti-entropy), are reaped only once every replica holds them, and the
deleted values never come back, not even after a full `dynacore repair`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from test_aae_helpers import healing_cluster, node, replica_sets, sk, wait_for

from dynacore import Client

KEYS = 20
GRACE_S = 1.0
REAP_TIMEOUT_S = 30.0


def test_deleted_keys_never_come_back_after_a_node_that_missed_the_delete_rejoins(
    tmp_path: Path,
) -> None:
    settings = {
        "aae_interval_s": 0.05,
        "hint_interval_s": 0.2,
        "reap_interval_s": 0.2,
        "tombstone_grace_s": GRACE_S,
    }
    with healing_cluster(tmp_path, **settings) as cluster:
        keys = [f"doomed-{i}" for i in range(KEYS)]
        stored_keys = [sk(k) for k in keys]
        missed = node(cluster, "n3")
        with Client(cluster.addresses) as client:
            client.put_many([(k, "old value") for k in keys], w=3)
            missed.stop()
            for key in keys:
                client.delete(key, client.get(key, r=2).context, w=2)
            time.sleep(GRACE_S * 1.5)  # past the grace period while n3 is away
            assert all(s is not None for s in replica_sets(cluster.addresses[0], stored_keys))

            cluster.restart(missed)  # it still holds every old value
            assert all(r.values == [] for r in client.get_many(keys, r=3))
            wait_for(
                lambda: all(
                    not held(cluster, address, stored_keys) for address in cluster.addresses
                ),
                REAP_TIMEOUT_S,
                "the tombstones reaped on every replica",
            )
            repair = subprocess.run(
                [sys.executable, "-m", "dynacore", "repair", "--seeds", cluster.addresses[0]],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "COLUMNS": "200"},
            )
            assert repair.returncode == 0, repair.stdout + repair.stderr
            assert "repaired 0 keys in 64 partitions" in repair.stdout
            assert all(r.values == [] for r in client.get_many(keys, r=3))
        for address in cluster.addresses:
            assert not held(cluster, address, stored_keys)


def held(cluster: object, address: str, stored_keys: list[bytes]) -> bool:
    return any(s is not None for s in replica_sets(address, stored_keys))
