"""A content-hash cache of static results, as JSON (never pickle: the cache directory may come
from an untrusted checkout). A corrupt or foreign cache file is ignored and rewritten."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from stabcheck.finding import Finding
from stabcheck.suppress import Suppression


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
        e = self.entries.get(path)
        if not isinstance(e, dict) or e.get("hash") != h:
            return None
        try:
            return [Finding.from_dict(d) for d in e["findings"]], [Suppression.from_list(s) for s in e["suppressions"]]
        except (KeyError, TypeError, ValueError, IndexError):
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
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"key": self.key, "files": self.entries}, fh, separators=(",", ":"))
            os.replace(tmp, self.file)
        except OSError:
            pass  # a read-only tree: run uncached
