"""MANSCDP parsing and item classification: pure functions, no services."""

from __future__ import annotations

import pytest

from deploy.catalog_samples import NVR, PLATFORM, sample_catalog, sample_items
from deploy.catalog_samples import channel_code as code
from registry_api.catalog import manscdp
from registry_api.catalog.importer import ImportOptions, new_channel
from registry_api.catalog.items import classify_items, parent_of
from registry_api.catalog.manscdp import parse_catalog, render_catalog
from registry_api.errors import ApiError
from registry_api.feeds.documents import content_values
from schemas.feeds import FeedProperties


def test_a_gb2312_declared_body_keeps_its_gbk_characters() -> None:
    body = sample_catalog(encoding="GB2312")
    assert "喆".encode("gb18030") in body  # GBK bytes in a "GB2312" document, as devices do
    message = parse_catalog(body)
    assert (message.root, message.sn, message.device_id, message.sum_num) == (
        "Response", "17", PLATFORM, 9,
    )  # fmt: skip
    names = [item["Name"] for item in message.items]
    assert "张掖路喆美广场枪机" in names and "兰州市城市管理视频资源" in names
    assert message.items[4]["Info.PTZType"] == "1"


@pytest.mark.parametrize("encoding", ["GBK", "UTF-8"])
def test_every_supported_encoding_reads_the_same(encoding: str) -> None:
    assert (
        parse_catalog(sample_catalog(encoding=encoding)).items
        == parse_catalog(sample_catalog()).items
    )


@pytest.mark.parametrize(
    ("body", "code_"),
    [
        (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "b">]><Response/>', "xml_forbidden"),
        (b'<!DOCTYPE r SYSTEM "http://example.org/r.dtd"><Response/>', "xml_forbidden"),
        (b"<Response><CmdType>Catalog</CmdType>", "invalid_xml"),
        (b'<?xml version="1.0" encoding="latin-9"?><Response/>', "unsupported_encoding"),
        ('<?xml version="1.0" encoding="UTF-8"?><R>兰</R>'.encode("gbk"), "wrong_encoding"),
        (b"<Notify><CmdType>Keepalive</CmdType></Notify>", "not_a_catalog"),
    ],
)
def test_hostile_or_broken_bodies_are_refused_with_a_reason(body: bytes, code_: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_catalog(body)
    assert refused.value.code == code_ and 400 <= refused.value.status_code < 500


def test_a_body_longer_than_a_piece_reads_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies are decoded and parsed a piece at a time: characters cut by a piece's end,
    in either encoding, read whole, and a bad byte is placed in the whole body."""
    whole = parse_catalog(sample_catalog(encoding="GB2312"))
    monkeypatch.setattr(manscdp, "PIECE_BYTES", 7)  # odd: two-byte characters are cut
    for encoding in ("GB2312", "UTF-8"):
        assert parse_catalog(sample_catalog(encoding=encoding)) == whole
    body = '<?xml version="1.0" encoding="GBK"?><Response>兰州兰州</Response>'.encode("gbk")
    bad = body.index("州".encode("gbk")) + 1  # the second byte of a character
    body = body[:bad] + b"\xff" + body[bad + 1 :]
    with pytest.raises(ApiError) as refused:
        parse_catalog(body)
    declaration = body.index(b"?>") + 2
    assert f"(byte {bad - 1 - declaration})" in refused.value.message


def test_items_are_sorted_by_their_type_digits() -> None:
    items = [
        *sample_items(),
        {"DeviceID": "62010200081342000001", "Name": "alarm input"},  # 134: not a feed
        {"DeviceID": code(9), "Name": "no place", "Longitude": "0", "Latitude": "0"},
        {"DeviceID": code(10), "Name": "half a place", "Longitude": "103.8"},
        {"DeviceID": "1234", "Name": "not a code"},
        {"DeviceID": code(11), "Name": "x", "Status": "MAYBE"},
    ]
    accepted, rejected, skipped = classify_items(items, platform_id=PLATFORM, notify=False)
    kinds = {item.device_id: item.kind for item in accepted}
    assert kinds[NVR] == "device" and kinds[code(1)] == "channel"
    assert sorted(set(kinds.values())) == [
        "business_group", "channel", "device", "virtual_organisation",
    ]  # fmt: skip
    unplaced = next(item for item in accepted if item.device_id == code(9))
    assert (unplaced.lon, unplaced.lat) == (None, None)
    assert [problem.device_id for problem in skipped] == ["62010200081342000001"]
    assert {problem.device_id for problem in rejected} == {code(10), "1234", code(11)}
    notify, refused, _ = classify_items([{"DeviceID": code(1)}], platform_id=PLATFORM, notify=True)
    assert not notify and refused[0].message == "a Notify item needs an Event"


def test_an_item_hangs_from_the_last_id_of_its_parent_path() -> None:
    assert parent_of({"ParentID": f"{NVR}/62010200082162000002"}, kind="channel",
                     platform_id=PLATFORM) == "62010200082162000002"  # fmt: skip
    assert parent_of({}, kind="channel", platform_id=PLATFORM) == PLATFORM
    group = "62010000082152000001"
    assert parent_of({"BusinessGroupID": group}, kind="virtual_organisation",
                     platform_id=PLATFORM) == group  # fmt: skip
    assert parent_of({"DeviceID": PLATFORM}, kind="platform", platform_id=PLATFORM) is None


@pytest.mark.parametrize("secret", [False, True])
def test_a_new_channel_is_what_full_validation_would_make(secret: bool) -> None:
    raw = {"DeviceID": code(1), "Name": "中山桥南端球机", "Secrecy": "1" if secret else "0"}
    (item,), _, _ = classify_items([raw], platform_id=PLATFORM, notify=False)
    built = new_channel(item, department="lz-cmb", platform_id=PLATFORM, options=ImportOptions())
    checked = FeedProperties.model_validate(built.model_dump(by_alias=True))
    assert content_values(built, None) == content_values(checked, None)
    assert checked.sharing.sharing_class == ("not_shared" if secret else "unconditional")


def test_the_shared_catalog_renders_as_it_parses() -> None:
    items = [{"DeviceID": code(1), "Name": "a & <b>", "Status": "ON", "Info.PTZType": "3"}]
    body = render_catalog(sn="5", device_id=PLATFORM, sum_num=3, items=items)
    assert parse_catalog(body).items == [
        {"DeviceID": code(1), "Name": "a & <b>", "Status": "ON", "Info.PTZType": "3"}
    ]


def test_an_unplaced_feed_is_in_no_spatial_answer_but_in_every_other() -> None:
    from registry_api.feeds.index.columns import Columns
    from registry_api.feeds.index.queries import IndexQuery
    from registry_api.feeds.index.records import FeedRecord, Vocabulary
    from registry_api.feeds.index.snapshot import Snapshot

    def record(feed_id: str, lon: float | None, lat: float | None) -> FeedRecord:
        row = {
            "id": feed_id, "revision": 1, "owner": "lz-cmb", "kind": "camera",
            "gb_industry": "08", "gb_type": "132", "gb_region": "62010200",
            "sharing_class": "unconditional", "status": "unknown", "retired_at": None,
            "tags": [], "name": feed_id, "lon": lon, "lat": lat, "fov_heading": 90.0,
            "fov_angle": 60.0, "fov_range_m": 50.0, "coverage": None,
        }  # fmt: skip
        return FeedRecord.from_row(row)

    owners, tags = Vocabulary(), Vocabulary()
    records = [record("A" * 24, 103.83, 36.06), record("B" * 24, None, None)]
    snapshot = Snapshot(Columns.from_records(records, owners, tags))

    def ids(query: IndexQuery) -> set[str]:
        rows = snapshot.match(query, vocabularies=(owners, tags)).rows
        return {value.decode() for value in snapshot.columns.ids[rows]}

    assert ids(IndexQuery(owner="lz-cmb")) == {"A" * 24, "B" * 24}
    assert ids(IndexQuery(bbox=(-180.0, -90.0, 180.0, 90.0))) == {"A" * 24}
    assert ids(IndexQuery(near=(103.83, 36.06, 20_000.0))) == {"A" * 24}
    assert ids(IndexQuery(sees=(103.8303, 36.06))) == {"A" * 24}
    assert ids(IndexQuery(placed=False)) == {"B" * 24}
    assert ids(IndexQuery(feed_ids=("B" * 24,))) == {"B" * 24}


def test_written_chunks_are_let_go_of_as_they_are_handed_out() -> None:
    """The catalog writer's chunks leave their list as each is written (freed then, not all
    together when the writer returns), in order."""
    from registry_api.catalog.writes import _handed_out

    chunks = [[1, 2], [3], [4, 5]]
    seen = []
    for chunk in _handed_out(chunks):
        seen.append((chunk, len(chunks)))
    assert seen == [([1, 2], 2), ([3], 1), ([4, 5], 0)]
