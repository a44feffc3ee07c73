"""A local multi-process cluster on 127.0.0.1: `dynacore cluster`, the demo, and the tests.

Owns the child processes it starts: each node is `python -m dynacore serve ...` with its own data
directory under one base directory. `LocalCluster` is a context manager; leaving it stops every
node with SIGTERM (clean shutdown: in-flight commits finish, LMDB closes) and waits for it, with
SIGKILL only after `stop_timeout_s`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from dynacore.errors import ConfigError, DynacoreError

MAX_LOCAL_NODES = 16
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (bound then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class LocalNode:
    """One child process of a local cluster."""

    node_id: str
    address: str
    data_dir: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, env: dict[str, str]) -> None:
        assert self.process is None or self.process.poll() is not None, "node already running"
        self.log_path = self.data_dir.parent / f"{self.node_id}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dynacore", "serve", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop in time. The exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_or_kill(timeout_s)

    def wait_or_kill(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Wait for a node that was told to stop; SIGKILL it if it does not stop in time.

        A second SIGTERM during a clean shutdown would abort it, so this never signals twice."""
        code = self.wait(timeout_s)
        if code is None and self.process is not None:
            self.process.kill()
            code = self.process.wait()
        return code

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(STOP_TIMEOUT_S)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """N nodes on 127.0.0.1, each a `dynacore serve` process with its own data dir."""

    base_dir: Path
    nodes_count: int = 3
    partitions: int = 64
    n: int = 3
    secret: str = ""
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every node
    nodes: list[LocalNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes_count <= MAX_LOCAL_NODES:
            raise ConfigError(f"nodes must be in [1, {MAX_LOCAL_NODES}], got {self.nodes_count}")
        ports = free_ports(self.nodes_count)
        ids = [f"n{i + 1}" for i in range(self.nodes_count)]
        members = ",".join(f"{i}@127.0.0.1:{p}" for i, p in zip(ids, ports, strict=True))
        for node_id, port in zip(ids, ports, strict=True):
            data_dir = self.base_dir / node_id
            args = [
                "--node-id", node_id,
                "--listen", f"127.0.0.1:{port}",
                "--data-dir", str(data_dir),
                "--members", members,
                "--partitions", str(self.partitions),
                "--n", str(self.n),
                *self.extra_args,
            ]  # fmt: skip
            self.nodes.append(LocalNode(node_id, f"127.0.0.1:{port}", data_dir, args))

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        if self.secret:
            env["DYNACORE_CLUSTER_SECRET"] = self.secret
        return env

    def add_node(self, seeds: list[str]) -> LocalNode:
        """A new node (not started: `restart` starts it) that knows the cluster only through
        `seeds`: no static members, so it starts unjoined and learns the state by gossip."""
        if len(self.nodes) >= MAX_LOCAL_NODES:
            raise ConfigError(f"at most {MAX_LOCAL_NODES} local nodes")
        (port,) = free_ports(1)
        taken = {node.node_id for node in self.nodes}
        node_id = next(f"n{i}" for i in range(1, MAX_LOCAL_NODES + 2) if f"n{i}" not in taken)
        data_dir = self.base_dir / node_id
        args = [
            "--node-id", node_id,
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(data_dir),
            "--seeds", ",".join(seeds),
            "--partitions", str(self.partitions),
            "--n", str(self.n),
            *self.extra_args,
        ]  # fmt: skip
        node = LocalNode(node_id, f"127.0.0.1:{port}", data_dir, args)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.nodes.append(node)
        return node

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            node.start(self._env())
        for node in self.nodes:
            self.wait_ready(node, timeout_s)

    def restart(self, node: LocalNode, timeout_s: float = READY_TIMEOUT_S) -> None:
        node.start(self._env())
        self.wait_ready(node, timeout_s)

    def wait_ready(self, node: LocalNode, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the node accepts TCP connections; raise if it died or timed out."""
        host, port = node.address.rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not node.running:
                raise DynacoreError(f"node {node.node_id} exited; see {node.log_path}")
            try:
                with socket.create_connection((host, int(port)), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise DynacoreError(f"node {node.node_id} not ready after {timeout_s}s")

    def stop(self) -> list[int | None]:
        for node in self.nodes:
            node.signal(signal.SIGTERM)
        return [node.wait_or_kill() for node in self.nodes]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
