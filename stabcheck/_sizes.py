"""Sizes in bytes as users write them: `5242880`, `'5MiB'`, `'500 KB'`, `'2gb'`, `'4G'`.

One parser for every size stabcheck reads (`max-file-size`, `memory-limit`, `types-memory-limit`):
`KiB/MiB/GiB/TiB` and the single letters `K/M/G/T` are binary (1024), `KB/MB/GB/TB` decimal.
"""

from __future__ import annotations

import math
import re
from typing import Any

UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 1000,
    "m": 1 << 20, "mib": 1 << 20, "mb": 1000**2,
    "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
    "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: Any) -> int | None:
    """Bytes from an int, a float or a string with a unit; None when it is not a positive finite size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 1 else None
    if not isinstance(value, str):
        return None
    m = _SIZE.fullmatch(value)
    if m is None or m.group(2).lower() not in UNITS:
        return None
    size = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    return size if size > 0 else None


def split_size(value: str) -> tuple[float, str] | None:
    """`'0.5'` -> (0.5, ''), `'4GiB'` -> (4.0, 'gib'): the number and the (known) unit, or None."""
    m = _SIZE.fullmatch(value)
    if m is None or m.group(2).lower() not in UNITS:
        return None
    return float(m.group(1)), m.group(2).lower()
