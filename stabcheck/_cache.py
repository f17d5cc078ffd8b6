"""A content-hash cache of static results, as JSON (never pickle: the cache directory may come
from an untrusted checkout). A corrupt or foreign cache file is ignored and rewritten."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stabcheck.finding import Finding
from stabcheck.suppress import Suppression


def cache_home() -> Path:
    """stabcheck's per-user cache directory, outside any checked tree: `$STABCHECK_CACHE_DIR`, else
    `$XDG_CACHE_HOME/stabcheck`, else `~/.cache/stabcheck` (created by whoever writes there)."""
    explicit = os.environ.get("STABCHECK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "stabcheck"


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Cache:
    def __init__(self, directory: Path, key: str) -> None:
        self.file = directory / f"static-{key}.json"
        self.entries: dict[str, Any] = {}
        self.dirty = False
        try:
            with open(self.file, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict) and data.get("key") == key and isinstance(data.get("files"), dict):
                self.entries = data["files"]
        except (OSError, ValueError, UnicodeDecodeError):
            self.entries = {}
        self.key = key
        self.directory = directory

    def get(self, path: str, h: str) -> tuple[list[Finding], list[Suppression]] | None:
        """The cached result of `path` if its content hash is `h` and the entry is well-formed."""
        e = self.entries.get(path)
        if not isinstance(e, dict) or e.get("hash") != h:
            return None
        fds, sps = e.get("findings"), e.get("suppressions")
        if not isinstance(fds, list) or not isinstance(sps, list):
            return None
        if not all(_valid_finding(d, path) for d in fds) or not all(_valid_suppression(s) for s in sps):
            return None
        try:
            return [Finding.from_dict(d) for d in fds], [Suppression.from_list(s) for s in sps]
        except (KeyError, TypeError, ValueError, IndexError):  # pragma: no cover - validated above
            return None

    def put(self, path: str, h: str, findings: list[Finding], sups: list[Suppression]) -> None:
        self.entries[path] = {"hash": h, "findings": [f.to_dict() for f in findings], "suppressions": [s.to_list() for s in sups]}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            gitignore = self.directory / ".gitignore"
            if not gitignore.exists():
                gitignore.write_text("*\n")
            import tempfile

            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"key": self.key, "files": self.entries}, fh, separators=(",", ":"))
            os.replace(tmp, self.file)
        except OSError:
            pass  # a read-only tree: run uncached


_STR_KEYS = ("code", "name", "message", "help", "path", "severity", "stage", "status", "function", "detail", "snippet")
_OPT_INT_KEYS = ("end_line", "end_col")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _valid_finding(d: object, path: str) -> bool:
    """A cache entry is data from disk: check every field's type before it becomes a Finding."""
    if not isinstance(d, dict) or d.get("path") != path:
        return False
    if not all(isinstance(d.get(k), str) for k in _STR_KEYS):
        return False
    if not (_is_int(d.get("line")) and _is_int(d.get("col"))) or not all(d.get(k) is None or _is_int(d.get(k)) for k in _OPT_INT_KEYS):
        return False
    if not isinstance(d.get("evidence"), dict):
        return False
    fix = d.get("fix")
    if fix is None:
        return True
    if not isinstance(fix, dict) or not isinstance(fix.get("description"), str) or not isinstance(fix.get("edits", []), list):
        return False
    for e in fix.get("edits", []):
        if not isinstance(e, dict) or not isinstance(e.get("replacement"), str):
            return False
        if not (_is_int(e.get("line")) and _is_int(e.get("col"))) or not all(e.get(k) is None or _is_int(e.get(k)) for k in _OPT_INT_KEYS):
            return False
    return True


def _valid_suppression(s: object) -> bool:
    return (
        isinstance(s, list)
        and len(s) == 4
        and _is_int(s[0])
        and _is_int(s[1])
        and isinstance(s[2], list)
        and all(isinstance(n, str) for n in s[2])
        and isinstance(s[3], str)
    )


def code_fingerprint() -> str:
    """Sizes and mtimes of stabcheck's own sources: an edited rule (editable installs, development)
    invalidates the cache even when the version number did not change."""
    root = Path(__file__).resolve().parent
    parts: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                try:
                    st = os.stat(os.path.join(dirpath, f))
                except OSError:
                    continue
                parts.append(f"{os.path.relpath(os.path.join(dirpath, f), root)}:{st.st_size}:{st.st_mtime_ns}")
    return digest("\n".join(parts).encode())
