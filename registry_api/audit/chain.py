"""The audit hash chain as pure functions.

Each entry's hash is sha256 over the canonical JSON of every field of the entry, including the
previous entry's hash. Altering a row breaks its own hash; removing a row breaks the sequence
and the next row's link; removing the newest rows is caught against the chain head, which holds
the last sequence number and hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

GENESIS_HASH = "0" * 64


def canonical_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, datetimes at microsecond precision in UTC."""
    return orjson.dumps(
        fields,
        default=_canonical_value,
        option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME,
    )


@lru_cache(maxsize=4096)
def _canonical_datetime(value: datetime) -> str:
    return canonical_time(value)


def _canonical_value(value: Any) -> str:
    # Only datetimes reach here (OPT_PASSTHROUGH_DATETIME); a batch mostly shares one time.
    if isinstance(value, datetime):
        return _canonical_datetime(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def entry_hash(fields: Mapping[str, Any]) -> str:
    """``fields``: everything stored in the entry but its own hash (``previous_hash`` included)."""
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


@dataclass(frozen=True)
class ChainLink:
    seq: int
    previous_hash: str
    entry_hash: str
    fields: Mapping[str, Any]  # as passed to entry_hash(), previous_hash included


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str  # altered_entry | missing_entry | broken_link | truncated
    message: str


class ChainVerifier:
    """Checks links one at a time, so a long chain can be streamed from the database."""

    def __init__(self, previous_hash: str = GENESIS_HASH, previous_seq: int = 0) -> None:
        self.previous_hash = previous_hash
        self.previous_seq = previous_seq
        self.checked = 0
        self.broken: ChainBreak | None = None

    def check(self, link: ChainLink) -> ChainBreak | None:
        if self.broken is not None:
            return self.broken
        expected_seq = self.previous_seq + 1
        if link.seq != expected_seq:
            return self._break(
                expected_seq,
                "missing_entry",
                f"entry {expected_seq} is missing (the next entry found is {link.seq})",
            )
        if link.previous_hash != self.previous_hash:
            return self._break(
                link.seq,
                "broken_link",
                f"entry {link.seq} does not link to entry {self.previous_seq}",
            )
        if entry_hash(link.fields) != link.entry_hash:
            return self._break(
                link.seq, "altered_entry", f"entry {link.seq} was altered after it was written"
            )
        self.previous_hash = link.entry_hash
        self.previous_seq = link.seq
        self.checked += 1
        return None

    def finish(self, head_seq: int, head_hash: str) -> ChainBreak | None:
        """Compares the end of the chain with the head recorded at the last append."""
        if self.broken is not None:
            return self.broken
        if self.previous_seq < head_seq:
            return self._break(
                self.previous_seq + 1,
                "truncated",
                f"entries {self.previous_seq + 1} to {head_seq} are missing from the chain's end",
            )
        if self.previous_seq == head_seq and self.previous_hash != head_hash:
            return self._break(
                head_seq, "altered_entry", f"entry {head_seq} differs from the chain head"
            )
        return None

    def _break(self, seq: int, problem: str, message: str) -> ChainBreak:
        self.broken = ChainBreak(seq, problem, message)
        return self.broken


def verify_links(links: Iterable[ChainLink]) -> ChainBreak | None:
    verifier = ChainVerifier()
    for link in links:
        found = verifier.check(link)
        if found is not None:
            return found
    return None


class LinkBytes(NamedTuple):
    """An entry's canonical bytes (what :func:`entry_hash` hashes) cut where its place in the
    chain goes: the previous hash between ``start`` and ``middle``, the sequence number
    between ``middle`` and ``end``. Made before the chain's head is known, so a writer's turn
    only joins and hashes (:func:`chain_link_bytes`)."""

    start: bytes
    middle: bytes
    end: bytes


# Raw control bytes never occur in orjson's output otherwise (it escapes them in strings), so
# each marks its cut once and unambiguously. Sorted keys put previous_hash before seq.
_HASH_CUT = b"\x00"
_SEQ_CUT = b"\x01"


def link_bytes(entry: Mapping[str, Any]) -> LinkBytes:
    """``entry``: every field but ``seq``, ``previous_hash`` and ``entry_hash``."""
    blob = canonical_bytes(
        {**entry, "previous_hash": orjson.Fragment(_HASH_CUT), "seq": orjson.Fragment(_SEQ_CUT)}
    )
    start, rest = blob.split(_HASH_CUT)
    middle, end = rest.split(_SEQ_CUT)
    return LinkBytes(start, middle, end)


def chain_link_bytes(
    previous_hash: str, previous_seq: int, links: Iterable[LinkBytes]
) -> list[tuple[int, str, str]]:
    """Each entry's ``(seq, previous_hash, entry_hash)`` after the given head: what
    :func:`extend_chain` computes, from bytes prepared beforehand."""
    chained = []
    sha256 = hashlib.sha256
    for link in links:
        previous_seq += 1
        digest = sha256(
            b"".join(
                (
                    link.start,
                    orjson.dumps(previous_hash),
                    link.middle,
                    b"%d" % previous_seq,
                    link.end,
                )
            )
        ).hexdigest()
        chained.append((previous_seq, previous_hash, digest))
        previous_hash = digest
    return chained


def extend_chain(
    previous_hash: str, previous_seq: int, entries: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Numbers and hashes new entries after the given head; returns them ready to insert."""
    chained = []
    for entry in entries:
        previous_seq += 1
        fields = dict(entry, seq=previous_seq, previous_hash=previous_hash)
        digest = entry_hash(fields)
        fields["entry_hash"] = digest  # after hashing: the hash covers everything but itself
        chained.append(fields)
        previous_hash = digest
    return chained
