"""Feed documents rendered once per change and kept as bytes beside the index.

A page of ``GET /v1/feeds`` is the index's match plus a join of these bytes: no row is read
from the database, no field-of-view polygon is computed and nothing is JSON-encoded per row
while answering. Each feed is rendered when it changes (a write of this process, a liveness
change, a followed feed-metadata event, the load at start), by the same functions that render
a single feed (:func:`registry_api.feeds.documents.feed_document`), and stored under the
revision rule of the index: :class:`registry_api.feeds.spatial.FeedIndex` stores a rendering
exactly when it accepts the record of the same revision.

One entry per feed, one ``bytes`` object: a fixed header, then the owner's document (with
``stream.url`` and ``fov_polygon``, without ``distance_m``). The header tells

* the owner department (a code of the index's owner vocabulary): who may see the URL;
* the byte span of ``,"url":"..."`` in the document: other callers get the document without it;
* the byte span of the ``last_seen`` value, its time and whether the feed is retired: the
  liveness applier moves ``last_seen`` forward without a new revision (no re-rendering: the
  value is spliced in, under the rule the database applies);
* the version and revision.
"""

from __future__ import annotations

import itertools
import os
import struct
import tempfile
import zlib
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from prometheus_client import Gauge

from registry_api.feeds.documents import event_data, fov_polygons_of
from registry_api.feeds.index.records import Vocabulary
from registry_api.identity.principal import Principal

# owner code, version, revision, last_seen (microseconds since 1970, NO_TIME for none),
# retired, url start, url end, last_seen start, last_seen end
_HEADER = struct.Struct("<IqqqBIIII")
HEADER_SIZE = _HEADER.size
_OWNER_AND_URL = struct.Struct("<I25xII")  # what a page needs of the header: who, where the URL
NO_TIME = -(2**63)
_OPTIONS = orjson.OPT_UTC_Z  # as the API's responses (routes.json_response)
_RENDER_OPTIONS = _OPTIONS | orjson.OPT_SERIALIZE_NUMPY  # polygon rings stay arrays
_URL_KEY = b',"url":'
_SEEN_KEY = b',"last_seen":'
_POLYGON_KEY = b',"fov_polygon":'
GZIP_FROM_BYTES = 1024

_LENGTH_BITS = 24  # a rendering's length in the low bits of its file location (< 16 MiB)
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
WRITE_BYTES = 8 * 2**20
COMPACT_FROM_BYTES = 256 * 2**20

RENDERED_SPILLED = Gauge(
    "feedgrid_rendered_feed_spilled_bytes",
    "Bytes of rendered feed documents kept in the spill file (read back per page)",
)
RENDERED_FEEDS = Gauge("feedgrid_rendered_feeds", "Feeds whose documents are kept rendered")
RENDERED_BYTES = Gauge(
    "feedgrid_rendered_feed_bytes", "Bytes of the rendered feed documents (headers included)"
)


class RenderingError(ValueError):
    """A document whose parts could not be located (never expected: a bug if raised)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """The header of a stored rendering, unpacked."""

    owner: int
    version: int
    revision: int
    last_seen: int
    retired: bool
    url_start: int
    url_end: int
    seen_start: int
    seen_end: int

    @classmethod
    def of(cls, stored: bytes) -> Entry:
        return cls(*_HEADER.unpack_from(stored))


def microseconds(moment: datetime | str | None) -> int:
    """A time (datetime or RFC 3339 text, as rows and events carry it) as microseconds."""
    if moment is None:
        return NO_TIME
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def render_documents(documents: Sequence[Mapping[str, Any]], owners: Vocabulary) -> list[bytes]:
    """Stored renderings of feed documents in the feed-metadata event shape
    (:func:`registry_api.feeds.documents.event_data`: URL included, no polygon)."""
    views: list[tuple[float, float, float, float, float] | None] = []
    for document in documents:
        fov = document["fov"]
        if fov is None or document["location"] is None:  # no view, or an unplaced feed
            views.append(None)
        else:
            lon, lat = document["location"]["coordinates"][:2]
            views.append((lon, lat, fov["heading"], fov["angle"], fov["range_m"]))
    rendered = []
    polygons = fov_polygons_of(views, as_arrays=True)
    for document, polygon in zip(documents, polygons, strict=True):
        full = dict(document)
        full["fov_polygon"] = polygon  # the last key: ``event_data_json`` cuts it off
        rendered.append(_entry(document, orjson.dumps(full, option=_RENDER_OPTIONS), owners))
    return rendered


def render_rows(rows: Sequence[Mapping[Any, Any]], owners: Vocabulary) -> list[bytes]:
    """Stored renderings of table rows."""
    return render_documents([event_data(row) for row in rows], owners)


def event_data_json(stored: bytes) -> orjson.Fragment:
    """The feed's event data (:func:`registry_api.feeds.documents.event_data`) as JSON, cut
    from its stored rendering, which is that document encoded with the same options plus
    ``fov_polygon`` as its last key: a writer that renders its feeds anyway encodes each
    document once, not once more for its feed-metadata event."""
    polygon = stored.rfind(_POLYGON_KEY)
    if polygon < HEADER_SIZE:
        raise RenderingError("the rendering has no fov_polygon key")
    return orjson.Fragment(stored[HEADER_SIZE:polygon] + b"}")


def _entry(document: Mapping[str, Any], body: bytes, owners: Vocabulary) -> bytes:
    stream = document["stream"]
    public_stream = orjson.dumps(
        {"protocol": stream["protocol"], "media_path": stream["media_path"]}
    )
    marker = b'"stream":' + public_stream[:-1]
    url_start = body.find(marker) + len(marker)
    url_piece = _URL_KEY + orjson.dumps(stream["url"])
    url_end = url_start + len(url_piece)
    seen_start = body.rfind(_SEEN_KEY) + len(_SEEN_KEY)
    seen_value = orjson.dumps(document["last_seen"], option=_OPTIONS)
    seen_end = seen_start + len(seen_value)
    if (
        url_start < len(marker)
        or body[url_start:url_end] != url_piece
        or seen_start < len(_SEEN_KEY)
        or body[seen_start:seen_end] != seen_value
    ):
        raise RenderingError(f"cannot locate the parts of feed {document['id']!r}")
    header = _HEADER.pack(
        owners.code(document["owner"]),
        int(document["version"]),
        int(document["revision"]),
        microseconds(document["last_seen"]),
        bool(document["retired"]),
        url_start,
        url_end,
        seen_start,
        seen_end,
    )
    return header + body


def seen_later(stored: bytes, seen: datetime) -> bytes | None:
    """The rendering with ``last_seen`` moved to ``seen``, or None when the database would not
    move it either (a retired feed, or a time no later than the one it has)."""
    entry = Entry.of(stored)
    moment = microseconds(seen)
    if entry.retired or (entry.last_seen != NO_TIME and entry.last_seen >= moment):
        return None
    value = orjson.dumps(seen, option=_OPTIONS)
    start = HEADER_SIZE + entry.seen_start
    end = HEADER_SIZE + entry.seen_end
    header = _HEADER.pack(
        entry.owner, entry.version, entry.revision, moment, entry.retired,
        entry.url_start, entry.url_end, entry.seen_start, entry.seen_start + len(value),
    )  # fmt: skip
    return header + stored[HEADER_SIZE:start] + value + stored[end:]


_STATUS_KEY = b',"status":'
_REVISION_KEY = b',"revision":'


def status_changed(stored: bytes, document: Mapping[str, Any]) -> bytes | None:
    """The rendering of ``document`` made from ``stored`` by splicing in its status, revision
    and ``last_seen``, or None when ``stored`` is not the feed's revision just before.

    For ``feed.status`` documents only: the liveness applier's guarded UPDATE changes exactly
    these three fields of the revision it read, so the rest of the bytes are those of the
    revision before; rendering the whole document again (its field-of-view polygon, the
    JSON) was most of what telling the index of a transition cost. The key order is
    ``event_data``'s: ``"status"`` just before ``"last_seen"``, then ``"version"`` (an
    integer) and ``"revision"``, so each key found next to the known ``last_seen`` span is the
    document's own, not one inside a nested value.
    """
    entry = Entry.of(stored)
    revision = int(document["revision"])
    if (
        entry.revision != revision - 1
        or entry.version != int(document["version"])
        or entry.retired != bool(document["retired"])
    ):
        return None
    seen_key = HEADER_SIZE + entry.seen_start - len(_SEEN_KEY)  # positions in ``stored``
    seen_end = HEADER_SIZE + entry.seen_end
    status_at = stored.rfind(_STATUS_KEY, HEADER_SIZE, seen_key)
    revision_at = stored.find(_REVISION_KEY, seen_end)
    if status_at < 0 or revision_at < 0:  # not where event_data puts them: render it anew
        return None
    status_value = status_at + len(_STATUS_KEY)
    revision_value = revision_at + len(_REVISION_KEY)
    status = orjson.dumps(document["status"])
    seen = orjson.dumps(document["last_seen"], option=_OPTIONS)
    seen_start = status_value - HEADER_SIZE + len(status) + len(_SEEN_KEY)
    header = _HEADER.pack(
        entry.owner, entry.version, revision, microseconds(document["last_seen"]), entry.retired,
        entry.url_start, entry.url_end, seen_start, seen_start + len(seen),
    )  # fmt: skip
    view = memoryview(stored)
    return b"".join(
        (
            header,
            view[HEADER_SIZE:status_value],
            status,
            _SEEN_KEY,
            seen,
            view[seen_end:revision_value],
            b"%d" % revision,
            view[revision_value + len(b"%d" % entry.revision) :],
        )
    )


@dataclass(slots=True)
class Staged:
    """Renderings of writes not committed yet (a bulk import's chunks): in memory, or already
    in the store's file when the store spills (``locations``)."""

    feed_ids: list[str]
    renderings: list[bytes] | None = None
    locations: list[int] | None = None
    settled: bool = False  # adopted or released


class RenderedFeeds:
    """Feed id -> stored rendering. Written only by :class:`FeedIndex` (under its revision
    rule) and by the liveness applier's ``last_seen`` moves.

    Renderings live in memory ("hot") while the store holds at most ``spill_above_feeds``
    feeds. Above that (a registry of a million feeds: 2 GB of documents), renderings beyond
    ``hot_bytes`` are written to an unnamed file and read back with ``pread`` (100 reads a
    page): the process keeps 8 bytes of location per feed, the kernel's page cache the rest.
    A rewritten feed leaves its old bytes in the file; when those outweigh the live ones the
    file is rewritten (compacted).
    """

    def __init__(
        self,
        owners: Vocabulary,
        *,
        spill_above_feeds: int = 100_000,
        hot_bytes: int = 64 * 2**20,
        spill_dir: Path | None = None,
        compact_from_bytes: int = COMPACT_FROM_BYTES,
    ) -> None:
        self.owners = owners
        self.compact_from_bytes = compact_from_bytes
        self.spill_above_feeds = spill_above_feeds
        self.hot_bytes = hot_bytes
        self.spill_dir = spill_dir
        self._stored: dict[str, bytes] = {}  # hot
        self._bytes = 0  # of the hot renderings
        self._cold: dict[str, int] = {}  # feed id -> offset << 24 | length, in the file
        self._cold_bytes = 0  # live bytes in the file
        self._file: BinaryIO | None = None
        self._file_end = 0
        self._staged_in_file = 0  # staged parts in the file: no compaction while any wait

    def __len__(self) -> int:
        return len(self._stored) + len(self._cold)

    def __contains__(self, feed_id: str) -> bool:
        return feed_id in self._stored or feed_id in self._cold

    def feed_ids(self) -> list[str]:
        return [*self._stored, *self._cold]

    def get(self, feed_id: str) -> bytes | None:
        """The stored rendering of a feed (header and document), or None."""
        stored = self._stored.get(feed_id)
        if stored is not None:
            return stored
        location = self._cold.get(feed_id)
        if location is None or self._file is None:
            return None
        return os.pread(self._file.fileno(), location & _LENGTH_MASK, location >> _LENGTH_BITS)

    def put(self, feed_id: str, stored: bytes) -> None:
        self._replace(feed_id, stored)
        self._settle()

    def put_many(self, renderings: Iterable[tuple[str, bytes]]) -> None:
        for feed_id, stored in renderings:
            self._replace(feed_id, stored)
            if self._bytes > 2 * self.hot_bytes:
                self._settle()
        self._settle()

    def drop(self, feed_id: str) -> None:
        self._replace(feed_id, None)
        self._settle()

    def empty_like(self) -> RenderedFeeds:
        """A new, empty store with the same vocabulary and spill settings."""
        return RenderedFeeds(
            self.owners, spill_above_feeds=self.spill_above_feeds, hot_bytes=self.hot_bytes,
            spill_dir=self.spill_dir, compact_from_bytes=self.compact_from_bytes,
        )  # fmt: skip

    def close(self) -> None:
        self._close_file()

    def stored_bytes(self) -> int:
        return self._bytes + self._cold_bytes

    def spilled(self) -> tuple[int, int]:
        """(feeds whose rendering is in the file, the file's size in bytes)."""
        return len(self._cold), self._file_end

    def stage(self, feed_ids: list[str], renderings: list[bytes], coming: int) -> Staged:
        """Holds renderings until their writes commit (:meth:`adopt`). When the store will
        spill (``coming`` more feeds at most), they go to its file at once, so a big import
        does not hold its documents in memory meanwhile; a rolled-back import leaves them
        there as old bytes for the next compaction."""
        if len(self) + coming <= self.spill_above_feeds or any(
            len(stored) > _LENGTH_MASK for stored in renderings
        ):
            return Staged(feed_ids, renderings=renderings)
        if self._file is None:
            self._file = self._new_file()
        start = self._file_end
        os.pwrite(self._file.fileno(), b"".join(renderings), start)
        locations = []
        for stored in renderings:
            locations.append(start << _LENGTH_BITS | len(stored))
            start += len(stored)
        self._file_end = start
        self._staged_in_file += 1
        return Staged(feed_ids, locations=locations)

    def release(self, staged: Sequence[Staged]) -> None:
        """Forgets staged renderings whose writes did not commit."""
        for part in staged:
            if part.locations is not None and not part.settled:
                self._staged_in_file -= 1
            part.settled = True

    def adopt(self, staged: Sequence[Staged], *, except_ids: Container[str] = ()) -> None:
        """Makes staged renderings current (those of ``except_ids`` are newer already)."""
        for part in staged:
            if part.settled:
                continue
            part.settled = True
            if part.renderings is not None:
                self.put_many(
                    (feed_id, stored)
                    for feed_id, stored in zip(part.feed_ids, part.renderings, strict=True)
                    if feed_id not in except_ids
                )
                continue
            assert part.locations is not None
            self._staged_in_file -= 1
            for feed_id, location in zip(part.feed_ids, part.locations, strict=True):
                if feed_id in except_ids:
                    continue
                self._replace(feed_id, None)
                self._cold[feed_id] = location
                self._cold_bytes += location & _LENGTH_MASK
        self._settle()

    def _replace(self, feed_id: str, stored: bytes | None) -> None:
        old = self._stored.pop(feed_id, None)
        if old is not None:
            self._bytes -= len(old)
        location = self._cold.pop(feed_id, None)
        if location is not None:
            self._cold_bytes -= location & _LENGTH_MASK
        if stored is not None:
            self._stored[feed_id] = stored
            self._bytes += len(stored)

    def _settle(self) -> None:
        """Spills the hot renderings to the file when the store is big, compacts the file when
        it is mostly old bytes, and publishes the metrics."""
        big = len(self) > self.spill_above_feeds
        if big and self._bytes > self.hot_bytes:
            self._spill()
        garbage = self._file_end - self._cold_bytes
        if not self._staged_in_file and garbage > max(self._cold_bytes, self.compact_from_bytes):
            self._compact()
        RENDERED_FEEDS.set(len(self))
        RENDERED_BYTES.set(self.stored_bytes())
        RENDERED_SPILLED.set(self._cold_bytes)

    def _spill(self) -> None:
        if self._file is None:
            self._file = self._new_file()
        # a document of 16 MiB or more (never seen: coverage polygons are bounded) stays hot
        huge = {key: value for key, value in self._stored.items() if len(value) > _LENGTH_MASK}
        self._append((key, value) for key, value in self._stored.items() if key not in huge)
        self._stored, self._bytes = huge, sum(len(value) for value in huge.values())

    def _append(self, renderings: Iterable[tuple[str, bytes]]) -> None:
        assert self._file is not None
        pieces: list[bytes] = []
        offset, written = self._file_end, self._file_end
        for feed_id, stored in renderings:
            self._cold[feed_id] = offset << _LENGTH_BITS | len(stored)
            self._cold_bytes += len(stored)
            offset += len(stored)
            pieces.append(stored)
            if offset - written >= WRITE_BYTES:
                os.pwrite(self._file.fileno(), b"".join(pieces), written)
                pieces, written = [], offset
        if pieces:
            os.pwrite(self._file.fileno(), b"".join(pieces), written)
        self._file_end = offset

    def _compact(self) -> None:
        """Rewrites the file with the live renderings only."""
        old, locations = self._file, self._cold
        assert old is not None
        self._file = self._new_file()
        self._cold, self._cold_bytes, self._file_end = {}, 0, 0
        descriptor = old.fileno()
        self._append(
            (feed_id, os.pread(descriptor, location & _LENGTH_MASK, location >> _LENGTH_BITS))
            for feed_id, location in locations.items()
        )
        old.close()

    def _new_file(self) -> BinaryIO:
        """An unnamed file (gone with the process, whatever happens to it)."""
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryFile(dir=self.spill_dir, prefix="feedgrid-rendered-")

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._file_end = None, 0

    def saw(self, seen: Mapping[str, datetime]) -> int:
        """Moves ``last_seen`` forward as the liveness applier's UPDATE does; returns how many
        renderings changed."""
        moved = 0
        for feed_id, moment in seen.items():
            stored = self.get(feed_id)
            if stored is None:
                continue
            later = seen_later(stored, moment)
            if later is not None:
                self._replace(feed_id, later)
                moved += 1
        self._settle()
        return moved

    # ------------------------------------------------------------------ reading

    def document(self, feed_id: str, principal: Principal) -> bytes | None:
        """One feed's document as ``principal`` may see it (None if not stored)."""
        found = self.versioned_document(feed_id, principal)
        return None if found is None else found[1]

    def versioned_document(self, feed_id: str, principal: Principal) -> tuple[int, bytes] | None:
        """The feed's version (its ETag's) and :meth:`document`; None if not stored."""
        stored = self.get(feed_id)
        if stored is None:
            return None
        version = Entry.of(stored).version
        return version, b"".join(self._visible(stored, self._viewer(principal)))

    def _viewer(self, principal: Principal) -> int | None:
        """The owner code whose URLs the principal sees; -1 for all (city admin)."""
        if principal.is_city_admin:
            return -1
        if principal.department is None:
            return None
        return self.owners.lookup(principal.department)

    @staticmethod
    def _visible(stored: bytes, viewer: int | None, end: int | None = None) -> list[memoryview]:
        """The document's bytes as ``viewer`` may see them (up to ``end``), in one or two
        pieces (without the URL: the bytes before and after it), as views of ``stored``."""
        owner, url_start, url_end = _OWNER_AND_URL.unpack_from(stored)
        view = memoryview(stored)
        if viewer == -1 or viewer == owner:
            return [view[HEADER_SIZE:end]]
        return [view[HEADER_SIZE : HEADER_SIZE + url_start], view[HEADER_SIZE + url_end : end]]

    def page(
        self,
        feed_ids: Sequence[str],
        distances: Sequence[float] | None,
        principal: Principal,
        *,
        total: int,
        next_cursor: str | None,
    ) -> bytes:
        """A page of ``GET /v1/feeds`` as JSON, byte for byte what rendering the rows would give.

        Ids without a rendering are left out (as rows missing from the database were). The
        pieces are views of the stored bytes: the final join is their only copy.
        """
        viewer = self._viewer(principal)
        stored_of = self._stored.get if not self._cold else self.get
        visible = self._visible
        items: list[bytes | memoryview] = []
        suffixes: Iterable[bytes]
        if distances:  # each document gets ``"distance_m"`` before its closing brace
            numbers = orjson.dumps([round(value, 2) for value in distances])[1:-1].split(b",")
            suffixes, end = [b',"distance_m":%s},' % number for number in numbers], -1
        else:
            suffixes, end = itertools.repeat(b","), None
        for feed_id, suffix in zip(feed_ids, suffixes, strict=False):
            stored = stored_of(feed_id)
            if stored is not None:
                items += visible(stored, viewer, end)
                items.append(suffix)
        if items:
            items[-1] = items[-1][:-1]  # no comma after the last item
        tail = b'],"total":%d,"next_cursor":%s}' % (total, orjson.dumps(next_cursor))
        return b"".join([b'{"items":[', *items, tail])


def gzip_if_accepted(body: bytes, accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
    """The body gzip-compressed (level 1: fast) when the client accepts it and it is worth it,
    with the headers to send."""
    headers = {"Vary": "Accept-Encoding"}
    if len(body) >= GZIP_FROM_BYTES and accept_encoding and "gzip" in accept_encoding.lower():
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        body = compressor.compress(body) + compressor.flush()
        headers["Content-Encoding"] = "gzip"
    return body, headers
