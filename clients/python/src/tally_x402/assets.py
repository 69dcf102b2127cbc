"""Asset scales and exact money arithmetic.

A Tally asset is registered with a *scale*: the decimal places between its
display unit and its smallest unit (``USD`` at scale 6 counts micro-dollars).
Conversions here are integer and decimal-string arithmetic only: a price that
does not fit the scale exactly is refused, never rounded, and no float is
ever involved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .iou import U64_MAX, check_asset

__all__ = ["DEFAULT_ASSET_SCALES", "AssetScales", "parse_money", "to_smallest_units"]

DEFAULT_ASSET_SCALES: Mapping[str, int] = {"USD": 6}
"""What an asset code means when nobody says otherwise: USD in micro-dollars."""

_DECIMAL_RE = re.compile(r"(\d+)(?:\.(\d+))?")
_MONEY_RE = re.compile(r"\s*(\$)?\s*(\d+(?:\.\d+)?)(?:\s+([A-Za-z][A-Za-z0-9]{0,11}))?\s*")


def to_smallest_units(decimal: str, scale: int) -> int:
    """``"0.0001"`` at scale 6 -> ``100``. Exact: more precision than the scale is an error."""
    if not 0 <= scale <= 38:
        raise ValueError(f"scale must be 0..=38, got {scale}")
    match = _DECIMAL_RE.fullmatch(decimal)
    if match is None:
        raise ValueError(f"not a plain decimal amount: {decimal!r}")
    whole, fraction = match.group(1), match.group(2) or ""
    significant = fraction.rstrip("0")
    if len(significant) > scale:
        raise ValueError(
            f"{decimal} has more decimal places than the asset's scale ({scale}); "
            "Tally never rounds a price"
        )
    units: int = int(whole) * int(10**scale) + int(significant.ljust(scale, "0") or "0")
    if units > U64_MAX:
        raise ValueError(f"{decimal} is more than a u64 of smallest units")
    return units


def parse_money(money: str) -> tuple[str, str | None]:
    """``"$0.01"`` -> ``("0.01", None)``; ``"1.50 EUR"`` -> ``("1.50", "EUR")``.

    Returns the decimal string and the asset code named after it, if any.
    """
    match = _MONEY_RE.fullmatch(money)
    if match is None:
        raise ValueError(f"not a price: {money!r} (write it like '$0.01' or '0.01 EUR')")
    code = match.group(3)
    return match.group(2), (code.upper() if code else None)


class AssetScales:
    """Asset code -> scale, for turning display prices into smallest units and back.

    These mirror what the deployment registered (``tally asset register USD --scale 6``).
    """

    __slots__ = ("_scales",)

    def __init__(self, scales: Mapping[str, int] | None = None) -> None:
        self._scales: dict[str, int] = {}
        for code, scale in (DEFAULT_ASSET_SCALES if scales is None else scales).items():
            self.set(code, scale)

    def set(self, code: str, scale: int) -> None:
        check_asset(code)
        if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= 38:
            raise ValueError(f"scale of {code} must be an integer 0..=38, got {scale!r}")
        self._scales[code] = scale

    def scale(self, code: str) -> int | None:
        return self._scales.get(code)

    def __contains__(self, code: object) -> bool:
        return code in self._scales

    def codes(self) -> list[str]:
        return sorted(self._scales)

    def to_units(self, decimal: str, code: str) -> int:
        scale = self._scales.get(code)
        if scale is None:
            raise ValueError(f"asset {code!r} has no known scale; register it with AssetScales")
        return to_smallest_units(decimal, scale)

    def display(self, units: int, code: str) -> str:
        """``100`` USD -> ``"0.000100"``."""
        scale = self._scales.get(code)
        if scale is None:
            raise ValueError(f"asset {code!r} has no known scale")
        if scale == 0:
            return str(units)
        text = str(units).rjust(scale + 1, "0")
        return f"{text[:-scale]}.{text[-scale:]}"

    @classmethod
    def coerce(cls, value: AssetScales | Mapping[str, int] | None) -> AssetScales:
        return value if isinstance(value, AssetScales) else cls(value)
