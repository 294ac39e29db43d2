"""A status change spliced into the stored rendering of the revision before is, byte for byte,
the rendering of the new row (registry_api/feeds/rendered.status_changed), and the splice
refuses a rendering that is not of the revision just before."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from registry_api.feeds.documents import event_data
from registry_api.feeds.index.records import Vocabulary
from registry_api.feeds.rendered import Entry, render_rows, status_changed
from tests.unit.test_rendered_spill import rows

SEEN = datetime(2026, 5, 1, 9, 30, 15, 250000, tzinfo=UTC)


def changed(row: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {**row, **values}


def cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(what, the row before, the row after its status change)."""
    first, second, third, fourth = rows(4)
    # a catalog entry with a "status" key of its own, ahead of the document's
    third = changed(third, catalog={"parental": 0, "status": "ON"}, revision=9)
    fourth = changed(fourth, last_seen=SEEN, status="online", revision=99, version=3)
    return [
        ("first sight", first, changed(first, status="online", last_seen=SEEN, revision=2)),
        ("no last_seen yet", second, changed(second, status="offline", revision=2)),
        ("nested status key, revision 9 to 10", third,
         changed(third, status="online", last_seen=SEEN, revision=10)),
        ("offline later, 99 to 100", fourth,
         changed(fourth, status="offline", last_seen=datetime(2026, 5, 2, tzinfo=UTC),
                 revision=100)),
    ]  # fmt: skip


@pytest.mark.parametrize("what", [case[0] for case in cases()])
def test_a_spliced_status_change_is_the_rendering_of_the_new_row(what: str) -> None:
    owners = Vocabulary()
    _, before, after = next(case for case in cases() if case[0] == what)
    [stored] = render_rows([before], owners)
    [expected] = render_rows([after], owners)
    spliced = status_changed(stored, event_data(after))
    assert spliced == expected
    assert Entry.of(spliced).revision == after["revision"]


def test_a_rendering_not_of_the_revision_before_is_not_spliced() -> None:
    owners = Vocabulary()
    [row] = rows(1)
    [stored] = render_rows([row], owners)
    assert status_changed(stored, event_data(changed(row, status="online", revision=3))) is None
    assert status_changed(stored, event_data(changed(row, status="online", revision=1))) is None
    edited = changed(row, status="online", revision=2, version=2)  # a new version: an edit
    assert status_changed(stored, event_data(edited)) is None
    retired = changed(row, status="online", revision=2, retired_at=SEEN)
    assert status_changed(stored, event_data(retired)) is None
