"""Which files a check covers: directories recursively, `.py` and `.pyi`, minus excludes.

Each file once (symlinks and repeated arguments resolved), symlink loops cut, sorted by the path
findings show. A symlink found inside a directory that leads outside it (a committed
`secrets.py -> ~/.netrc`) is not followed: it lands in `skipped`, and only a file named on the
command line is read wherever it points. Exclude globs are compiled once into two regular expressions (name and relative
path), and directories are scanned with `os.scandir`, so discovery stays a small part of a warm run.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from stabcheck.config import Config, UsageError

SUFFIXES = (".py", ".pyi")


class _Excluder:
    """`excluded(rel, name)`: a pattern matches the name, the relative path, or a parent of it."""

    __slots__ = ("by_name", "by_rel")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        names = [fnmatch.translate(p) for p in patterns]
        rels = names + [fnmatch.translate(p.rstrip("/") + "/*") for p in patterns]
        self.by_name = re.compile("|".join(f"(?:{r})" for r in names)) if names else None
        self.by_rel = re.compile("|".join(f"(?:{r})" for r in rels)) if rels else None

    def __call__(self, rel: str, name: str) -> bool:
        if self.by_name is None or self.by_rel is None:
            return False
        return self.by_name.match(name) is not None or self.by_rel.match(rel) is not None


def _excluded(rel: str, name: str, patterns: tuple[str, ...]) -> bool:
    return _Excluder(patterns)(rel, name)


def discover(paths: Iterable[str], config: Config, skipped: list[str] | None = None) -> Iterator[Path]:
    """Yield the files to check, each once, in sorted order. Missing paths raise UsageError.
    Symlinks under a directory that lead out of it are appended to `skipped` (as shown), not yielded."""
    paths = list(paths)
    excluded = _Excluder((*config.exclude, *config.extend_exclude))
    seen: set[str] = set()
    out: list[tuple[str, Path]] = []
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise UsageError(f"path does not exist: {missing[0]}")
    for p in paths:
        path = Path(p)
        if path.is_file() or (path.is_symlink() and not path.is_dir()):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append((display(path), path))
            continue
        _walk(p, excluded, seen, out, skipped if skipped is not None else [])
    out.sort(key=lambda item: item[0])
    for _, path in out:
        yield path


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _walk(top: str, excluded: _Excluder, seen: set[str], out: list[tuple[str, Path]], skipped: list[str]) -> None:
    root = os.path.realpath(top)
    visited: set[str] = set()
    stack: list[tuple[str, str]] = [(top, "")]  # (directory as given, path relative to top)
    while stack:
        dirpath, rel_dir = stack.pop()
        real_dir = os.path.realpath(dirpath)
        if real_dir in visited:  # a symlink loop, or a directory reached twice
            continue
        visited.add(real_dir)
        try:
            entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
        except OSError:
            continue  # unreadable directory: nothing to check in it
        subdirs = []
        for e in entries:
            name = e.name
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if not excluded(rel, name):
                    sub = os.path.join(dirpath, name)
                    if e.is_symlink() and not _inside(os.path.realpath(sub), root):
                        skipped.append(display(Path(sub)) + "/")  # a link out of the checked tree
                        continue
                    subdirs.append((sub, rel))
                continue
            if not name.endswith(SUFFIXES) or excluded(rel, name):
                continue
            full = os.path.join(dirpath, name)
            key = os.path.realpath(full) if e.is_symlink() else os.path.join(real_dir, name)
            if not _inside(key, root):
                skipped.append(display(Path(full)))
                continue
            if key in seen:
                continue
            seen.add(key)
            out.append((display(Path(full)), Path(full)))
        stack.extend(reversed(subdirs))


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
