"""Real processes started through the CLI, real TCP on 127.0.0.1, real LMDB in temp dirs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dynacore import Client
from dynacore.config import parse_members
from dynacore.localcluster import LocalCluster
from dynacore.membership import Membership
from dynacore.objects import object_key
from dynacore.storage.lmdb_engine import open_lmdb_engine

KEYS = 1000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # n=2 on 3 nodes, so that "each replica holds exactly its keys" is a real check.
    local = LocalCluster(tmp_path / "cluster", nodes_count=3, partitions=64, n=2)
    with local:
        yield local


def _stored_keys(data_dir: Path) -> set[bytes]:
    async def scan() -> set[bytes]:
        async with open_lmdb_engine(data_dir) as engine:
            return {key for key, _ in engine.scan("data")}

    return trio.run(scan)


def test_cli_cluster_replicates_to_exactly_the_preference_list(cluster: LocalCluster) -> None:
    first, _, last = cluster.addresses
    with Client([first]) as writer:
        for i in range(KEYS):
            writer.put(f"key-{i}", f"value-{i}", w=2)
    with Client([last]) as reader:
        results = reader.get_many([f"key-{i}" for i in range(KEYS)], r=2)
    assert [r.values for r in results] == [[f"value-{i}".encode()] for i in range(KEYS)]

    members = parse_members(",".join(f"{n.node_id}@{n.address}" for n in cluster.nodes))
    membership = Membership.static(members, partitions=64, n=2)
    cluster.stop()
    for node in cluster.nodes:
        expected = {
            object_key("", f"key-{i}".encode())
            for i in range(KEYS)
            if node.node_id in membership.preference_list(object_key("", f"key-{i}".encode()), 2)
        }
        assert 0 < len(expected) < KEYS
        assert _stored_keys(node.data_dir) == expected, node.node_id


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynacore", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_put_get_delete_status(cluster: LocalCluster) -> None:
    seeds = ",".join(cluster.addresses)
    put = _cli("put", "fruit", "apple", "--seeds", seeds, "--w", "2")
    assert put.returncode == 0, put.stdout + put.stderr
    got = _cli("get", "fruit", "--seeds", seeds, "--r", "2")
    assert got.returncode == 0, got.stderr
    assert "sibling 1: 'apple'" in got.stdout
    context = re.search(r"context ([0-9a-f]+)", got.stdout)
    assert context is not None
    deleted = _cli("delete", "fruit", "--context", context.group(1), "--seeds", seeds)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "(not found)" in _cli("get", "fruit", "--seeds", seeds).stdout

    status = _cli("status", "--seeds", seeds)
    assert status.returncode == 0, status.stdout + status.stderr
    for node in cluster.nodes:
        assert node.node_id in status.stdout and node.address in status.stdout
    assert status.stdout.count("up") >= 3


def test_cli_errors_are_one_line_and_exit_1(cluster: LocalCluster) -> None:
    too_big = "k" * 2000
    result = _cli("put", too_big, "v", "--seeds", cluster.addresses[0])
    assert result.returncode == 1
    assert "KeyTooLarge" in result.stdout


def test_cli_status_shows_a_stopped_node_down(cluster: LocalCluster) -> None:
    cluster.nodes[2].stop()
    status = _cli("status", "--seeds", cluster.addresses[0])
    assert status.returncode == 0, status.stdout + status.stderr
    line = next(line for line in status.stdout.splitlines() if cluster.nodes[2].node_id in line)
    assert "down" in line


def test_cli_cluster_command_runs_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynacore", "cluster", "--nodes", "3", "--base-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C or SIGTERM" in line:
            break
    addresses = re.findall(r"127\.0\.0\.1:\d+", "".join(lines))
    assert len(set(addresses)) == 3, lines
    with Client(addresses[:1]) as client:
        client.put("through-cluster-command", "yes", w=3)
        assert client.get("through-cluster-command", r=3).values == [b"yes"]
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert "exit codes [0, 0, 0]" in rest


def test_a_cluster_restarted_on_new_ports_serves_its_data(tmp_path: Path) -> None:
    """Every node stops, then starts on the same data with another port: the member list each
    is started with says where the others are now; the addresses in the stored cluster state
    are stale and must not win (they did: every request went to the old ports)."""
    base = tmp_path / "cluster"
    with LocalCluster(base, nodes_count=3, partitions=64, n=3) as before:
        with Client(before.addresses[:1]) as writer:
            writer.put_many({f"key-{i}": f"value-{i}" for i in range(100)}, w=3)
        old_ports = set(before.addresses)
    with LocalCluster(base, nodes_count=3, partitions=64, n=3) as after:
        assert not old_ports & set(after.addresses)
        with Client(after.addresses[2:]) as reader:
            results = reader.get_many([f"key-{i}" for i in range(100)], r=3)
            reader.put("new", "written after the restart", w=3)
            assert reader.get("new", r=3).values == [b"written after the restart"]
    assert [r.values for r in results] == [[f"value-{i}".encode()] for i in range(100)]
