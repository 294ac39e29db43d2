"""A setting of the whole process that each running app asks for while it runs.

Some knobs are the interpreter's or the process's, not an app's (the GIL's switch interval while
a writer holds its turn, ``infra.gil``; the share background loops keep while requests are in
flight, ``infra.foreground``), yet each app has its own ``Settings``. Each app asks for its
value while its lifespan runs; the last one started counts, and when it stops, the one before
it counts again (tests run several apps in one process, one after another or side by side).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class AskedByApps(Generic[T]):
    """The values running apps asked for, the last one started's first."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._asked: list[T] = []

    @contextmanager
    def asking(self, value: T) -> Iterator[None]:
        """While the block runs, ``value`` is asked for (see :meth:`current`)."""
        with self._guard:
            self._asked.append(value)
        try:
            yield
        finally:
            with self._guard:
                self._asked.remove(value)  # another app of the process may still run

    def current(self) -> T | None:
        """The value the last app started asked for, or None while no app asks (read without
        the lock: a list's last item is read whole under the GIL)."""
        asked = self._asked
        return asked[-1] if asked else None
