"""FeedGrid's administration of the MQTT broker (Mosquitto 2, dynamic-security plugin).

Commands are JSON published to ``$CONTROL/dynamic-security/v1``; the plugin answers each on
``$CONTROL/dynamic-security/v1/response`` with the command's ``correlationData`` and an
``error`` when it failed. A sensor grant's broker client gets a role of its own that may only
subscribe to (and receive) its feeds' topics; deleting the client disconnects it at once. The
admin identity (``FEEDGRID_MQTT_ADMIN_*``) is FeedGrid's alone: no department ever sees it.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import orjson
from prometheus_client import Counter

from registry_api.enforcement.control import ControlFailure, CutOutcome
from schemas.settings import Settings

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
NOT_FOUND = ("Client not found", "Role not found")

BROKER_COMMANDS = Counter(
    "feedgrid_broker_commands_total",
    "Dynamic-security command batches sent to the MQTT broker",
    ["command", "outcome"],
)


@dataclass(frozen=True)
class BrokerClient:
    username: str
    password: str
    topics: list[str]


def role_of(username: str) -> str:
    return f"{username}-role"


def topics_of(paths: list[str]) -> list[str]:
    """The topic filters of feeds served at these gateway paths: each feed's topic and every
    topic below it (one per datastream)."""
    return sorted({filter_ for path in paths for filter_ in (path, f"{path}/#")})


class BrokerAdmin:
    def __init__(self, settings: Settings) -> None:
        assert settings.mqtt_admin_url is not None
        url = urlsplit(settings.mqtt_admin_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.tls = url.scheme == "mqtts"
        self.username = settings.mqtt_admin_username
        self._password = settings.mqtt_admin_password
        self.timeout = settings.enforcement_timeout_seconds

    async def execute(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sends the commands in one message and returns the plugin's answer to each, in order.
        Raises ControlFailure when the broker cannot be reached or does not answer in time."""
        name = commands[0]["command"] if commands else "none"
        correlated = {}
        for command in commands:
            correlation = uuid.uuid4().hex
            command["correlationData"] = correlation
            correlated[correlation] = command
        try:
            async with asyncio.timeout(self.timeout):
                answers = await self._exchange(commands, set(correlated))
        except TimeoutError:
            BROKER_COMMANDS.labels(name, "timeout").inc()
            raise ControlFailure("the MQTT broker did not answer in time") from None
        except aiomqtt.MqttCodeError as error:
            BROKER_COMMANDS.labels(name, "refused").inc()
            raise ControlFailure(f"the MQTT broker refused FeedGrid's admin: {error}") from None
        except (aiomqtt.MqttError, OSError) as error:
            BROKER_COMMANDS.labels(name, "unreachable").inc()
            raise ControlFailure(f"the MQTT broker cannot be reached: {error}") from None
        BROKER_COMMANDS.labels(name, "answered").inc()
        return [answers[correlation] for correlation in correlated]

    async def _exchange(
        self, commands: list[dict[str, Any]], waiting: set[str]
    ) -> dict[str, dict[str, Any]]:
        password = self._password.get_secret_value() if self._password else None
        answers: dict[str, dict[str, Any]] = {}
        async with aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=password,
            identifier=f"feedgrid-admin-{uuid.uuid4().hex[:12]}",
            timeout=self.timeout,
            tls_params=aiomqtt.TLSParameters() if self.tls else None,
        ) as client:
            await client.subscribe(RESPONSE_TOPIC, qos=1)
            await client.publish(CONTROL_TOPIC, orjson.dumps({"commands": commands}), qos=1)
            async for message in client.messages:
                if not isinstance(message.payload, bytes | bytearray):
                    continue
                try:
                    body = orjson.loads(message.payload)
                except orjson.JSONDecodeError:
                    continue
                for response in body.get("responses", []) if isinstance(body, dict) else []:
                    correlation = response.get("correlationData")
                    if correlation in waiting:
                        answers[correlation] = response
                if waiting <= answers.keys():
                    return answers
        return answers

    async def create_client(self, *, username: str, topics: list[str]) -> BrokerClient:
        """A client that may subscribe to these topics only; its password is returned once."""
        password = secrets.token_urlsafe(24)
        acls = [
            {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}
            for topic in topics
            for acltype in ("subscribePattern", "publishClientReceive")
        ]
        answers = await self.execute(
            [
                {"command": "createRole", "rolename": role_of(username), "acls": acls},
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "textname": "FeedGrid grant client",
                    "roles": [{"rolename": role_of(username), "priority": 0}],
                },
            ]
        )
        errors = [answer["error"] for answer in answers if answer.get("error")]
        if errors:
            raise ControlFailure(f"the broker refused the client: {'; '.join(errors)}")
        return BrokerClient(username, password, topics)

    async def delete_client(self, username: str) -> CutOutcome:
        """Deletes the client (the broker disconnects it) and its role."""
        client, role = await self.execute(
            [
                {"command": "deleteClient", "username": username},
                {"command": "deleteRole", "rolename": role_of(username)},
            ]
        )
        for answer in (client, role):
            error = answer.get("error")
            if error and error not in NOT_FOUND:
                raise ControlFailure(f"the broker refused to delete {username}: {error}")
        return "gone" if client.get("error") else "cut"
