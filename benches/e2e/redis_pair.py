"""The Redis baseline: a Debian `redis-server` primary plus one replica (`--replicaof`) on free
127.0.0.1 ports, started and stopped by the benchmark (`with RedisPair(dir) as pair:`).

Persistence is off by default (`--save ""`, `--appendonly no`): Redis's best figure, and its
replication is asynchronous (a SET is acknowledged before the replica has it). `appendonly=True`
runs both with `--appendonly yes --appendfsync everysec` instead (`appendfsync="always"`: an
fsync before each write is acknowledged, the match for dynacore's durable commits).
`wait_replicated` waits until the replica has acknowledged everything written so far (Redis's
WAIT).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from dynacore.localcluster import free_ports

from . import procs

READY_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.05
REPLICATION_TIMEOUT_S = 60.0


class RedisPair:
    """A primary and one replica; leaving the context stops both (no leaked processes)."""

    def __init__(
        self,
        base_dir: Path,
        appendonly: bool = False,
        redis_server: str = "redis-server",
        appendfsync: str = "everysec",
    ) -> None:
        if appendfsync not in ("everysec", "always", "no"):
            raise ValueError(f"appendfsync is everysec, always or no, got {appendfsync!r}")
        binary = shutil.which(redis_server)
        if binary is None:
            raise procs.BenchError(
                f"{redis_server!r} not found: apt-get install -y redis-server (Debian package)"
            )
        self.binary = binary
        self.base_dir = base_dir
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        primary_port, replica_port = free_ports(2)
        self.primary_address = f"127.0.0.1:{primary_port}"
        self.replica_address = f"127.0.0.1:{replica_port}"
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def _argv(self, name: str, port: int, replica_of: int | None) -> list[str]:
        data_dir = self.base_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        argv = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data_dir),
            "--save", "",
            *persistence,
            "--daemonize", "no",
            "--repl-diskless-sync-delay", "0",
            "--logfile", "",
        ]  # fmt: skip
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        return argv

    def start(self) -> None:
        primary_port = int(self.primary_address.rsplit(":", 1)[1])
        replica_port = int(self.replica_address.rsplit(":", 1)[1])
        for name, port, replica_of in (
            ("primary", primary_port, None),
            ("replica", replica_port, primary_port),
        ):
            argv = self._argv(name, port, replica_of)
            self.processes[name] = procs.start(argv, self.base_dir / f"redis-{name}.log")
        self.wait_in_sync()

    def client(self, name: str) -> redis.Redis:
        address = self.primary_address if name == "primary" else self.replica_address
        host, port = address.rsplit(":", 1)
        return redis.Redis(host=host, port=int(port), socket_timeout=5.0)

    def _check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = procs.tail(self.base_dir / f"redis-{name}.log")
                raise procs.BenchError(f"redis {name} exited ({process.returncode}):\n{log}")

    def wait_in_sync(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until both answer and the replica's link to the primary is up and synced."""
        deadline = time.monotonic() + timeout_s
        with self.client("primary") as primary, self.client("replica") as replica:
            while time.monotonic() < deadline:
                self._check_running()
                try:
                    replica_info = replica.info("replication")
                    primary_info = primary.info("replication")
                except redis.ConnectionError:
                    time.sleep(POLL_INTERVAL_S)
                    continue
                link_up = replica_info.get("master_link_status") == "up"
                synced = replica_info.get("master_sync_in_progress") == 0
                if link_up and synced and primary_info.get("connected_slaves") == 1:
                    return
                time.sleep(POLL_INTERVAL_S)
        raise procs.BenchError(f"redis replica not in sync after {timeout_s}s")

    def wait_replicated(self, timeout_s: float = REPLICATION_TIMEOUT_S) -> None:
        """Block until the replica acknowledged every write so far (WAIT 1 timeout)."""
        with self.client("primary") as primary:
            acked = primary.execute_command("WAIT", 1, int(timeout_s * 1000))
        if acked != 1:
            raise procs.BenchError(f"redis replica did not catch up within {timeout_s}s")

    def dbsize(self, name: str) -> int:
        with self.client(name) as client:
            return int(client.dbsize())

    def stop(self) -> dict[str, int]:
        """Stop the replica, then the primary; their exit codes."""
        codes = {}
        for name in ("replica", "primary"):
            process = self.processes.pop(name, None)
            if process is not None:
                codes[name] = procs.stop(process)
        return codes

    def __enter__(self) -> RedisPair:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
