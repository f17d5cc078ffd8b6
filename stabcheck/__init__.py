"""stabcheck: a type-stability linter and diagnostics tool for JAX.

The public surface. Importing stabcheck imports neither JAX nor libcst; the runtime and entry
helpers load JAX only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from stabcheck.api import __version__ as __version__
from stabcheck.api import check_paths as check_paths
from stabcheck.api import check_source as check_source
from stabcheck.config import Config as Config
from stabcheck.finding import Finding as Finding

_LAZY = {
    "Entry": "stabcheck.traced.entries",
    "entry": "stabcheck.traced.entries",
    "stable": "stabcheck.runtime",
    "StabilityWarning": "stabcheck.runtime",
    "StabilityError": "stabcheck.runtime",
    "set_mode": "stabcheck.runtime",
    "mode": "stabcheck.runtime",
}

__all__ = ["Config", "Entry", "Finding", "StabilityError", "StabilityWarning", "check_paths", "check_source", "entry", "mode", "set_mode", "stable"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stabcheck' has no attribute {name!r}")
