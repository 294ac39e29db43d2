"""What FeedGrid shows about a grant's enforcement: the sessions it holds open on media
servers and the MQTT broker, and the broker credentials a sensor retrieval issues."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

SessionKind = Literal["nginx-rtmp", "zlmediakit", "mediamtx", "mqtt"]
CutReason = Literal["revoked", "expired", "replaced"]


class MqttCredentials(BaseModel):
    """Broker credentials for this grant's sensor topics, shown once and stored nowhere by
    FeedGrid (the broker keeps a salted hash). They stop working when the grant is revoked or
    ends: the broker deletes the client and disconnects it."""

    url: str = Field(description="mqtt://host:port of the broker")
    username: str
    password: str = Field(description="Shown once: a new retrieval issues new credentials")
    topics: list[str] = Field(description="Topic filters this client may subscribe to")
    expires_at: datetime = Field(description="The grant's end: the client is deleted then")


class GrantSessionOut(BaseModel):
    """A session a grant holds open: a player on a media server or a broker client."""

    kind: SessionKind
    server: str = Field(description="The media server's configured name, or 'broker'")
    session_id: str = Field(description="The server's own id of the session (or MQTT username)")
    protocol: str | None = None
    client_ip: str | None = None
    opened_at: datetime
    state: Literal["open", "cutting", "set_aside"] = Field(
        description="open: playing; cutting: being cut (retrying after failures); set_aside: "
        "cutting failed past the retry bound, see last_error"
    )
    cut_reason: CutReason | None = None
    attempts: int = 0
    last_error: str | None = None
