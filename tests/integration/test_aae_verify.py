"""Active anti-entropy as riak_test verify_aae checks it, on real processes: wipe one replica's
data directory and restart it; every key comes back to it without a single client read."""

from __future__ import annotations

import shutil
from pathlib import Path

from test_aae_helpers import healing_cluster, key_count, node, sk, stored_items, wait_for

from dynacore import Client

KEYS = 3000
REPAIR_TIMEOUT_S = 60.0


def test_a_wiped_replica_gets_every_key_back_by_anti_entropy_alone(tmp_path: Path) -> None:
    with healing_cluster(tmp_path, aae_interval_s=0.05) as cluster:
        keys = [f"aae-{i:05d}" for i in range(KEYS)]
        with Client(cluster.addresses) as client:
            client.put_many([(k, "value-" + k) for k in keys], w=3)
        wiped = node(cluster, "n2")
        wiped.stop()
        shutil.rmtree(wiped.data_dir)
        wiped.data_dir.mkdir()
        cluster.restart(wiped)
        assert key_count(wiped.address) < KEYS
        took_s = wait_for(
            lambda: key_count(wiped.address) == KEYS, REPAIR_TIMEOUT_S, "every key back on n2"
        )
        print(f"anti-entropy restored {KEYS} keys to the wiped node in {took_s:.1f} s")
    restored = stored_items(wiped.data_dir)
    reference = stored_items(node(cluster, "n1").data_dir)
    assert set(restored) == {sk(k) for k in keys}
    assert restored == reference
