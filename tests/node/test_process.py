"""run_node_forever in a real process: TCP, LMDB, SIGTERM/SIGINT stop cleanly, SIGKILL loses no
acknowledged write, and a new process on the same data dir serves every acknowledged write."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dynacore.client import Client

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

SERVE = """
import json, sys
from dynacore.config import load_config
from dynacore.node import run_node_forever
config = load_config(env={}, overrides=json.loads(sys.argv[1]))
run_node_forever(config, on_ready=lambda address: print(address, flush=True))
"""


@contextmanager
def serve(
    data_dir: Path, listen: str = "127.0.0.1:0"
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    overrides = {"node_id": "solo", "listen": listen, "data_dir": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, json.dumps(overrides)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()  # the node prints its address once it listens
        assert address.startswith("127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(STOP_TIMEOUT_S)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_reopened_data_dir_serves_every_acknowledged_write(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    data_dir = tmp_path / "solo"
    written = {f"key-{i}": f"value-{i}" for i in range(200)}
    with serve(data_dir) as (proc, address):
        with Client([address]) as client:
            client.put_many(written)
            ctx = client.put("overwritten", "old")
            client.put("overwritten", "new", ctx)
            client.delete("deleted", client.put("deleted", "x"))
        proc.send_signal(stop_signal)
        code = proc.wait(STOP_TIMEOUT_S)
        assert code == (-signal.SIGKILL if stop_signal == signal.SIGKILL else 0)
    with serve(data_dir, listen=address) as (_, again), Client([again]) as client:
        results = client.get_many(list(written))
        assert [r.values for r in results] == [[v.encode()] for v in written.values()]
        assert client.get("overwritten").values == [b"new"]
        assert client.get("deleted").values == []
        assert client.status().key_count == len(written) + 2
