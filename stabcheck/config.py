"""`[tool.stabcheck]` in pyproject.toml, or stabcheck.toml, read into a frozen `Config`."""

from __future__ import annotations

import fnmatch
import math
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from stabcheck import registry
from stabcheck._sizes import parse_size
from stabcheck.errors import ConfigError as ConfigError
from stabcheck.errors import UsageError as UsageError

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
DEFAULT_MAX_FILE_SIZE = 10 * 2**20  # bytes


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
    types: bool | None = None  # None: `STABCHECK_TYPES`, else off (`typed.on_by_default`)
    types_timeout: float = 300.0  # seconds mypy may run (the typed tier's subprocess)
    types_memory_limit: str = "2GiB"  # memory mypy may use; "0" for no bound
    fail_on: str = "suspected"
    max_traces: int = 3
    union_limit: int = 1
    max_file_size: int = DEFAULT_MAX_FILE_SIZE  # a larger source file is one STB901, never read whole
    preview: bool = False  # also report the static stage's guesses (findings not proven)
    root: str = "."
    source: str = ""
    ignored: tuple[str, ...] = ()  # keys of a discovered config that were not honoured (see `distrust`)

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
    "timeout": "a positive number of seconds (finite, > 0)",
    "memory-limit": "a size such as '4GiB' or a fraction such as '0.5'",
    "types": "true or false",
    "types-timeout": "a positive, finite number of seconds",
    "types-memory-limit": "a size such as '2GiB' or '512MiB', or '0' for no bound",
    "fail-on": "'suspected' or 'confirmed'",
    "max-traces": "a positive integer",
    "union-limit": "a positive integer",
    "max-file-size": "a positive size in bytes, or a string such as '5MiB', '500KB' or '2MB'",
    "preview": "true or false",
}

def find_config(start: Path) -> Path | None:
    """The nearest stabcheck.toml, or pyproject.toml with a [tool.stabcheck] table, from `start`
    upward to the project root (the first directory holding a pyproject.toml or `.git`) and never
    above it: a config in an ancestor of the project (a shared `/tmp`, a home directory) does not
    apply to it."""
    start = start.resolve()
    for d in [start, *start.parents] if start.is_dir() else [start.parent, *start.parent.parents]:
        if (d / "stabcheck.toml").is_file():
            return d / "stabcheck.toml"
        p = d / "pyproject.toml"
        if p.is_file():
            try:
                data = tomllib.loads(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                return p  # let load_config report it
            return p if isinstance(data.get("tool"), dict) and "stabcheck" in data["tool"] else None
        if (d / ".git").exists():
            return None
    return None


def project_root(start: Path) -> Path:
    """The first directory from `start` upward that holds a pyproject.toml, `.git` or
    stabcheck.toml; `start` itself (its directory) when there is none."""
    start = start.resolve()
    first = start if start.is_dir() else start.parent
    for d in [first, *first.parents]:
        if any((d / marker).exists() for marker in ("pyproject.toml", ".git", "stabcheck.toml")):
            return d
    return first


# -- trust: what a configuration found in the checked tree may do -------------------------------
# A discovered config comes with the code being checked (an untrusted pull request, a cloned
# repository); these keys would make a plain `stabcheck check` import and run that code, so they are
# honoured only from the command line or from a file named with `--config`.
RUNS_CODE: tuple[str, ...] = ("stages", "entries")


def discover_config(start: Path) -> Config:
    """The configuration a plain `stabcheck check` uses: found from `start` (see `find_config`),
    read as untrusted (see `distrust`). The one place the command line and the pytest plugin find
    their configuration."""
    path = find_config(start)
    return Config() if path is None else distrust(load_config(path))


# the largest `max-file-size` a discovered config may ask for: above it, a repository could make
# stabcheck read a committed multi-gigabyte file whole; `--config` or the library may go higher
REPOSITORY_MAX_FILE_SIZE = 64 * 2**20


def distrust(cfg: Config) -> Config:
    """`cfg` with the keys that would run code (`RUNS_CODE`) back at their defaults, and a
    `max-file-size` above `REPOSITORY_MAX_FILE_SIZE` lowered to it; the keys that were set are
    recorded in `cfg.ignored` so that the run says so (`trust_note`)."""
    default = Config()
    ignored = tuple(k for k in RUNS_CODE if getattr(cfg, k) != getattr(default, k))
    changes: dict[str, Any] = {k: getattr(default, k) for k in ignored}
    if cfg.max_file_size > REPOSITORY_MAX_FILE_SIZE:
        ignored += ("max_file_size",)
        changes["max_file_size"] = REPOSITORY_MAX_FILE_SIZE
    if not ignored:
        return cfg
    return replace(cfg, ignored=ignored, **changes)


def trust_note(cfg: Config) -> str | None:
    """The one note a run shows when a discovered config asked for something it may not set."""
    if not cfg.ignored:
        return None

    where = cfg.source or "the discovered configuration"
    if os.path.isabs(where):
        rel = os.path.relpath(where)
        where = rel if not rel.startswith("..") else where
    parts = []
    code = [k for k in cfg.ignored if k in RUNS_CODE]
    if code:
        keys = ", ".join(f"`{k}`" for k in code)
        parts.append(f"{keys} in {where} ignored: a configuration found in the checked tree cannot turn on stages that run code; use --trace/--confirm/--entries, or name the file with --config to trust it")
    if "max_file_size" in cfg.ignored:
        parts.append(f"`max-file-size` in {where} lowered to {REPOSITORY_MAX_FILE_SIZE // 2**20} MiB, the most a configuration found in the checked tree may ask for; name the file with --config to trust it")
    return "; ".join(parts)


def check_timeout(value: Any, key: str = "timeout", source: str = "") -> float:
    """A timeout in seconds: a finite number > 0 (TOML allows `nan` and `inf`; 0 would mean none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(key, value, _KEYS["timeout"], source)
    return float(value)


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
            changes[fname] = check_timeout(value, raw_key, source)
        elif key in ("max-traces", "union-limit"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = value
        elif key in ("types", "preview"):
            if not isinstance(value, bool):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = value
        elif key == "types-timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = float(value)
        elif key == "types-memory-limit":
            if isinstance(value, bool) or not isinstance(value, (str, int)) or (str(value).strip().lower() not in ("0", "none", "off") and parse_size(value) is None):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = str(value)
        elif key == "fail-on":
            if value not in ("suspected", "confirmed"):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = value
        elif key == "max-file-size":
            size = parse_size(value)
            if size is None:
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = size
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
