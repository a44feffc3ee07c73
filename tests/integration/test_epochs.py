"""Epochs on real processes (the Riak "kv679" case): a node writes a key, loses its data
directory, restarts with a new epoch (a new actor id) and writes the same key again; the new
write is never taken as older than the lost ones, on any replica, after anti-entropy."""

from __future__ import annotations

import shutil
from pathlib import Path

from test_aae_helpers import (
    healing_cluster,
    membership_of,
    node,
    replica_sets,
    sk,
    visible,
    wait_for,
)

from dynacore import Client
from dynacore._backend import versions

CONVERGE_TIMEOUT_S = 60.0


def test_a_wiped_node_writes_under_a_new_epoch_and_nothing_is_lost(tmp_path: Path) -> None:
    with healing_cluster(tmp_path, aae_interval_s=0.05, hint_interval_s=0.2) as cluster:
        view = membership_of(cluster)
        key = next(
            k
            for k in (f"kv679-{i}" for i in range(1000))
            if view.preference_list(sk(k), 3)[0] == "n1"
        )
        with Client(cluster.addresses) as client:
            context = None
            for version in ("v1", "v2", "v3"):  # n1 coordinates: its counter reaches 3
                context = client.put(key, version, context=context, w=3)
        old_actors = {actor for actor, _ in versions.vv_to(context)}
        (old_actor,) = old_actors
        assert old_actor.startswith("n1.")
        assert dict(versions.vv_to(context))[old_actor] == 3

        n1 = node(cluster, "n1")
        n1.stop()
        shutil.rmtree(n1.data_dir)
        n1.data_dir.mkdir()
        cluster.restart(n1)

        with Client([n1.address]) as client:  # n1 first in line: it coordinates again
            new_context = client.put(key, "after the wipe", w=3)
        (new_actor,) = {actor for actor, _ in versions.vv_to(new_context)}
        assert new_actor.startswith("n1.") and new_actor != old_actor

        def converged() -> bool:
            sets = [replica_sets(address, [sk(key)])[0] for address in cluster.addresses]
            return sets[0] is not None and sets.count(sets[0]) == 3

        wait_for(converged, CONVERGE_TIMEOUT_S, "every replica holds the same set")
        for address in cluster.addresses:
            (stored,) = replica_sets(address, [sk(key)])
            assert sorted(visible(stored)) == [b"after the wipe", b"v3"], address
        with Client(cluster.addresses) as client:
            result = client.get(key, r=3)
            assert sorted(result.values) == [b"after the wipe", b"v3"]
            assert {a for a, _ in versions.vv_to(result.context)} == {old_actor, new_actor}
            # a write with the read context resolves the siblings everywhere
            client.put(key, "resolved", context=result.context, w=3)
            assert client.get(key, r=3).values == [b"resolved"]
