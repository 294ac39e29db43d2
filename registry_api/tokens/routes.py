from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from registry_api.dependencies import RuntimeDep

router = APIRouter(tags=["tokens"])


@router.get(
    "/.well-known/jwks.json",
    summary="Public keys of retrieval tokens (JWKS, Ed25519); open to media servers",
    response_class=Response,
)
async def jwks(runtime: RuntimeDep) -> Response:
    body = orjson.dumps(runtime.access.keyring.jwks())
    # Short cache: a rotated key must reach media servers well before its first token does.
    return Response(
        body, media_type="application/json", headers={"Cache-Control": "public, max-age=60"}
    )
