"""`dynacore repair` and `dynacore aae-status` on real processes: with periodic exchanges off, a
wiped replica gets its keys back from one `repair`; aae-status shows the exchanges, the keys they
repaired and the hints held for a stopped node."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from test_aae_helpers import healing_cluster, key_count, node, wait_for

from dynacore import Client

KEYS = 300


def dynacore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynacore", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_repair_restores_a_wiped_replica_and_aae_status_reports_it(tmp_path: Path) -> None:
    with healing_cluster(tmp_path) as cluster:  # no periodic exchange, no hint delivery
        seeds = ",".join(cluster.addresses)
        with Client(cluster.addresses) as client:
            client.put_many([(f"cli-{i}", "v") for i in range(KEYS)], w=3)
        wiped = node(cluster, "n2")
        wiped.stop()
        shutil.rmtree(wiped.data_dir)
        wiped.data_dir.mkdir()
        cluster.restart(wiped)
        assert key_count(wiped.address) == 0

        repair = dynacore("repair", "--seeds", seeds)
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert f"repaired {KEYS} keys in 64 partitions" in repair.stdout
        assert "64/64" in repair.stdout  # the progress bar's last state
        assert key_count(wiped.address) == KEYS

        again = dynacore("repair", "--seeds", seeds, "--partition", "3", "--partition", "5")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "repaired 0 keys in 2 partitions" in again.stdout

        status = dynacore("aae-status", "--seeds", seeds)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = [line for line in status.stdout.splitlines() if re.match(r"^\W*\d+\W+3\W+n\d", line)]
        assert len(rows) == 64  # each partition's repair ran on one node
        repaired = sum(int(re.split(r"[│|]", row)[7]) for row in rows)
        assert repaired == KEYS

        stopped = node(cluster, "n3")
        stopped.stop()
        with Client(cluster.addresses[:2]) as client:
            client.put_many([(f"while-down-{i}", "v") for i in range(10)], w=2)
        wait_for(lambda: "n3" in hint_rows(seeds), 10.0, "hints for n3 in aae-status")
        assert sum(count for _, count in hint_rows(seeds)["n3"]) == 10


def hint_rows(seeds: str) -> dict[str, list[tuple[str, int]]]:
    """aae-status's pending-hints table: target -> [(held by, count)]."""
    out = dynacore("aae-status", "--seeds", seeds.split(",")[0]).stdout
    table = out.split("pending hints", 1)[1]
    found: dict[str, list[tuple[str, int]]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 3 and cells[2].isdigit():
            found.setdefault(cells[1], []).append((cells[0], int(cells[2])))
    return found
