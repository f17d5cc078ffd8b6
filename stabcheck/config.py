"""`[tool.stabcheck]` in pyproject.toml, or stabcheck.toml, read into a frozen `Config`.

The project model is ruff's: each file is checked with the settings of the nearest config file
above it (`Settings.for_path`), the search stopping at the project root (the first directory with
a pyproject.toml, with or without a stabcheck table, or a `.git`). Path patterns (`exclude`,
`extend-exclude`, `per-file-ignores`) are relative to the directory of the config that declares
them; `extend = "../pyproject.toml"` starts from another config file (its patterns stay relative
to it). `--config FILE` applies one file to every path.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
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


class UnknownKeyError(ConfigError):
    """A key stabcheck does not know: named with the closest known key, if one is close."""

    def __init__(self, key: str, value: Any, known: list[str], source: str = "") -> None:
        close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        allowed = f"{hint}known keys: {', '.join(known)}"
        super().__init__(key, value, allowed, source)
        where = f"{source}: " if source else ""
        self.args = (f"{where}unknown key `{key}` (= {value!r}); {allowed}",)


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
    respect_gitignore: bool = True
    extend: str = ""  # the config file this one starts from, as written in it
    root: str = "."
    source: str = ""
    ignored: tuple[str, ...] = ()  # keys of a discovered config that were not honoured (see `distrust`)
    # where each key's value came from (a config file, "command line"); not part of identity
    origins: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

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
    "respect-gitignore": "true or false",
    "extend": "the path of another config file, relative to this one",
}
_PATH_KEYS = ("exclude", "extend-exclude", "per-file-ignores")

def find_config(start: Path) -> Path | None:
    """The config file that applies to `start` (a file or a directory): the nearest stabcheck.toml,
    or pyproject.toml with a [tool.stabcheck] table, going up. The search stops at the project
    root: the first directory holding a pyproject.toml (with or without a stabcheck table) or `.git`.
    """
    start = Path(os.path.abspath(start))
    for d in [start, *start.parents] if start.is_dir() else [start.parent, *start.parent.parents]:
        found, stop = _config_in(d)
        if found is not None or stop:
            return found
    return None


def _config_in(d: Path) -> tuple[Path | None, bool]:
    """(the config file in directory `d`, whether `d` is a project root)."""
    toml = d / "stabcheck.toml"
    if toml.is_file():
        return toml, True
    p = d / "pyproject.toml"
    if p.is_file():
        return (p if _has_table(p) else None), True
    return None, (d / ".git").exists()


_TABLES: dict[tuple[str, int, int], bool] = {}


def _has_table(p: Path) -> bool:
    """Whether a pyproject.toml has a [tool.stabcheck] table (unreadable: yes, so that loading it
    reports the problem); read once per file version, however many directories ask."""
    try:
        st = p.stat()
    except OSError:
        return True
    key = (str(p), st.st_mtime_ns, st.st_size)
    hit = _TABLES.get(key)
    if hit is None:
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
            hit = isinstance(data.get("tool"), dict) and "stabcheck" in data["tool"]
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            hit = True
        _TABLES[key] = hit
    return hit


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
    return _load(Path(path), ())


def _read_table(path: Path) -> dict[str, Any]:
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{src}: cannot read config file: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{src}: malformed TOML: {e}") from None
    table = data if path.name != "pyproject.toml" else data.get("tool", {}).get("stabcheck", {})
    if path.name != "pyproject.toml" and isinstance(data.get("tool"), dict) and "stabcheck" in data["tool"]:
        table = data["tool"]["stabcheck"]
    if not isinstance(table, dict):
        raise ConfigError("tool.stabcheck", table, "a table", src)
    return table


def _load(path: Path, chain: tuple[Path, ...]) -> Config:
    """One config file, on top of the file it `extend`s (followed first, cycles refused)."""
    src = str(path)
    real = [os.path.abspath(p) for p in chain]
    if os.path.abspath(path) in real:
        cycle = " -> ".join(str(p) for p in (*chain[real.index(os.path.abspath(path)) :], path))
        raise UsageError(f"{chain[-1]}: `extend` makes a cycle: {cycle}")
    table = _read_table(path)
    root = str(path.parent)
    extend = table.get("extend")
    if extend is None:
        return from_mapping(table, source=src, root=root)
    if not isinstance(extend, str) or not extend:
        raise ConfigError("extend", extend, _KEYS["extend"], src)
    target = Path(os.path.normpath(os.path.join(root, os.path.expanduser(extend))))
    if not target.is_file():
        raise UsageError(f"{src}: `extend` names a config file that does not exist: {extend} ({target})")
    base = _rebase(_load(target, (*chain, path)), root)
    cfg = from_mapping(table, source=src, base=base)
    if any(k.replace("_", "-") == "extend-exclude" for k in table):  # accumulates, as in ruff
        cfg = replace(cfg, extend_exclude=(*base.extend_exclude, *cfg.extend_exclude))
    return replace(cfg, root=root, source=src)


def _rebase(cfg: Config, root: str) -> Config:
    """`cfg`'s path patterns made relative to `root` instead of `cfg.root` (for `extend`)."""
    if os.path.abspath(cfg.root) == os.path.abspath(root):
        return cfg

    def move(pattern: str) -> str:
        if "/" not in pattern.rstrip("/"):
            return pattern  # a name pattern matches at any depth, wherever it was declared
        return os.path.relpath(os.path.join(cfg.root, pattern), root).replace(os.sep, "/") + ("/" if pattern.endswith("/") else "")

    return replace(
        cfg,
        exclude=tuple(move(p) for p in cfg.exclude),
        extend_exclude=tuple(move(p) for p in cfg.extend_exclude),
        per_file_ignores=tuple((move(g), codes) for g, codes in cfg.per_file_ignores),
    )


def from_mapping(table: dict[str, Any], *, source: str = "", root: str = ".", base: Config | None = None) -> Config:
    cfg = base or Config()
    changes: dict[str, Any] = {} if base is not None else {"source": source, "root": root}
    origins = dict(cfg.origins)
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        if key not in _KEYS:
            raise UnknownKeyError(raw_key, value, list(_KEYS), source) from None
        allowed = _KEYS[key]
        fname = key.replace("-", "_")
        origins[key] = source or "command line"
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
        elif key in ("types", "preview", "respect-gitignore"):
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
        elif key == "extend":
            if not isinstance(value, str) or not value:
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = value
        elif key == "memory-limit":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(raw_key, value, allowed, source)
            changes[fname] = str(value)
    if changes.get("select") == () and not changes.get("extend_select", cfg.extend_select):
        raise ConfigError("select", [], "a non-empty list of rule codes, prefixes or slugs, or `extend-select` beside it (an empty `select` would check nothing)", source)
    changes["origins"] = tuple(sorted(origins.items()))
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


def rel_to_root(path: str | os.PathLike[str], config: Config) -> str:
    """`path` relative to the directory of the config that applies to it (`/` separators): what
    its path patterns match. Paths outside that directory start with `../`."""
    return rel_to(os.path.abspath(path), os.path.abspath(config.root))


def rel_to(path: str, base: str) -> str:
    """`path` relative to `base`, both absolute and normalised (`/` separators); a prefix cut
    when `path` is below `base` (discovery asks this for every file), else `os.path.relpath`."""
    if path.startswith(base) and path[len(base) : len(base) + 1] == os.sep:
        rel = path[len(base) + 1 :]
    elif path == base:
        rel = "."
    else:
        rel = os.path.relpath(path, base)
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


class Settings:
    """Which `Config` applies to each file: ruff's hierarchical settings.

    `fixed` (from `--config FILE`, or a library caller's Config) applies to every path; otherwise
    each directory gets the nearest config file above it (`find_config`, stopping at the project
    root), or the defaults. `adjust` (the command line's `--select`, `--ignore`...) is applied on
    top of every config. Each directory is resolved, and each config file read, once.
    """

    def __init__(self, fixed: Config | None = None, adjust: Callable[[Config], Config] | None = None, cwd: str | None = None) -> None:
        self.fixed = adjust(fixed) if (fixed is not None and adjust is not None) else fixed
        self.adjust = adjust
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self._by_dir: dict[str, Config] = {}
        self._by_file: dict[str, Config] = {}

    def for_dir(self, directory: str | os.PathLike[str]) -> Config:
        if self.fixed is not None:
            return self.fixed
        d = os.path.abspath(directory)
        hit = self._by_dir.get(d)
        if hit is None:
            hit = self._by_dir[d] = self._resolve(d)
        return hit

    def for_path(self, path: str | os.PathLike[str]) -> Config:
        """The settings of a file (those of its directory), or of a directory."""
        p = os.path.abspath(path)
        return self.for_dir(p if os.path.isdir(p) else os.path.dirname(p))

    @property
    def root(self) -> Config:
        """The settings of the working directory: what the run as a whole (entries, stages, the
        cache) follows."""
        return self.for_dir(self.cwd)

    def _resolve(self, d: str) -> Config:
        path = find_config(Path(d))
        key = str(path) if path is not None else ""
        cfg = self._by_file.get(key)
        if cfg is None:
            cfg = Config() if path is None else distrust(load_config(path))  # found, not named: untrusted
            if self.adjust is not None:
                cfg = self.adjust(cfg)
            self._by_file[key] = cfg
        return cfg

    def explain(self, path: str | os.PathLike[str]) -> list[tuple[str, Any, str]]:
        """(key, value, where it came from) for every setting of the file at `path`."""
        cfg = self.for_path(path)
        origins = dict(cfg.origins)
        out: list[tuple[str, Any, str]] = []
        for f in fields(Config):
            if f.name in ("root", "source", "origins", "ignored"):
                continue
            key = f.name.replace("_", "-")
            value = getattr(cfg, f.name)
            if key == "per-file-ignores":
                value = {g: list(c) for g, c in value}
            elif isinstance(value, tuple):
                value = list(value)
            out.append((key, value, origins.get(key, "default")))
        return out
