"""Readiness checks that a process's parts register, read by ``/readyz``.

The API's readiness endpoint cannot import the workers (neither side imports the other), yet
in ``feedgrid up`` both live in one process and a stalled worker must make it not ready. Each
part registers a named check here; ``/readyz`` asks every check of its process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Check = Callable[[], tuple[bool, dict[str, Any]]]

_checks: dict[str, Check] = {}
_lock = threading.Lock()


def register_check(name: str, check: Check) -> None:
    with _lock:
        _checks[name] = check


def unregister_check(name: str) -> None:
    with _lock:
        _checks.pop(name, None)


def run_checks() -> dict[str, tuple[bool, dict[str, Any]]]:
    """Every registered check's verdict; a check that raises is not ready, with the reason."""
    with _lock:
        checks = dict(_checks)
    results: dict[str, tuple[bool, dict[str, Any]]] = {}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as error:
            results[name] = (False, {"error": repr(error)[:300]})
    return results
