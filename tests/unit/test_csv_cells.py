"""CSV cells a spreadsheet would run as formulas are neutralised; numbers stay numbers."""

from __future__ import annotations

import csv
import io

import pytest
from pydantic import BaseModel

from registry_api.analytics.csv_export import rows_to_csv


class Row(BaseModel):
    text: str
    count: int
    ratio: float


@pytest.mark.parametrize(
    "hostile", ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1+1", "\r=1+1", "-", "=", "+-"]
)
def test_a_string_starting_like_a_formula_is_quoted(hostile: str) -> None:
    rows = list(csv.reader(io.StringIO(rows_to_csv([Row(text=hostile, count=1, ratio=0.5)],
                                                   ["text"]), newline="")))  # fmt: skip
    assert rows[1] == ["'" + hostile]


def test_numbers_stay_numbers_even_negative_ones() -> None:
    csv_text = rows_to_csv([Row(text="plain", count=-5, ratio=-0.25)], ["text", "count", "ratio"])
    assert csv_text.splitlines()[1] == "plain,-5,-0.25"
