"""Numbers as FeedGrid takes them, bounded to what every store and wire format holds.

A number a client sends ends up in SQLite or PostgreSQL (signed 64-bit INTEGER), in the audit
chain's JSON (orjson: 64-bit integers only), in Kafka envelopes and in ClickHouse (UInt64,
Int64, Float64). One past those ranges does not fail where it arrives but where it is stored:
a 500 on a read, or a batch of hook events the audit log can never take. So every integer and
every float is checked once, at the boundary, against the narrowest of those: a value out of
range is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Integers a JSON number carries exactly everywhere (JavaScript, ClickHouse's JSON functions).
EXACT_FLOAT_INT_MAX = 2**53

# A count or a size (bytes, rows, sequence numbers): non-negative, fits a signed 64-bit column.
StoredCount = Annotated[int, Field(ge=0, le=INT64_MAX)]
# Seconds: finite, non-negative, and small enough to stay exact in a Float64.
StoredSeconds = Annotated[float, Field(ge=0, le=EXACT_FLOAT_INT_MAX, allow_inf_nan=False)]
# A TCP or UDP port as a media server reports it.
Port = Annotated[int, Field(ge=0, le=65_535)]
