"""The dashboard in a real browser against a real `feedgrid up`: what people see and do there.

One `feedgrid up` process with a small demo city (its gateways, its replayed requests and its
recorded week), one headless Chromium driven through the DevTools protocol: the city admin
signs in and sees every dot and every panel with data; a department's officer draws an area
on the map and asks for it; the owner of a feed that waits approves it from the inbox; the
officer sees the grant. A screenshot of each step is kept under ``var/test-artifacts/browser``;
the page never shows a stream address or a token, logs no console error, and the server log
has no ERROR or WARNING line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from deploy.seed.writer import write_demo_city
from tests.e2e.browser import BrowserError, Page, chromium_page

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts" / "browser"
CAMERAS = 1_200
SENSORS = 120
REQUESTS = 120
REQUESTER = "lz-tb"
BAD_LOG_LINE = re.compile(r"\b(ERROR|WARNING|CRITICAL)\b|Traceback")


@dataclass
class RunningCity:
    base_url: str
    admin_token: str
    log_path: Path

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def city(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCity]:
    """`feedgrid up` with a small demo city, ready and with its traffic replayed."""
    home = tmp_path_factory.mktemp("browser-city")
    var = home / "var"
    write_demo_city(
        var / "demo", cameras=CAMERAS, sensors=SENSORS, requests=REQUESTS, progress=False
    )
    port = _free_port()
    env = os.environ | {
        "FEEDGRID_DATABASE_URL": f"sqlite+aiosqlite:///{home}/registry.db",
        "FEEDGRID_CLICKHOUSE_URL": f"chdb://{home}/analytics",
        "FEEDGRID_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FEEDGRID_TOPIC_PREFIX": f"br{uuid.uuid4().hex[:8]}.",
        "FEEDGRID_VAR_DIR": str(var),
        "FEEDGRID_STREAM_FLUSH_SECONDS": "0.2",
    }
    env.pop("FEEDGRID_ADMIN_TOKEN", None)
    log_path = home / "up.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "up", "--port", str(port), "--no-kafka"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_for_demo(process, base_url, var, log_path)
            yield RunningCity(base_url, (var / "admin-token").read_text().strip(), log_path)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_demo(process: subprocess.Popen[bytes], base_url: str, var: Path, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        markers = list((var / "demo").glob(".traffic-*"))
        if markers and orjson.loads(markers[0].read_bytes()).get("state") in ("done", "failed"):
            state = orjson.loads(markers[0].read_bytes())
            assert state["state"] == "done", state
            return
        time.sleep(0.5)
    raise AssertionError("the demo traffic was not replayed in time:\n" + log.read_text()[-3000:])


def _key(city: RunningCity, department: str, role: str) -> str:
    with city.admin() as admin:
        answer = admin.post(
            f"/v1/departments/{department}/api-keys",
            json={"name": f"browser test {role}", "roles": [role]},
        )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["key"])


async def _sign_in(page: Page, city: RunningCity, token: str) -> dict[str, Any]:
    # Forget the last sign-in on a page of the same origin that runs no script, so the
    # dashboard does not start loading with the old token while it is being replaced.
    await page.goto(f"{city.base_url}/healthz")
    await page.evaluate("sessionStorage.clear()")
    await page.goto(f"{city.base_url}/dashboard")
    await page.wait_for("!document.getElementById('sign-in').hidden", what="the sign-in form")
    await page.type_into("#token-input", token)
    await page.click("#sign-in-form button[type=submit]")
    await page.wait_for("!document.getElementById('dashboard').hidden", what="the dashboard")
    text = await page.wait_for(
        "document.getElementById('identity-text').textContent", what="who is signed in"
    )
    return {"identity": text}


SHOT_COUNTER = iter(range(1, 100))


async def _shot(page: Page, name: str) -> None:
    await page.screenshot(ARTIFACTS / f"{next(SHOT_COUNTER):02d}-{name}.png")


async def _assert_no_secrets(page: Page) -> None:
    text = await page.evaluate("document.documentElement.outerHTML + document.body.innerText")
    for forbidden in ("rtsp://", "rtmp://", "webrtc", ".m3u8", "token=", "eyJ"):
        assert forbidden not in text, f"the page shows {forbidden!r}"


async def _city_admin_sees_every_panel(page: Page, city: RunningCity) -> None:
    with city.admin() as admin:
        points = admin.get("/v1/feeds/points").json()
    await _sign_in(page, city, city.admin_token)
    # Every feed is a dot: the frame after "fit" draws all of them.
    drawn = await page.wait_for(
        f"Number(document.getElementById('map').dataset.drawn) === {points['count']}"
        " && document.getElementById('map').dataset.drawn",
        timeout=30,
        what=f"{points['count']} dots on the map",
    )
    assert int(drawn) == points["count"] == CAMERAS + SENSORS
    # Liveness by status: the gateways' reports made most feeds online, some never report.
    await page.wait_for(
        "(() => { const t = document.getElementById('status-counts').textContent;"
        " return /[1-9][\\d,]* online/.test(t) && /[1-9][\\d,]* never seen/.test(t); })()",
        timeout=90,
        what="online and never-seen feeds",
    )
    # The week: every analytics panel has rows to draw.
    await page.evaluate(
        "(() => { const s = document.getElementById('period'); s.value = '604800';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    checks = {
        "scorecard": "document.querySelectorAll('.scorecard-table tbody tr').length > 0",
        "usage": "document.querySelectorAll('#usage-legend li').length > 0",
        "sharing": "document.querySelectorAll('#sharing-chart rect.cell:not(.none)').length > 0",
        "decisions": "document.querySelectorAll('#decisions-time rect').length > 0",
        "dormant feeds": "document.querySelectorAll('#dormant-table tbody tr').length > 0",
        "alerts": "document.querySelectorAll('#alerts-table tbody tr').length > 0",
        "catalog tree": "/channels/.test(document.getElementById('catalog-tree').textContent)",
    }
    for panel, check in checks.items():
        try:
            await page.wait_for(check, timeout=90, what=f"the {panel} panel's data")
        except BrowserError:
            await page.evaluate("document.getElementById('refresh').click()")
            await page.wait_for(check, timeout=30, what=f"the {panel} panel's data")
    matrix = await page.evaluate("document.getElementById('sharing-chart').textContent")
    assert "(none)" not in matrix
    # A week of work, not one bucket: the usage chart has retrievals on several days.
    with city.admin() as admin:
        days = admin.get(
            "/v1/analytics/usage",
            params={
                "granularity": "day",
                "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7 * 86400)),
            },
        ).json()["rows"]
    assert len({row["bucket"] for row in days if row["retrievals"]}) >= 5, days
    await _assert_no_secrets(page)
    await _shot(page, "city-admin-every-panel")


async def _requester_asks_for_an_area(page: Page, city: RunningCity, key: str) -> dict[str, Any]:
    await _sign_in(page, city, key)
    await page.wait_for("!document.getElementById('panel-request').hidden", what="request panel")
    await page.wait_for("Number(document.getElementById('map').dataset.drawn) > 0")
    await page.click("#select-area")
    await page.centre_of("#map")  # scrolls the map into view
    box = await page.evaluate(
        "(() => { const r = document.getElementById('map').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    left, top, width, height = box
    await page.drag(
        (left + width * 0.30, top + height * 0.30), (left + width * 0.70, top + height * 0.70)
    )
    await page.wait_for(
        "document.querySelectorAll('.area-feed-table tbody tr').length > 0",
        what="the feeds of the area with their sharing class",
    )
    classes = await page.evaluate(
        "[...document.querySelectorAll('.area-feed-table tbody tr td:nth-child(4)')]"
        ".map((cell) => cell.textContent)"
    )
    assert set(classes) <= {"unconditional", "conditional", "not shared"}, classes
    await _shot(page, "requester-area")
    await page.type_into("#request-purpose", "traffic incident on the ring road")
    await page.evaluate("document.getElementById('request-duration').value = '240'")
    await page.click("#request-submit")
    await page.wait_for(
        "document.querySelectorAll('.outcome-table tbody tr').length > 0",
        what="per-feed outcomes",
    )
    outcomes = await page.evaluate(
        "[...document.querySelectorAll('.outcome-table tbody tr')].map((row) =>"
        " [...row.children].map((cell) => cell.textContent))"
    )
    assert {row[2] for row in outcomes} <= {"granted", "pending", "denied"}, outcomes
    await page.wait_for(
        "document.querySelectorAll('.my-requests-table tbody tr').length > 0",
        what="the request in the department's list",
    )
    await _assert_no_secrets(page)
    await _shot(page, "requester-outcomes")
    with httpx.Client(
        base_url=city.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as api:
        mine = api.get("/v1/access-requests", params={"scope": "requester", "limit": 1}).json()
    request = mine[0]
    assert request["purpose"] == "traffic incident on the ring road"
    assert len(request["feeds"]) == len(outcomes)
    return dict(request)


async def _owner_approves(page: Page, city: RunningCity, request: dict[str, Any]) -> str:
    waiting = [f for f in request["feeds"] if f["outcome"] == "pending"]
    assert waiting, "the area holds no feed that waits for its owner: choose another area"
    owner = waiting[0]["owner_department"]
    key = _key(city, owner, "dept_admin")
    await _sign_in(page, city, key)
    item = f".inbox-item[data-request='{request['id']}']"
    await page.wait_for(f'!!document.querySelector("{item}")', timeout=30, what="the inbox item")
    due = await page.evaluate(f"document.querySelector(\"{item} .due\")?.textContent || ''")
    assert "answer due" in due
    # The waiting feeds by the names their owner gave them, not by id.
    with city.admin() as admin:
        name = admin.get(f"/v1/feeds/{waiting[0]['feed_id']}").json()["name"]
    await page.wait_for(
        f'[...document.querySelectorAll("{item} .feed-name")]'
        f".some((cell) => cell.textContent.startsWith({json.dumps(name)}))",
        what=f"the waiting feed named {name!r}",
    )
    await _shot(page, "owner-inbox")
    await page.type_into(f"{item} .inbox-comment", "approved for the incident")
    await page.click(f"{item} .approve-one")
    await page.wait_for(
        "/Approved/.test(document.getElementById('inbox-message').textContent)",
        what="the approval",
    )
    await page.wait_for(
        "[...document.querySelectorAll('.owner-grants-table tbody tr td:first-child')]"
        f".some((cell) => cell.textContent === '{REQUESTER}')",
        what="the grant among the owner's grants",
    )
    await _shot(page, "owner-approved")
    return str(owner)


async def _requester_sees_the_grant(page: Page, city: RunningCity, key: str, owner: str) -> None:
    await _sign_in(page, city, key)
    await page.wait_for(
        "[...document.querySelectorAll('.my-grants-table tbody tr td:first-child')]"
        f".some((cell) => cell.textContent === '{owner}')",
        what=f"the grant from {owner}",
    )
    await _assert_no_secrets(page)
    await _shot(page, "requester-grant")


def test_people_work_in_the_dashboard_in_a_real_browser(city: RunningCity) -> None:
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    requester_key = _key(city, REQUESTER, "requester")

    async def scenario() -> list[str]:
        async with chromium_page() as page:
            await _city_admin_sees_every_panel(page, city)
            request = await _requester_asks_for_an_area(page, city, requester_key)
            owner = await _owner_approves(page, city, request)
            await _requester_sees_the_grant(page, city, requester_key, owner)
            return page.errors

    errors = asyncio.run(scenario())
    assert errors == [], errors
    assert len(list(ARTIFACTS.glob("*.png"))) == 6
    bad = [line for line in city.log_path.read_text().splitlines() if BAD_LOG_LINE.search(line)]
    assert bad == [], bad[:20]
