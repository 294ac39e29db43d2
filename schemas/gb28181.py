"""GB/T 28181 device and channel codes: 20 digits, validated and decoded into their parts.

Layout (GB/T 28181-2016, appendix D)::

    digits  1-8   administrative region (GB/T 2260 province, city, district + basic unit)
    digits  9-10  industry
    digits 11-13  device / user type
    digit   14    network
    digits 15-20  serial number

Only codes whose industry, type and network digits appear in the tables below are accepted;
the region must start with a GB/T 2260 province code. Pure functions, no I/O: the schemas,
the services and the stream agents share them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

CODE_LENGTH = 20

# GB/T 2260 first two digits (provinces, autonomous regions, municipalities, SARs, Taiwan).
PROVINCE_CODES: frozenset[str] = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 "
    "50 51 52 53 54 61 62 63 64 65 71 81 82".split()
)

INDUSTRIES: dict[str, str] = {
    "00": "public security: public-area road",
    "01": "public security: community",
    "02": "public security: internal",
    "03": "public security: other",
    "04": "traffic: road",
    "05": "traffic: checkpoint / e-police",
    "06": "traffic: internal",
    "07": "traffic: other",
    "08": "urban management",
    "09": "health and environmental protection",
    "10": "customs",
    "11": "education",
    "12": "civil aviation",
    "13": "railway",
    "14": "shipping",
    **{str(code): "economic sector" for code in range(40, 46)},
}

DEVICE_TYPES: dict[str, str] = {
    "111": "DVR",
    "112": "video server",
    "113": "encoder",
    "118": "NVR",
    "121": "checkpoint",
    "131": "camera",
    "132": "IP camera",
    "134": "alarm input",
    "200": "central signalling server",
    "215": "business group",
    "216": "virtual organisation",
    "300": "centre user",
    "400": "terminal user",
}

NETWORKS: dict[str, str] = {
    "0": "public-security video network",
    "1": "public-security video network",
    "2": "industry private network",
    "3": "political-legal network",
    "4": "police mobile network",
    "5": "public-security information network",
    "6": "e-government extranet",
    "7": "Internet",
    "8": "leased line",
}


class InvalidGbCode(ValueError):
    """The text is not a valid GB/T 28181 code; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class GbCode:
    """A decoded GB/T 28181 code."""

    code: str

    @property
    def region(self) -> str:
        return self.code[:8]

    @property
    def province(self) -> str:
        return self.code[:2]

    @property
    def city(self) -> str:
        return self.code[:4]

    @property
    def district(self) -> str:
        return self.code[:6]

    @property
    def industry(self) -> str:
        return self.code[8:10]

    @property
    def type_code(self) -> str:
        return self.code[10:13]

    @property
    def network(self) -> str:
        return self.code[13]

    @property
    def serial(self) -> str:
        return self.code[14:]

    def as_dict(self) -> dict[str, str]:
        return {
            "region": self.region,
            "industry": self.industry,
            "industry_label": INDUSTRIES[self.industry],
            "type": self.type_code,
            "type_label": DEVICE_TYPES[self.type_code],
            "network": self.network,
            "network_label": NETWORKS[self.network],
            "serial": self.serial,
        }


@functools.lru_cache(maxsize=4096)  # a bulk import decodes each code twice in a row
def decode_gb28181(code: str) -> GbCode:
    """Validates and decodes ``code``; raises :class:`InvalidGbCode` with the reason."""
    if (
        not isinstance(code, str)
        or len(code) != CODE_LENGTH
        or not code.isascii()
        or not code.isdigit()
    ):
        raise InvalidGbCode(f"a GB/T 28181 code is exactly {CODE_LENGTH} digits, got {code!r}")
    decoded = GbCode(code)
    if decoded.province not in PROVINCE_CODES:
        raise InvalidGbCode(f"digits 1-2 ({decoded.province}) are not a GB/T 2260 province code")
    if decoded.industry not in INDUSTRIES:
        raise InvalidGbCode(f"digits 9-10 ({decoded.industry}) are not a known industry code")
    if decoded.type_code not in DEVICE_TYPES:
        raise InvalidGbCode(f"digits 11-13 ({decoded.type_code}) are not a known device type")
    if decoded.network not in NETWORKS:
        raise InvalidGbCode(f"digit 14 ({decoded.network}) is not a known network code")
    return decoded


def is_gb28181(code: str) -> bool:
    try:
        decode_gb28181(code)
    except InvalidGbCode:
        return False
    return True
