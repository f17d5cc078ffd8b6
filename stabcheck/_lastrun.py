"""The record of the last `check --trace/--confirm` run, for the language server.

`stabcheck check --trace` (or `--confirm`) writes `.stabcheck/last-run.json` under the project
root (the directory of the config file, else the working directory): for every checked file, the
SHA-256 of its bytes and the findings of the later stages (traced, confirmed, refuted). The
language server never runs user code; it shows these findings, with their status, for a file whose
buffer still hashes the same, and forgets them as soon as the buffer changes.

    {"version": 1, "stabcheck": "0.1.0", "stages": ["static", "traced"],
     "files": {"/abs/path/model.py": {"sha256": "...", "findings": [<Finding.to_dict()>, ...]}}}

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

from stabcheck.config import Config
from stabcheck.finding import Finding

DIRECTORY = ".stabcheck"
FILENAME = "last-run.json"
VERSION = 1


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def location(config: Config) -> Path:
    root = Path(config.root) if config.source else Path.cwd()
    return root.resolve() / DIRECTORY / FILENAME


def record(paths: Sequence[str], config: Config, findings: Iterable[Finding], stages: Sequence[str]) -> str:
    """Write the record of this run; returns a note for the report when it could not be written."""
    from stabcheck._discover import discover, display

    target = location(config)
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
    from stabcheck.api import __version__

    payload = {"version": VERSION, "stabcheck": __version__, "stages": list(stages), "files": merged}
    try:
        _write(target, json.dumps(payload, indent=1, sort_keys=True))
    except OSError as e:
        return f"could not record this run for the language server in {target}: {e.strerror or e}"
    return ""


def lookup(path: Path, data: bytes) -> list[Finding] | None:
    """The later-stage findings recorded for `path` if its content is still `data`; None when no
    record holds this file at this content. Findings carry `path` as given."""
    for d in [path.parent, *path.parent.parents]:
        rec = d / DIRECTORY / FILENAME
        if rec.is_file():
            entry = (_read(rec).get("files") or {}).get(str(path))
            if isinstance(entry, dict):
                if entry.get("sha256") != file_hash(data):
                    return None
                out = []
                for raw in entry.get("findings") or ():
                    try:
                        out.append(Finding.from_dict({**raw, "path": str(path)}))
                    except (KeyError, TypeError, ValueError):
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
    """Atomically (a temporary file renamed over the old one), never through a symbolic link."""
    directory = target.parent
    if directory.is_symlink():
        raise OSError(f"{directory} is a symbolic link")
    fresh = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if fresh:
        (directory / ".gitignore").write_text("# written by stabcheck\n*\n", encoding="utf-8")
    tmp = directory / f".{FILENAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
