"""Times as the API takes them, bounded so that no conversion or sum can leave the calendar.

Python's datetime ends at years 1 and 9999: a time at either end, converted to UTC or moved
by a period, raises OverflowError (a 500) deep in a service or a database driver. Every time
a client sends is therefore checked once, at the boundary, to lie between 1970 and 9000.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _bounded(moment: datetime) -> datetime:
    """The aware ``moment`` in UTC; ValueError (a 422) when it lies outside 1970..9000."""
    try:
        in_utc = moment.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not EARLIEST <= in_utc < LATEST:
        raise ValueError(f"times must lie between {EARLIEST:%Y} and {LATEST:%Y} (UTC)")
    return in_utc


def utc_time(moment: datetime) -> datetime:
    """A time in UTC; one without a zone is taken as UTC."""
    return _bounded(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


def zoned_time(moment: datetime) -> datetime:
    """A time kept in its own zone; one without a zone is left for the model to refuse."""
    if moment.tzinfo is not None:
        _bounded(moment)
    return moment


UtcTime = Annotated[datetime, AfterValidator(utc_time)]
ZonedTime = Annotated[datetime, AfterValidator(zoned_time)]
