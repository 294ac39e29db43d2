"""Every matching feed as a dot: ``GET /v1/feeds/points`` for maps of the whole city.

A map of 60,000 to 1,000,000 feeds cannot page through feed documents, so this answer is
columnar: one array per attribute, aligned by position, straight from the in-memory index.
Only public attributes go out (id, position, kind, status, owner); categorical ones are small
integers that index the lists sent beside them.

At a million feeds the JSON is ~50 MB and takes a second or two to write, so only the match
runs on the event loop; gathering, encoding and gzip run in a worker thread, in slices that
let the GIL go often (the API keeps answering other requests meanwhile).
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response
from pydantic import BaseModel, Field

from registry_api.feeds.index.columns import Columns, gather_columns
from registry_api.feeds.index.records import KINDS, STATUSES

# 6 decimals of a degree are ~0.1 m: finer than any map needs, and a third shorter as text.
POSITION_DECIMALS = 6
# Below this size compression costs more time than the transfer it saves.
COMPRESS_FROM_BYTES = 64 * 1024
# Numbers written per orjson call (~10 ms each), so the event loop's thread gets the GIL back.
SLICE = 100_000
NUMERIC_COLUMNS = ("lon", "lat", "kind", "status", "owner")


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


def feed_points(
    parts: Sequence[tuple[Columns, np.ndarray]], owner_names: Sequence[str]
) -> dict[str, Any]:
    """The columns of :class:`FeedPoints` (numpy arrays; ids still fixed-width bytes) from
    the matching rows of the index's snapshots (``FeedIndex.matching_rows``) and the index's
    owner vocabulary."""
    columns = gather_columns(parts, ("ids", *NUMERIC_COLUMNS))
    # Owner codes are positions in the process-wide vocabulary: renumber the ones present,
    # in name order, through a lookup table (no sort of every row).
    counts = np.bincount(columns["owner"], minlength=len(owner_names))
    present = np.flatnonzero(counts)
    names = [owner_names[code] for code in present.tolist()]
    by_name = sorted(range(len(names)), key=names.__getitem__)
    renumber = np.zeros(counts.shape[0], dtype=np.int32)
    renumber[present[by_name]] = np.arange(present.shape[0], dtype=np.int32)
    return {
        "count": int(columns["ids"].shape[0]),
        "ids": columns["ids"],
        "lon": np.round(columns["lon"], POSITION_DECIMALS),
        "lat": np.round(columns["lat"], POSITION_DECIMALS),
        "kind": columns["kind"],
        "status": columns["status"],
        "owner": renumber[columns["owner"]],
        "kinds": list(KINDS),
        "statuses": list(STATUSES),
        "owners": [names[position] for position in by_name],
    }


def encode_points(points: dict[str, Any], accept_encoding: str) -> Response:
    """The JSON answer, gzip when accepted (zlib lets the GIL go while it compresses)."""
    pieces = [b'{"count":%d,"ids":' % points["count"], json_string_array(points["ids"])]
    for name in NUMERIC_COLUMNS:
        pieces += [b',"%s":' % name.encode(), json_number_array(points[name])]
    for name in ("kinds", "statuses", "owners"):
        pieces += [b',"%s":' % name.encode(), orjson.dumps(points[name])]
    body = b"".join([*pieces, b"}"])
    headers = {"Vary": "Accept-Encoding"}
    if len(body) >= COMPRESS_FROM_BYTES and "gzip" in accept_encoding.lower():
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(body, headers=headers, media_type="application/json")


def answer_points(
    parts: Sequence[tuple[Columns, np.ndarray]], owner_names: Sequence[str], accept_encoding: str
) -> Response:
    """Gather and encode: the worker-thread half of ``GET /v1/feeds/points``."""
    return encode_points(feed_points(parts, owner_names), accept_encoding)


def json_number_array(values: np.ndarray) -> bytes:
    """A numeric column as a JSON array, written by orjson (in C) a slice at a time."""
    option = orjson.OPT_SERIALIZE_NUMPY
    if values.shape[0] <= SLICE:
        return orjson.dumps(np.ascontiguousarray(values), option=option)
    slices = (
        orjson.dumps(np.ascontiguousarray(values[start : start + SLICE]), option=option)[1:-1]
        for start in range(0, values.shape[0], SLICE)
    )
    return b"[" + b",".join(slices) + b"]"


def json_string_array(ids: np.ndarray) -> bytes:
    """Fixed-width byte strings (NUL-padded) as a JSON array of strings.

    Ids of one length in printable ASCII with no quote or backslash (every id the registry
    hands out) are laid out by numpy, brackets, quotes and commas included: no Python string
    per feed. Anything else goes through orjson, which escapes what needs it.
    """
    count = ids.shape[0]
    if count == 0:
        return b"[]"
    raw = ids.view(np.uint8).reshape(count, ids.dtype.itemsize)
    length = int(np.count_nonzero(raw[0]))
    text = raw[:, :length]
    plain = (
        not raw[:, length:].any()  # all the same length: only NUL padding after it
        and (length == 0 or (int(text.min()) >= 0x20 and int(text.max()) < 0x7F))
        and not (text == ord('"')).any()
        and not (text == ord("\\")).any()
    )
    if not plain:
        return orjson.dumps(np.char.decode(ids, "utf-8").tolist())
    width = length + 3  # "id",
    laid_out = np.empty(1 + count * width, dtype=np.uint8)
    laid_out[0] = ord("[")
    rows = laid_out[1:].reshape(count, width)
    rows[:, 0] = rows[:, length + 1] = ord('"')
    rows[:, 1 : length + 1] = raw[:, :length]
    rows[:, length + 2] = ord(",")
    laid_out[-1] = ord("]")  # over the last comma
    return laid_out.tobytes()
