"""Sizes as users write them (256M, 1G, 512K, 1.5G) and as vpshost stores them (MiB)."""

from __future__ import annotations

import re

from vpshost.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_FACTOR_KIB = {"K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}


def parse_size_mb(text: str | int, what: str = "size", *, allow_zero: bool = True) -> int:
    """Parse '256M', '1G', '512K' or a bare number of MiB into whole MiB."""
    if isinstance(text, int):
        value_mb = text
    else:
        m = _SIZE.match(text)
        if not m:
            raise UsageError(f"{what} '{text}' is not a size",
                             "write a number with K, M or G, for example 256M or 1G")
        number, unit = float(m.group(1)), (m.group(2) or "M").upper()
        kib = number * _FACTOR_KIB[unit]
        value_mb = int(kib // 1024)
        if kib and value_mb == 0:
            raise UsageError(f"{what} '{text}' is smaller than 1 MiB", "use at least 1M")
    if value_mb < 0 or (value_mb == 0 and not allow_zero):
        raise UsageError(f"{what} must be more than 0", "for example 256M or 1G")
    return value_mb


def format_mb(mb: int) -> str:
    """1024 -> '1G', 1536 -> '1.5G', 256 -> '256M'."""
    if mb >= 1024:
        g = mb / 1024
        return f"{g:g}G" if g == round(g, 2) else f"{g:.2f}G"
    return f"{mb}M"
