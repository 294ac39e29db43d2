from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.gb28181 import (
    DEVICE_TYPES,
    INDUSTRIES,
    NETWORKS,
    InvalidGbCode,
    decode_gb28181,
    is_gb28181,
)


def test_a_lanzhou_ip_camera_code_decodes_into_its_parts() -> None:
    decoded = decode_gb28181("62010200041322000123")
    assert decoded.region == "62010200"
    assert (decoded.province, decoded.city, decoded.district) == ("62", "6201", "620102")
    assert decoded.industry == "04"
    assert decoded.type_code == "132"
    assert decoded.network == "2"
    assert decoded.serial == "000123"
    assert decoded.as_dict() == {
        "region": "62010200",
        "industry": "04",
        "industry_label": "traffic: road",
        "type": "132",
        "type_label": "IP camera",
        "network": "2",
        "network_label": "industry private network",
        "serial": "000123",
    }


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("6201020004132200012", "exactly 20 digits"),  # 19 digits
        ("620102000413220001234", "exactly 20 digits"),  # 21 digits
        ("6201020004132200012A", "exactly 20 digits"),
        ("62010200041322000１23", "exactly 20 digits"),  # a full-width digit is not ASCII
        (" 6201020004132200012", "exactly 20 digits"),
        ("", "exactly 20 digits"),
        ("99010200041322000123", "province"),
        ("00010200041322000123", "province"),
        ("62010200151322000123", "industry"),  # 15-39 are not assigned
        ("62010200461322000123", "industry"),
        ("62010200041402000123", "device type"),
        ("62010200049992000123", "device type"),
        ("62010200041329000123", "network"),
    ],
)
def test_codes_that_are_not_gb28181_are_refused_with_the_reason(code: str, reason: str) -> None:
    with pytest.raises(InvalidGbCode, match=reason):
        decode_gb28181(code)
    assert not is_gb28181(code)


def test_the_code_tables_follow_the_standard() -> None:
    assert sorted(INDUSTRIES) == [f"{n:02d}" for n in range(15)] + [str(n) for n in range(40, 46)]
    assert set(DEVICE_TYPES) == {
        "111", "112", "113", "118", "121", "131", "132", "134", "200", "215", "216", "300", "400",
    }  # fmt: skip
    assert sorted(NETWORKS) == [str(n) for n in range(9)]


@given(
    industry=st.sampled_from(sorted(INDUSTRIES)),
    type_code=st.sampled_from(sorted(DEVICE_TYPES)),
    network=st.sampled_from(sorted(NETWORKS)),
    district=st.integers(0, 9999),
    serial=st.integers(0, 999_999),
)
def test_every_code_built_from_the_tables_round_trips(
    industry: str, type_code: str, network: str, district: int, serial: int
) -> None:
    code = f"62{district:04d}00{industry}{type_code}{network}{serial:06d}"
    decoded = decode_gb28181(code)
    assert decoded.code == code
    assert (
        decoded.region + decoded.industry + decoded.type_code + decoded.network + decoded.serial
        == code
    )
