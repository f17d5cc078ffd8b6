"""Which files a check covers: directories recursively, `.py`, `.pyi` and notebooks (`.ipynb`),
minus excludes; and how one is read.

Each file once (symlinks and repeated arguments resolved), symlink loops cut, sorted by the path
findings show. A symlink found inside a directory that leads outside it (a committed
`secrets.py -> ~/.netrc`) is not followed: it lands in `skipped`, and only a file named on the
command line is read wherever it points. Directories are scanned with `os.scandir`, so discovery
stays a small part of a warm run. Each directory is walked with the settings that apply to it (`config.Settings`):
its `exclude`/`extend-exclude` patterns, relative to the directory of the config declaring them,
and, with `respect-gitignore` (the default), the repository's `.gitignore` files (read with
`pathspec`). Files named on the command line are checked even when excluded, unless
`force_exclude` (ruff's `--force-exclude`, which the pre-commit hook passes).

Reading (`read_source`): only regular files are read. A FIFO, socket or device (or a symlink to
one, such as `/dev/zero`) is never opened for reading, so it cannot hang or flood the run; a file
above `max-file-size` is never read whole; each of those, an unreadable file and a file name that
is not valid UTF-8 is a `SourceError`, which the caller reports as one STB901 for that file.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stabcheck._files import read_fd_bounded
from stabcheck.config import Config, Settings, UsageError, rel_to, rel_to_root

SUFFIXES = (".py", ".pyi", ".ipynb")


class _Excluder:
    """`excluded(rel, name)`: a pattern without a `/` matches the name; one with a `/` matches the
    path relative to its config's directory, or a directory above it."""

    __slots__ = ("by_name", "by_rel")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        names = [fnmatch.translate(p) for p in patterns if "/" not in p.rstrip("/")]
        anchored = [p.rstrip("/") for p in patterns if "/" in p.rstrip("/")]
        rels = [fnmatch.translate(p) for p in anchored] + [fnmatch.translate(p + "/*") for p in anchored]
        self.by_name = re.compile("|".join(f"(?:{r})" for r in names)) if names else None
        self.by_rel = re.compile("|".join(f"(?:{r})" for r in rels)) if rels else None

    def __call__(self, rel: str, name: str) -> bool:
        return (self.by_name is not None and self.by_name.match(name) is not None) or (self.by_rel is not None and self.by_rel.match(rel) is not None)


def _excluded(rel: str, name: str, patterns: tuple[str, ...]) -> bool:
    return _Excluder(patterns)(rel, name)


class _GitIgnore:
    """`.gitignore` files of the repository (from its top, the directory holding `.git`, down to
    each directory) and `.git/info/exclude`, deeper files overriding shallower ones, as git does.
    Outside a git repository nothing is ignored. pathspec is imported only when a file exists."""

    def __init__(self) -> None:
        self._chain: dict[str, tuple[tuple[str, Any], ...]] = {}
        self._top: dict[str, str | None] = {}

    def top(self, d: str) -> str | None:
        if d in self._top:
            return self._top[d]
        parent = os.path.dirname(d)
        if os.path.exists(os.path.join(d, ".git")):
            top: str | None = d
        elif parent == d:
            top = None
        else:
            top = self.top(parent)
        self._top[d] = top
        return top

    def chain(self, d: str) -> tuple[tuple[str, Any], ...]:
        hit = self._chain.get(d)
        if hit is not None:
            return hit
        top = self.top(d)
        if top is None:
            out: tuple[tuple[str, Any], ...] = ()
        else:
            out = () if d == top else self.chain(os.path.dirname(d))
            files = [os.path.join(d, ".gitignore")]
            if d == top:
                files.insert(0, os.path.join(d, ".git", "info", "exclude"))
            for f in files:
                spec = _spec(f)
                if spec is not None:
                    out = (*out, (d, spec))
        self._chain[d] = out
        return out

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether git ignores `path` (absolute) itself; callers check parents as they walk."""
        for base, spec in reversed(self.chain(os.path.dirname(path))):
            rel = rel_to(path, base) + ("/" if is_dir else "")
            verdict = spec.check_file(rel).include
            if verdict is not None:
                return bool(verdict)
        return False

    def ignored_with_parents(self, path: str, is_dir: bool) -> bool:
        top = self.top(os.path.dirname(path))
        if top is None:
            return False
        p = path
        while p != top and p.startswith(top):
            if self.ignored(p, is_dir if p == path else True):
                return True
            p = os.path.dirname(p)
        return False


def _spec(path: str) -> Any:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    if not any(ln.strip() and not ln.lstrip().startswith("#") for ln in lines):
        return None
    import pathspec  # pathspec: only when a .gitignore is read

    return pathspec.GitIgnoreSpec.from_lines(lines)


class _Walker:
    """The settings-dependent tests, each compiled once per config."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.git = _GitIgnore()
        self._excluders: dict[int, _Excluder] = {}
        self._roots: dict[int, str] = {}

    def _root(self, cfg: Config) -> str:
        root = self._roots.get(id(cfg))
        if root is None:
            root = self._roots[id(cfg)] = os.path.abspath(cfg.root)
        return root

    def _excluder(self, cfg: Config) -> _Excluder:
        ex = self._excluders.get(id(cfg))
        if ex is None:
            ex = self._excluders[id(cfg)] = _Excluder((*cfg.exclude, *cfg.extend_exclude))
        return ex

    def skip(self, path: str, is_dir: bool, cfg: Config) -> bool:
        """`path` (absolute), seen in a directory walked with `cfg`: excluded or git-ignored."""
        if self._excluder(cfg)(rel_to(path, self._root(cfg)), os.path.basename(path)):
            return True
        return cfg.respect_gitignore and self.git.ignored(path, is_dir)

    def force_excluded(self, path: str) -> bool:
        """For a path named on the command line: it, or a directory above it (up to its config's
        directory), is excluded, or git ignores it."""
        cfg = self.settings.for_path(path)
        root = os.path.abspath(cfg.root)
        ex = self._excluder(cfg)
        p = path
        while True:
            if ex(rel_to_root(p, cfg), os.path.basename(p)):
                return True
            parent = os.path.dirname(p)
            if parent == p or not parent.startswith(root) or p == root:
                break
            p = parent
        return cfg.respect_gitignore and self.git.ignored_with_parents(path, os.path.isdir(path))


def force_excluded(path: str, settings: Settings) -> bool:
    """Whether `--force-exclude` leaves out the file `path` named on the command line (or given
    as `--stdin-filename`): an exclude or `.gitignore` covers it or a directory above it."""
    return _Walker(settings).force_excluded(os.path.abspath(path))


def discover(paths: Iterable[str], config: Config | Settings, skipped: list[str] | None = None, *, force_exclude: bool = False) -> Iterator[Path]:
    """Yield the files to check, each once, in sorted order. Missing paths raise UsageError.
    Symlinks under a directory that lead out of it are appended to `skipped` (as shown), not yielded."""
    paths = list(paths)
    settings = config if isinstance(config, Settings) else Settings(fixed=config)
    walker = _Walker(settings)
    seen: set[str] = set()
    out: list[tuple[str, Path]] = []
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise UsageError(f"path does not exist: {missing[0]}")
    for p in paths:
        path = Path(p)
        if force_exclude and walker.force_excluded(os.path.abspath(p)):
            continue
        if not path.is_dir():  # a file, a dangling link, or a FIFO/socket/device named on the command line
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                out.append((display(path), path))
            continue
        _walk(p, walker, seen, out, skipped if skipped is not None else [])
    out.sort(key=lambda item: item[0])
    for _, path in out:
        yield path


def _special(real: str) -> bool:
    """A FIFO, socket or device (a link to /dev/zero, say): yielded anyway, so that it is reported
    as one STB901 "not a regular file" (and never opened), not skipped in silence."""
    try:
        return not stat.S_ISREG(os.stat(real).st_mode)
    except OSError:
        return False


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _walk(top: str, walker: _Walker, seen: set[str], out: list[tuple[str, Path]], skipped: list[str]) -> None:
    root = os.path.realpath(top)
    visited: set[str] = set()
    stack: list[str] = [top]
    while stack:
        dirpath = stack.pop()
        real_dir = os.path.realpath(dirpath)
        if real_dir in visited:  # a symlink loop, or a directory reached twice
            continue
        visited.add(real_dir)
        try:
            entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
        except OSError:
            continue  # unreadable directory: nothing to check in it
        abs_dir = os.path.abspath(dirpath)
        cfg = walker.settings.for_dir(abs_dir)
        subdirs = []
        for e in entries:
            name = e.name
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if not walker.skip(os.path.join(abs_dir, name), True, cfg):
                    sub = os.path.join(dirpath, name)
                    if e.is_symlink() and not _inside(os.path.realpath(sub), root):
                        skipped.append(display(Path(sub)) + "/")  # a link out of the checked tree
                        continue
                    subdirs.append(sub)
                continue
            if not name.endswith(SUFFIXES) or walker.skip(os.path.join(abs_dir, name), False, cfg):
                continue
            full = os.path.join(dirpath, name)
            key = os.path.realpath(full) if e.is_symlink() else os.path.join(real_dir, name)
            if not _inside(key, root) and not _special(key):
                skipped.append(display(Path(full)))
                continue
            if key in seen:
                continue
            seen.add(key)
            out.append((display(Path(full)), Path(full)))
        stack.extend(reversed(subdirs))


def repository_root(start: str | None = None) -> str:
    """The directory holding `.git` at or above `start` (default: the working directory), else
    `start` itself: what SARIF URIs are relative to."""
    d = os.path.abspath(start or os.getcwd())
    top = _GitIgnore().top(d)
    return top if top is not None else d


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
    return printable(s.replace(os.sep, "/"))


# -- reading ---------------------------------------------------------------------------------------
class SourceError(Exception):
    """A file that is not read: `message` completes "`path` ...", `help` says what to do."""

    def __init__(self, message: str, help: str) -> None:
        super().__init__(message)
        self.message = message
        self.help = help


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _not_regular(path: str, mode: int) -> SourceError:
    via = ""
    if os.path.islink(path):
        try:
            via = f" (a symlink to `{printable(os.path.realpath(path))}`)"
        except (OSError, ValueError):
            via = " (a symlink)"
    return SourceError(f"is not a regular file: it is {_kind(mode)}{via}; it was not read", "check only regular source files: remove it, or add it to `extend-exclude`")


def _too_large(size: int | None, limit: int) -> SourceError:
    what = f"{size / 2**20:.1f} MiB" if size is not None else "more"
    return SourceError(f"is too large ({what}, above `max-file-size` = {limit / 2**20:g} MiB); it was not read", "raise `max-file-size` in [tool.stabcheck], or exclude the file (generated code?)")


def name_error(path: str | os.PathLike[str]) -> SourceError | None:
    """A file name that is not valid UTF-8 (Python holds its bytes as surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return SourceError("has a file name that is not valid UTF-8; it was not checked", "rename the file with a UTF-8 name")
    return None


def source_problem(path: str | os.PathLike[str], max_size: int) -> SourceError | None:
    """Why PATH would not be read (`stat` only: nothing is opened), or None."""
    path = os.fspath(path)
    bad = name_error(path)
    if bad is not None:
        return bad
    try:
        st = os.stat(path)  # follows symlinks: a link to /dev/zero is a character device
    except OSError as e:
        return SourceError(f"cannot be read: {e.strerror or e}", "check the file's permissions, or the target of the symlink")
    if not stat.S_ISREG(st.st_mode):
        return _not_regular(path, st.st_mode)
    if st.st_size > max_size:
        return _too_large(st.st_size, max_size)
    return None


def read_source(path: str | os.PathLike[str], max_size: int) -> bytes:
    """The bytes of a regular file of at most MAX_SIZE bytes; raises SourceError otherwise.

    Opened with O_NONBLOCK (opening a FIFO cannot block) and checked again on the open descriptor
    (the path may have been swapped since the `stat`); at most MAX_SIZE + 1 bytes are read."""
    path = os.fspath(path)
    bad = source_problem(path, max_size)
    if bad is not None:
        raise bad
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket
            raise SourceError("is not a regular file: it is a socket; it was not read", "check only regular source files: remove it, or add it to `extend-exclude`") from None
        raise SourceError(f"cannot be read: {e.strerror or e}", "check the file's permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        data = read_fd_bounded(fd, max_size)
        if data is None:
            raise _too_large(None, max_size)
        return data
    except OSError as e:
        raise SourceError(f"cannot be read: {e.strerror or e}", "check the file's permissions") from None
    finally:
        os.close(fd)


def printable(s: str) -> str:
    """S with undecodable bytes of a file name shown as `\\xNN` (valid UTF-8 to print anywhere)."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file-name byte produced
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
