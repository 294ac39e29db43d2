"""MANSCDP Catalog documents (GB/T 28181-2016 annex A): bytes in, checked messages out, and
the shared catalog written back as bytes.

Parsing is hardened: the body is decoded here in the encoding its declaration names (expat
knows no multi-byte Chinese encodings), then parsed by defusedxml with DTDs refused, so entity
expansion ("billion laughs") and external entities never run. GB2312- and GBK-declared bodies
are decoded as GB18030, a superset of both: devices routinely put GBK-only characters (for
example 瑄 or 镕 in place names) into documents they declare GB2312, and refusing those would
refuse most real catalogs, while a byte sequence valid in GB2312 means the same in GB18030.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError, TreeBuilder
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree

from registry_api.errors import ApiError, Unprocessable
from schemas.gb28181 import InvalidGbCode, decode_gb28181

MEDIA_TYPE = "application/manscdp+xml"
MAX_BODY_BYTES = 64 * 1024 * 1024
# A body is decoded and parsed a piece at a time, each piece one call into C: one call for
# the whole of a 50,000-channel catalog (20 MB) held the GIL, and so the event loop, ~80 ms.
PIECE_BYTES = 1024 * 1024
MAX_ITEMS = 250_000
MAX_VALUE_CHARS = 1_000
# Declared encoding (upper case) -> the codec that reads it.
ENCODINGS: dict[str, str] = {
    "GB2312": "gb18030",
    "GBK": "gb18030",
    "GB18030": "gb18030",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
}
# The encodings the shared catalog can be written in (GB2312 as GB18030 bytes: see above).
OUTPUT_ENCODINGS: dict[str, str] = {"GB2312": "gb18030", "GBK": "gb18030", "UTF-8": "utf-8"}
ROOTS = ("Response", "Notify")
EVENTS = ("ON", "OFF", "VLOST", "DEFECT", "ADD", "DEL", "UPDATE")
SN_PATTERN = re.compile(r"[0-9]{1,10}")
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?\?>", re.DOTALL)
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["']""")
# Item fields kept (the password a device may carry is dropped on purpose).
ITEM_FIELDS = (
    "DeviceID", "Name", "Manufacturer", "Model", "Owner", "CivilCode", "Block", "Address",
    "Parental", "ParentID", "BusinessGroupID", "SafetyWay", "RegisterWay", "CertNum",
    "Certifiable", "ErrCode", "EndTime", "Secrecy", "IPAddress", "Port", "Status",
    "Longitude", "Latitude", "Event",
)  # fmt: skip
INFO_FIELDS = ("PTZType", "PositionType", "RoomType", "UseType", "SupplyLightType", "Resolution")


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"


@dataclass
class CatalogMessage:
    """One checked Response or Notify of CmdType Catalog; items are raw field texts."""

    root: str  # Response | Notify
    sn: str
    device_id: str  # the platform or device that answers
    sum_num: int | None
    items: list[dict[str, str]] = field(default_factory=list)


def require_media_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in (MEDIA_TYPE, "application/xml", "text/xml"):
        raise UnsupportedMediaType(
            f"send the catalog as Content-Type: Application/MANSCDP+xml, not {content_type!r}"
        )


def decode_body(body: bytes) -> bytes:
    """The document as UTF-8 bytes without its declaration, decoded by the declared encoding."""
    if not body.strip():
        raise Unprocessable("the body is empty", code="empty_catalog")
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(
            f"a catalog body is at most {MAX_BODY_BYTES} bytes",
            status_code=413,
            code="catalog_too_large",
        )
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    declared = "UTF-8"
    match = _DECLARATION.match(body)
    if match is not None:
        found = _ENCODING.search(match.group(0))
        if found is not None:
            declared = found.group(1).decode().upper()
        body = body[match.end() :]
    codec = ENCODINGS.get(declared)
    if codec is None:
        raise Unprocessable(
            f"encoding {declared!r} is not supported: use GB2312, GBK, GB18030 or UTF-8",
            code="unsupported_encoding",
        )
    decoder = codecs.getincrementaldecoder(codec)()
    utf8 = []
    try:
        for start in range(0, len(body), PIECE_BYTES):
            last = start + PIECE_BYTES >= len(body)
            utf8.append(decoder.decode(body[start : start + PIECE_BYTES], last).encode("utf-8"))
    except UnicodeDecodeError:
        try:  # where, in the whole body (the error above tells it within a piece)
            body.decode(codec)
            at = None
        except UnicodeDecodeError as error:
            at = error.start
        raise Unprocessable(
            f"the body is not valid {declared} (byte {at}): is the declared "
            "encoding the one the platform wrote?",
            code="wrong_encoding",
        ) from None
    return b"".join(utf8)


def parse_catalog(body: bytes) -> CatalogMessage:
    """Checks and reads a MANSCDP Catalog Response or Notify; 4xx with the reason otherwise."""
    document = decode_body(body)
    try:
        parser = defusedxml.ElementTree.DefusedXMLParser(
            target=TreeBuilder(), forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        for start in range(0, len(document), PIECE_BYTES):
            parser.feed(document[start : start + PIECE_BYTES])
        root = parser.close()
    except defusedxml.DefusedXmlException as error:
        raise Unprocessable(
            "DTDs, entity declarations and external references are refused "
            f"({type(error).__name__})",
            code="xml_forbidden",
        ) from None
    except ParseError as error:
        raise Unprocessable(
            f"the body is not well-formed XML: {error}", code="invalid_xml"
        ) from None
    if root.tag not in ROOTS:
        raise Unprocessable(
            f"expected a <Response> or <Notify> of CmdType Catalog, got <{root.tag}>",
            code="not_a_catalog",
        )
    if _text(root, "CmdType") != "Catalog":
        raise Unprocessable("CmdType must be Catalog", code="not_a_catalog")
    sn = _text(root, "SN")
    if not SN_PATTERN.fullmatch(sn):
        raise Unprocessable("SN must be 1 to 10 digits", code="invalid_sn")
    device_id = _text(root, "DeviceID")
    try:
        decode_gb28181(device_id)
    except InvalidGbCode as error:
        raise Unprocessable(f"DeviceID: {error}", code="invalid_device_id") from None
    sum_num = _sum_num(root)
    items = _items(root)
    if root.tag == "Response" and sum_num is None:
        raise Unprocessable("a catalog Response needs SumNum", code="invalid_sum_num")
    if sum_num is not None and len(items) > sum_num:
        raise Unprocessable(
            f"{len(items)} items in a message of an answer of SumNum {sum_num}",
            code="invalid_sum_num",
        )
    return CatalogMessage(root.tag, sn, device_id, sum_num, items)


def _text(element: Element, name: str) -> str:
    child = element.find(name)
    return (child.text or "").strip() if child is not None else ""


def _sum_num(root: Element) -> int | None:
    text = _text(root, "SumNum")
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ITEMS:
        raise Unprocessable(f"SumNum must be a number of 0..{MAX_ITEMS}", code="invalid_sum_num")
    return int(text)


def _items(root: Element) -> list[dict[str, str]]:
    device_list = root.find("DeviceList")
    if device_list is None:
        return []
    found = device_list.findall("Item")
    declared = device_list.get("Num")
    if declared is not None and declared.strip() != str(len(found)):
        raise Unprocessable(
            f"DeviceList Num={declared!r} but {len(found)} items: a truncated message?",
            code="num_mismatch",
        )
    if len(found) > MAX_ITEMS:
        raise Unprocessable(f"at most {MAX_ITEMS} items in one message", code="too_many_items")
    items = []
    for element in found:
        item: dict[str, str] = {}
        for child in element:
            if child.tag in ITEM_FIELDS:
                item[child.tag] = (child.text or "").strip()
            elif child.tag == "Info":
                for detail in child:
                    if detail.tag in INFO_FIELDS:
                        item[f"Info.{detail.tag}"] = (detail.text or "").strip()
        items.append(item)
    return items


# ---------------------------------------------------------------------------- writing


def render_catalog(
    *,
    sn: str,
    device_id: str,
    sum_num: int,
    items: Iterable[Mapping[str, str]],
    encoding: str = "GB2312",
    root: str = "Response",
) -> bytes:
    """A catalog Response (or Notify) as a platform sends it: the items in field order, Info
    nested."""
    codec = OUTPUT_ENCODINGS[encoding]
    rows = list(items)
    parts = [
        f'<?xml version="1.0" encoding="{encoding}"?>\n<{root}>\n<CmdType>Catalog</CmdType>\n',
        f"<SN>{escape(sn)}</SN>\n<DeviceID>{escape(device_id)}</DeviceID>\n",
        f'<SumNum>{sum_num}</SumNum>\n<DeviceList Num="{len(rows)}">\n',
    ]
    for item in rows:
        parts.append("<Item>\n")
        for name in ITEM_FIELDS:
            value = item.get(name)
            if value is not None and value != "":
                parts.append(f"<{name}>{escape(value)}</{name}>\n")
        info = [(name, item.get(f"Info.{name}")) for name in INFO_FIELDS]
        if any(value for _, value in info):
            parts.append("<Info>\n")
            parts += [f"<{name}>{escape(value)}</{name}>\n" for name, value in info if value]
            parts.append("</Info>\n")
        parts.append("</Item>\n")
    parts.append(f"</DeviceList>\n</{root}>\n")
    return "".join(parts).encode(codec)
