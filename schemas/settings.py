"""Every setting FeedGrid reads, in one place.

Settings come from environment variables prefixed ``FEEDGRID_`` (or a ``.env`` file). The
embedded defaults run everything on one machine; scale mode only changes the URLs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VAR_DIR = Path("./var")

_BOOTSTRAP_ENTRY = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,100}$")


class StreamTuning(BaseSettings):
    """How the stream workers batch, wait and judge: ``FEEDGRID_STREAM_*`` variables.

    A section of :class:`Settings` (``settings.stream``) holding the knobs only the workers
    read. Defaults suit the embedded single-process run.
    """

    model_config = SettingsConfigDict(env_prefix="FEEDGRID_STREAM_", extra="ignore", frozen=True)

    batch_size: int = Field(
        50_000,
        ge=1,
        le=500_000,
        description="Most events in one batch (one ClickHouse block: the engine likes them large)",
    )
    batch_max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="Most message bytes in one batch: a batch of feed documents (~1.7 KB each) "
        "is cut here long before it holds batch_size of them",
    )
    # Every ClickHouse insert costs the same whatever its size (a part per table and rollup
    # view, and their merges): with chdb in the API's process ~110 ms of CPU for the
    # access_events block and its 7 views. At 0.5 s, 108 hook checks a second in feedgrid up
    # took 6.7 s of the engine's CPU in 30 s and left the hooks a p99 of 164 ms; at 2 s,
    # 2.4 s and 18 ms (2026-12-07, one core, the demo city beside). A busy stream fills its
    # batches by size long before either.
    flush_seconds: float = Field(
        2.0, gt=0, le=60, description="Longest an event waits in a batch before it is inserted"
    )
    stream_buffer: int = Field(
        20_000, ge=100, le=1_000_000, description="Messages Faust prefetches per agent"
    )
    max_poll_records: int = Field(20_000, ge=1, le=100_000, description="Records per fetch")
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
        1.0,
        gt=0,
        le=3_600,
        description="How often silent feeds are looked for (a feed goes offline this late at most)",
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


MediaServerKind = Literal["nginx-rtmp", "zlmediakit", "mediamtx"]


class MediaServerControl(BaseModel):
    """One media server whose sessions FeedGrid may cut, and how to reach its control API.

    Listed in ``FEEDGRID_MEDIA_SERVERS`` as JSON. ``name`` is what the server's hooks say it is:
    ``?server=<name>`` in the hook URL, or ZLMediaKit's ``mediaServerId``. The secret (ZLMediaKit
    ``api.secret``; ``user:password`` for MediaMTX's API or an nginx location behind basic
    auth) is never shown: not in logs, /readyz or any answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    kind: MediaServerKind
    control_url: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="nginx-rtmp: the URL of the `rtmp_control all;` location (.../control); "
        "ZLMediaKit: its HTTP API root; MediaMTX: its API root (http://host:9997)",
    )
    secret: SecretStr | None = None


class LocalStateSettings(BaseSettings):
    """What the local launchers (``feedgrid kafka|postgres``) read: only where local state
    lives, so a launcher starts whatever else the environment holds. An empty value counts as
    unset."""

    model_config = SettingsConfigDict(
        env_prefix="FEEDGRID_", env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    var_dir: Path = Field(
        DEFAULT_VAR_DIR, description="Where local state (Kafka, keys, demo) lives"
    )


class NotificationTuning(BaseSettings):
    """Webhook delivery and the deadline keeper: ``FEEDGRID_NOTIFY_*`` variables.

    A section of :class:`Settings` (``settings.notify``) read by the API processes only.
    """

    model_config = SettingsConfigDict(env_prefix="FEEDGRID_NOTIFY_", extra="ignore", frozen=True)

    enabled: bool = Field(
        True, description="Run webhook delivery and the deadline keeper in this API process"
    )
    poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often due deliveries and deadlines are looked for"
    )
    attempt_timeout_seconds: float = Field(
        10.0, gt=0, le=60, description="Longest one delivery attempt may take"
    )
    max_attempts: int = Field(
        10, ge=1, le=30, description="Attempts before a notification is set aside as failed"
    )
    retry_base_seconds: float = Field(
        5.0, gt=0, le=3600, description="Wait after the first failed attempt (doubles each time)"
    )
    retry_max_seconds: float = Field(
        3600.0, gt=0, le=86_400, description="Longest wait between two attempts"
    )
    concurrency: int = Field(16, ge=1, le=256, description="Deliveries in flight per process")
    batch_size: int = Field(200, ge=1, le=10_000, description="Deliveries claimed per round")
    due_soon_hours: float = Field(
        24.0, gt=0, le=720, description="How long before its due time an owner is reminded"
    )
    grant_expiry_warning_minutes: float = Field(
        15.0, gt=0, le=10_080, description="How long before its end a requester is warned"
    )
    delivered_retention_hours: float = Field(
        72.0, ge=0, le=8760, description="How long delivered notifications are kept for display"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FEEDGRID_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = Field(
        "sqlite+aiosqlite:///./var/registry.db",
        description="Registry database: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated"
    )
    clickhouse_url: str = Field(
        "chdb://./var/analytics",
        description="Analytics store: chdb:///path (embedded) or http(s)://user:pass@host:port/db",
    )
    admin_token: str | None = Field(
        None, min_length=16, description="Bootstrap bearer token of the city administrator"
    )
    signing_key_dir: Path = Field(Path("./var/keys"), description="Ed25519 retrieval-token keys")
    topic_prefix: str = Field("feedgrid.", description="Prefix of every Kafka topic name")
    topic_partitions: int = Field(6, ge=1, le=1000)
    topic_replication: int = Field(1, ge=1, le=10)
    var_dir: Path = Field(
        DEFAULT_VAR_DIR, description="Where local state (Kafka, keys, demo) lives"
    )

    embedded_worker: bool = Field(
        True, description="Run the Faust agents and the ClickHouse sink inside the API process"
    )
    relay_enabled: bool = Field(True, description="Run the outbox relay inside the API process")
    index_follow: bool | None = Field(
        None,
        description="Follow the feed-metadata topic so this API replica's search index sees "
        "writes made by other replicas and workers (default: on with PostgreSQL, where several "
        "replicas share the registry; off with SQLite, one process)",
    )
    rendered_spill_above_feeds: int = Field(
        # The reference city (57,000 channels) stays in memory. At 250,000 the first spill
        # wrote ~540 MiB at once (the loop held 2.4-2.8 s) and a 1,000,000-feed import
        # peaked at 1,558 MiB; at 100,000, 1,469 MiB and no hold over 200 ms (measured).
        100_000,
        ge=0,
        le=100_000_000,
        description="Above this many feeds, the API keeps most rendered feed documents in an "
        "unnamed file under var_dir (read back per page) instead of in memory",
    )
    rendered_hot_mib: float = Field(
        64.0,
        ge=0,
        le=100_000,
        description="Rendered feed documents kept in memory once the API spills them to its file",
    )
    relay_batch_size: int = Field(500, ge=1, le=100_000)
    relay_idle_seconds: float = Field(0.2, gt=0, le=60)
    outbox_retention_hours: float = Field(
        1.0, ge=0, le=720, description="How long sent outbox rows are kept for inspection"
    )

    retrieval_token_ttl_seconds: int = Field(
        900, ge=30, le=86_400, description="Lifetime of a retrieval token (never past its grant)"
    )
    signing_key_rotation_days: float = Field(
        30.0, gt=0, le=3650, description="Age after which a new retrieval-token signing key is made"
    )
    token_issuer: str = Field("feedgrid", min_length=1, description="`iss` of retrieval tokens")
    idp_issuer: str | None = Field(
        None, description="Issuer (`iss`) of the city identity provider's JWTs"
    )
    idp_jwks_url: str | None = Field(None, description="JWKS URL of the city identity provider")
    idp_audience: str | None = Field(
        None,
        min_length=1,
        description="Expected `aud` of identity-provider JWTs; required with a provider",
    )
    idp_department_claim: str = Field(
        "department", description="Claim naming the user's department"
    )
    idp_roles_claim: str = Field("roles", description="Claim listing the user's FeedGrid roles")
    idp_jwks_cache_seconds: float = Field(300.0, gt=0, le=86_400)
    media_gateway_host: str = Field(
        "127.0.0.1", description="Host of the media gateway in retrieval URLs"
    )
    media_gateway_app: str = Field(
        "live",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="First path segment of every media path",
    )
    media_gateway_rtsp_port: int = Field(8554, ge=1, le=65535)
    media_gateway_rtmp_port: int = Field(1935, ge=1, le=65535)
    media_gateway_hls_port: int = Field(8888, ge=1, le=65535)
    media_gateway_webrtc_port: int = Field(8889, ge=1, le=65535)
    media_gateway_srt_port: int = Field(8890, ge=1, le=65535)
    media_gateway_mqtt_port: int = Field(1883, ge=1, le=65535)
    media_gateway_http_port: int = Field(8080, ge=1, le=65535, description="Sensor data over HTTP")
    emergency_grant_minutes: int = Field(
        30,
        ge=1,
        le=240,
        description="Longest emergency (live-only) grant, pending the owner's review",
    )
    city_timezone: str = Field(
        "Asia/Shanghai", description="Where working-day deadlines are counted"
    )
    api_key_refresh_seconds: float = Field(
        0.25,
        gt=0,
        le=0.5,
        description="How often each process reloads key changes (revocation, rotation): a "
        "revoked key is refused everywhere within a second",
    )
    api_key_max_grace_seconds: int = Field(
        7 * 86_400,
        ge=0,
        le=90 * 86_400,
        description="Longest grace period a key rotation may give the old key",
    )
    revocation_refresh_seconds: float = Field(
        0.25, gt=0, le=5, description="How often each process reloads revocations from the database"
    )
    hook_event_flush_seconds: float = Field(
        0.2, gt=0, le=10, description="Media-server hook events are written in batches this often"
    )
    hook_event_batch_size: int = Field(1000, ge=1, le=100_000)
    background_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="While API requests are in flight: the share of their own pace the "
        "process's background loops keep (liveness applier, an embedded stream worker and its "
        "feed catalog pause as long as each piece of work took x (1/share - 1)); 1 never "
        "pauses (infra/foreground.py)",
    )
    gil_switch_interval_ms: float = Field(
        0.5,
        ge=0.05,
        le=100,
        description="While a SQLite writer holds its turn: how long the thread holding the "
        "GIL may keep it from the writer's (Python's default, 5 ms, between turns; infra/gil.py)",
    )

    media_servers: list[MediaServerControl] = Field(
        default_factory=list,
        description="JSON list of the media servers whose sessions are cut on revocation and at "
        'a grant\'s end: [{"name", "kind", "control_url", "secret"}]',
    )
    enforcement_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How often sessions to cut are looked for (a revocation made on this "
        "replica is acted on at once; one made elsewhere within one revocation refresh)",
    )
    enforcement_attempts: int = Field(
        8, ge=1, le=100, description="Tries to cut one session before it is set aside"
    )
    enforcement_retry_initial_seconds: float = Field(0.5, gt=0, le=60)
    enforcement_retry_max_seconds: float = Field(30.0, gt=0, le=3600)
    enforcement_timeout_seconds: float = Field(
        3.0, gt=0, le=60, description="Longest wait for a control API or the MQTT broker"
    )
    mqtt_admin_url: str | None = Field(
        None,
        pattern=r"^mqtts?://[^\s/]+:\d{1,5}$",
        description="The MQTT broker (Mosquitto 2 with dynamic security) FeedGrid administers: "
        "mqtt://host:port. Unset: sensor grants get no broker credentials",
    )
    mqtt_admin_username: str = Field("feedgrid-admin", min_length=1, max_length=200)
    mqtt_admin_password: SecretStr | None = Field(
        None, description="FeedGrid's own dynamic-security admin password (never shown)"
    )
    mqtt_clients_per_grant: int = Field(
        8,
        ge=1,
        le=1000,
        description="Broker credentials alive at once per grant (each retrieval issues one; "
        "past this, the oldest is deleted)",
    )

    rate_limit_requests_per_second: float = Field(
        20.0, gt=0, description="Access-request calls per second per identity (sustained)"
    )
    rate_limit_requests_burst: int = Field(100, ge=1)
    rate_limit_hooks_per_second: float = Field(
        5000.0, gt=0, description="Media-server hook checks per second per gateway identity"
    )
    rate_limit_hooks_burst: int = Field(10_000, ge=1)

    metrics_token: str | None = Field(
        None,
        min_length=16,
        description="When set, /metrics needs `Authorization: Bearer <this>` (its counts of "
        "hook decisions and requests are business data)",
    )
    readyz_shows_addresses: bool = Field(
        True, description="Whether /readyz names the broker address it could not reach"
    )

    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="The event loop of the processes FeedGrid starts on its own loop (feedgrid "
        "up and its embedded worker, feedgrid worker, the demo's clients): auto is uvloop when "
        "installed (infra/event_loop.py)",
    )
    log_format: Literal["json", "console"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    loop_blocked_report_ms: float = Field(
        200.0,
        ge=0,
        le=60_000,
        description="An event loop held this long is logged ('event loop blocked', with the "
        "stack that held it); every stall counts in feedgrid_event_loop_lag_seconds. "
        "0 turns the watch off; otherwise at least 50",
    )
    max_body_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Largest accepted request body"
    )
    body_read_timeout_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Longest a request body may take to arrive (a slower one is answered 408)",
    )

    stream: StreamTuning = Field(
        default_factory=StreamTuning,
        description="The stream workers' knobs, read from FEEDGRID_STREAM_* variables",
    )
    notify: NotificationTuning = Field(
        default_factory=NotificationTuning,
        description="Webhook delivery and the deadline keeper, read from FEEDGRID_NOTIFY_*",
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value.removeprefix("sqlite:///")
        if not (
            value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")
        ):
            raise ValueError(
                "must be sqlite+aiosqlite:///<file> or postgresql+asyncpg://<user>@<host>/<db>"
            )
        return value

    @field_validator("loop_blocked_report_ms")
    @classmethod
    def _watch_off_or_above_its_beat(cls, value: float) -> float:
        if 0 < value < 50:
            raise ValueError("must be 0 (the watch off) or at least 50 (ms)")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if not entries or not all(_BOOTSTRAP_ENTRY.match(entry) for entry in entries):
            raise ValueError("must be host:port[,host:port...]")
        return ",".join(entries)

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_scheme(cls, value: str) -> str:
        if not value.startswith(("chdb://", "http://", "https://")):
            raise ValueError("must start with chdb://, http:// or https://")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _legal_topic_prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX.match(value):
            raise ValueError("may only hold letters, digits, '.', '_' and '-'")
        return value

    @model_validator(mode="after")
    def _identity_provider_complete(self) -> Settings:
        missing = identity_provider_gaps(self)
        if missing:
            raise ValueError(missing)
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def identity_provider_gaps(settings: Settings) -> str | None:
    """What an identity provider's configuration lacks, or None when it is complete or absent.

    The audience is required: without it, a token the city's provider issued for any other
    application (the same issuer, the same keys) would be accepted as a FeedGrid identity."""
    provider = {
        "FEEDGRID_IDP_ISSUER": settings.idp_issuer,
        "FEEDGRID_IDP_JWKS_URL": settings.idp_jwks_url,
        "FEEDGRID_IDP_AUDIENCE": settings.idp_audience,
    }
    if not (settings.idp_issuer or settings.idp_jwks_url):
        return None
    missing = [name for name, value in provider.items() if not value]
    if not missing:
        return None
    return (
        f"an identity provider is configured, so {' and '.join(missing)} must be set too "
        "(FEEDGRID_IDP_AUDIENCE: the `aud` the provider puts in tokens meant for FeedGrid)"
    )


class SettingsError(RuntimeError):
    """Raised at start when a setting is invalid; the message names each bad variable."""


def _variable(title: str, loc: tuple[int | str, ...]) -> str:
    """The environment variable a validation error is about."""
    if title == StreamTuning.__name__:  # raised while Settings built its stream section
        loc = ("stream", *loc)
    if title == NotificationTuning.__name__:
        loc = ("notify", *loc)
    if len(loc) > 1 and loc[0] in ("stream", "notify"):
        return f"FEEDGRID_{str(loc[0]).upper()}_{str(loc[1]).upper()}"
    return f"FEEDGRID_{str(loc[0]).upper()}" if loc else "?"


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            if not item["loc"]:  # a rule across settings: its message names the variables
                problems.append(str(item["msg"]).removeprefix("Value error, "))
                continue
            problems.append(f"{_variable(error.title, item['loc'])}: {item['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def load_tuning(**overrides: Any) -> StreamTuning:
    """The stream section alone (FEEDGRID_STREAM_* and the overrides)."""
    return StreamTuning(**overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
