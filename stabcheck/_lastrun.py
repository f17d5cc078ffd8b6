"""The record of the last `check --trace/--confirm` run, for the language server.

`stabcheck check --trace` (or `--confirm`) records, for every checked file, the SHA-256 of its
bytes and the findings of the later stages (traced, confirmed, refuted). The language server never
runs user code; it shows these findings, with their status, for a file whose buffer still hashes
the same, and forgets them as soon as the buffer changes.

The record lives in the project's directory of stabcheck's per-user cache, next to its other
caches (`_cache.project_cache_dir(root)/last-run.json`; the root is the config file's directory,
else the project root of the first checked path, as `check` finds its cache). Not in the project: a
repository cannot ship a record that the editor would then show as findings, or whose "fixes" it
would offer.

    {"version": 1, "stabcheck": "0.1.0", "root": "/abs/project", "stages": ["static", "traced"],
     "files": {"/abs/project/model.py": {"sha256": "...", "findings": [<Finding.to_dict()>, ...]}}}

Entries of files that a later run did not check are kept, so tracing one module does not forget
another; an entry whose file changed since is never shown (its hash no longer matches).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from stabcheck._cache import cache_home, project_cache_dir
from stabcheck._discover import discover, display
from stabcheck._files import write_atomic_nofollow
from stabcheck.api import __version__
from stabcheck.config import Config, UsageError
from stabcheck.config import project_root as find_root
from stabcheck.finding import Finding

FILENAME = "last-run.json"
VERSION = 1


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def location(root: Path | str) -> Path:
    """Where the record of the project rooted at `root` is kept."""

    return project_cache_dir(root) / FILENAME


def project_root(paths: Sequence[str], config: Config) -> Path:
    """The run's project root, as `api` picks the run's cache directory."""

    if config.source:
        return Path(os.path.realpath(config.root))
    return Path(os.path.realpath(find_root(Path(paths[0]) if paths else Path.cwd())))


def record(paths: Sequence[str], config: Config, findings: Iterable[Finding], stages: Sequence[str]) -> str:
    """Write the record of this run; returns a note for the report when it could not be written."""

    root = project_root(paths, config)
    target = location(root)
    later: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        if f.stage != "static":
            later.setdefault(f.path, []).append(f.to_dict())
    entries: dict[str, dict[str, Any]] = {}
    for p in discover(paths, config):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        entries[str(p.resolve())] = {"sha256": file_hash(data), "findings": later.get(display(p), [])}
    old = _read(target)
    merged = {k: v for k, v in (old.get("files") or {}).items() if k not in entries and isinstance(v, dict)} if old.get("version") == VERSION else {}
    merged.update(entries)

    payload = {"version": VERSION, "stabcheck": __version__, "root": str(root), "stages": list(stages), "files": merged}
    try:
        _write(target, json.dumps(payload, indent=1, sort_keys=True))
    except OSError as e:
        return f"could not record this run for the language server in {target}: {e.strerror or e}"
    return ""


def lookup(path: Path, data: bytes) -> list[Finding] | None:
    """The later-stage findings recorded for `path` (absolute) if its content is still `data`; None
    when no record holds this file at this content. Findings carry `path` as given."""

    if not (cache_home() / "projects").is_dir():
        return None
    path = path.resolve()
    for d in path.parents:
        rec = _read(location(d))
        if rec.get("root") != str(d):
            continue
        entry = (rec.get("files") or {}).get(str(path))
        if isinstance(entry, dict):
            if entry.get("sha256") != file_hash(data):
                return None
            out = []
            for raw in entry.get("findings") or ():
                try:
                    out.append(Finding.from_dict({**raw, "path": str(path), "fix": None}))
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue
            return out
    return None


_READ_CACHE: dict[str, tuple[int, int, dict[str, Any]]] = {}


def _read(path: Path) -> dict[str, Any]:
    """The parsed record, or {} when it is missing or not ours; re-read only when it changed."""
    try:
        st = path.stat()
    except OSError:
        return {}
    hit = _READ_CACHE.get(str(path))
    if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
        return hit[2]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = {}
    if not isinstance(data, dict) or data.get("version") != VERSION:
        data = {}
    _READ_CACHE[str(path)] = (st.st_mtime_ns, st.st_size, data)
    return data


def _write(target: Path, text: str) -> None:
    """Atomically, following no symbolic link (`_files.write_atomic_nofollow`), in directories that
    are not links either."""

    where = target.parent
    for d in (where.parent.parent, where.parent, where):
        if d.is_symlink():
            raise OSError(f"{d} is a symbolic link")
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_atomic_nofollow(target, text, what="the run record")
    except UsageError as e:
        raise OSError(str(e)) from None
