"""Two processes, each embedding a Cache, members of one static cluster (n=2): a write in one
is readable in the other at r=2, survives the other's restart, TTLs expire in both, and
2 processes × 1,000 concurrent increments count exactly 2,000."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynacore.localcluster import free_ports

SCRIPT = Path(__file__).with_name("member_process.py")
REPLY_TIMEOUT_S = 60.0  # bound on one command (a thousand increments included)
EXPIRY_WAIT_S = 10.0  # bound on the wait for a 1 s TTL to pass everywhere

pytestmark = pytest.mark.slow


class Member:
    """One child process running member_process.py."""

    def __init__(self, node_id: str, listen: str, members: str, data_dir: Path) -> None:
        self.args = [sys.executable, str(SCRIPT), node_id, listen, members, str(data_dir)]
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.address = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], REPLY_TIMEOUT_S)
        assert ready, f"no reply from {self.args[2]} within {REPLY_TIMEOUT_S} s"
        line = self.process.stdout.readline()
        assert line, f"{self.args[2]} exited with {self.process.wait()}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def send(self, **command: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def reply(self) -> Any:
        reply = self._read()
        assert "error" not in reply, reply["error"]
        return reply["ok"]

    def call(self, **command: Any) -> Any:
        self.send(**command)
        return self.reply()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.send(op="quit")
        try:
            assert self.process.wait(timeout=REPLY_TIMEOUT_S) == 0
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Member, Member]]:
    ports = free_ports(2)
    members = f"a@127.0.0.1:{ports[0]},b@127.0.0.1:{ports[1]}"
    a = Member("a", f"127.0.0.1:{ports[0]}", members, tmp_path / "a")
    b = Member("b", f"127.0.0.1:{ports[1]}", members, tmp_path / "b")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def eventually(member: Member, key: str, expected: Any, r: int = 1) -> None:
    deadline = time.monotonic() + EXPIRY_WAIT_S
    while (value := member.call(op="get", key=key, r=r)) != expected:
        assert time.monotonic() < deadline, f"{key} is still {value!r}"
        time.sleep(0.05)


def test_a_write_in_one_process_is_readable_in_the_other_and_survives_its_restart(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    a.call(op="set", key="greeting", value="hello", w=2)
    assert b.call(op="get", key="greeting", r=2) == "hello"
    assert b.call(op="get", key="greeting", r=1) == "hello"  # b's own replica, locally
    b.stop()
    a.call(op="set", key="while-b-was-down", value=[1, 2], w=1)
    b.start()
    assert b.call(op="get", key="greeting", r=1) == "hello"  # from b's LMDB after the restart
    assert b.call(op="get", key="greeting", r=2) == "hello"
    assert b.call(op="get", key="while-b-was-down", r=2) == [1, 2]  # and read-repaired
    eventually(b, "while-b-was-down", [1, 2], r=1)


def test_ttls_expire_in_both_processes(pair: tuple[Member, Member]) -> None:
    a, b = pair
    a.call(op="set", key="session", value="token", ttl=1.0, w=2)
    assert b.call(op="get", key="session", r=1) == "token"
    eventually(a, "session", None)
    eventually(b, "session", None)
    assert b.call(op="get", key="session", r=2) is None


def test_two_processes_times_a_thousand_concurrent_increments(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    a.send(op="incr_many", key="hits", count=1000, threads=8)
    b.send(op="incr_many", key="hits", count=1000, threads=8)
    assert a.reply() == 1000
    assert b.reply() == 1000
    assert a.call(op="get", key="hits", r=2) == 2000
    assert b.call(op="get", key="hits", r=2) == 2000
