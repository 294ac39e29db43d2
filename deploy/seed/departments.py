"""The 24 departments of the demo city (the reference case shares data between 24).

Four of them own cameras (public security, urban management, transport, environment); water
affairs owns sensors too. The rest are requesters. Each entry is exactly the body of
``POST /v1/departments`` (``schemas.identity.DepartmentCreate``).
"""

from __future__ import annotations

import copy
import re
from typing import Any

CODE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,31}$")

PSB = "lz-psb"
CMB = "lz-cmb"
TB = "lz-tb"
EEB = "lz-eeb"
WAB = "lz-wab"
EMB = "lz-emb"
FIRE = "lz-fire"
HC = "lz-hc"

_DEPARTMENTS: tuple[dict[str, Any], ...] = (
    {
        "code": PSB,
        "name": "Lanzhou Public Security Bureau",
        "kind": "public_security",
        "answer_deadline_days": 3,
    },
    {
        "code": CMB,
        "name": "Lanzhou Urban Management and Comprehensive Law Enforcement Bureau",
        "kind": "urban_management",
        "answer_deadline_days": 5,
    },
    {
        "code": TB,
        "name": "Lanzhou Transport Bureau",
        "kind": "transport",
        "answer_deadline_days": 4,
    },
    {
        "code": EEB,
        "name": "Lanzhou Ecology and Environment Bureau",
        "kind": "environment",
        "answer_deadline_days": 5,
    },
    {
        "code": WAB,
        "name": "Lanzhou Water Affairs Bureau",
        "kind": "other",
        "answer_deadline_days": 4,
    },
    {
        "code": EMB,
        "name": "Lanzhou Emergency Management Bureau",
        "kind": "other",
        "answer_deadline_days": 2,
    },
    {
        "code": FIRE,
        "name": "Lanzhou Fire and Rescue Detachment",
        "kind": "other",
        "answer_deadline_days": 2,
    },
    {
        "code": HC,
        "name": "Lanzhou Municipal Health Commission",
        "kind": "other",
        "answer_deadline_days": 5,
    },
    {
        "code": "lz-nrb",
        "name": "Lanzhou Natural Resources Bureau",
        "kind": "other",
        "answer_deadline_days": 7,
    },
    {
        "code": "lz-edu",
        "name": "Lanzhou Education Bureau",
        "kind": "other",
        "answer_deadline_days": 7,
    },
    {
        "code": "lz-cab",
        "name": "Lanzhou Civil Affairs Bureau",
        "kind": "other",
        "answer_deadline_days": 10,
    },
    {
        "code": "lz-amr",
        "name": "Lanzhou Administration for Market Regulation",
        "kind": "other",
        "answer_deadline_days": 7,
    },
    {
        "code": "lz-hurd",
        "name": "Lanzhou Housing and Urban-Rural Development Bureau",
        "kind": "other",
        "answer_deadline_days": 7,
    },
    {
        "code": "lz-ctb",
        "name": "Lanzhou Culture and Tourism Bureau",
        "kind": "other",
        "answer_deadline_days": 8,
    },
    {
        "code": "lz-meteo",
        "name": "Lanzhou Meteorological Bureau",
        "kind": "other",
        "answer_deadline_days": 5,
    },
    {
        "code": "lz-drc",
        "name": "Lanzhou Development and Reform Commission",
        "kind": "other",
        "answer_deadline_days": 10,
    },
    {
        "code": "lz-data",
        "name": "Lanzhou Data Administration",
        "kind": "other",
        "answer_deadline_days": 3,
    },
    {
        "code": "lz-agri",
        "name": "Lanzhou Agriculture and Rural Affairs Bureau",
        "kind": "other",
        "answer_deadline_days": 8,
    },
    {
        "code": "lz-forest",
        "name": "Lanzhou Forestry and Landscaping Bureau",
        "kind": "other",
        "answer_deadline_days": 8,
    },
    {
        "code": "lz-com",
        "name": "Lanzhou Commerce Bureau",
        "kind": "other",
        "answer_deadline_days": 9,
    },
    {
        "code": "lz-stats",
        "name": "Lanzhou Statistics Bureau",
        "kind": "other",
        "answer_deadline_days": 10,
    },
    {
        "code": "lz-justice",
        "name": "Lanzhou Justice Bureau",
        "kind": "other",
        "answer_deadline_days": 6,
    },
    {
        "code": "lz-procur",
        "name": "Lanzhou People's Procuratorate",
        "kind": "other",
        "answer_deadline_days": 6,
    },
    {
        "code": "lz-cgdo",
        "name": "Chengguan District Government Office",
        "kind": "other",
        "answer_deadline_days": 5,
    },
)

# Owner department of each kind of camera feed.
CAMERA_OWNERS: dict[str, str] = {
    "public_security": PSB,
    "urban_management": CMB,
    "transport": TB,
    "environment": EEB,
}


def departments() -> list[dict[str, Any]]:
    """A fresh copy of the department list (callers may mutate it)."""
    return copy.deepcopy(list(_DEPARTMENTS))


def department_codes() -> list[str]:
    return [d["code"] for d in _DEPARTMENTS]


def kind_of(code: str) -> str:
    for d in _DEPARTMENTS:
        if d["code"] == code:
            return str(d["kind"])
    raise KeyError(code)
