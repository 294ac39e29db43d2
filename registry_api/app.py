"""The FastAPI application: ``registry_api.app:app``, or ``create_app(settings)`` in tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from infra.foreground import background_share
from infra.gil import short_while_writing
from infra.heap import settle, tune_collector
from infra.loop_watch import watching_loop
from infra.structured_logging import configure_logging
from registry_api.access.routes import grants_router, requests_router
from registry_api.analytics.routes import router as analytics_router
from registry_api.audit.routes import router as audit_router
from registry_api.catalog.routes import router as catalog_router
from registry_api.dashboard.routes import router as dashboard_router
from registry_api.enforcement.routes import router as grant_sessions_router
from registry_api.errors import error_responses, install_error_handlers
from registry_api.feeds.bulk_validation import HelperWarmup
from registry_api.feeds.follower import IndexFollower
from registry_api.feeds.liveness import LivenessApplier
from registry_api.feeds.routes import router as feeds_router
from registry_api.health.routes import router as health_router
from registry_api.hooks.routes import router as hooks_router
from registry_api.identity.routes import router as identity_router
from registry_api.observability import RequestGuardMiddleware, RequestMetricsMiddleware
from registry_api.ratelimit import build_rate_limiters
from registry_api.runtime import Runtime
from registry_api.security_headers import SecurityHeadersMiddleware, docs_policy
from registry_api.subscriptions.notify import on_feeds_status_changed
from registry_api.subscriptions.routes import router as subscriptions_router
from registry_api.tokens.routes import router as jwks_router
from schemas.settings import Settings, get_settings

log = logging.getLogger("feedgrid.app")

DESCRIPTION = """
FeedGrid is one registry of a city's cameras and IoT sensors across departments: register
feeds with geospatial metadata and sharing rules, find them by place and kind, request access,
and retrieve them through signed short-lived tokens. Every change and access is an event.

Authenticate with `Authorization: Bearer <API key or identity-provider JWT>`.
"""

# What any authenticated route may answer besides its success (see errors.ERROR_DESCRIPTIONS).
API_REFUSALS = (400, 401, 403, 404, 409, 413, 422)

# Parts the composition root runs beside the API for its lifetime (``feedgrid up`` puts the
# stream worker here): each is entered after the API's runtime started, left before it stops.
LifespanExtension = Callable[[Settings], AbstractAsyncContextManager[object]]


def follows_other_replicas(settings: Settings) -> bool:
    """Whether this API's index follows feed-metadata (see registry_api/feeds/follower.py)."""
    if settings.index_follow is not None:
        return settings.index_follow
    return settings.database_url.startswith("postgresql")


def create_app(
    settings: Settings | None = None, *, extensions: Sequence[LifespanExtension] = ()
) -> FastAPI:
    """The API. It never starts the stream worker itself: ``deploy.composition`` does."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(settings)
        # The API answers feed searches from its in-memory index (loaded at start) and
        # checks large bulk imports in a helper process (started in the background).
        runtime.components.insert(0, runtime.feed_index)
        if follows_other_replicas(settings):
            # before the index loads: it notes where in the topic the load's view begins
            runtime.components.insert(0, IndexFollower(settings, runtime.feed_index))
        runtime.components.append(HelperWarmup())
        # The one writer of liveness: transitions the stream workers decided (feed-status).
        runtime.components.append(
            LivenessApplier(
                settings,
                sessions=runtime.sessions,
                index=runtime.feed_index,
                topics_ready=runtime.topics_ready,
                on_written=runtime.relay.notify,
                in_transaction=on_feeds_status_changed,
            )
        )
        app.state.runtime = runtime
        async with AsyncExitStack() as stack:
            tune_collector()
            stack.enter_context(short_while_writing(settings.gil_switch_interval_ms))
            stack.enter_context(background_share(settings.background_share))
            await runtime.start()
            stack.push_async_callback(runtime.stop)
            for extension in extensions:
                await stack.enter_async_context(extension(settings))
            # The OpenAPI document, built now rather than by the first visit to /docs (a
            # third of a second in which the loop answers nobody).
            app.openapi()
            # What start-up built (the feed index, tables, routes, an embedded worker's state)
            # lives as long as the process: out of the collector's full passes (infra/heap).
            settle("started")
            # From here on a request waits for whatever holds the loop: measured, and a long
            # hold logged with its stack (infra/loop_watch).
            await stack.enter_async_context(
                watching_loop(settings.loop_blocked_report_ms, role="api")
            )
            log.info("feedgrid api ready", extra={"database": _safe_url(settings.database_url)})
            yield

    app = FastAPI(
        title="FeedGrid",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_middleware(
        RequestGuardMiddleware,
        max_bytes=settings.max_body_bytes,
        body_seconds=settings.body_read_timeout_seconds,
    )
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(
        SecurityHeadersMiddleware,
        docs_path=app.docs_url or "/docs",
        docs_policy=docs_policy(app),
    )
    install_error_handlers(app)
    # Routes are matched in order, each included router's routes one by one (a few
    # microseconds each): the hooks first (media servers call them thousands of times a
    # second), the probes (three routes), then the feeds (searches, pages, heartbeats).
    # Each router documents the refusals its routes can answer.
    app.include_router(hooks_router, responses=error_responses(400, 401, 403, 413, 422, 429))
    app.include_router(health_router)
    app.include_router(feeds_router, responses=error_responses(*API_REFUSALS, 412, 428))
    app.include_router(identity_router, responses=error_responses(*API_REFUSALS))
    app.include_router(catalog_router, responses=error_responses(*API_REFUSALS, 415, 429))
    app.include_router(requests_router, responses=error_responses(*API_REFUSALS, 429))
    app.include_router(grants_router, responses=error_responses(*API_REFUSALS, 410))
    app.include_router(grant_sessions_router, responses=error_responses(*API_REFUSALS))
    app.include_router(audit_router, responses=error_responses(*API_REFUSALS))
    app.include_router(subscriptions_router, responses=error_responses(*API_REFUSALS))
    app.include_router(jwks_router)
    app.include_router(analytics_router, responses=error_responses(*API_REFUSALS))
    # The operators' page (HTML, out of the schema) and the whoami it signs in with.
    app.include_router(dashboard_router, responses=error_responses(*API_REFUSALS))
    app.state.settings = settings
    app.state.rate_limiters = build_rate_limiters(settings)
    return app


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _app_from_environment() -> FastAPI:
    """The API alone (``uvicorn registry_api.app:app``); ``feedgrid up`` adds the worker."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)


def __getattr__(name: str) -> FastAPI:
    # `registry_api.app:app` is built on first access, so importing this module for
    # create_app() does not read the environment.
    if name == "app":
        application = _app_from_environment()
        globals()["app"] = application
        return application
    raise AttributeError(name)
