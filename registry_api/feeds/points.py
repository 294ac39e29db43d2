"""Every matching feed as a dot: ``GET /v1/feeds/points`` for maps of the whole city.

A map of 60,000 to 1,000,000 feeds cannot page through feed documents, so this answer is
columnar: one array per attribute, aligned by position, straight from the in-memory index.
Only public attributes go out (id, position, kind, status, owner); categorical ones are small
integers that index the lists sent beside them. Encoding runs in a worker thread and the
body is gzip-compressed when the client accepts it: at a million feeds the JSON is ~50 MB.
"""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response
from pydantic import BaseModel, Field

from registry_api.feeds.spatial import KINDS, STATUSES, FeedIndex, IndexQuery

# 6 decimals of a degree are ~0.1 m: finer than any map needs, and a third shorter as text.
POSITION_DECIMALS = 6
# Below this size compression costs more time than the transfer it saves.
COMPRESS_FROM_BYTES = 64 * 1024


class FeedPoints(BaseModel):
    """Matching feeds as aligned columns: feed ``i`` is ``ids[i]`` at ``(lon[i], lat[i])``,
    of kind ``kinds[kind[i]]``, status ``statuses[status[i]]``, owned by ``owners[owner[i]]``.
    Retired feeds are left out; rows come in no particular order."""

    count: int = Field(description="How many feeds (the length of every column)")
    ids: list[str]
    lon: list[float] = Field(description=f"Longitude, WGS 84, {POSITION_DECIMALS} decimals")
    lat: list[float] = Field(description=f"Latitude, WGS 84, {POSITION_DECIMALS} decimals")
    kind: list[int] = Field(description="Index into `kinds`")
    status: list[int] = Field(description="Index into `statuses`")
    owner: list[int] = Field(description="Index into `owners`")
    kinds: list[str] = Field(description="Kind names, in code order")
    statuses: list[str] = Field(description="Status names, in code order")
    owners: list[str] = Field(description="Owner departments present in the answer, sorted")


def feed_points(index: FeedIndex, query: IndexQuery) -> dict[str, Any]:
    """The columns of :class:`FeedPoints` as numpy arrays (ids still bytes)."""
    columns = index.point_columns(query)
    vocabulary = index.owners.values
    # Owner codes are positions in the process-wide vocabulary: renumber the ones present,
    # in name order, through a lookup table (no sort of every row).
    counts = np.bincount(columns["owner"], minlength=len(vocabulary))
    present = np.flatnonzero(counts)
    names = [vocabulary[code] for code in present.tolist()]
    by_name = sorted(range(len(names)), key=names.__getitem__)
    renumber = np.zeros(counts.shape[0], dtype=np.int32)
    renumber[present[by_name]] = np.arange(present.shape[0], dtype=np.int32)
    return {
        "count": int(columns["ids"].shape[0]),
        "ids": columns["ids"],
        "lon": np.round(columns["lon"], POSITION_DECIMALS),
        "lat": np.round(columns["lat"], POSITION_DECIMALS),
        "kind": columns["kind"].astype(np.int8),
        "status": columns["status"].astype(np.int8),
        "owner": renumber[columns["owner"]],
        "kinds": list(KINDS),
        "statuses": list(STATUSES),
        "owners": [names[position] for position in by_name],
    }


def encode_points(points: dict[str, Any], accept_encoding: str) -> Response:
    """The JSON answer, gzip when accepted. Heavy at a million feeds: run it in a worker
    thread. orjson writes the numeric numpy columns in C, numpy writes the ids."""
    numbers = orjson.dumps(
        {name: value for name, value in points.items() if name != "ids"},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    body = b"".join((b'{"ids":', json_string_array(points["ids"]), b",", numbers[1:]))
    headers = {"Vary": "Accept-Encoding"}
    if len(body) >= COMPRESS_FROM_BYTES and "gzip" in accept_encoding.lower():
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(body, headers=headers, media_type="application/json")


# Bytes that need no escaping in a JSON string (feed ids are Crockford base 32).
_PLAIN_ID_BYTES = np.zeros(256, dtype=bool)
_PLAIN_ID_BYTES[list(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_.:")] = True


def json_string_array(ids: np.ndarray) -> bytes:
    """Fixed-width byte strings (NUL-padded) as a JSON array of strings.

    Ids of one length made of plain characters (every id the registry hands out) are laid
    out by numpy, quotes and commas included: no Python string per feed, a third of the
    memory. Anything else goes through orjson, which escapes what needs it.
    """
    count = ids.shape[0]
    if count == 0:
        return b"[]"
    raw = ids.view(np.uint8).reshape(count, ids.dtype.itemsize)
    length = int(np.count_nonzero(raw[0]))
    if not (raw[:, length:] == 0).all() or not _PLAIN_ID_BYTES[raw[:, :length]].all():
        return orjson.dumps(np.char.decode(ids, "utf-8").tolist())
    laid_out = np.empty((count, length + 3), dtype=np.uint8)
    laid_out[:, 0] = laid_out[:, length + 1] = ord('"')
    laid_out[:, 1 : length + 1] = raw[:, :length]
    laid_out[:, length + 2] = ord(",")
    return b"[" + laid_out.tobytes()[:-1] + b"]"
