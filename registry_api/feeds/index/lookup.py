"""Attributes of feeds named by id, read from the index's columns: what access control needs to
decide many feeds at once without reading their rows from the database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from registry_api.feeds.index.records import (
    KIND_CODE,
    SHARING_CODE,
    FeedRecord,
    Vocabulary,
)
from registry_api.feeds.index.snapshot import Snapshot


@dataclass(frozen=True)
class FeedAttributes:
    """Aligned with the ids asked for; where ``found`` is False the other columns mean nothing.

    ``kind`` and ``sharing`` hold the codes of ``records.KINDS`` and ``records.SHARING``.
    """

    found: np.ndarray  # bool
    owner: np.ndarray  # object: the owner department's code, None where not found
    kind: np.ndarray  # int8
    sharing: np.ndarray  # int8
    retired: np.ndarray  # bool
    revision: np.ndarray  # int64


def attributes_of(
    base: Snapshot,
    superseded: np.ndarray,
    delta: Mapping[str, FeedRecord],
    owners: Vocabulary,
    feed_ids: Sequence[str],
) -> FeedAttributes:
    """The newest known attributes of each feed: the delta's record, else the base's row
    (rows the delta superseded are skipped: the delta holds them)."""
    count = len(feed_ids)
    found = np.zeros(count, dtype=bool)
    owner = np.full(count, None, dtype=object)
    kind = np.full(count, -1, dtype=np.int8)
    sharing = np.full(count, -1, dtype=np.int8)
    retired = np.zeros(count, dtype=bool)
    revision = np.full(count, -1, dtype=np.int64)
    in_base: list[int] = []
    for position, feed_id in enumerate(feed_ids):
        record = delta.get(feed_id)
        if record is not None:
            found[position] = True
            owner[position] = record.owner
            kind[position] = KIND_CODE[record.kind]
            sharing[position] = SHARING_CODE[record.sharing]
            retired[position] = record.retired
            revision[position] = record.revision
        else:
            in_base.append(position)
    if in_base:
        asked = np.array(in_base, dtype=np.int64)
        rows = base.positions_of([feed_ids[position] for position in in_base])
        hit = rows >= 0
        asked, rows = asked[hit], rows[hit]
        if superseded.shape[0]:
            live = ~superseded[rows]
            asked, rows = asked[live], rows[live]
        columns = base.columns
        found[asked] = True
        owner[asked] = np.array(owners.values, dtype=object)[columns.owner[rows]]
        kind[asked] = columns.kind[rows]
        sharing[asked] = columns.sharing[rows]
        retired[asked] = columns.retired[rows]
        revision[asked] = columns.revision[rows]
    return FeedAttributes(found, owner, kind, sharing, retired, revision)
