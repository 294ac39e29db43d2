"""What the local launchers (Kafka, PostgreSQL, Mosquitto) share: the var dir, a file lock, a log
tail, whether a recorded process still runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from schemas.settings import LocalStateSettings


def var_dir() -> Path:
    """The var dir holding local state: $FEEDGRID_VAR_DIR, else ./var (from the working dir)."""
    return LocalStateSettings().var_dir.expanduser().absolute()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock so concurrent launchers (parallel fixtures) do not race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a service log, for an error message that says what went wrong."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """Whether the process runs (an exited child is reaped; a zombie has exited)."""
    with contextlib.suppress(ChildProcessError, OSError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def runs_with(pid: int, *arguments: str) -> bool:
    """Whether the process runs with each of ``arguments`` on its command line: a pid file
    left by a process that ended may name an unrelated one since."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and all(argument.encode() in cmdline for argument in arguments)


def recorded_pid(pid_file: Path) -> int | None:
    """The pid a launcher wrote, or None (no file, or not a number)."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
