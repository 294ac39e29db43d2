"""The dead-letter record: a rejected message, where it came from and why it was rejected."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field

from schemas.events import utcnow


class InvalidMessage(ValueError):
    """A message that can never be processed: it goes to the dead-letter topic, once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeadLetter(BaseModel):
    topic: str
    partition: int
    offset: int
    key: str | None
    reason: str
    payload: str | None = Field(description="The raw value as UTF-8 text, when it is text")
    payload_base64: str | None = Field(description="The raw value, when it is not UTF-8 text")
    rejected_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def from_message(cls, message: Any, reason: str) -> DeadLetter:
        raw = message.value if isinstance(message.value, bytes) else bytes(message.value or b"")
        try:
            text, encoded = raw.decode("utf-8"), None
        except UnicodeDecodeError:
            text, encoded = None, base64.b64encode(raw).decode()
        key = message.key
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            reason=reason[:2000],
            payload=text,
            payload_base64=encoded,
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))
