"""HTTP endpoints of the feed registry. Thin: validation in the schemas, logic in the services."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, status
from fastapi.responses import Response
from pydantic import ValidationError

from infra.heap import eager_collection
from registry_api.dependencies import PrincipalDep, RuntimeDep, SessionDep, require_roles
from registry_api.errors import RETRY_AFTER, ErrorBody
from registry_api.feeds import bulk, duplicates, heartbeats, service
from registry_api.feeds.points import FeedPoints, answer_points
from registry_api.feeds.rendered import gzip_if_accepted
from registry_api.feeds.spatial import FeedIndex
from registry_api.identity.principal import Principal
from registry_api.runtime import Runtime
from schemas.feeds import (
    BulkResult,
    DuplicateReport,
    FeedCreateBody,
    FeedFilters,
    FeedOut,
    FeedPage,
    FeedPageQuery,
    FeedSearch,
    HeartbeatBatch,
    HeartbeatResult,
)
from schemas.identity import DEPARTMENT_CODE_PATTERN, Role
from schemas.topics import HEARTBEATS, topic_name

router = APIRouter(tags=["feeds"])

FeedId = Annotated[str, Path(min_length=1, max_length=64, description="Feed id")]
Gateway = Annotated[Principal, Depends(require_roles(Role.gateway))]


async def get_feed_index(request: Request) -> FeedIndex:
    # async (and not through RuntimeDep): a sync dependency costs a thread-pool round trip
    return request.app.state.runtime.feed_index


IndexDep = Annotated[FeedIndex, Depends(get_feed_index)]


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON encoded by orjson (datetimes as RFC 3339), bypassing response-model re-validation:
    the services already return documents in the shape the response models describe."""
    body = orjson.dumps(content, option=orjson.OPT_UTC_Z)  # times as 2026-05-01T08:00:00Z
    return Response(body, status_code, headers, media_type="application/json")


def _with_etag(
    document: dict[str, Any], status_code: int = 200, if_none_match: str | None = None
) -> Response:
    body = orjson.dumps(document, option=orjson.OPT_UTC_Z)
    return _tagged(body, document["version"], status_code, if_none_match)


def _tagged(
    body: bytes, version: int, status_code: int = 200, if_none_match: str | None = None
) -> Response:
    """A feed document (JSON bytes) with its ETag, or 304 if ``If-None-Match`` names it."""
    tag = service.etag(version, body)
    if service.none_match(if_none_match, tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
    return Response(body, status_code, {"ETag": tag}, media_type="application/json")


def page_response(request: Request, page: bytes) -> Response:
    """A page of feeds (ready JSON bytes), gzip-compressed when the client accepts it."""
    body, headers = gzip_if_accepted(page, request.headers.get("accept-encoding"))
    return Response(body, headers=headers, media_type="application/json")


def _wrote(runtime: Runtime) -> None:
    runtime.relay.notify()


@router.post(
    "/v1/feeds",
    status_code=status.HTTP_201_CREATED,
    response_model=FeedOut,
    summary="Register a camera or sensor",
    responses={409: {"description": "The department already registered this code"}},
)
async def register_feed(
    body: Annotated[FeedCreateBody, Body()],
    session: SessionDep,
    runtime: RuntimeDep,
    index: IndexDep,
    principal: PrincipalDep,
) -> Response:
    """The feed's properties with a ``location`` Point, or a GeoJSON Feature. The answer lists
    ``duplicates``: feeds of other departments with the same code or stream."""
    document = await service.register_feed(session, index, principal, body)
    _wrote(runtime)
    response = _with_etag(document, status.HTTP_201_CREATED)
    response.headers["Location"] = f"/v1/feeds/{document['id']}"
    return response


# Filters parsed from text by their validators: strings in the query (with an example each).
_TEXT_FILTERS = {
    "bbox": "103.80,36.03,103.87,36.09",
    "near": "103.8343,36.0611,500",
    "sees": "103.8343,36.0611",
}


def _query_parameters(model: type[FeedFilters]) -> list[dict[str, Any]]:
    """A query model's fields as the OpenAPI query parameters they are, from the model itself
    (their one definition)."""
    parameters = []
    for name, schema in model.model_json_schema()["properties"].items():
        schema = {key: value for key, value in schema.items() if key != "description"}
        if name in _TEXT_FILTERS:
            schema = {"type": "string", "examples": [_TEXT_FILTERS[name]]}
        description = model.model_fields[name].description
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schema}
            | ({"description": description} if description else {})
        )
    return parameters


QueryModel = TypeVar("QueryModel", bound=FeedFilters)


def feed_filters(values: Mapping[str, Any], model: type[QueryModel]) -> QueryModel:
    """The filters among ``values`` (a query string's, or a route's own parameters), checked
    once by ``model``; other names are left to their routes."""
    fields = model.model_fields
    try:
        return model.model_validate(
            {name: value for name, value in values.items() if name in fields}
        )
    except ValidationError as error:
        raise service.unprocessable(error, "invalid_filter") from None


async def page_query(request: Request) -> FeedPageQuery:
    """The filters and the page of the query string, checked at once by ``FeedPageQuery``
    (a problem with any of them is an ``invalid_filter``). Declared one by one, FastAPI
    validated each parameter on its own before the model checked them all again: a fifth of
    a page's time (``sees`` pages 1,000-1,065 against 1,275-1,308 a second)."""
    return feed_filters(request.query_params, FeedPageQuery)


@router.get(
    "/v1/feeds",
    response_model=FeedPage,
    summary="List and find feeds",
    openapi_extra={"parameters": _query_parameters(FeedPageQuery)},
)
async def list_feeds(
    request: Request,
    query: Annotated[FeedPageQuery, Depends(page_query)],
    principal: PrincipalDep,
) -> Response:
    """Filters combine with AND. ``near`` pages nearest first, the rest in registration order.
    Retired feeds only with ``include_retired=true``. Gzip-compressed when the client accepts
    it."""
    # One dependency for the query, the index read here: FastAPI solves each dependency at
    # some ten microseconds (with the router order, a sees page of twenty took 485 against
    # 564 us in process).
    page = await service.search_feeds(
        await get_feed_index(request), principal, query, limit=query.limit,
        cursor=query.cursor, feed_ids=await catalog_node_feeds(request, query),
    )  # fmt: skip
    return page_response(request, page)


async def catalog_node_feeds(request: Request, filters: FeedFilters) -> list[str] | None:
    """The feeds beneath the filters' ``catalog_node``: a session only when one is asked."""
    if filters.catalog_node is None:
        return None
    async with request.app.state.runtime.sessions() as session:
        return await service.catalog_node_feeds(session, filters)


@router.get(
    "/v1/feeds/points", response_model=FeedPoints, summary="Every matching feed as a map dot"
)
async def list_feed_points(
    request: Request,
    index: IndexDep,
    _: PrincipalDep,
    department: Annotated[str | None, Query(pattern=DEPARTMENT_CODE_PATTERN)] = None,
    kind: Annotated[str | None, Query(pattern="^(camera|sensor)$")] = None,
    bbox: Annotated[str | None, Query(description="minLon,minLat,maxLon,maxLat")] = None,
) -> Response:
    """Ids, positions, kinds, statuses and owners of all matching feeds (retired and unplaced
    ones left out) as compact columns, for maps of the whole city; public fields only.
    Gzip-compressed when the client accepts it."""
    filters = feed_filters(
        {"department": department, "kind": kind, "bbox": bbox, "placed": True}, FeedFilters
    )
    # Matching is quick and reads the index's live state: here, on the loop. The rest (a
    # second or two at a million feeds) runs in a worker thread on the unchanging snapshots.
    parts = index.matching_rows(service.index_query(filters))
    owner_names = list(index.owners.values)
    accept_encoding = request.headers.get("accept-encoding", "")
    return await asyncio.to_thread(answer_points, parts, owner_names, accept_encoding)


@router.post("/v1/feeds/search", response_model=FeedPage, summary="Find feeds in an area")
async def search_feeds(
    request: Request, search: FeedSearch, index: IndexDep, principal: PrincipalDep
) -> Response:
    """The list filters plus a GeoJSON Polygon or MultiPolygon with ``relation`` within or
    intersects (a district, a road buffer). Gzip-compressed when the client accepts it."""
    page = await service.search_feeds(
        index, principal, search, limit=search.limit, cursor=search.cursor,
        feed_ids=await catalog_node_feeds(request, search),
    )  # fmt: skip
    return page_response(request, page)


@router.post(
    "/v1/feeds/bulk",
    response_model=BulkResult,
    summary="Upsert many features by (owner, code)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/geo+json": {
                    "schema": {"type": "object", "description": "FeatureCollection"}
                },
                "application/x-ndjson": {
                    "schema": {"type": "string", "description": "One Feature a line"}
                },
            },
        }
    },
)
async def bulk_import(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    index: IndexDep,
    principal: PrincipalDep,
) -> Response:
    """A FeatureCollection or NDJSON Features (the demo-city format). Bad features are listed
    in ``rejected`` and never sink the batch; cameras whose code another department holds are
    stored and listed in ``flagged``."""
    body = await request.body()
    with eager_collection():  # its garbage gone with it (infra/heap)
        result = await bulk.bulk_upsert(
            session, index, principal, body, request.headers.get("content-type")
        )
    _wrote(runtime)
    return json_response(result.model_dump())


@router.get(
    "/v1/feeds/{feed_id}",
    response_model=FeedOut,
    summary="One feed",
    responses={304: {"description": "If-None-Match names the document the caller would get"}},
)
async def get_feed(
    request: Request,
    feed_id: FeedId,
    index: IndexDep,
    principal: PrincipalDep,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """Other departments see the public fields: never ``stream.url``. The ETag is
    ``"<version>.<digest of the document>"``: send it as If-None-Match to get a 304 while the
    document is unchanged, or as If-Match to change the feed (only the version counts)."""
    # The document rendered when the feed last changed, as pages serve it (rendered.py); a
    # feed this process has not indexed (a replica that has not yet followed its creation)
    # or no such feed: from the database.
    found = index.rendered.versioned_document(feed_id, principal)
    if found is not None:
        version, body = found
        return _tagged(body, version, if_none_match=if_none_match)
    async with request.app.state.runtime.sessions() as session:
        document = await service.get_feed(session, principal, feed_id)
    return _with_etag(document, if_none_match=if_none_match)


@router.patch(
    "/v1/feeds/{feed_id}",
    response_model=FeedOut,
    summary="Change a feed (JSON merge patch, If-Match required)",
    responses={
        412: {"description": "If-Match names an old version"},
        428: {"description": "No If-Match"},
    },
)
async def update_feed(
    feed_id: FeedId,
    patch: Annotated[
        dict[str, Any],
        Body(
            examples=[
                {"name": "North gate camera", "fov": {"heading": 90, "angle": 60, "range_m": 80}}
            ]
        ),
    ],
    session: SessionDep,
    runtime: RuntimeDep,
    index: IndexDep,
    principal: PrincipalDep,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> Response:
    """Fields given replace the current ones, ``null`` clears optional ones; kind, owner and
    code cannot change."""
    document = await service.update_feed(session, index, principal, feed_id, patch, if_match)
    _wrote(runtime)
    return _with_etag(document)


@router.delete("/v1/feeds/{feed_id}", response_model=FeedOut, summary="Retire a feed (soft delete)")
async def retire_feed(
    feed_id: FeedId,
    session: SessionDep,
    runtime: RuntimeDep,
    index: IndexDep,
    principal: PrincipalDep,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> Response:
    """The feed is kept and says ``retired: true``; it leaves searches unless asked for."""
    document = await service.retire_feed(session, index, principal, feed_id, if_match)
    _wrote(runtime)
    return _with_etag(document)


@router.get(
    "/v1/catalog/duplicates", response_model=DuplicateReport, summary="Suspected duplicates"
)
async def catalog_duplicates(
    session: SessionDep,
    index: IndexDep,
    principal: PrincipalDep,
    reason: Annotated[
        str | None, Query(pattern="^(same_code|same_stream_url|nearby_overlapping_view)$")
    ] = None,
    department: Annotated[str | None, Query(pattern=DEPARTMENT_CODE_PATTERN)] = None,
    distance_m: Annotated[
        float, Query(ge=duplicates.MIN_DISTANCE_M, le=duplicates.MAX_DISTANCE_M)
    ] = duplicates.DEFAULT_DISTANCE_M,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    include_decided: Annotated[
        bool, Query(description="Also groups already resolved or dismissed")
    ] = False,
) -> Response:
    """Groups of feeds of different departments that look like one device, with the evidence:
    the same GB/T 28181 code, the same stream, or the same kind within ``distance_m`` metres
    with overlapping fields of view. Groups an owner resolved or dismissed
    (``POST /v1/catalog/duplicates/{key}/resolve|dismiss``) are left out."""
    from registry_api.catalog.resolutions import decided_keys  # the catalog builds on feeds

    decided = frozenset() if include_decided else await decided_keys(session)
    report = await duplicates.find_duplicates(
        session, index, principal, reason=reason, department=department,
        distance_m=distance_m, limit=limit, cursor=cursor, decided=decided,
    )  # fmt: skip
    return json_response(report)


@router.post(
    "/v1/heartbeats",
    response_model=HeartbeatResult,
    summary="Report liveness (gateways)",
    responses={
        503: {
            "model": ErrorBody,
            "description": "The event broker does not answer: nothing of the batch was "
            "recorded; send it again after `Retry-After` seconds",
            "headers": RETRY_AFTER,
        }
    },
)
async def post_heartbeats(
    batch: HeartbeatBatch,
    runtime: RuntimeDep,
    index: IndexDep,
    principal: Gateway,
) -> Response:
    """Batched liveness of many feeds, checked and passed on to the stream workers.

    Reports do not change the registry themselves: the workers keep each feed's last-seen
    time and decide when it goes online or offline, and those transitions then update the
    feed's ``status`` and ``last_seen`` (``status_changed`` is therefore always 0 here).
    """
    result = await heartbeats.record_heartbeats(
        index=index,
        producer=runtime.producer,
        topic=topic_name(runtime.settings.topic_prefix, HEARTBEATS),
        topics_ready=runtime.topics_ready,
        principal=principal,
        batch=batch,
    )
    return json_response(result.model_dump())
