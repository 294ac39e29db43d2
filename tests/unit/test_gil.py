"""The GIL switch interval of a SQLite writer's turn (infra/gil.py)."""

from __future__ import annotations

import sys

import pytest

from infra.gil import short_while_writing
from registry_api.db import WriteTurn
from tests.switch_intervals import interval_in_a_turn


def test_a_turn_keeps_the_running_apps_interval_when_another_app_stops() -> None:
    """Two apps in one process (API replicas in the tests): the one that stops first takes
    its interval with it, not the other's; with none running a turn changes nothing."""
    before = sys.getswitchinterval()
    turn = WriteTurn()
    with short_while_writing(0.25):
        with short_while_writing(0.75):
            pass
        assert interval_in_a_turn(turn) == pytest.approx((0.00025, before))
    assert interval_in_a_turn(turn) == (before, before)
