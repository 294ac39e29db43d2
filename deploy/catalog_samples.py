"""Catalogs as a department's GB/T 28181 platform would send them: the README's sample (a
small urban-management platform of Lanzhou with its tree, an NVR and Chinese names) and
synthetic catalogs of any size for benchmarks and tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from registry_api.catalog.manscdp import render_catalog

PLATFORM = "62010000082002000001"  # Lanzhou urban management, type 200 (the platform)
BUSINESS_GROUP = "62010000082152000001"
DISTRICT = "62010200082162000001"  # Chengguan district (virtual organisation)
BRIDGE_AREA = "62010200082162000002"  # Zhongshan bridge area, inside the district
NVR = "62010200081182000001"


def channel_code(serial: int, region: str = "62010200", industry: str = "08") -> str:
    return f"{region}{industry}1327{serial:06d}"  # network 7: not among the demo city's


def sample_items() -> list[dict[str, str]]:
    """The sample platform's tree, device and channels (one without coordinates, one
    classified, one named with characters outside GB2312)."""
    channel = {
        "Manufacturer": "Hikvision",
        "Model": "DS-2DE4425IW",
        "Owner": "兰州市城市管理局",
        "CivilCode": "620102",
        "Parental": "0",
        "SafetyWay": "0",
        "RegisterWay": "1",
        "Secrecy": "0",
        "Info.PTZType": "1",
    }
    return [
        {"DeviceID": BUSINESS_GROUP, "Name": "兰州市城市管理视频资源"},
        {"DeviceID": DISTRICT, "Name": "城关区", "BusinessGroupID": BUSINESS_GROUP},
        {
            "DeviceID": BRIDGE_AREA,
            "Name": "中山桥片区",
            "BusinessGroupID": BUSINESS_GROUP,
            "ParentID": DISTRICT,
        },
        {
            "DeviceID": NVR,
            "Name": "城关区执法大队NVR",
            "Manufacturer": "Hikvision",
            "Model": "DS-9632NX-I8",
            "Owner": "兰州市城市管理局",
            "CivilCode": "620102",
            "Address": "兰州市城关区张掖路街道",
            "Parental": "1",
            "ParentID": PLATFORM,
            "Status": "ON",
        },
        {
            **channel,
            "DeviceID": channel_code(1),
            "Name": "中山桥南端球机",
            "Address": "兰州市城关区滨河路中山桥南",
            "ParentID": f"{NVR}/{BRIDGE_AREA}",
            "Status": "ON",
            "Longitude": "103.834300",
            "Latitude": "36.061100",
        },
        {
            **channel,
            "DeviceID": channel_code(2),
            "Name": "白塔山公园入口枪机",
            "Address": "兰州市城关区北滨河路白塔山公园",
            "ParentID": f"{NVR}/{BRIDGE_AREA}",
            "Status": "OFF",
            "Longitude": "103.831900",
            "Latitude": "36.065800",
        },
        {
            **channel,
            "DeviceID": channel_code(3),
            "Name": "张掖路喆美广场枪机",  # 喆 is GBK, not GB2312: devices write it anyway
            "Address": "兰州市城关区张掖路步行街",
            "ParentID": f"{NVR}/{DISTRICT}",
            "Status": "ON",
            "Longitude": "103.826500",
            "Latitude": "36.058300",
        },
        {
            **channel,
            "DeviceID": channel_code(4),
            "Name": "庆阳路地下通道半球",  # the platform knows no position: an unplaced feed
            "Address": "兰州市城关区庆阳路",
            "ParentID": f"{NVR}/{DISTRICT}",
            "Status": "ON",
        },
        {
            **channel,
            "DeviceID": channel_code(5),
            "Name": "市政府东门球机",
            "Address": "兰州市城关区南昌路",
            "ParentID": f"{NVR}/{DISTRICT}",
            "Secrecy": "1",  # classified: not shared unless the department says otherwise
            "Status": "ON",
            "Longitude": "103.840100",
            "Latitude": "36.057200",
        },
    ]


def sample_catalog(encoding: str = "GB2312", sn: str = "17") -> bytes:
    items = sample_items()
    return render_catalog(
        sn=sn, device_id=PLATFORM, sum_num=len(items), items=items, encoding=encoding
    )


def synthetic_items(channels: int, *, per_device: int = 64) -> Iterator[dict[str, str]]:
    """A platform's catalog of ``channels`` cameras: one business group, an NVR per
    ``per_device`` channels, Chinese names, every tenth channel without coordinates."""
    yield {"DeviceID": BUSINESS_GROUP, "Name": "兰州市视频资源"}
    for serial in range(channels):
        if serial % per_device == 0:
            yield {
                "DeviceID": f"6201020008118{2}{serial // per_device + 100_000:06d}",
                "Name": f"第{serial // per_device + 1}号硬盘录像机",
                "Manufacturer": "Dahua",
                "Parental": "1",
                "ParentID": PLATFORM,
            }
        nvr = f"6201020008118{2}{serial // per_device + 100_000:06d}"
        item = {
            "DeviceID": channel_code(serial + 100_000),
            "Name": f"兰州市城关区{serial}号摄像机",
            "Manufacturer": "Dahua",
            "Model": "IPC-HFW",
            "Owner": "兰州市",
            "CivilCode": "620102",
            "Address": "兰州市城关区",
            "Parental": "0",
            "ParentID": nvr,
            "Secrecy": "0",
            "Status": "ON" if serial % 5 else "OFF",
        }
        if serial % 10:
            item["Longitude"] = f"{103.60 + (serial % 997) * 0.0005:.6f}"
            item["Latitude"] = f"{35.95 + (serial // 997) * 0.0005:.6f}"
        yield item


def synthetic_catalog(channels: int, *, sn: str = "1", encoding: str = "GB2312") -> bytes:
    """One Response message holding the whole synthetic catalog."""
    items = list(synthetic_items(channels))
    return render_catalog(
        sn=sn, device_id=PLATFORM, sum_num=len(items), items=items, encoding=encoding
    )


# The districts and counties of Lanzhou (GB/T 2260 codes) the demo city's cameras stand in.
LANZHOU_DISTRICTS = {
    "620102": "城关区 Chengguan District",
    "620103": "七里河区 Qilihe District",
    "620104": "西固区 Xigu District",
    "620105": "安宁区 Anning District",
    "620111": "红古区 Honggu District",
    "620121": "永登县 Yongdeng County",
    "620122": "皋兰县 Gaolan County",
    "620123": "榆中县 Yuzhong County",
}
DEMO_PLATFORMS = {  # department -> (industry digits of its platform, its business group)
    "lz-cmb": ("08", "兰州市城市管理视频资源 Lanzhou urban management video"),
    "lz-tb": ("04", "兰州市交通视频资源 Lanzhou transport video"),
}


def demo_city_catalogs(feeds_ndjson: Path) -> dict[str, tuple[str, bytes | None]]:
    """The catalogs the ``DEMO_PLATFORMS`` answer for the demo city's cameras (the city's
    file read once): platform > business group > one virtual organisation per district > its
    channels, with the names and positions the registry already holds (so the import writes
    the tree and leaves the feeds as they are). Per department: the platform's id and the
    Response message (None when the department has no such camera in the city)."""
    channels: dict[str, list[dict[str, str]]] = {department: [] for department in DEMO_PLATFORMS}
    districts: dict[str, set[str]] = {department: set() for department in DEMO_PLATFORMS}
    with feeds_ndjson.open("rb") as lines:
        for line in lines:
            feature = orjson.loads(line)
            properties = feature["properties"]
            department = properties["owner"]
            code = str(properties.get("code") or "")
            if department not in channels or len(code) != 20 or not code.isdigit():
                continue
            if code[10:13] not in ("131", "132", "121") or code[:6] not in LANZHOU_DISTRICTS:
                continue
            industry = DEMO_PLATFORMS[department][0]
            districts[department].add(code[:6])
            item = {
                "DeviceID": code,
                "Name": properties["name"],
                "Owner": department,
                "CivilCode": code[:6],
                "Parental": "0",
                "ParentID": f"{code[:6]}00{industry}2160000001",
                "BusinessGroupID": f"62010000{industry}2150000001",
                "Secrecy": "0",
            }  # no Status: the demo's gateways tell liveness (a Status would be a report)
            geometry = feature.get("geometry")
            if geometry:
                longitude, latitude = geometry["coordinates"][:2]
                item["Longitude"], item["Latitude"] = repr(longitude), repr(latitude)
            channels[department].append(item)
    catalogs: dict[str, tuple[str, bytes | None]] = {}
    for department, (industry, title) in DEMO_PLATFORMS.items():
        platform = f"62010000{industry}2000000001"
        group = f"62010000{industry}2150000001"
        if not channels[department]:
            catalogs[department] = (platform, None)
            continue
        items = [{"DeviceID": group, "Name": title}]
        items += [
            {
                "DeviceID": f"{civil}00{industry}2160000001",
                "Name": LANZHOU_DISTRICTS[civil],
                "BusinessGroupID": group,
            }
            for civil in sorted(districts[department])
        ]
        items += channels[department]
        body = render_catalog(sn="1", device_id=platform, sum_num=len(items), items=items)
        catalogs[department] = (platform, body)
    return catalogs
