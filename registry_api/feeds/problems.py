"""Validation errors as clients read them: the details list and a one-line reason."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def validation_details(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(item.get("loc", ())), "msg": item.get("msg"), "type": item.get("type")}
        for item in error.errors(include_url=False, include_input=False)
    ]


def first_problem(details: list[dict[str, Any]]) -> str:
    """'fov.angle: Input should be less than or equal to 360' from the first detail."""
    first = details[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])
