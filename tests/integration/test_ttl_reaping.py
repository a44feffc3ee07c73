"""TTL on real processes: a key written with ttl=2 is invisible after 2 s on every node, and the
reaper later removes it from every store; a key without a TTL stays."""

from __future__ import annotations

import time
from pathlib import Path

from test_aae_helpers import healing_cluster, replica_sets, sk, visible, wait_for

from dynacore import Client, objects
from dynacore._backend import versions

TTL_S = 2.0
REAP_TIMEOUT_S = 20.0


def test_a_ttl_key_turns_invisible_everywhere_then_is_reaped(tmp_path: Path) -> None:
    with healing_cluster(tmp_path, reap_interval_s=0.2) as cluster:
        with Client(cluster.addresses) as client:
            client.put("ephemeral", "soon gone", w=3, ttl=TTL_S)
            client.put("durable", "stays", w=3)
            written_at = time.monotonic()
            for set_bytes in replica_sets_everywhere(cluster, "ephemeral"):
                (raw,) = versions.values(set_bytes)
                envelope = objects.decode_envelope(raw)
                assert envelope.expiry_ms == envelope.timestamp_ms + int(TTL_S * 1000)
            time.sleep(max(0.0, TTL_S - (time.monotonic() - written_at)))

            assert client.get("ephemeral", r=3).values == []
            for set_bytes in replica_sets_everywhere(cluster, "ephemeral"):
                assert set_bytes is None or visible(set_bytes) == []
            wait_for(
                lambda: replica_sets_everywhere(cluster, "ephemeral") == [None, None, None],
                REAP_TIMEOUT_S,
                "the expired key gone from every store",
            )
            assert client.get("durable", r=3).values == [b"stays"]
        assert all(visible(s) == [b"stays"] for s in replica_sets_everywhere(cluster, "durable"))


def replica_sets_everywhere(cluster: object, key: str) -> list[bytes | None]:
    addresses = cluster.addresses  # type: ignore[attr-defined]
    return [replica_sets(address, [sk(key)])[0] for address in addresses]
