"""Sizes and rates as people write them: parsed from options, shown in summaries."""

from __future__ import annotations

import re

from fitsync.errors import UsageError

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str, option: str = "size") -> int:
    """``100``, ``100k``, ``1.5G``, ``2GiB`` (powers of 1024), ``10MB`` (powers
    of 1000), as rsync reads them."""
    match = _SIZE.match(str(text))
    if match is None:
        raise UsageError(f"{option}={text}: give a size such as 500k, 1.5G or 2GiB")
    number, unit, suffix = match.groups()
    power = "kmgtp".find(unit.lower()) + 1 if unit else 0
    base = 1000 if suffix.lower() == "b" and unit else 1024
    return int(float(number) * base ** power)


def human_bytes(n: float) -> str:
    """1023 B, 1.0 KiB, 96.6 KiB, 1.2 GiB (binary units, as rsync -h and ls -h)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def human_rate(n: float, seconds: float) -> str:
    return f"{human_bytes(n / seconds)}/s" if seconds > 0 else "-"
