"""Access requests decided over the index's columns and written with batched statements store
exactly what the per-feed path stored: each feed's decision, the grants, the audit links (the
chain verifies) and the outbox events, byte for byte.

The reference is the per-feed path's own pieces, kept as they were: ``load_feed_facts`` and
``sharing_view`` read each feed from the database, ``decide`` decides it, ``event_data`` builds
each event and ``CloudEvent.trusted`` encodes it. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
import shapely.geometry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry_api.access.feed_columns import SharingRules, requested_feed_columns
from registry_api.access.feed_views import load_feed_facts, sharing_view
from registry_api.access.models import AccessRequest, AccessRequestFeed, Grant, GrantFeed
from registry_api.access.policy import PolicyContext, PolicyDecision, RequestFacts, decide
from registry_api.access.records import event_data
from registry_api.audit.models import AuditEntry
from registry_api.identity.models import Department
from registry_api.outbox.models import OutboxMessage
from registry_api.outbox.service import row_messages
from schemas.access import AccessAction, Outcome, ReasonCode
from schemas.events import SCHEMA_ACCESS_EVENT_V1, CloudEvent, EventType
from schemas.topics import ACCESS_EVENTS
from tests.integration.access_world import (
    CENTRE,
    ENVIRONMENT,
    POLICE,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    camera_body,
    register_feed,
    sensor_body,
)

pytestmark = pytest.mark.kafka

RING = [[103.80, 36.04], [103.87, 36.04], [103.87, 36.08], [103.80, 36.08], [103.80, 36.04]]
AREA = {"type": "Polygon", "coordinates": [RING]}
SNAPSHOTS_BRIEFLY = {"actions": ["snapshot"], "max_duration_minutes": 30}


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    """The access world plus feeds of several owners: conditions of every kind, a feed of the
    requesting department, a retired feed and a conditional sensor."""
    world = await build_world(client)
    more = {
        "area_conditional": camera_body(
            POLICE, 11, {"class": "conditional", "conditions": {"area": AREA}}, 90
        ),
        "actions_conditional": camera_body(
            ENVIRONMENT, 12, {"class": "conditional", "conditions": SNAPSHOTS_BRIEFLY}, 120
        ),
        "urban_own": camera_body(URBAN, 13, {"class": "not_shared", "legal_basis": "own"}, 150),
        "retired": camera_body(ENVIRONMENT, 14, {"class": "unconditional"}, 180),
        "sensor_conditional": sensor_body(
            ENVIRONMENT, 15, {"class": "conditional", "conditions": {"departments": [URBAN]}}
        ),
    }  # fmt: skip
    for name, body in more.items():
        world.feeds[name] = await register_feed(client, body)
    retired = world.feed_id("retired")
    etag = (await client.get(f"/v1/feeds/{retired}")).headers["etag"]
    assert (await client.delete(f"/v1/feeds/{retired}", headers={"If-Match": etag})).is_success
    return world


def _session(world: World) -> AsyncSession:
    return world.runtime.sessions()


@dataclass(frozen=True)
class Stored:
    request: AccessRequest
    items: dict[str, dict[str, Any]]
    grants: dict[str, dict[str, Any]]  # by owner department
    grant_feeds: set[tuple[str, str]]
    audit: list[AuditEntry]
    outbox: list[tuple[bytes, bytes]]  # the access events' messages: (key, value)


async def _stored(world: World, request_id: str) -> Stored:
    async with _session(world) as session:
        request = await session.get(AccessRequest, request_id)
        assert request is not None
        items = {
            item.feed_id: {column: getattr(item, column) for column in ITEM_FIELDS}
            for item in await session.scalars(
                select(AccessRequestFeed).where(AccessRequestFeed.request_id == request_id)
            )
        }
        grants = {
            grant.owner_department: {column: getattr(grant, column) for column in GRANT_FIELDS}
            for grant in await session.scalars(select(Grant).where(Grant.request_id == request_id))
        }
        grant_ids = [grant["id"] for grant in grants.values()]
        of_grants = select(GrantFeed).where(GrantFeed.grant_id.in_(grant_ids))
        grant_feeds = {(row.grant_id, row.feed_id) for row in await session.scalars(of_grants)}
        of_request = select(AuditEntry).where(AuditEntry.request_id == request_id)
        audit = list(await session.scalars(of_request.order_by(AuditEntry.seq)))
        outbox = [
            (key, value)
            for row in await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
            if row.topic == ACCESS_EVENTS
            for key, value in row_messages(row.key, row.payload, row.messages, row.codec)
            if orjson.loads(value)["data"].get("request_id") == request_id
        ]
    return Stored(request, items, grants, grant_feeds, audit, outbox)


ITEM_FIELDS = (
    "owner_department", "outcome", "reason", "message", "actions", "due_at", "decided_at",
    "decided_by", "review_required", "grant_id",
)  # fmt: skip
GRANT_FIELDS = (
    "id", "requester", "requester_department", "owner_department", "actions", "valid_from",
    "valid_until", "emergency", "review_required", "created_at",
)  # fmt: skip


async def _reference(world: World, stored: Stored, feed_ids: list[str]) -> list[PolicyDecision]:
    """The per-feed path's decision on each feed, from the rows as the database holds them."""
    request = stored.request
    settings = world.runtime.settings
    async with _session(world) as session:
        facts = await load_feed_facts(session, feed_ids)
        departments = {
            department.code: department for department in await session.scalars(select(Department))
        }
    asked = RequestFacts(
        requester_department=request.requester_department,
        requester_department_kind=departments[request.requester_department].kind,
        purpose=request.purpose,
        actions=frozenset(AccessAction(action) for action in request.actions),
        valid_from=request.valid_from,
        valid_until=request.valid_until,
        emergency=request.emergency,
        emergency_reason=request.emergency_reason,
        area=shapely.geometry.shape(request.area) if request.area else None,
    )
    decisions = []
    for feed_id in feed_ids:
        feed = facts.get(feed_id)
        if feed is None:
            decisions.append(
                PolicyDecision(Outcome.denied, ReasonCode.feed_not_found, f"no feed {feed_id!r}")
            )
            continue
        context = PolicyContext(
            now=request.created_at,
            owner_deadline_days=departments[feed.owner].answer_deadline_days,
            emergency_grant_minutes=settings.emergency_grant_minutes,
            timezone=ZoneInfo(settings.city_timezone),
        )
        decisions.append(decide(sharing_view(feed), asked, context))
    return decisions


def _owner(world: World, feed_id: str) -> str | None:
    return next(
        (str(feed["owner"]) for feed in world.feeds.values() if feed["id"] == feed_id), None
    )


async def assert_written_as_the_per_feed_path_would(world: World, answer: dict[str, Any]) -> Stored:
    """Every row and event of the request against the reference, in the reference's order."""
    stored = await _stored(world, answer["id"])
    request, now = stored.request, stored.request.created_at
    feed_ids = [item["feed_id"] for item in answer["feeds"]]
    decisions = await _reference(world, stored, feed_ids)
    grants_made: dict[str, PolicyDecision] = {}
    events: list[tuple[EventType, str | None, dict[str, Any]]] = []
    for feed_id, decision in zip(feed_ids, decisions, strict=True):
        owner = _owner(world, feed_id)
        granted = decision.outcome is Outcome.granted
        if granted and owner is not None:
            grants_made.setdefault(owner, decision)
        grant_id = stored.grants[owner]["id"] if granted and owner else None
        decided_at = None if decision.outcome is Outcome.pending else now
        actions = sorted(decision.actions or frozenset(map(AccessAction, request.actions)))
        assert stored.items[feed_id] == {
            "owner_department": owner,
            "outcome": decision.outcome.value,
            "reason": decision.reason.value,
            "message": decision.message[:1200],
            "actions": [action.value for action in actions],
            "due_at": decision.due_at,
            "decided_at": decided_at,
            "decided_by": "policy" if decided_at else None,
            "review_required": decision.review_required,
            "grant_id": grant_id,
        }, feed_id
        events.append((EventType.ACCESS_REQUESTED, request.requester, _data(
            request, feed_id, owner, request.actions)))  # fmt: skip
        events.append((EventType.ACCESS_DECIDED, "policy", _data(
            request, feed_id, owner, actions, decision=decision.outcome.value,
            reason=decision.reason.value, decided_at=decided_at, grant_id=grant_id)))  # fmt: skip
        if grant_id is not None and owner is not None:
            grant = stored.grants[owner]
            assert (grant_id, feed_id) in stored.grant_feeds
            events.append((EventType.GRANT_ISSUED, "policy", _data(
                request, feed_id, owner, grant["actions"], decision="granted", grant_id=grant_id,
                decided_at=now, grant_valid_from=grant["valid_from"],
                grant_valid_until=grant["valid_until"], emergency=grant["emergency"])))  # fmt: skip
    assert set(stored.grants) == set(grants_made)
    for owner, decision in grants_made.items():
        grant = stored.grants[owner]
        assert grant | {"id": None} == {
            "id": None, "requester": request.requester,
            "requester_department": request.requester_department, "owner_department": owner,
            "actions": sorted(action.value for action in decision.actions),
            "valid_from": decision.valid_from, "valid_until": decision.valid_until,
            "emergency": decision.emergency, "review_required": decision.review_required,
            "created_at": now,
        }  # fmt: skip
    assert len(stored.grant_feeds) == sum(1 for item in stored.items.values() if item["grant_id"])
    # The audit links: one consecutive run of the chain, each with the reference's payload.
    assert [entry.seq for entry in stored.audit] == list(
        range(stored.audit[0].seq, stored.audit[0].seq + len(events))
    )
    for entry, (event_type, actor, data) in zip(stored.audit, events, strict=True):
        assert (entry.event_type, entry.actor, entry.occurred_at) == (event_type, actor, now)
        assert entry.data == data and list(entry.data) == list(data)  # same keys, same order
        assert (entry.feed_id, entry.grant_id, entry.decision) == (
            data["feed_id"], data["grant_id"], data["decision"])  # fmt: skip
    # The outbox: the same events, encoded exactly as the per-feed path encoded them.
    assert len(stored.outbox) == len(events)
    for message, entry in zip(stored.outbox, stored.audit, strict=True):
        expected = CloudEvent(
            id=uuid.UUID(entry.event_id), type=entry.event_type,
            time=entry.occurred_at, subject=entry.feed_id, dataschema=SCHEMA_ACCESS_EVENT_V1,
            data=entry.data,
        ).to_bytes()  # fmt: skip
        assert message == (str(entry.feed_id).encode(), expected)
    return stored


def _data(
    request: AccessRequest, feed_id: str, owner: str | None, actions: Any, **fields: Any
) -> dict[str, Any]:
    return event_data(request, feed_id, owner, actions, **fields).model_dump(mode="json")


async def _chain_verifies(world: World) -> None:
    verified = (await world.client.get("/v1/audit/verify")).json()
    assert verified["ok"], verified


async def test_a_mixed_request_by_ids_writes_what_the_per_feed_path_wrote(world: World) -> None:
    names = [
        "unconditional", "conditional", "not_shared", "sensor", "police_camera",
        "area_conditional", "actions_conditional", "urban_own", "retired", "sensor_conditional",
    ]  # fmt: skip
    ids = [world.feed_id(name) for name in names] + ["01NOSUCHFEED0000000000000"]
    reasons: set[str] = set()
    bodies: list[tuple[str, dict[str, Any]]] = [
        (URBAN, {"purpose": "traffic management", "actions": ["live"], "duration_minutes": 60}),
        (URBAN, {"purpose": "curiosity", "actions": ["live", "playback"], "duration_minutes": 600,
                 "area": AREA}),
        (ENVIRONMENT, {"purpose": "traffic management", "actions": ["snapshot", "read"],
                       "duration_minutes": 20}),
        (ENVIRONMENT, {"purpose": "traffic management", "actions": ["live"]}),
        (URBAN, {"purpose": "traffic management", "actions": ["snapshot"],
                 "duration_minutes": 600}),
        (POLICE, {"purpose": "traffic management", "actions": ["live"], "duration_minutes": 45,
                  "emergency": True, "emergency_reason": "bridge incident"}),
    ]  # fmt: skip
    for department, body in bodies:
        answer = await world.request(department, feed_ids=ids, **body)
        stored = await assert_written_as_the_per_feed_path_would(world, answer)
        assert len(stored.items) == len(ids)
        reasons |= {item["reason"] for item in answer["feeds"]}
    # The mix reaches every reason the policy gives by itself.
    assert reasons == {reason.value for reason in ReasonCode} - {
        "approved_by_owner",
        "emergency_confirmed",
        "denied_by_owner",
    }
    await _chain_verifies(world)


async def test_a_spatial_selection_writes_what_the_per_feed_path_wrote(world: World) -> None:
    selection = {"near": f"{CENTRE[0]},{CENTRE[1]},10000", "include_retired": True}
    answer = await world.request(URBAN, selection=selection, purpose="public safety")
    owners = {item["owner_department"] for item in answer["feeds"]}
    assert {TRANSPORT, POLICE, ENVIRONMENT, URBAN} <= owners
    assert {item["outcome"] for item in answer["feeds"]} == {"granted", "pending", "denied"}
    await assert_written_as_the_per_feed_path_would(world, answer)
    await _chain_verifies(world)


async def test_columns_from_the_database_equal_columns_from_the_index(world: World) -> None:
    """What the index answers and what the database answers for the same feeds (the path for
    feeds the index does not know yet) give the same columns."""
    ids = [str(feed["id"]) for feed in world.feeds.values()] + ["01NOSUCHFEED0000000000000"]
    async with _session(world) as session:
        from_index = await requested_feed_columns(
            session, world.runtime.feed_index, SharingRules(), ids, URBAN
        )
        from_database = await requested_feed_columns(session, None, SharingRules(), ids, URBAN)
    for name in ("found", "owner", "kind", "sharing", "retired"):
        assert getattr(from_index, name).tolist() == getattr(from_database, name).tolist(), name
    for row, rules in enumerate(from_index.rules.tolist()):
        if rules is not None:  # the index path reads rules only where a decision needs them
            assert rules == from_database.rules[row]


async def test_a_changed_condition_is_decided_on_at_once(world: World) -> None:
    """Sharing rules are cached by the feed's revision: an edit is never decided on stale."""
    feed_id = world.feed_id("sensor_conditional")
    first = await world.request(ENVIRONMENT, feed_ids=[feed_id], actions=["read"])
    assert first["feeds"][0]["outcome"] == "granted"  # ENVIRONMENT owns it
    waiting = await world.request(POLICE, feed_ids=[feed_id], actions=["read"])
    assert waiting["feeds"][0]["reason"] == "department_not_in_conditions"
    etag = (await world.client.get(f"/v1/feeds/{feed_id}")).headers["etag"]
    changed = await world.client.patch(
        f"/v1/feeds/{feed_id}",
        json={"sharing": {"class": "conditional", "conditions": {"departments": [URBAN, POLICE]}}},
        headers={"If-Match": etag},
    )
    assert changed.is_success, changed.text
    granted = await world.request(POLICE, feed_ids=[feed_id], actions=["read"])
    assert granted["feeds"][0]["reason"] == "conditions_met"
    await assert_written_as_the_per_feed_path_would(world, granted)
