"""Child processes of the benchmark harness: start one with its output in a log file and tied to
the harness (it gets SIGTERM if the harness dies), stop it with SIGTERM then SIGKILL, and the
harness's error type. Every process started here is stopped by whoever started it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """The benchmark harness could not set up, run or stop what it measures."""


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent exits (best effort)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    pipes: bool = False,
) -> subprocess.Popen[str]:
    """Start `argv`; stderr (and stdout unless `pipes`) go to `log_path`. With `pipes`, stdin and
    stdout are text pipes for a line protocol."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        preexec: Callable[[], None] | None = _die_with_parent
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else log,
            stderr=log,
            env=env,
            text=True,
            bufsize=1 if pipes else -1,
            preexec_fn=preexec,
        )


def stop(process: subprocess.Popen[str], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; the exit code. Closes the pipes."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()
    code = process.returncode
    assert code is not None
    return code


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
