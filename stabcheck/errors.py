"""The user errors every part may raise: shown as one line on stderr, exit 2, never a traceback.

`stabcheck.config` re-exports both; they live here so that the static stage can raise them
without importing the config module (which knows the rule catalogue).
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """A user error in configuration or on the command line: shown as one line, exit 2."""

    def __init__(self, key: str, value: Any, allowed: str, source: str = "") -> None:
        self.key, self.value, self.allowed, self.source = key, value, allowed, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid value for `{key}`: {value!r}; expected {allowed}")


class UsageError(Exception):
    """A user error that is not about one config key (missing path, bad target)."""
