"""Access requests, the policy's answers, owner decisions, grants and retrieval, over HTTP.

Runs on SQLite and on PostgreSQL (the ``client`` fixture), with the real broker.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import orjson
import pytest
from sqlalchemy import select

from registry_api.access import decisions
from registry_api.access.decisions import _claim, _claims
from registry_api.access.models import AccessRequestFeed, Grant
from registry_api.driver_work import commit_in_turn
from registry_api.errors import Conflict
from schemas.events import EventType
from tests.integration.access_world import (
    ENVIRONMENT,
    LEGAL_BASIS,
    POLICE,
    ROLES,
    TRANSPORT,
    URBAN,
    World,
    build_world,
    gateway_path,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    return await build_world(client)


def _by_feed(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["feed_id"]: item for item in answer["feeds"]}


async def _emergency_request(world: World, **body: Any) -> dict[str, Any]:
    """Public security's emergency request for the conditional feed (granted at once, live
    only, under the owner's review)."""
    return await world.request(
        POLICE,
        feed_ids=[world.feed_id("conditional")],
        purpose="missing person search",
        emergency=True,
        emergency_reason="child missing near the bridge",
        **body,
    )


# ------------------------------------------------------------------------------ the decision table

# (requester department, purpose, actions, duration) -> expected (outcome, reason) per feed.
CASES: list[tuple[str, str, list[str], int, dict[str, tuple[str, str]]]] = [
    (
        URBAN,
        "traffic management",
        ["live"],
        60,
        {
            "unconditional": ("granted", "unconditional_sharing"),
            "conditional": ("granted", "conditions_met"),
            "not_shared": ("denied", "not_shared_legal_basis"),
        },
    ),
    (
        ENVIRONMENT,
        "traffic management",
        ["live"],
        60,
        {"conditional": ("pending", "department_not_in_conditions")},
    ),
    (URBAN, "curiosity", ["live"], 60, {"conditional": ("pending", "purpose_not_in_conditions")}),
    (
        URBAN,
        "traffic management",
        ["live", "playback"],
        60,
        {
            "unconditional": ("granted", "unconditional_sharing"),
            "conditional": ("pending", "action_not_in_conditions"),
        },
    ),
    (URBAN, "traffic management", ["snapshot"], 60, {"conditional": ("granted", "conditions_met")}),
    (
        URBAN,
        "traffic management",
        ["live"],
        121,
        {"conditional": ("pending", "duration_exceeds_conditions")},
    ),
    (
        URBAN,
        "traffic management",
        ["read"],
        60,
        {
            "sensor": ("granted", "unconditional_sharing"),
            "unconditional": ("denied", "action_not_supported"),
        },
    ),
    (TRANSPORT, "maintenance", ["live", "ptz"], 600, {"not_shared": ("granted", "own_department")}),
]


@pytest.mark.parametrize(("department", "purpose", "actions", "minutes", "expected"), CASES)
async def test_policy_answers_each_feed_at_once_with_a_reason(
    world: World,
    department: str,
    purpose: str,
    actions: list[str],
    minutes: int,
    expected: dict[str, tuple[str, str]],
) -> None:
    answer = await world.request(
        department,
        feed_ids=[world.feed_id(name) for name in expected],
        purpose=purpose,
        actions=actions,
        duration_minutes=minutes,
    )
    decided = _by_feed(answer)
    for name, (outcome, reason) in expected.items():
        item = decided[world.feed_id(name)]
        assert (item["outcome"], item["reason"]) == (outcome, reason), (name, item)
        assert item["message"]
        assert (item["grant_id"] is not None) == (outcome == "granted")
        assert (item["due_at"] is not None) == (outcome == "pending")
    if "not_shared" in expected and expected["not_shared"][0] == "denied":
        assert LEGAL_BASIS in decided[world.feed_id("not_shared")]["message"]


@pytest.mark.parametrize("role", ["auditor", "operator", "gateway"])
async def test_only_requesters_and_department_admins_may_request(world: World, role: str) -> None:
    refused = await world.request(
        URBAN, role, expect=403, feed_ids=[world.feed_id("unconditional")]
    )
    assert refused["code"] == "role_required"
    for allowed in ("requester", "dept_admin"):
        await world.request(URBAN, allowed, feed_ids=[world.feed_id("unconditional")])


async def test_pending_request_is_due_after_the_owners_working_days(world: World) -> None:
    answer = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
    item = answer["feeds"][0]
    due = datetime.fromisoformat(item["due_at"])
    created = datetime.fromisoformat(answer["created_at"])
    assert timedelta(days=3) <= due - created <= timedelta(days=5)  # 3 working days (transport)
    assert answer["status"] == "pending"


async def test_unknown_feed_is_denied_not_fatal(world: World) -> None:
    answer = await world.request(
        URBAN, feed_ids=[world.feed_id("unconditional"), "01NOSUCHFEED0000000000000"]
    )
    decided = _by_feed(answer)
    assert decided["01NOSUCHFEED0000000000000"]["reason"] == "feed_not_found"
    assert answer["status"] == "partial"


async def test_spatial_selection_requests_every_feed_the_registry_search_finds(
    world: World,
) -> None:
    lon, lat = world.feeds["unconditional"]["location"]["coordinates"][:2]
    near = f"{lon},{lat},200"
    answer = await world.request(URBAN, selection={"near": near, "kind": "camera"})
    found = {item["feed_id"] for item in answer["feeds"]}
    assert found == {
        world.feed_id("unconditional"),
        world.feed_id("conditional"),
        world.feed_id("not_shared"),
    }
    assert world.feed_id("police_camera") not in found  # 5 km away
    nothing = await world.request(URBAN, expect=422, selection={"near": "100.0,30.0,100"})
    assert nothing["code"] == "no_feeds"


# ------------------------------------------------------------------------------ owner decisions


async def test_owner_inbox_lists_pending_requests_and_partial_approval_grants_per_feed(
    world: World,
) -> None:
    answer = await world.request(
        ENVIRONMENT,
        feed_ids=[world.feed_id("conditional"), world.feed_id("unconditional")],
        actions=["live"],
    )
    request_id = answer["id"]

    inbox = await world.client.get(
        "/v1/access-requests?status=pending", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert [request["id"] for request in inbox.json()] == [request_id]
    # The owner's view holds only its own feeds; others' inboxes are empty.
    elsewhere = await world.client.get(
        "/v1/access-requests?status=pending", headers=world.auth(URBAN, "dept_admin")
    )
    assert elsewhere.json() == []

    refused = await world.client.post(
        f"/v1/access-requests/{request_id}/approve",
        json={},
        headers=world.auth(ENVIRONMENT, "dept_admin"),
    )
    assert refused.status_code == 409  # nothing of theirs to decide
    assert refused.json()["code"] == "nothing_to_decide"
    not_admin = await world.client.post(
        f"/v1/access-requests/{request_id}/approve",
        json={},
        headers=world.auth(TRANSPORT, "requester"),
    )
    assert not_admin.status_code == 403

    approved = await world.client.post(
        f"/v1/access-requests/{request_id}/approve",
        json={"feed_ids": [world.feed_id("conditional")], "comment": "for the marathon"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert approved.status_code == 200, approved.text
    item = _by_feed(approved.json())[world.feed_id("conditional")]
    assert (item["outcome"], item["reason"], item["message"]) == (
        "granted",
        "approved_by_owner",
        "for the marathon",
    )
    again = await world.client.post(
        f"/v1/access-requests/{request_id}/deny",
        json={"feed_ids": [world.feed_id("conditional")]},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert again.status_code == 409 and again.json()["code"] == "already_decided"

    retrieval = await world.retrieval(ENVIRONMENT, item["grant_id"])
    assert retrieval.status_code == 200
    assert [feed["feed_id"] for feed in retrieval.json()["feeds"]] == [world.feed_id("conditional")]
    inbox = await world.client.get(
        "/v1/access-requests?status=pending", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert inbox.json() == []


async def test_owner_denial_carries_the_owners_reason(world: World) -> None:
    answer = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
    denied = await world.client.post(
        f"/v1/access-requests/{answer['id']}/deny",
        json={"comment": "outside our data-sharing agreement"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    item = denied.json()["feeds"][0]
    assert (item["outcome"], item["reason"]) == ("denied", "denied_by_owner")
    assert item["message"] == "outside our data-sharing agreement"
    assert denied.json()["status"] == "denied"
    again = await world.client.post(
        f"/v1/access-requests/{answer['id']}/approve",
        json={},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )  # the owner's feeds are decided: as a claim coming second would be told
    assert again.status_code == 409 and again.json()["code"] == "already_decided"


async def test_two_owners_answers_at_once_grant_once(world: World) -> None:
    answer = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
    assert answer["feeds"][0]["outcome"] == "pending"
    answers = await asyncio.gather(
        *(
            world.client.post(
                f"/v1/access-requests/{answer['id']}/{verb}",
                json={},
                headers=world.auth(TRANSPORT, "dept_admin"),
            )
            for verb in ("approve", "approve", "deny")
        )
    )
    codes = sorted(response.status_code for response in answers)
    assert codes == [200, 409, 409], [response.text for response in answers]
    assert {response.json()["code"] for response in answers if response.status_code == 409} == {
        "already_decided"
    }
    async with world.runtime.sessions() as session:
        grants = (
            await session.scalars(select(Grant).where(Grant.request_id == answer["id"]))
        ).all()
    winner = next(response.json() for response in answers if response.status_code == 200)
    granted = winner["feeds"][0]["outcome"] == "granted"
    assert len(grants) == (1 if granted else 0)
    assert (await world.client.get("/v1/audit/verify")).json()["ok"]


async def test_a_claim_of_feeds_decided_meanwhile_writes_nothing(world: World) -> None:
    """The owner's answer is prepared before its turn to write: feeds another answer decided
    in between make it a 409 with nothing of it written."""
    answer = await world.request(ENVIRONMENT, feed_ids=[world.feed_id("conditional")])
    async with world.runtime.sessions() as session:
        (item,) = (
            await session.scalars(
                select(AccessRequestFeed).where(AccessRequestFeed.request_id == answer["id"])
            )
        ).all()
        dialect = (await session.connection()).dialect
    late = _claims(answer["id"], [item], {"outcome": "denied", "decided_by": "late"}, dialect)
    approved = await world.client.post(
        f"/v1/access-requests/{answer['id']}/approve",
        json={},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert approved.status_code == 200
    async with world.runtime.sessions() as session:
        with pytest.raises(Conflict):
            await commit_in_turn(session, "approval", lambda calls: _claim(calls, late))
    async with world.runtime.sessions() as session:
        stored = await session.get(AccessRequestFeed, (answer["id"], item.feed_id))
        assert stored is not None and (stored.outcome, stored.decided_by) == (
            "granted", approved.json()["feeds"][0]["decided_by"]
        )  # fmt: skip


async def test_an_owner_confirms_an_emergency_grant_out_of_review(world: World) -> None:
    answer = await _emergency_request(world)
    grant_id = answer["feeds"][0]["grant_id"]
    confirmed = await world.client.post(
        f"/v1/access-requests/{answer['id']}/approve",
        json={},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert confirmed.status_code == 200, confirmed.text
    item = confirmed.json()["feeds"][0]
    assert (item["outcome"], item["grant_id"], item["review_required"]) == (
        "granted", grant_id, False
    )  # fmt: skip
    async with world.runtime.sessions() as session:
        grant = await session.get(Grant, grant_id)
        assert grant is not None and grant.review_required is False and grant.revoked_at is None
    review = await world.client.get(
        "/v1/access-requests?status=review", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert review.json() == []
    assert (await world.client.get("/v1/audit/verify")).json()["ok"]


# ------------------------------------------------------------------------------ emergencies


async def test_public_security_emergency_gets_short_live_access_and_lands_in_review(
    world: World,
) -> None:
    answer = await _emergency_request(world, actions=["live", "playback"], duration_minutes=480)
    item = answer["feeds"][0]
    assert (item["outcome"], item["reason"]) == ("granted", "emergency_live_access")
    assert item["actions"] == ["live"] and item["review_required"]
    grant = (
        await world.client.get(
            f"/v1/grants/{item['grant_id']}", headers=world.auth(POLICE, "requester")
        )
    ).json()
    length = datetime.fromisoformat(grant["valid_until"]) - datetime.fromisoformat(
        grant["valid_from"]
    )
    assert length <= timedelta(minutes=world.runtime.settings.emergency_grant_minutes)

    review = await world.client.get(
        "/v1/access-requests?status=review", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert [request["id"] for request in review.json()] == [answer["id"]]

    token = (await world.retrieval(POLICE, item["grant_id"])).json()["feeds"][0]["token"]
    path = gateway_path(world, "conditional")
    assert (await world.hook(path, token)).status_code == 200
    assert (await world.hook(path, token, action="playback")).status_code == 403

    refused = await world.client.post(
        f"/v1/access-requests/{answer['id']}/deny",
        json={"comment": "not justified"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert refused.status_code == 200
    assert (await world.hook(path, token)).json()["code"] == "grant_revoked"
    review = await world.client.get(
        "/v1/access-requests?status=review", headers=world.auth(TRANSPORT, "dept_admin")
    )
    assert review.json() == []


async def test_a_denial_finding_its_emergency_grant_revoked_meanwhile_starts_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A denial is prepared before its turn to write: an emergency grant revoked by its
    requester in between is not revoked (nor told revoked) a second time; the denial reads
    again and denies the feed."""
    answer = await _emergency_request(world)
    grant_id = answer["feeds"][0]["grant_id"]
    prepared = decisions.prepared_appending
    revocations: list[httpx.Response] = []

    async def revoked_in_between(*args: Any, **kwargs: Any) -> Any:
        if not revocations:  # the first attempt, after its read: the requester revokes
            revocations.append(
                await world.client.post(
                    f"/v1/grants/{grant_id}/revoke",
                    json={"reason": "child found"},
                    headers=world.auth(POLICE, "requester"),
                )
            )
        return await prepared(*args, **kwargs)

    monkeypatch.setattr(decisions, "prepared_appending", revoked_in_between)
    denied = await world.client.post(
        f"/v1/access-requests/{answer['id']}/deny",
        json={"comment": "not justified"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert [response.status_code for response in revocations] == [200]
    assert denied.status_code == 200, denied.text
    item = denied.json()["feeds"][0]
    assert (item["outcome"], item["review_required"]) == ("denied", False)
    async with world.runtime.sessions() as session:
        grant = await session.get(Grant, grant_id)
        assert grant is not None and grant.revoke_reason == "child found"
    revoked_type = EventType.GRANT_REVOKED.value
    page = (await world.client.get("/v1/audit", params={"grant_id": grant_id})).json()
    told = [entry["reason"] for entry in page["entries"] if entry["event_type"] == revoked_type]
    assert told == ["child found"]
    assert (await world.client.get("/v1/audit/verify")).json()["ok"]


async def test_emergency_from_a_non_police_department_is_refused(world: World) -> None:
    refused = await world.request(
        URBAN,
        expect=403,
        feed_ids=[world.feed_id("conditional")],
        emergency=True,
        emergency_reason="flood",
    )
    assert refused["code"] == "emergency_not_allowed"
    missing_reason = await world.request(
        POLICE, expect=422, feed_ids=[world.feed_id("conditional")], emergency=True
    )
    assert missing_reason["code"] == "invalid_request"


# ----------------------------------------------------------------------------- grants, retrieval


async def test_retrieval_gives_gateway_urls_and_tokens_bound_to_user_grant_and_feed(
    world: World,
) -> None:
    answer = await world.request(
        URBAN, feed_ids=[world.feed_id("unconditional"), world.feed_id("sensor")], actions=["live"]
    )
    camera = _by_feed(answer)[world.feed_id("unconditional")]
    retrieval = (await world.retrieval(URBAN, camera["grant_id"])).json()
    (feed,) = [
        feed for feed in retrieval["feeds"] if feed["feed_id"] == world.feed_id("unconditional")
    ]
    settings = world.runtime.settings
    path = gateway_path(world, "unconditional")
    assert feed["media_path"] == path
    protocols = [url["protocol"] for url in feed["urls"]]
    assert protocols == ["rtsp", "rtmp", "hls", "webrtc"]  # its own protocol first
    rtsp = feed["urls"][0]
    assert rtsp["url"].startswith(
        f"rtsp://{settings.media_gateway_host}:{settings.media_gateway_rtsp_port}/{path}?token="
    )
    assert feed["urls"][2]["auth"] == "bearer_header"
    assert len(rtsp["url"]) < 4096  # FFmpeg's RTSP URL limit

    jwks = (await world.client.get("/.well-known/jwks.json", headers={"Authorization": ""})).json()
    key = jwt.PyJWK.from_dict(jwks["keys"][0])
    claims = jwt.decode(feed["token"], key.key, algorithms=["EdDSA"], audience="feedgrid-media")
    assert claims["dept"] == URBAN and claims["sub"].startswith("key:")
    assert (claims["grant"], claims["feed"]) == (camera["grant_id"], world.feed_id("unconditional"))
    assert claims["mediamtx_permissions"] == [{"action": "read", "path": path}]
    assert claims["exp"] - claims["nbf"] <= settings.retrieval_token_ttl_seconds
    assert datetime.fromisoformat(feed["expires_at"]) <= datetime.fromisoformat(
        answer["valid_until"]
    )


async def test_sensor_retrieval_offers_mqtt_and_http(world: World) -> None:
    answer = await world.request(URBAN, feed_ids=[world.feed_id("sensor")], actions=["read"])
    retrieval = (await world.retrieval(URBAN, answer["feeds"][0]["grant_id"])).json()
    urls = retrieval["feeds"][0]["urls"]
    assert [url["protocol"] for url in urls] == ["mqtt", "http"]
    assert urls[0]["auth"] == "mqtt_password"


async def test_no_department_obtains_another_departments_internal_url_or_tokens(
    world: World,
) -> None:
    """Every answer of the access API, to every department, is free of internal stream URLs;
    a grant's tokens go only to the department it was granted to, only for its granted feeds."""
    internal = [world.internal_url(name) for name in world.feeds]
    answers: list[httpx.Response] = []
    request = await world.request(
        URBAN,
        feed_ids=[world.feed_id(name) for name in ("unconditional", "conditional", "not_shared")],
    )
    granted = {item["feed_id"] for item in request["feeds"] if item["outcome"] == "granted"}
    grant_ids = {item["grant_id"] for item in request["feeds"] if item["grant_id"]}
    for department in (URBAN, ENVIRONMENT, POLICE, TRANSPORT):
        for role in ROLES:
            headers = world.auth(department, role)
            answers.append(
                await world.client.get(f"/v1/access-requests/{request['id']}", headers=headers)
            )
            answers.append(await world.client.get("/v1/access-requests", headers=headers))
            answers.append(await world.client.get("/v1/grants", headers=headers))
            for grant_id in grant_ids:
                retrieval = await world.client.get(
                    f"/v1/grants/{grant_id}/retrieval", headers=headers
                )
                answers.append(retrieval)
                if department == URBAN and role in ("requester", "dept_admin"):
                    assert retrieval.status_code == 200
                    tokens = [feed["token"] for feed in retrieval.json()["feeds"]]
                    feeds = {
                        jwt.decode(token, options={"verify_signature": False})["feed"]
                        for token in tokens
                    }
                    assert feeds <= granted
                else:
                    assert retrieval.status_code in (403, 404), (department, role)
                    assert "token" not in retrieval.text
            if department != TRANSPORT:
                for name in ("unconditional", "conditional", "not_shared"):
                    shown = await world.client.get(
                        f"/v1/feeds/{world.feed_id(name)}", headers=headers
                    )
                    answers.append(shown)
    for response in answers:
        for url in internal:
            assert url not in response.text, response.request.url
    # The city admin can read every grant, yet gets no token: it was granted to no one there.
    admin = await world.client.get(f"/v1/grants/{next(iter(grant_ids))}/retrieval")
    assert admin.status_code == 404


async def test_revoked_grant_yields_no_more_tokens(world: World) -> None:
    answer = await world.request(URBAN, feed_ids=[world.feed_id("unconditional")])
    grant_id = answer["feeds"][0]["grant_id"]
    other = await world.client.post(
        f"/v1/grants/{grant_id}/revoke",
        json={"reason": "x"},
        headers=world.auth(ENVIRONMENT, "dept_admin"),
    )
    assert other.status_code == 404
    revoked = await world.client.post(
        f"/v1/grants/{grant_id}/revoke",
        json={"reason": "incident closed"},
        headers=world.auth(TRANSPORT, "dept_admin"),
    )
    assert revoked.status_code == 200
    assert revoked.json()["revoke_reason"] == "incident closed"
    gone = await world.retrieval(URBAN, grant_id)
    assert gone.status_code == 410 and gone.json()["code"] == "grant_revoked"
    twice = await world.client.post(
        f"/v1/grants/{grant_id}/revoke",
        json={"reason": "again"},
        headers=world.auth(URBAN, "requester"),
    )
    assert twice.status_code == 409


async def test_jwks_is_public_and_holds_only_public_ed25519_keys(world: World) -> None:
    response = await world.client.get("/.well-known/jwks.json", headers={"Authorization": ""})
    assert response.status_code == 200
    keys = orjson.loads(response.content)["keys"]
    assert keys and all(
        key["kty"] == "OKP" and key["crv"] == "Ed25519" and "d" not in key for key in keys
    )


async def test_window_in_the_past_is_refused(world: World) -> None:
    past = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    refused = await world.request(
        URBAN, expect=422, feed_ids=[world.feed_id("unconditional")], valid_from=past
    )
    assert refused["code"] == "window_in_the_past"


async def test_an_owners_answer_is_the_request_as_a_read_after_it_shows(world: World) -> None:
    """Approvals and denials answer with the request as they left it, built from their own
    read and what they wrote (not read again): the same document a read right after gives
    the same caller, the owner's and the requester's view alike."""
    feeds = [
        world.feed_id(name) for name in ("conditional", "unconditional", "not_shared", "sensor")
    ]
    owner = world.auth(TRANSPORT, "dept_admin")
    for verb, outcome in (("approve", "granted"), ("deny", "denied")):
        asked = await world.request(ENVIRONMENT, feed_ids=feeds)
        assert _by_feed(asked)[world.feed_id("conditional")]["outcome"] == "pending"
        path = f"/v1/access-requests/{asked['id']}"
        answered = await world.client.post(
            f"{path}/{verb}", json={"comment": f"{verb}: by the duty officer"}, headers=owner
        )
        assert answered.status_code == 200, answered.text
        assert _by_feed(answered.json())[world.feed_id("conditional")]["outcome"] == outcome
        assert answered.json() == (await world.client.get(path, headers=owner)).json()
        requester = world.auth(ENVIRONMENT, "requester")
        seen = (await world.client.get(path, headers=requester)).json()
        assert (
            _by_feed(seen)[world.feed_id("conditional")]
            == _by_feed(answered.json())[world.feed_id("conditional")]
        )
    for verb in ("approve", "deny"):  # emergency grants under review: confirmed, refused
        asked = await _emergency_request(world)
        path = f"/v1/access-requests/{asked['id']}"
        answered = await world.client.post(f"{path}/{verb}", json={}, headers=owner)
        assert answered.status_code == 200, answered.text
        assert answered.json()["feeds"][0]["review_required"] is False
        assert answered.json() == (await world.client.get(path, headers=owner)).json()
