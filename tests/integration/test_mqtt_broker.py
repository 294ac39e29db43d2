"""Sensor grants through a real MQTT broker: Mosquitto 2 with its dynamic-security plugin,
started here on a free loopback port with its own configuration (deploy/local_mosquitto.py).

A sensor grant's retrieval issues broker credentials of its own (shown once): with them the
granted feed's topics are received and any other topic is refused; revocation deletes the
client and the broker disconnects it within 2 s, for good; a grant's end does the same, and
its credentials are refused afterwards. FeedGrid's own admin credentials appear in no answer.
Clients are aiomqtt (paho-mqtt underneath), as a department's application would use.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from deploy.local_mosquitto import ADMIN, Broker, MosquittoLauncherError, launch, prepare
from registry_api.enforcement.broker import BrokerAdmin
from schemas.settings import Settings
from tests.conftest import running_client
from tests.integration.access_world import (
    TRANSPORT,
    URBAN,
    World,
    build_world,
    register_feed,
    sensor_body,
)

pytestmark = pytest.mark.kafka

CUT_WITHIN = 2.0
GATEWAY_USER = "sensor-gateway"
GATEWAY_PASSWORD = "gateway-password-0123"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    try:
        broker = prepare(tmp_path / "mqtt", _free_port())
    except MosquittoLauncherError as missing:
        pytest.skip(str(missing))
    process = launch(broker, detached=False)
    try:
        yield broker
    finally:
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()


@pytest.fixture
def broker_settings(settings: Settings, mosquitto: Broker) -> Settings:
    return settings.model_copy(
        update={
            **Settings.model_validate(
                {
                    "mqtt_admin_url": mosquitto.url,
                    "mqtt_admin_password": mosquitto.admin_password,
                    "mqtt_admin_username": ADMIN,
                }
            ).model_dump(include={"mqtt_admin_url", "mqtt_admin_password", "mqtt_admin_username"}),
            "media_gateway_host": "127.0.0.1",
            "media_gateway_mqtt_port": mosquitto.port,
            "enforcement_poll_seconds": 0.1,
        }
    )


async def _sensor_gateway(settings: Settings) -> None:
    """The sensors' side: a client that may publish every feed's topic (set up by the city)."""
    answers = await BrokerAdmin(settings).execute(
        [
            {
                "command": "createRole",
                "rolename": "sensor-gateway",
                "acls": [{"acltype": "publishClientSend", "topic": "live/#", "allow": True}],
            },
            {
                "command": "createClient",
                "username": GATEWAY_USER,
                "password": GATEWAY_PASSWORD,
                "roles": [{"rolename": "sensor-gateway"}],
            },
        ]
    )
    assert not [answer for answer in answers if answer.get("error")], answers


def _client(port: int, credentials: dict[str, Any], name: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=credentials["username"],
        password=credentials["password"],
        identifier=name,
        timeout=5,
    )


async def _publish(port: int, topic: str, payload: bytes) -> None:
    gateway = {"username": GATEWAY_USER, "password": GATEWAY_PASSWORD}
    async with _client(port, gateway, "gateway") as client:
        await client.publish(topic, payload, qos=1)


async def _sensor_retrieval(world: World, grant_id: str) -> dict[str, Any]:
    response = await world.retrieval(URBAN, grant_id)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["mqtt"], answer
    return answer


async def _grant(world: World, feed_id: str, **window: Any) -> str:
    answer = await world.request(URBAN, feed_ids=[feed_id], actions=["read"], **window)
    grant_id = answer["feeds"][0]["grant_id"]
    assert grant_id, answer
    return str(grant_id)


async def _disconnected_after(client: aiomqtt.Client, limit: float) -> float:
    started = time.monotonic()
    with contextlib.suppress(aiomqtt.MqttError):
        async with asyncio.timeout(limit):
            async for _ in client.messages:
                pass
    return time.monotonic() - started


def _refused_code(code: int | ReasonCode) -> bool:
    """A SUBACK's answer for one filter: 0x80 and above refuse it (MQTT 3.1.1 and 5)."""
    return code.is_failure if isinstance(code, ReasonCode) else code >= 0x80


async def _refused(port: int, credentials: dict[str, Any]) -> bool:
    try:
        async with _client(port, credentials, "again"):
            return False
    except aiomqtt.MqttError:
        return True


async def _refused_by(port: int, credentials: dict[str, Any], deadline: float) -> bool:
    """Refused now or before the deadline: every client of a revoked grant is deleted in the
    same round of cuts, but each on its own admin exchange, so they land a moment apart."""
    while not await _refused(port, credentials):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_sensor_grant_gets_broker_credentials_for_its_topics_only_until_revoked(
    broker_settings: Settings, mosquitto: Broker
) -> None:
    port = mosquitto.port
    async with running_client(broker_settings) as http:
        world = await build_world(http)
        other = await register_feed(http, sensor_body(TRANSPORT, 7, {"class": "unconditional"}))
        await _sensor_gateway(broker_settings)
        grant_id = await _grant(world, world.feed_id("sensor"))
        answer = await _sensor_retrieval(world, grant_id)
        credentials = answer["mqtt"]
        (feed,) = answer["feeds"]
        topic = feed["media_path"]
        assert credentials["url"] == f"mqtt://127.0.0.1:{port}"
        assert credentials["topics"] == [topic, f"{topic}/#"]
        mqtt_url = next(url for url in feed["urls"] if url["protocol"] == "mqtt")
        assert mqtt_url["url"].endswith(f":{port}/{topic}") and "`mqtt`" in mqtt_url["note"]
        # FeedGrid's own admin is in no answer; a second retrieval issues other credentials.
        again = await _sensor_retrieval(world, grant_id)
        for text in (str(answer), str(again)):
            assert mosquitto.admin_password not in text and ADMIN not in text
        assert again["mqtt"]["username"] != credentials["username"]
        assert again["mqtt"]["password"] != credentials["password"]
        other_topic = f"live/{other['stream']['media_path']}"

        async with _client(port, credentials, "department-app") as client:
            granted = await client.subscribe(f"{topic}/#", qos=1)
            refused = await client.subscribe(f"{other_topic}/#", qos=1)
            everything = await client.subscribe("#", qos=1)
            assert [_refused_code(code) for code in granted] == [False]
            assert [_refused_code(code) for code in (*refused, *everything)] == [True, True]
            await _publish(port, f"{other_topic}/pm25", b"not yours")
            await _publish(port, f"{topic}/pm25", b'{"result": 35.2}')
            async with asyncio.timeout(5):
                message = await anext(aiter(client.messages))
            assert (str(message.topic), message.payload) == (f"{topic}/pm25", b'{"result": 35.2}')

            revoke = await http.post(
                f"/v1/grants/{grant_id}/revoke",
                json={"reason": "study over"},
                headers=world.auth(TRANSPORT, "dept_admin"),
            )
            assert revoke.status_code == 200, revoke.text
            deadline = time.monotonic() + CUT_WITHIN
            took = await _disconnected_after(client, 10)
        assert took <= CUT_WITHIN, f"the broker client was disconnected after {took:.2f}s"
        print(f'{{"name": "revoked_mqtt_client_cut_seconds", "value": {took:.3f}}}')
        assert await _refused(port, credentials)
        assert await _refused_by(port, again["mqtt"], deadline), "the second client outlived 2 s"
        gone = await world.retrieval(URBAN, grant_id)
        assert gone.status_code == 410
        deadline = time.monotonic() + CUT_WITHIN
        while (sessions := (await http.get(f"/v1/grants/{grant_id}/sessions")).json()) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
        assert sessions == [], "the cut clients are still listed"


# One database is enough here: what differs between dialects is proven by the tests above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_ended_sensor_grant_s_credentials_are_cut_and_refused(
    broker_settings: Settings, mosquitto: Broker
) -> None:
    async with running_client(broker_settings) as http:
        world = await build_world(http)
        ends_at = datetime.now(UTC) + timedelta(seconds=4)
        grant_id = await _grant(
            world,
            world.feed_id("sensor"),
            valid_from=(ends_at - timedelta(minutes=60)).isoformat(),
            duration_minutes=60,
        )
        answer = await _sensor_retrieval(world, grant_id)
        credentials = answer["mqtt"]
        assert datetime.fromisoformat(credentials["expires_at"]) <= ends_at
        topic = answer["feeds"][0]["media_path"]
        async with _client(mosquitto.port, credentials, "department-app") as client:
            await client.subscribe(f"{topic}/#")
            remaining = (ends_at - datetime.now(UTC)).total_seconds()
            took = await _disconnected_after(client, remaining + 10)
        late = took - remaining
        assert late <= CUT_WITHIN, f"the ended grant's client was cut {late:.2f}s late"
        print(f'{{"name": "ended_mqtt_client_cut_seconds", "value": {late:.3f}}}')
        assert await _refused(mosquitto.port, credentials)


# One database is enough here: what differs between dialects is proven by the tests above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_broker_that_cannot_be_reached_leaves_the_retrieval_without_credentials(
    settings: Settings,
) -> None:
    """The tokens and URLs still come; the answer says why no broker credentials came with
    them, and nothing is left for the enforcer to cut."""
    down = settings.model_copy(
        update=Settings.model_validate(
            {"mqtt_admin_url": f"mqtt://127.0.0.1:{_free_port()}", "mqtt_admin_password": "x"}
        ).model_dump(include={"mqtt_admin_url", "mqtt_admin_password"})
    )
    async with running_client(down) as http:
        world = await build_world(http)
        grant_id = await _grant(world, world.feed_id("sensor"))
        response = await world.retrieval(URBAN, grant_id)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["mqtt"] is None and answer["feeds"][0]["token"]
        assert "cannot be reached" in answer["mqtt_unavailable"]
        assert (await http.get(f"/v1/grants/{grant_id}/sessions")).json() == []
