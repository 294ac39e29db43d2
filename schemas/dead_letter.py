"""The dead-letter topic's record: a message that can never be processed, where it came from
and why it was set aside. The stream workers write one for a Kafka message they reject; the
outbox relay writes one for an outbox row it cannot read (it would otherwise stop every row
after it from being published, retried forever)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field

from schemas.events import utcnow

# An outbox row's payload is kept in its record up to this many bytes: the record must stay
# within a Kafka message (1 MiB by default), and a bundle may be that large by itself.
MAX_OUTBOX_PAYLOAD_BYTES = 256 * 1024


class DeadLetter(BaseModel):
    topic: str = Field(description="The topic the message was read from, or was meant for")
    partition: int | None = Field(default=None, description="None for an outbox row")
    offset: int | None = Field(default=None, description="None for an outbox row")
    outbox_id: int | None = Field(default=None, description="The outbox row's id, for its rows")
    key: str | None
    reason: str
    payload: str | None = Field(description="The raw value as UTF-8 text, when it is text")
    payload_base64: str | None = Field(description="The raw value, when it is not UTF-8 text")
    rejected_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def from_message(cls, message: Any, reason: str) -> DeadLetter:
        """A Kafka message (aiokafka's or Faust's record) a worker rejected."""
        raw = message.value if isinstance(message.value, bytes) else bytes(message.value or b"")
        key = message.key
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            reason=reason[:2000],
            **_raw_value(raw),
        )

    @classmethod
    def from_outbox_row(
        cls, topic: str, outbox_id: int, key: str, payload: bytes, reason: str
    ) -> DeadLetter:
        """An outbox row the relay could not read, its payload cut to the first
        ``MAX_OUTBOX_PAYLOAD_BYTES`` (the reason says so)."""
        reason = reason[:2000]
        if len(payload) > MAX_OUTBOX_PAYLOAD_BYTES:
            cut = f"payload cut to its first {MAX_OUTBOX_PAYLOAD_BYTES} of {len(payload)} bytes"
            reason, payload = f"{reason} ({cut})", payload[:MAX_OUTBOX_PAYLOAD_BYTES]
        return cls(topic=topic, outbox_id=outbox_id, key=key, reason=reason, **_raw_value(payload))

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


def _raw_value(raw: bytes) -> dict[str, str | None]:
    try:
        return {"payload": raw.decode("utf-8"), "payload_base64": None}
    except UnicodeDecodeError:
        return {"payload": None, "payload_base64": base64.b64encode(raw).decode()}
