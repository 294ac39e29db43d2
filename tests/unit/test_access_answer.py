"""A new access request's answer is encoded from ``request_document`` as it is, without the
response model: it must be the very bytes the model would write, for the values a request
holds (times in any zone, absent times, enum members or their values, stored rows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from registry_api.access.models import AccessRequest, AccessRequestFeed
from registry_api.access.requests import request_document, request_out
from registry_api.feeds.routes import json_response
from schemas.access import AccessAction, Outcome, ReasonCode, RequestStatus

NOW = datetime(2026, 12, 7, 10, 30, 5, 123456, tzinfo=UTC)


def _request(**changes: Any) -> AccessRequest:
    values: dict[str, Any] = {
        "id": "0193a1b2c3d4e5f60718293a4b5c6d7e",
        "requester": "key:lz-tb:requester",
        "requester_department": "lz-tb",
        "purpose": "public safety",
        "actions": ["live", "playback"],
        # a zone of its own and no microseconds: both written as the model writes them
        "valid_from": datetime(2026, 12, 7, 18, 30, tzinfo=timezone(timedelta(hours=8))),
        "valid_until": NOW + timedelta(hours=2),
        "emergency": True,
        "emergency_reason": "a fire at the bridge",
        "created_at": NOW,
    }
    return AccessRequest(**(values | changes))


def _item(number: int, outcome: Outcome) -> dict[str, Any]:
    granted = outcome is Outcome.granted
    return {
        "request_id": "0193a1b2c3d4e5f60718293a4b5c6d7e",
        "feed_id": f"feed-{number:04d}",
        "owner_department": None if outcome is Outcome.denied else "lz-psb",
        "outcome": outcome.value,
        "reason": (ReasonCode.conditions_met if granted else ReasonCode.feed_not_found).value,
        "message": "shared under the bureau's conditions — 条件共享",
        "actions": [AccessAction.live] if granted else ["live", "playback"],
        "due_at": NOW + timedelta(days=3) if outcome is Outcome.pending else None,
        "decided_at": None if outcome is Outcome.pending else NOW,
        "decided_by": None if outcome is Outcome.pending else "policy",
        "grant_id": "0193a1b2c3d4e5f60718293a4b5c6d7f" if granted else None,
        "review_required": granted and number % 2 == 0,
    }


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([Outcome.granted, Outcome.pending, Outcome.denied], RequestStatus.pending),
        ([Outcome.granted, Outcome.denied], RequestStatus.partial),
        ([Outcome.granted, Outcome.granted], RequestStatus.granted),
        ([Outcome.denied], RequestStatus.denied),
        ([], RequestStatus.denied),
    ],
)
def test_the_answer_is_the_bytes_the_model_writes(
    outcomes: list[Outcome], status: RequestStatus
) -> None:
    request = _request()
    items = [_item(number, outcome) for number, outcome in enumerate(outcomes)]
    answer = json_response(request_document(request, items), 201)
    model = request_out(request, items)
    assert answer.body == model.model_dump_json().encode()
    assert model.status is status
    assert model.counts == {outcome.value: outcomes.count(outcome) for outcome in Outcome}


def test_stored_rows_answer_as_their_values() -> None:
    request = _request(emergency=False, emergency_reason=None)
    values = [_item(number, Outcome.pending) for number in range(3)]
    rows = [AccessRequestFeed(**item) for item in values]
    assert request_document(request, rows) == request_document(request, values)
    assert request_out(request, rows).model_dump_json().encode() == (
        json_response(request_document(request, values)).body
    )
