"""Which files a check covers: directories recursively, `.py` and `.pyi`, minus excludes."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from stabcheck.config import Config, UsageError

SUFFIXES = (".py", ".pyi")


def _excluded(rel: str, name: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(rel, p.rstrip("/") + "/*"):
            return True
    return False


def discover(paths: Iterable[str], config: Config) -> Iterator[Path]:
    """Yield the files to check, each once, in sorted order. Missing paths raise UsageError."""
    patterns = (*config.exclude, *config.extend_exclude)
    seen: set[str] = set()
    out: list[Path] = []
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise UsageError(f"path does not exist: {missing[0]}")
    for p in paths:
        path = Path(p)
        if path.is_file() or (path.is_symlink() and not path.is_dir()):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append(path)
            continue
        visited_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in visited_dirs:  # symlink loop
                dirnames[:] = []
                continue
            visited_dirs.add(real)
            rel_dir = os.path.relpath(dirpath, path)
            keep = []
            for d in sorted(dirnames):
                rel = os.path.normpath(os.path.join(rel_dir, d)).replace(os.sep, "/")
                if not _excluded(rel, d, patterns):
                    keep.append(d)
            dirnames[:] = keep
            for f in sorted(filenames):
                if not f.endswith(SUFFIXES):
                    continue
                rel = os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/")
                if _excluded(rel, f, patterns):
                    continue
                fp = Path(dirpath) / f
                key = os.path.realpath(fp)
                if key in seen:
                    continue
                seen.add(key)
                out.append(fp)
    yield from sorted(out, key=lambda q: display(q))


def display(path: Path) -> str:
    """A path as findings show it: relative to the working directory when below it."""
    s = str(path)
    if os.path.isabs(s):
        try:
            rel = os.path.relpath(s)
            if not rel.startswith(".."):
                s = rel
        except ValueError:
            pass
    s = os.path.normpath(s)
    return s.replace(os.sep, "/")
