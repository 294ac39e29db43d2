"""The map's columns (GET /v1/feeds/points) from the feed index, and their JSON encoding."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from registry_api.feeds import points as points_module
from registry_api.feeds.index.queries import IndexQuery
from registry_api.feeds.index.records import ID_DTYPE, FeedRecord
from registry_api.feeds.points import (
    answer_points,
    json_number_array,
    json_string_array,
)
from registry_api.feeds.spatial import FeedIndex


def _record(serial: int, owner: str, kind: str = "camera", **changes: object) -> FeedRecord:
    record = FeedRecord(
        id=f"01J{serial:021d}",
        revision=1,
        owner=owner,
        kind=kind,
        industry=None,
        type_code=None,
        region=None,
        sharing="unconditional",
        status="unknown",
        retired=False,
        tags=(),
        name=f"feed {serial}",
        lon=103.8 + serial * 0.001234567,
        lat=36.06 - serial * 0.000765432,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ids",
    [
        [],
        ["01JAAAAAAAAAAAAAAAAAAAAAAA", "01JBBBBBBBBBBBBBBBBBBBBBBB"],  # one length: numpy
        ["a", "bb-c", "d.e:f_g"],  # mixed lengths
        ['quote"d', "back\\slash", "tab\tbed"],  # characters JSON must escape
        ['ab"d', "abcd"],  # one length, yet a quote
        ["ab\\d", "abcd"],  # one length, yet a backslash
        ["ab\td", "abcd"],  # one length, yet a control character
    ],
)
def test_ids_become_a_json_array_of_the_same_strings(ids: list[str]) -> None:
    column = np.array(ids, dtype=ID_DTYPE) if ids else np.empty(0, dtype=ID_DTYPE)
    assert json.loads(json_string_array(column)) == ids


def test_long_numeric_columns_are_written_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(points_module, "SLICE", 3)
    values = np.round(np.linspace(-180.0, 180.0, 10), 6)
    assert json.loads(json_number_array(values)) == values.tolist()
    codes = np.array([0, 2, 1, 1, 0, 2, 2], dtype=np.int8)
    assert json.loads(json_number_array(codes)) == codes.tolist()
    assert json.loads(json_number_array(codes[:3])) == [0, 2, 1]


def _points(index: FeedIndex, query: IndexQuery) -> dict[str, Any]:
    response = answer_points(index.matching_rows(query), list(index.owners.values), "")
    return json.loads(bytes(response.body))  # type: ignore[no-any-return]


async def test_points_hold_live_feeds_with_owners_renumbered_by_name() -> None:
    index = FeedIndex()
    # the vocabulary codes owners in order of first sight: "lz-tb" gets 0, "lz-cmb" 1, ...
    index.apply(
        [
            _record(1, "lz-tb"),
            _record(2, "lz-cmb", kind="sensor", status="online"),
            _record(3, "lz-psb", retired=True),
            _record(4, "lz-tb", status="offline"),
            _record(5, "lz-eeb"),
        ]
    )
    await index.merge()  # the first ones in the base snapshot, the next in the delta
    index.apply([_record(6, "lz-cmb"), replace(_record(1, "lz-tb"), revision=2, lon=104.5)])

    answer = _points(index, IndexQuery())
    assert answer["owners"] == ["lz-cmb", "lz-eeb", "lz-tb"]  # only owners of live feeds
    decoded = {
        feed_id: (
            answer["owners"][owner],
            answer["kinds"][kind],
            answer["statuses"][status],
            lon,
            lat,
        )
        for feed_id, owner, kind, status, lon, lat in zip(
            answer["ids"], answer["owner"], answer["kind"], answer["status"],
            answer["lon"], answer["lat"], strict=True,
        )
    }  # fmt: skip
    assert answer["count"] == len(decoded) == 5
    expected = {
        serial: _record(serial, owner, kind, status=status)
        for serial, owner, kind, status in [
            (1, "lz-tb", "camera", "unknown"),
            (2, "lz-cmb", "sensor", "online"),
            (4, "lz-tb", "camera", "offline"),
            (5, "lz-eeb", "camera", "unknown"),
            (6, "lz-cmb", "camera", "unknown"),
        ]
    }
    expected[1] = replace(expected[1], lon=104.5)  # the newer revision, once
    assert decoded == {
        record.id: (
            record.owner,
            record.kind,
            record.status,
            round(record.lon, 6),
            round(record.lat, 6),
        )
        for record in expected.values()
    }

    sensors = _points(index, IndexQuery(kind="sensor"))
    assert sensors["ids"] == [_record(2, "lz-cmb").id] and sensors["owners"] == ["lz-cmb"]
    assert sensors["owner"] == [0]
    nobody = _points(index, IndexQuery(owner="lz-none"))
    assert nobody["count"] == 0 and nobody["ids"] == [] and nobody["owners"] == []
