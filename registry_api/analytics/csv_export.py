"""CSV export of any analytics answer: its ``rows``, one line each, with a header line."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

CSV_MEDIA_TYPE = "text/csv"


def wants_csv(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip() == CSV_MEDIA_TYPE for part in accept.split(","))


# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection"): the cell then
# starts with a single quote, which spreadsheets show as text and never evaluate.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _cell(value: Any) -> Any:
    """Numbers stay numbers (a negative count is no formula); every text is neutralised,
    names and ids as much as serialized lists, since all of them come from clients."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return _text(orjson.dumps(value).decode())
    if value is None:
        return ""
    if isinstance(value, str):
        return _text(value)
    return value


def rows_to_csv(rows: Sequence[BaseModel], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        values = row.model_dump()
        writer.writerow([_cell(values[column]) for column in columns])
    return buffer.getvalue()


def csv_response(rows: Sequence[BaseModel], model: type[BaseModel], name: str) -> Response:
    return Response(
        rows_to_csv(rows, list(model.model_fields)),
        media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )
