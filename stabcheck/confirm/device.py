"""The device the confirm stage ran on, and the memory limit it must respect.

`device_info()` imports JAX and runs in the worker; `parse_memory_limit` does not.
"""

from __future__ import annotations

import os
from typing import Any

from stabcheck._sizes import UNITS, split_size



def total_memory() -> int:
    """Physical memory of this machine in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def parse_memory_limit(text: str | int | float | None) -> int | None:
    """'4GiB' -> bytes; '0.5' -> half of physical memory; '' or None -> None (no limit).

    Raises ValueError with the allowed forms on anything else.
    """
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        text = str(text)
    parts = split_size(text)
    if parts is None:
        raise ValueError(f"invalid memory limit {text!r}; expected a size such as '4GiB', '512MB' or a fraction of RAM such as '0.5'")
    value, unit = parts
    if not unit and value <= 1.0:
        return int(value * total_memory()) or None
    return int(value * UNITS[unit])


def default_memory_limit() -> int:
    """Half of physical memory: what a transform may use when no limit is given."""
    return total_memory() // 2 or (4 << 30)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def device_info() -> dict[str, Any]:
    """Platform, device kind and JAX version of the default device (imports JAX)."""
    # JAX: imported when this runs, never on import
    import jax

    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "jax": jax.__version__, "count": jax.device_count()}
