"""`/v1/catalog/*`: GB/T 28181 catalogs in and out, the tree, unplaced feeds, duplicates
decided. Thin: the work is in the modules beside this one."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response

from registry_api.catalog import export, resolutions, service, tree
from registry_api.catalog.importer import ImportOptions
from registry_api.catalog.manscdp import OUTPUT_ENCODINGS, render_catalog
from registry_api.dependencies import PrincipalDep, RuntimeDep, SessionDep
from registry_api.errors import Forbidden
from registry_api.feeds.routes import IndexDep, json_response
from registry_api.feeds.service import require_department
from schemas.catalog import (
    CatalogImportResult,
    CatalogSharing,
    CatalogTree,
    DuplicateDecisionIn,
    DuplicateDecisionOut,
    DuplicateDecisionPage,
    SharedCatalogPage,
    UnplacedSummary,
)
from schemas.identity import DEPARTMENT_CODE_PATTERN
from schemas.topics import HEARTBEATS, topic_name

router = APIRouter(tags=["catalog"])
Department = Annotated[str, Query(pattern=DEPARTMENT_CODE_PATTERN)]
GroupKey = Annotated[str, Path(min_length=3, max_length=64, pattern=r"^[a-z_]+:[0-9a-f]{20}$")]


@router.post(
    "/v1/catalog/manscdp",
    response_model=CatalogImportResult,
    summary="Post a GB/T 28181 catalog message (gateways)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "Application/MANSCDP+xml": {
                    "schema": {"type": "string", "description": "Response or Notify, Catalog"}
                }
            },
        }
    },
    responses={
        403: {"description": "Not your department, or another department's platform"},
        413: {"description": "The body is too large"},
        415: {"description": "Not Application/MANSCDP+xml"},
        422: {"description": "Bad XML, a DTD or entity, a wrong encoding, a bad SN or SumNum"},
        429: {"description": "Too many answers of the department are incomplete"},
    },
)
async def post_catalog(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    index: IndexDep,
    principal: PrincipalDep,
    department: Annotated[
        str | None, Query(pattern=DEPARTMENT_CODE_PATTERN, description="Default: yours")
    ] = None,
    sharing: Annotated[CatalogSharing, Query(description="New ordinary channels")] = (
        "unconditional"
    ),
    secret_sharing: Annotated[
        CatalogSharing, Query(description="New channels marked Secrecy=1")
    ] = "not_shared",
) -> Response:
    """One MANSCDP message as the platform emits it (GB2312, GBK or UTF-8, as declared): a
    catalog ``Response`` (possibly one of several with the same ``SN``; applied when the
    items add up to ``SumNum``, with absent channels retired) or a ``Notify`` with per-item
    ``Event`` ON / OFF / VLOST / DEFECT / ADD / DEL / UPDATE. Channels become camera feeds of
    the department (upsert by code); ``Status`` and ON/OFF/VLOST/DEFECT go to the liveness
    workers as heartbeat reports. Bad items are listed in ``rejected``; they never sink the
    message."""
    body = await request.body()  # first: an oversized body is a 413 whoever sends it
    target = department or principal.department
    if target is None:
        raise Forbidden("the city admin names the department (?department=)", code="no_department")
    result, applied = await service.receive_catalog(
        session, index, principal=principal, department=target, body=body,
        content_type=request.headers.get("content-type"),
        options=ImportOptions(sharing=sharing, secret_sharing=secret_sharing),
    )  # fmt: skip
    runtime.relay.notify()
    if applied.liveness:
        await service.report_liveness(
            result, applied, index=index, producer=runtime.producer,
            topic=topic_name(runtime.settings.topic_prefix, HEARTBEATS),
            topics_ready=runtime.topics_ready, principal=principal,
        )  # fmt: skip
    return json_response(result.model_dump())


@router.get("/v1/catalog/tree", response_model=CatalogTree, summary="The catalog tree")
async def get_tree(
    session: SessionDep,
    _: PrincipalDep,
    department: Annotated[str | None, Query(pattern=DEPARTMENT_CODE_PATTERN)] = None,
    include_channels: bool = False,
) -> Response:
    """Platforms, business groups, virtual organisations and devices as the departments'
    platforms described them, each with its count of live channels (the channels themselves
    with ``include_channels=true``). ``GET /v1/feeds?catalog_node=<id>`` lists the feeds
    beneath a node."""
    answer = await tree.catalog_tree(
        session, department=department, include_channels=include_channels
    )
    return json_response(answer)


@router.get(
    "/v1/catalog/summary",
    response_model=UnplacedSummary,
    summary="A department's catalog: feeds, unplaced feeds, platforms",
)
async def get_summary(
    session: SessionDep, principal: PrincipalDep, department: Department | None = None
) -> Response:
    """How many live feeds the department has and how many need a location (the list:
    ``GET /v1/feeds?department=<code>&placed=false``). A department reads its own."""
    target = department or principal.department
    if target is None:
        raise Forbidden("the city admin names the department (?department=)", code="no_department")
    if not principal.is_city_admin and target != principal.department:
        raise Forbidden("a department reads its own catalog summary", code="not_your_catalog")
    await require_department(session, target)
    return json_response(await tree.department_summary(session, target))


@router.get(
    "/v1/catalog/shared",
    response_model=SharedCatalogPage,
    summary="The catalog shared with an upper platform (MANSCDP XML or GeoJSON)",
    responses={
        200: {
            "content": {
                "Application/MANSCDP+xml": {"schema": {"type": "string"}},
                "application/geo+json": {},
            },
            "description": "One page: a MANSCDP catalog Response, or a GeoJSON FeatureCollection",
        }
    },
)
async def get_shared_catalog(
    session: SessionDep,
    runtime: RuntimeDep,
    index: IndexDep,
    principal: PrincipalDep,
    platform: Annotated[
        str, Query(pattern=DEPARTMENT_CODE_PATTERN, description="The upper platform's department")
    ],
    format: Annotated[Literal["manscdp", "geojson"], Query()] = "manscdp",
    device_id: Annotated[
        str, Query(pattern=r"^\d{20}$", description="DeviceID the upper platform knows us by")
    ] = "62010000002000000001",
    sn: Annotated[str, Query(pattern=r"^\d{1,10}$", description="SN of the catalog query")] = "1",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=5_000)] = 500,
    encoding: Annotated[Literal["GB2312", "GBK", "UTF-8"], Query()] = "GB2312",
) -> Response:
    """Exactly the channels the named upper platform (a department of FeedGrid) may see now
    under the sharing rules, as the policy engine decides for a live-view request of that
    department; the tree nodes above them first; ``Status`` from liveness. All pages share
    one ``SumNum``; ``X-Catalog-Pages`` says how many there are."""
    requester = await export.upper_platform(session, principal, platform)
    entries = export.CACHE.get(platform, index.changes)
    if entries is None or page == 1:  # a pull starts afresh; later pages reuse its answer
        entries = await export.shared_entries(
            session, requester, timezone=ZoneInfo(runtime.settings.city_timezone)
        )
        export.CACHE.put(platform, index.changes, entries)
    chosen, pages = export.page_of(entries, page, page_size)
    headers = {"X-Catalog-Pages": str(pages), "X-Catalog-Sum-Num": str(len(entries))}
    if format == "geojson":
        document: dict[str, Any] = {
            "type": "FeatureCollection", "platform": platform, "sum_num": len(entries),
            "page": page, "pages": pages,
            "features": [export.geojson_feature(entry) for entry in chosen],
        }  # fmt: skip
        response = json_response(document, headers=headers)
        response.headers["Content-Type"] = "application/geo+json"
        return response
    body = render_catalog(
        sn=sn, device_id=device_id, sum_num=len(entries),
        items=[export.manscdp_fields(entry) for entry in chosen], encoding=encoding,
    )  # fmt: skip
    charset = "GB18030" if OUTPUT_ENCODINGS[encoding] == "gb18030" else encoding
    return Response(body, headers=headers, media_type=f"Application/MANSCDP+xml; charset={charset}")


@router.post(
    "/v1/catalog/duplicates/{key}/resolve",
    response_model=DuplicateDecisionOut,
    status_code=201,
    summary="Name the authoritative feed of a duplicate group",
    responses={404: {"description": "No current group with that key"}, 409: {}},
)
async def resolve_duplicates(
    key: GroupKey,
    body: Annotated[DuplicateDecisionIn, Body()],
    session: SessionDep,
    index: IndexDep,
    principal: PrincipalDep,
) -> Response:
    """One number, one source: the group's authoritative feed is named, the decision kept
    with who and why, and the group leaves ``GET /v1/catalog/duplicates``."""
    row = await resolutions.decide_group(
        session, index, principal, key=key, decision="resolved",
        authoritative_feed_id=body.authoritative_feed_id, note=body.note,
    )  # fmt: skip
    return json_response(row, status_code=201)


@router.post(
    "/v1/catalog/duplicates/{key}/dismiss",
    response_model=DuplicateDecisionOut,
    status_code=201,
    summary="Dismiss a duplicate flag (not the same device)",
    responses={404: {"description": "No current group with that key"}, 409: {}},
)
async def dismiss_duplicates(
    key: GroupKey,
    session: SessionDep,
    index: IndexDep,
    principal: PrincipalDep,
    body: Annotated[DuplicateDecisionIn | None, Body()] = None,
) -> Response:
    """The feeds are different devices: the decision is kept with who and why, and the group
    leaves ``GET /v1/catalog/duplicates``."""
    row = await resolutions.decide_group(
        session, index, principal, key=key, decision="dismissed",
        authoritative_feed_id=body.authoritative_feed_id if body else None,
        note=body.note if body else None,
    )  # fmt: skip
    return json_response(row, status_code=201)


@router.get(
    "/v1/catalog/duplicates/decisions",
    response_model=DuplicateDecisionPage,
    summary="Decisions on duplicate groups (the audit trail)",
)
async def duplicate_decisions(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Newest first. A department sees the decisions it made or that cover its feeds."""
    items = await resolutions.list_decisions(session, principal, limit=limit)
    return json_response({"items": items})
