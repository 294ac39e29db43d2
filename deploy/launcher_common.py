"""What the local launchers (Kafka, PostgreSQL) share: the var dir, a file lock, a log tail."""

from __future__ import annotations

import contextlib
import fcntl
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
