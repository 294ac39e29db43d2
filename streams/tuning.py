"""How the stream workers batch, wait and judge: ``FEEDGRID_STREAM_*`` environment variables.

These complement :class:`schemas.settings.Settings` (URLs and topology) with the knobs only the
workers read. Defaults suit the embedded single-process run.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamTuning(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDGRID_STREAM_", extra="ignore", frozen=True)

    batch_size: int = Field(20_000, ge=1, le=500_000, description="Most events in one sink batch")
    flush_seconds: float = Field(
        0.5, gt=0, le=60, description="Longest an event waits in a batch before it is inserted"
    )
    stream_buffer: int = Field(
        20_000, ge=100, le=1_000_000, description="Messages Faust prefetches per agent"
    )
    max_poll_records: int = Field(5_000, ge=1, le=100_000, description="Records per fetch")
    session_timeout_seconds: float = Field(
        30.0,
        ge=6,
        le=300,
        description="A worker silent this long leaves the consumer group (its partitions move)",
    )
    retry_initial_seconds: float = Field(0.2, gt=0, le=60)
    retry_max_seconds: float = Field(10.0, gt=0, le=600)
    heartbeat_silence_seconds: float = Field(
        120.0, gt=0, le=86_400, description="Silence after which a feed is declared offline"
    )
    stall_seconds: float = Field(
        30.0,
        gt=0,
        le=3_600,
        description="An agent with records waiting and no commit for this long is not ready",
    )
    liveness_seen_seconds: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="How often an online feed's last sighting is sent to the registry",
    )
    liveness_scan_seconds: float = Field(
        5.0, gt=0, le=3_600, description="How often silent feeds are looked for"
    )
    harvest_feeds_per_minute: int = Field(
        50, ge=1, le=100_000, description="Alert when one requester opens more feeds in a minute"
    )
    token_ip_window_seconds: float = Field(
        600.0, gt=0, le=86_400, description="Window in which one token seen from two IPs alerts"
    )
    session_expiry_seconds: float = Field(
        6 * 3600.0,
        gt=0,
        description="A retrieval never reported as ended stops counting after this",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65_535, description="Serve /metrics on this port in `feedgrid worker`"
    )


def load_tuning(**overrides: object) -> StreamTuning:
    return StreamTuning(**overrides)  # type: ignore[arg-type]
