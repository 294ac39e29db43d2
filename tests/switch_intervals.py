"""What the tests of the writers' GIL switch interval (infra/gil.py) share."""

from __future__ import annotations

import sys
import time

from registry_api.db import WriteTurn


def interval_in_a_turn(turn: WriteTurn) -> tuple[float, float]:
    """The process's switch interval while a writer holds ``turn``, and once it gave it back."""
    began = turn.take("test", time.perf_counter())
    during = sys.getswitchinterval()
    turn.give("test", began)
    return during, sys.getswitchinterval()
