"""`[tool.stabcheck]` in pyproject.toml, or stabcheck.toml, read into a frozen `Config`."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_EXCLUDE = (
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".stabcheck_cache",
    "node_modules",
    "*.egg-info",
)
STAGES = ("static", "traced", "confirm")


class ConfigError(Exception):
    """A user error in configuration or on the command line: shown as one line, exit 2."""

    def __init__(self, key: str, value: Any, allowed: str, source: str = "") -> None:
        self.key, self.value, self.allowed, self.source = key, value, allowed, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid value for `{key}`: {value!r}; expected {allowed}")


class UsageError(Exception):
    """A user error that is not about one config key (missing path, bad target)."""


@dataclass(frozen=True, slots=True)
class Config:
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    extend_exclude: tuple[str, ...] = ()
    entries: tuple[str, ...] = ()
    stages: tuple[str, ...] = ("static",)
    timeout: float = 120.0
    memory_limit: str = ""
    types: bool | None = None  # None: `STABCHECK_TYPES`, else on where mypy is installed (`typed.on_by_default`)
    fail_on: str = "suspected"
    max_traces: int = 3
    union_limit: int = 1
    root: str = "."
    source: str = ""

    def rule_option(self, name: str) -> Any:
        return getattr(self, name.replace("-", "_"))


# key -> (field name, validator description)
_KEYS: dict[str, str] = {
    "select": "a list of rule codes, prefixes or slugs",
    "ignore": "a list of rule codes, prefixes or slugs",
    "extend-select": "a list of rule codes, prefixes or slugs",
    "per-file-ignores": "a table of glob = [codes]",
    "exclude": "a list of glob patterns",
    "extend-exclude": "a list of glob patterns",
    "entries": "a list of `path:function` targets",
    "stages": f"a list drawn from {', '.join(STAGES)}",
    "timeout": "a positive number of seconds",
    "memory-limit": "a size such as '4GiB' or a fraction such as '0.5'",
    "types": "true or false",
    "fail-on": "'suspected' or 'confirmed'",
    "max-traces": "a positive integer",
    "union-limit": "a positive integer",
}


def find_config(start: Path) -> Path | None:
    """The nearest pyproject.toml with a [tool.stabcheck] table, or stabcheck.toml."""
    start = start.resolve()
    for d in [start, *start.parents] if start.is_dir() else [start.parent, *start.parent.parents]:
        for name in ("stabcheck.toml", "pyproject.toml"):
            p = d / name
            if p.is_file():
                if name == "stabcheck.toml":
                    return p
                try:
                    data = tomllib.loads(p.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                    return p  # let load_config report it
                if "stabcheck" in data.get("tool", {}):
                    return p
    return None


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{src}: cannot read config file: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{src}: malformed TOML: {e}") from None
    table = data if path.name == "stabcheck.toml" else data.get("tool", {}).get("stabcheck", {})
    if path.name == "stabcheck.toml" and "tool" in data and "stabcheck" in data["tool"]:
        table = data["tool"]["stabcheck"]
    if not isinstance(table, dict):
        raise ConfigError("tool.stabcheck", table, "a table", src)
    return from_mapping(table, source=src, root=str(path.parent))


def from_mapping(table: dict[str, Any], *, source: str = "", root: str = ".", base: Config | None = None) -> Config:
    from stabcheck import registry

    cfg = base or Config()
    changes: dict[str, Any] = {} if base is not None else {"source": source, "root": root}
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        if key not in _KEYS:
            raise ConfigError(raw_key, value, "one of: " + ", ".join(_KEYS), source) from None
        allowed = _KEYS[key]
        fname = key.replace("-", "_")
        if key in ("select", "ignore", "extend-select"):
            codes = _str_list(raw_key, value, allowed, source)
            for c in codes:
                if not registry.is_valid_selector(c):
                    raise ConfigError(raw_key, c, "a known rule code, prefix or slug (see `stabcheck rules`)", source)
            changes[fname] = tuple(codes)
        elif key in ("exclude", "extend-exclude", "entries"):
            globs = _str_list(raw_key, value, allowed, source)
            if key != "entries":
                for g in globs:
                    _check_glob(raw_key, g, source)
            changes[fname] = tuple(globs)
        elif key == "per-file-ignores":
            if not isinstance(value, dict):
                raise ConfigError(raw_key, value, allowed, source)
            pairs = []
            for glob, codes in value.items():
                _check_glob(f"{raw_key}.{glob}", glob, source)
                codes = _str_list(f"{raw_key}.{glob}", codes, "a list of rule codes", source)
                for c in codes:
                    if not registry.is_valid_selector(c):
                        raise ConfigError(f"{raw_key}.{glob}", c, "a known rule code, prefix or slug", source)
                pairs.append((glob, tuple(codes)))
            changes[fname] = tuple(pairs)
        elif key == "stages":
            stages = _str_list(raw_key, value, allowed, source)
            bad = [s for s in stages if s not in STAGES]
            if bad:
                raise ConfigError(raw_key, bad[0], allowed, source)
            changes[fname] = tuple(stages)
        elif key == "timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = float(value)
        elif key in ("max-traces", "union-limit"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = value
        elif key == "types":
            if not isinstance(value, bool):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = value
        elif key == "fail-on":
            if value not in ("suspected", "confirmed"):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = value
        elif key == "memory-limit":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = str(value)
    return replace(cfg, **changes)


def _str_list(key: str, value: Any, allowed: str, source: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value, allowed, source)
    return value


def _check_glob(key: str, glob: str, source: str) -> None:
    if not glob or glob.count("[") != glob.count("]"):
        raise ConfigError(key, glob, "a valid glob pattern", source)
    try:
        fnmatch.translate(glob)
    except Exception:
        raise ConfigError(key, glob, "a valid glob pattern", source) from None


def config_fields() -> list[str]:
    return [f.name for f in fields(Config)]
