"""Reading and writing files in a checked tree that may be hostile.

`read_fd_bounded` reads an open file up to a bound (sources, cache entries: never a whole
`/dev/zero` or a planted multi-gigabyte file). Writing the files a user names (`--output-file`, `--baseline`, the pytest plugin's report)
safely in a checked tree that may be hostile: a committed symlink `stabcheck-junit.xml ->
<site-packages>/zz.pth` must not turn a CI report into code that runs at the next Python start.

`write_atomic_nofollow` refuses a symlink (or anything but a regular file) at the path, and for a
relative path at any directory on the way to it, and replaces the file atomically (a temporary
file in the same directory, then `os.replace`, which renames over a directory entry and never
writes through a link): a reader sees the old report or the new one, never half of one.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from stabcheck.errors import UsageError

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def read_fd_bounded(fd: int, limit: int) -> bytes | None:
    """The contents of the open file `fd`, read in 1 MiB chunks; None when it holds more than
    `limit` bytes (it is never read past `limit + 1`)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


def write_atomic_nofollow(path: Path | str, text: str, *, what: str = "--output-file") -> None:
    """Write `text` (UTF-8) to `path`, atomically, following no symlink; UsageError when it cannot."""
    data = text.encode("utf-8")
    shown = str(path)
    name = os.path.basename(shown)
    if not name or name in (".", ".."):
        raise UsageError(f"cannot write {what} {shown}: not a file name")
    if os.open not in os.supports_dir_fd:  # no openat (Windows): the same checks by path
        _write_by_path(shown, data, what)
        return
    dir_fd = _open_parent(shown, what)
    try:
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise UsageError(f"cannot write {what} {shown}: {e.strerror or e}") from None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UsageError(f"refusing to write {what} {shown}: it is a symbolic link (remove it, or write to another path)")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise UsageError(f"refusing to write {what} {shown}: it exists and is not a regular file")
        mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666  # a new file: 0o666 less the umask
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        except OSError as e:
            raise UsageError(f"cannot write {what} {shown}: {e.strerror or e}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                if st is not None:
                    os.fchmod(fh.fileno(), mode)  # a replaced report keeps its permissions
                fh.write(data)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise UsageError(f"cannot write {what} {shown}: {e.strerror or e}") from None
    finally:
        os.close(dir_fd)


def _write_by_path(shown: str, data: bytes, what: str) -> None:
    parent = os.path.dirname(shown) or "."
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {what} {shown}: directory {parent} does not exist")
    if os.path.islink(shown):
        raise UsageError(f"refusing to write {what} {shown}: it is a symbolic link (remove it, or write to another path)")
    if os.path.exists(shown) and not os.path.isfile(shown):
        raise UsageError(f"refusing to write {what} {shown}: it exists and is not a regular file")
    tmp = os.path.join(parent, f".{os.path.basename(shown)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.replace(tmp, shown)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"cannot write {what} {shown}: {e.strerror or e}") from None


def _open_parent(shown: str, what: str) -> int:
    """A descriptor of the directory that will hold `shown`. The directories of a relative path
    lie in the (possibly hostile) working tree: each is opened without following a symlink. An
    absolute path's directories are the user's own choice and are followed."""
    parent = os.path.dirname(shown)
    if os.path.isabs(shown):
        try:
            return os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise UsageError(f"cannot write {what} {shown}: directory {parent} does not exist") from None
        except OSError as e:
            raise UsageError(f"cannot write {what} {shown}: {parent}: {e.strerror or e}") from None
    fd = os.open(".", _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    walked = ""
    for part in [p for p in parent.split(os.sep) if p not in ("", ".")]:
        walked = os.path.join(walked, part)
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            raise UsageError(f"cannot write {what} {shown}: directory {walked} does not exist") from None
        except OSError as e:
            os.close(fd)
            if os.path.islink(walked):
                raise UsageError(f"refusing to write {what} {shown}: {walked} is a symbolic link") from None
            raise UsageError(f"cannot write {what} {shown}: {walked}: {e.strerror or e}") from None
        os.close(fd)
        fd = nxt
    return fd
