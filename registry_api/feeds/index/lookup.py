"""Attributes of feeds named by id, read from the index's columns: what access control needs to
decide many feeds at once without reading their rows from the database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from registry_api.feeds.index.records import (
    ID_DTYPE,
    KIND_CODE,
    SHARING_CODE,
    FeedRecord,
    Vocabulary,
)
from registry_api.feeds.index.snapshot import Snapshot

_ID_WIDTH = np.dtype(ID_DTYPE).itemsize


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
        elif feed_id.isascii() and feed_id.isalnum() and len(feed_id) <= _ID_WIDTH:
            in_base.append(position)  # anything else would be cut or padded by ID_DTYPE
    if in_base and base.size:
        asked = np.array(in_base, dtype=np.int64)
        wanted = np.array([feed_ids[position] for position in in_base], dtype=ID_DTYPE)
        columns = base.columns
        rows = np.minimum(np.searchsorted(columns.ids, wanted), base.size - 1)
        hit = columns.ids[rows] == wanted
        if superseded.shape[0]:
            hit &= ~superseded[rows]
        asked, rows = asked[hit], rows[hit]
        found[asked] = True
        owner[asked] = np.array(owners.values, dtype=object)[columns.owner[rows]]
        kind[asked] = columns.kind[rows]
        sharing[asked] = columns.sharing[rows]
        retired[asked] = columns.retired[rows]
        revision[asked] = columns.revision[rows]
    return FeedAttributes(found, owner, kind, sharing, retired, revision)
