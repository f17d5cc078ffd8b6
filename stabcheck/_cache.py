"""A content-hash cache of static results, as JSON (never pickle).

The cache lives outside the checked tree (`cache_home()`, one directory per project, keyed by a
hash of the project root's real path; `--cache-dir` overrides), and a checked tree is not trusted
to leave it alone: every cache file carries an HMAC under a per-user secret key (`secret_key`,
created 0600 in the cache home), so a planted or edited file is ignored; cache files and the
cache directory are opened without following symlinks and read up to `MAX_BYTES`. A corrupt,
forged or foreign cache file is ignored and rewritten; a symlinked one makes the run uncached,
with a note.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from stabcheck._files import read_fd_bounded, write_atomic_nofollow
from stabcheck.errors import UsageError
from stabcheck.finding import Finding
from stabcheck.suppress import Suppression

MAX_BYTES = 256 << 20  # a cache file larger than this is not read (a planted /dev/zero-like file)
MAGIC = b"stabcheck-cache 2 "
_KEY_BYTES = 32


def cache_home() -> Path:
    """stabcheck's per-user cache directory, outside any checked tree: `$STABCHECK_CACHE_DIR`, else
    `$XDG_CACHE_HOME/stabcheck`, else `~/.cache/stabcheck` (created by whoever writes there)."""
    explicit = os.environ.get("STABCHECK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "stabcheck"


def project_cache_dir(root: Path | str) -> Path:
    """The default cache directory of the project rooted at `root`: `cache_home()/projects/<hash of
    the root's real path>`, so two checkouts never share entries and none lives in the tree."""
    return cache_home() / "projects" / digest(os.path.realpath(root).encode())


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def secret_key(home: Path | None = None) -> bytes | None:
    """The per-user key that authenticates cache files: `<cache home>/key`, 32 random bytes made
    0600 on first use. None (run uncached) when it cannot be made or read, or when it is not a
    regular file of ours that only we can read (anyone who can read it could forge entries)."""
    home = home or cache_home()
    path = home / "key"
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    for _ in range(2):
        key = _read_key(path)
        if key is not None:
            return key
        if os.path.lexists(path):
            return None
        try:  # write it whole under another name, then link: a reader never sees half a key
            tmp = home / f".key-{secrets.token_hex(6)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(_KEY_BYTES))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another stabcheck made it first: use theirs
            finally:
                os.unlink(tmp)
        except OSError:
            return None
    return None


def _read_key(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != _KEY_BYTES or st.st_mode & 0o077:
            return None
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            return None
        key = os.read(fd, _KEY_BYTES + 1)
        return key if len(key) == _KEY_BYTES else None
    finally:
        os.close(fd)


class CacheRefused(Exception):
    """A cache path that must not be followed (a symlink, not a regular file, too large)."""


def read_bounded(path: Path, limit: int = MAX_BYTES) -> bytes | None:
    """The bytes of a regular file, opened without following a symlink and read up to `limit`;
    None when it does not exist; CacheRefused when it is a link, not a regular file, or larger."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(path):
            raise CacheRefused(f"{path} is a symbolic link") from None
        raise CacheRefused(f"{path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CacheRefused(f"{path} is not a regular file")
        if st.st_size > limit:
            raise CacheRefused(f"{path} is larger than {limit} bytes")
        data = read_fd_bounded(fd, limit)
        if data is None:
            raise CacheRefused(f"{path} is larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def mac(secret: bytes, key: str, payload: bytes) -> str:
    return hmac.new(secret, key.encode() + b"\0" + payload, hashlib.sha256).hexdigest()


class Cache:
    """Static results of one configuration (`key`) in `directory`: `get`, `put`, `save`.

    `note` says why the run is uncached when the cache was refused (a symlinked directory or file)."""

    def __init__(self, directory: Path, key: str, secret: bytes | None = None) -> None:
        self.file = directory / f"static-{key}.json"
        self.entries: dict[str, Any] = {}
        self.dirty = False
        self.key = key
        self.directory = directory
        self.note: str | None = None
        self.secret = secret if secret is not None else secret_key()
        self.usable = self.secret is not None
        if not self.usable:
            return
        try:
            if os.path.islink(directory):
                raise CacheRefused(f"the cache directory {directory} is a symbolic link")
            raw = read_bounded(self.file)
        except CacheRefused as e:
            self.note = f"{e}; not followed, this run is uncached"
            self.usable = False
            return
        if raw is None:
            return
        self.entries = self._verified(raw)

    def _verified(self, raw: bytes) -> dict[str, Any]:
        """The entries of a cache file whose MAC is ours and whose content is well-formed; else {}."""
        head, _, payload = raw.partition(b"\n")
        if not head.startswith(MAGIC) or self.secret is None:
            return {}
        if not hmac.compare_digest(head[len(MAGIC) :], mac(self.secret, self.key, payload).encode("ascii")):
            return {}  # planted, edited, or written under another key
        try:
            data = json.loads(payload.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return {}
        if isinstance(data, dict) and data.get("key") == self.key and isinstance(data.get("files"), dict):
            return data["files"]
        return {}

    def get(self, path: str, h: str) -> tuple[list[Finding], list[Suppression]] | None:
        """The cached result of `path` if its content hash is `h` and the entry is well-formed."""
        if not self.usable:
            return None
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

    def put(self, path: str, h: str, findings: list[Finding], sups: list[Suppression], xfile: dict[str, Any] | None = None) -> None:
        if not self.usable:
            return
        self.entries[path] = {"hash": h, "findings": [f.to_dict() for f in findings], "suppressions": [s.to_list() for s in sups]}
        if xfile is not None:
            self.entries[path]["xfile"] = xfile
        self.dirty = True

    def extra(self, path: str) -> Any:
        """The entry's calls across files (`static.xfile`), unvalidated: the caller checks them."""
        e = self.entries.get(path)
        return e.get("xfile") if isinstance(e, dict) else None

    def save(self) -> None:
        if not self.dirty or not self.usable or self.secret is None:
            return
        payload = json.dumps({"key": self.key, "files": self.entries}, separators=(",", ":")).encode("utf-8")
        text = (MAGIC + mac(self.secret, self.key, payload).encode() + b"\n" + payload).decode("utf-8")
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if os.path.islink(self.directory):
                return
            gitignore = self.directory / ".gitignore"
            if not os.path.lexists(gitignore):  # a cache inside a work tree stays out of git
                write_atomic_nofollow(gitignore, "*\n", what="cache file")
            write_atomic_nofollow(self.file, text, what="cache file")
        except (OSError, UsageError):
            pass  # a read-only or refused cache directory: run uncached


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
    if not isinstance(d.get("evidence"), dict) or not _valid_chains(d.get("chains", [])):
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


def _valid_chains(chains: object) -> bool:
    """`chains`: a list of lists of frames {path, line, col, function, via}."""
    if not isinstance(chains, list):
        return False
    for c in chains:
        if not isinstance(c, list):
            return False
        for fr in c:
            if not isinstance(fr, dict) or not all(isinstance(fr.get(k), str) for k in ("path", "function", "via")):
                return False
            if not (_is_int(fr.get("line")) and _is_int(fr.get("col"))):
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
