"""The typed tier: mypy's inferred types make the static rules precise and follow calls across files.

Opt-in (`--types`, `types = true`, `STABCHECK_TYPES=1`): its first run in an environment analyses
jax's own sources (tens of seconds), which the default check must not pay (issue 15).

`prepare(files, cache_root)` runs mypy over the checked files, incrementally, in one subprocess
per import root (`import_root`), one after the other, each bounded in time and memory
(`stabcheck.static._mypy_child`; mypy never imports user code, and runs with stabcheck's own
options: no config file, no plugins), and turns its type map into per-file `FileTypes`: the kind of each expression ("array", "static", "optional",
"tuple:2", ...), the def each call runs (through `jit`, `partial`, bound methods, `__call__`),
declared parameter/return kinds. A file's `FileTypes` depends only on the file and what it
imports: mypy runs once per import root, in that root's own process, and no fact crosses from one
checked file to another, so a file's typed findings are the same whether it is checked alone, with
its package, or beside other libraries (issue 16), and a root mypy cannot take (a crash, a
blocking error, a bound) costs only that root's files their types. The traced-value analysis
(`Analysis(tree, names, types)`) asks a `FileTypes`:

* a call whose declared and inferred result is `int`/`bool`/`str`/`None` is static;
* a parameter declared (through any alias) as an array is an array, one declared `int`/`bool`/
  `str` is static;
* a callee it cannot see syntactically (`self.encoder(x)`, `model.apply(x)`, `step = jit(f)`)
  resolves to its def in the same file.

`refine(...)` runs a file's static rules with and without types: findings only the typed run
makes carry `evidence["stage"] = "typed"`, findings types prove wrong are dropped, and the
declared/inferred union checks (STB202/STB201) that need mypy's view are added.

The cache (`<cache>/typed/env-<key>/`: mypy's own cache and one facts file per project) is keyed
by the versions of stabcheck, mypy, Python and every installed distribution, and shared by all
projects checked in that environment; an unchanged root costs a JSON read, without starting
mypy. A mypy crash, a timeout or the memory bound degrades that root to the untyped analysis with
one note naming it; a file mypy stops on (a relative import outside a package) is left out of its
run alone.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabcheck._sizes import parse_size
from stabcheck._cache import MAGIC, CacheRefused, code_fingerprint, mac, read_bounded, secret_key
from stabcheck.errors import ConfigError
from stabcheck.finding import Finding
from stabcheck.static.engine import Dispatcher, FileResult, check_bytes

if TYPE_CHECKING:
    from stabcheck.config import Config
    from stabcheck.rule import Rule

FACTS_VERSION = "9"
STATIC_KINDS = frozenset({"static", "none"})


def _key(node: ast.AST) -> str | None:
    end_line = getattr(node, "end_lineno", None)
    end_col = getattr(node, "end_col_offset", None)
    if end_line is None or end_col is None:
        return None
    return f"{node.lineno}:{node.col_offset}:{end_line}:{end_col}"  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class FileTypes:
    """mypy's view of one file, keyed by `ast` positions; the analysis' type oracle."""

    module: str
    exprs: dict[str, str]
    callees: dict[str, str]
    functions: dict[str, dict[str, Any]]
    static_calls: frozenset[str] = frozenset()

    # -- what the analysis asks --------------------------------------------------------------
    def kind(self, expr: ast.AST) -> str | None:
        """The kind of an expression ("array", "static", "optional", "tuple:2", ...) or None."""
        if isinstance(expr, ast.Call):
            k = _key(expr)
            if k in self.static_calls:
                return "static"
            kd = self.exprs.get(k) if k else None
            return None if kd in STATIC_KINDS else kd  # an untrusted `-> int` is not proof
        k = _key(expr)
        return self.exprs.get(k) if k else None

    def is_static_call(self, call: ast.Call) -> bool:
        """`count(x)` declared and inferred to return int/bool/str/None: a concrete Python value."""
        return _key(call) in self.static_calls

    def target(self, callee: ast.AST) -> str | None:
        """The full name (`pkg.mod.Cls.fn`) of the checked def a callee expression runs."""
        k = _key(callee)
        return self.callees.get(k) if k else None

    def callee(self, callee: ast.AST) -> str | None:
        """The qualified name within this module of the def `callee` runs, or None."""
        full = self.target(callee)
        prefix = self.module + "."
        if full is None or not full.startswith(prefix):
            return None
        return full[len(prefix) :]

    def param_kind(self, function: str, param: str) -> str | None:
        fn = self.functions.get(function)
        return fn["kinds"].get(param) if fn is not None else None

    def declared_return(self, function: str) -> tuple[str | None, str]:
        fn = self.functions.get(function)
        if fn is None:
            return None, ""
        return fn.get("declared"), fn.get("declared_text", "")

    def seed_items(self) -> Iterator[tuple[str, frozenset[str], bool]]:
        """Defs of this file that other files' transformed code calls: none from the typed tier,
        whose view of a file rests on the file and its imports alone (issue 16: a seed from a
        caller made a finding appear only when the caller was in the same run)."""
        return iter(())

    def digest(self) -> str:
        """Changes whenever what the analysis would see of this file changes (for result caches)."""
        blob = json.dumps([self.module, self.exprs, self.callees, self.functions, sorted(self.static_calls)], sort_keys=True, default=list)
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class Prepared:
    """The typed tier's result for one run: types per (absolute) path, notes, timings."""

    files: dict[str, FileTypes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rechecked: int = 0  # checked files whose facts were extracted afresh
    stopped: tuple[str, str] | None = None  # ("timeout" | "memory", what happened): a bound stopped mypy on a root (the first)
    analysed: int = 0  # modules mypy analysed without its cache (jax's own on a first run)


# -- the registry `lookup` answers from --------------------------------------------------------
_REGISTRY: dict[str, FileTypes] = {}


def install(files: dict[str, FileTypes]) -> None:
    """Make `files` (by absolute path) the types `lookup` answers: in the main process and workers."""
    _REGISTRY.clear()
    _REGISTRY.update(files)


def registry() -> dict[str, FileTypes]:
    """A copy of the installed types (handed to worker processes)."""
    return dict(_REGISTRY)


def lookup(path: str | os.PathLike[str]) -> FileTypes | None:
    if not _REGISTRY:
        return None
    return _REGISTRY.get(os.path.abspath(path))


# -- running mypy ---------------------------------------------------------------------------
ENV_VAR = "STABCHECK_TYPES"
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})
DEFAULT_TIMEOUT = 300.0  # seconds: a first run on a large project (jax's own 950 files) takes 3-5 min
DEFAULT_MEMORY = "2GiB"  # a first run on one small file peaks near 500 MiB, jax's own sources near 2 GiB


def on_by_default() -> bool:
    """Whether the typed tier runs when neither the command line (`--types/--no-types`) nor the
    config (`types = ...`) says: `STABCHECK_TYPES` if set, else off (issue 15: the default check
    costs what the static pass costs; mypy's first run analyses jax's sources, tens of seconds)."""
    value = os.environ.get(ENV_VAR)
    if value is None:
        return False
    v = value.strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise ConfigError(ENV_VAR, value, "true or false (1/0, yes/no, on/off)", "the environment")


def memory_bytes(text: str) -> int | None:
    """'2GiB', '512MiB', '1.5GB', '0'/'none' (no bound) -> bytes or None; ValueError otherwise."""
    t = str(text).strip().lower()
    if t in ("0", "none", "off"):
        return None
    n = parse_size(t)
    if n is None:
        raise ValueError(text)
    return n


@dataclass(frozen=True, slots=True)
class Bounds:
    """What the mypy subprocess may use: wall-clock seconds and bytes of data (None: unbounded)."""

    timeout: float = DEFAULT_TIMEOUT
    memory: int | None = 2 << 30
    memory_text: str = DEFAULT_MEMORY


def prepare(
    files: Sequence[Path],
    cache_root: Path | None = None,
    *,
    bounds: Bounds | None = None,
    on_run: Callable[[int, bool], None] | None = None,
) -> Prepared:
    """Run mypy over `files` (incrementally, one bounded subprocess per import root) and compute
    the per-file types. `cache_root` is the typed tier's cache (`<cache>/typed`), shared by every
    project checked with the same versions; None: a temporary one, removed. `on_run(n, first)`
    is called just before mypy starts (not when the cached facts answer): n files, and whether
    mypy's cache for this environment is empty (a first run: jax's sources are analysed).

    Each import root (`import_root`) is its own unit: its own mypy process, bounds, cached facts
    and notes. A root mypy cannot take (a crash, a blocking error, a bound) is checked untyped,
    with one note naming it; the other roots keep their types (issue 16)."""
    start = time.perf_counter()
    out = Prepared()
    py = [Path(os.path.abspath(f)) for f in files if str(f).endswith((".py", ".pyi"))]
    if not py:
        return out
    tmp: str | None = None
    if cache_root is None:
        tmp = tempfile.mkdtemp(prefix="stabcheck-types-")
        cache_root = Path(tmp)
    try:
        hashes = {str(p): _hash(p) for p in py}
        env = Path(os.path.abspath(cache_root)) / f"env-{_env_key()}"  # absolute: mypy runs in each root's directory
        facts_file = env / f"facts-{_project_key(hashes)}.json"
        secret = _secret() if tmp is None else b"temporary"  # a private temporary directory
        saved = _read_facts(facts_file, secret)
        old = _facts_of(saved)
        done = _roots_of(saved, "roots")  # root key -> {"notes": [...]}: facts of these roots are current
        was_stopped = _roots_of(saved, "stopped")  # root key -> the bound that stopped mypy there
        b = bounds or Bounds()
        units = [_Unit(root, paths, _tree_key({p: hashes[p] for p in paths})) for root, paths in groups(hashes)]
        todo: list[_Unit] = []
        for u in units:
            if u.key in done and all(old[p].get("hash") == hashes[p] for p in u.paths if p in old):  # unchanged: mypy has nothing to do
                u.files = {p: old[p] for p in u.paths if p in old}
                u.notes = [n for n in done[u.key].get("notes", ()) if isinstance(n, str)]  # files mypy left out, as when they were
                u.ok = True
            elif u.key in was_stopped and _within(b, was_stopped[u.key]):
                # the same files stopped mypy at this bound before: paying the bound again on
                # every run (5 minutes, by default) would buy the same note
                u.stopped = was_stopped[u.key]
                u.notes = [_off(u, len(units), f"{u.stopped.get('what')} on these same files in an earlier run, and is not retried until they, the bound or the installed packages change")]
            else:
                todo.append(u)
        if todo:
            _run_mypy(todo, len(units), hashes, env, old, out, b, on_run)
        for u in units:
            out.notes.extend(u.notes)
            if u.ok:
                out.files.update(_post(u.files))
        if todo:
            _save_facts(
                facts_file,
                secret,
                {
                    "files": {**old, **{p: v for u in todo for p, v in u.files.items()}},
                    "roots": {u.key: {"notes": u.notes} for u in units if u.ok},
                    "stopped": {u.key: u.stopped for u in units if u.stopped is not None},
                },
            )
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish(out, start, tmp, cache_root, env)


@dataclass(slots=True)
class _Unit:
    """One import root of a run: its checked files, what mypy made of them, and its notes."""

    root: str
    paths: list[str]
    key: str  # the root's files and their contents (`_tree_key`)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> facts
    notes: list[str] = field(default_factory=list)
    ok: bool = False  # mypy ran (or its cached facts answer): these files have types
    stopped: dict[str, Any] | None = None  # a time or memory bound stopped mypy here


def import_root(path: str, _memo: dict[str, str | None] | None = None) -> str:
    """The directory mypy takes as a checked file's base (`mypy.find_sources.SourceFinder.
    crawl_up` with stabcheck's options: namespace packages, no explicit package bases): above
    the outermost package holding it, or its own directory. A function of the file's path and
    the `__init__.py` files above it alone, so a root's unit never depends on the rest of the
    run. Computed here without importing mypy (the checking process never does); a directory
    with an `__init__.py` but no valid package name (mypy refuses the whole source list) is a
    root of its own, so mypy's refusal costs only its files their types."""
    memo: dict[str, str | None] = {} if _memo is None else _memo
    d = os.path.dirname(os.path.abspath(path))
    try:
        return _crawl(d, memo) or d
    except _NotAPackage as e:
        return e.where


class _NotAPackage(Exception):
    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def _crawl(d: str, memo: dict[str, str | None]) -> str | None:
    """`SourceFinder._crawl_up_helper`'s base directory for directory `d`, or None."""
    if d in memo:
        return memo[d]
    parent, name = os.path.split(d)
    name = name.removesuffix("-stubs")  # a PEP 561 stub-only directory
    base: str | None
    if any(os.path.isfile(os.path.join(d, "__init__" + ext)) for ext in (".pyi", ".py")):
        if not name.isidentifier():
            raise _NotAPackage(d)
        base = _crawl(parent, memo) or parent
    elif not name or not parent or parent == d or not name.isidentifier():
        base = None
    else:
        base = _crawl(parent, memo)  # a namespace package only if something above is a package
    memo[d] = base
    return base


def groups(hashes: dict[str, str | None]) -> list[tuple[str, list[str]]]:
    """The checked files by import root (`import_root`), in a fixed order."""
    memo: dict[str, str | None] = {}
    by: dict[str, list[str]] = {}
    for p in hashes:
        by.setdefault(import_root(p, memo), []).append(p)
    return [(r, sorted(by[r])) for r in sorted(by)]


def _roots_of(data: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    value = data.get(key)
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, dict)}


def _off(u: _Unit, n_units: int, what: str) -> str:
    """The one note of a root the typed tier could not serve."""
    if n_units == 1:
        return f"typed tier off for this run: {what}; the untyped analysis was used"
    n = len(u.paths)
    return f"typed tier off for the import root `{_rel(u.root)}` ({n} file{'s' if n != 1 else ''}): {what}; its files were checked untyped"


def _finish(out: Prepared, start: float, tmp: str | None, cache_root: Path, env: Path) -> Prepared:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        _prune(cache_root, env)
    out.seconds = time.perf_counter() - start
    return out


def _within(b: Bounds, stopped: dict[str, Any]) -> bool:
    """Is bound `b` no looser than the one that stopped mypy before?"""
    if stopped.get("kind") == "timeout":
        return isinstance(stopped.get("timeout"), (int, float)) and b.timeout <= stopped["timeout"]
    if stopped.get("kind") == "memory":
        return b.memory is not None and isinstance(stopped.get("memory"), int) and b.memory <= stopped["memory"]
    return False


def _run_mypy(
    todo: list[_Unit],
    n_units: int,
    hashes: dict[str, str | None],
    env: Path,
    old: dict[str, dict[str, Any]],
    out: Prepared,
    bounds: Bounds,
    on_run: Callable[[int, bool], None] | None,
) -> None:
    """Fill in each unit's facts from mypy, one bounded subprocess per unit, one after the other
    (mypy is single-threaded; a second one at once would only compete for the same cores and
    double the peak memory); a unit mypy cannot take gets one note and no types."""
    try:
        found = importlib.util.find_spec("mypy") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        out.notes.append("typed tier off: mypy is not installed (`pip install mypy`); the untyped analysis was used")
        return
    # a file `ast` cannot parse gets its STB901 from the static stage; mypy would stop on it
    parsed = {id(u): [Path(p) for p in u.paths if _parses(Path(p))] for u in todo}
    if on_run is not None and any(parsed.values()):
        on_run(sum(len(v) for v in parsed.values()), not (env / "mypy").is_dir())
    for u in todo:
        if not parsed[id(u)]:
            u.ok = True  # nothing mypy could read: the static stage reports each file's STB901
            continue
        answer = _child(parsed[id(u)], env, {p: {"hash": old[p].get("hash"), "module": old[p].get("module")} for p in u.paths if p in old}, bounds, u)
        if answer is None:
            u.notes = [_off(u, n_units, u.notes[0])] if u.notes else []
            continue
        fresh: dict[str, dict[str, Any]] = answer.get("fresh", {})
        dropped: dict[str, str] = answer.get("dropped", {})
        out.rechecked += len(fresh)
        out.analysed += int(answer.get("analysed", 0))
        if dropped:
            shown = "; ".join(f"`{_rel(p)}`: {why}" for p, why in sorted(dropped.items())[:3])
            more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
            n = len(dropped)
            u.notes.append(f"typed tier: {n} file{'s' if n != 1 else ''} left out of mypy's run and checked without types ({shown}{more}); the other files have types")
        for p in answer.get("paths", []):
            if p in fresh:
                u.files[p] = {**fresh[p], "hash": hashes.get(p)}
            elif p in old:
                u.files[p] = old[p]
        u.ok = True
    stops = [u.stopped for u in todo if u.stopped is not None]
    if stops:
        out.stopped = (str(stops[0].get("kind")), str(stops[0].get("what")))


def _child(files: list[Path], env: Path, old: dict[str, Any], bounds: Bounds, unit: _Unit) -> dict[str, Any] | None:
    """Run `stabcheck.static._mypy_child` over one unit's files with the time and memory bounds;
    its answer, or None with what went wrong as `unit.notes[0]` (crash, timeout, memory; a bound
    also in `unit.stopped`). Its request and result files are removed."""
    work = tempfile.mkdtemp(prefix="stabcheck-mypy-")
    try:
        request, result, errors = (os.path.join(work, n) for n in ("request.json", "result.json", "stderr.txt"))
        with open(request, "w", encoding="utf-8") as fh:
            json.dump({"files": [str(f) for f in files], "cache_dir": str(env), "old": old, "memory": bounds.memory, "seconds": bounds.timeout}, fh)
        home = str(Path(__file__).resolve().parents[2])  # the directory stabcheck is imported from
        child_env = dict(os.environ)
        # the child imports stabcheck from where this process did, never from the working
        # directory (`python -m` would put it first on sys.path: a checked repository could
        # shadow `mypy` or `stabcheck` there)
        child_env["PYTHONSAFEPATH"] = "1"
        if home not in _site_dirs():  # a checkout run in place: put it first (site-packages never, it would precede the stdlib)
            child_env["PYTHONPATH"] = os.pathsep.join([home, *filter(None, [os.environ.get("PYTHONPATH")])])
        with open(errors, "wb") as err:
            # in the root's directory: mypy puts its working directory on its search path, and a
            # root's types must not depend on where stabcheck was started either
            proc = subprocess.Popen([sys.executable, "-m", "stabcheck.static._mypy_child", request, result], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=child_env, cwd=unit.root)
            try:
                rc = proc.wait(timeout=bounds.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                what = f"mypy ran past its time bound ({bounds.timeout:g} s, `types-timeout`)"
                unit.stopped = {"kind": "timeout", "what": what, "timeout": bounds.timeout, "memory": bounds.memory}
                unit.notes = [f"{what} and was stopped"]
                return None
            finally:
                if proc.poll() is None:  # interrupted (Ctrl-C): never leave mypy running
                    proc.kill()
                    proc.wait()
        answer = _read_json(Path(result))
        if answer.get("ok") is True:
            return answer
        tail = Path(errors).read_text(encoding="utf-8", errors="replace")[-2000:]
        why = answer.get("why")
        out_of_memory = any(t in tail for t in ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory", "can't start new thread"))
        out_of_memory |= rc == -signal.SIGABRT  # under a memory bound: an allocation the interpreter could not survive ("Fatal Python error", or C++ "skipping backtrace printing")
        if why == "memory" or rc == 3 or (bounds.memory is not None and out_of_memory):  # 3: `_mypy_child.MEMORY_EXIT`
            what = f"mypy ran out of its memory bound ({bounds.memory_text}, `types-memory-limit`)"
            unit.stopped = {"kind": "memory", "what": what, "timeout": bounds.timeout, "memory": bounds.memory}
        elif why in ("mypy", "import"):
            what = str(answer.get("message", ""))
        elif why == "crash":
            what = f"mypy crashed ({answer.get('message', '')})"
        elif rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
            what = f"mypy crashed ({name}{', a file too deeply nested for it' if name == 'SIGSEGV' else ''}{': ' + last[:160] if last else ''})"
        else:
            what = f"mypy's process exited with status {rc}"
        unit.notes = [what]
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _site_dirs() -> set[str]:
    try:
        dirs = [*site.getsitepackages(), site.getusersitepackages()]
    except AttributeError:  # pragma: no cover - a virtualenv's old site.py
        dirs = []
    return {os.path.abspath(d) for d in dirs}


def _parses(p: Path) -> bool:
    try:
        ast.parse(p.read_bytes(), filename=str(p))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _rel(p: str) -> str:
    try:
        r = os.path.relpath(p)
    except ValueError:
        return p
    return p if r.startswith("..") else r


def _env_key() -> str:
    """What mypy's results depend on besides the checked files: stabcheck (its own code: sizes
    and times of every module, so a new version too), mypy, Python, and the name and version of every installed distribution (read from
    the `*.dist-info` names on the import path: installing, upgrading or removing a package
    changes the key). The typed cache is never trusted across any of these."""
    dists: set[str] = set()
    for d in sys.path:
        if not d or not os.path.isabs(d) or os.path.abspath(d) == os.getcwd():
            continue
        try:
            with os.scandir(d) as it:
                dists.update(e.name for e in it if e.name.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{FACTS_VERSION}|{code_fingerprint()}|{sys.version}|{sys.platform}".encode())
    h.update("\n".join(sorted(dists)).encode())
    return h.hexdigest()


def _project_key(hashes: dict[str, str | None]) -> str:
    """One facts file per project: the directory that holds the checked files."""
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in hashes])
    except ValueError:
        root = ""
    return hashlib.blake2b(root.encode(), digest_size=8).hexdigest()


def _tree_key(hashes: dict[str, str | None]) -> str:
    """The checked files and their contents (the environment is in the directory's key)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(FACTS_VERSION.encode())
    for path, digest in sorted(hashes.items()):
        h.update(f"{path}={digest}\n".encode())
    return h.hexdigest()


_KEEP_ENVS = 4  # environments whose mypy caches are kept (an upgrade leaves the old one behind)


def _prune(root: Path, current: Path) -> None:
    """Mark `current` as used now and remove all but the most recently used environments."""
    try:
        os.utime(current)
        envs = sorted((e for e in os.scandir(root) if e.name.startswith("env-") and e.is_dir(follow_symlinks=False)), key=lambda e: e.stat(follow_symlinks=False).st_mtime, reverse=True)
    except OSError:
        return
    for e in envs[_KEEP_ENVS:]:
        if e.path != str(current):
            shutil.rmtree(e.path, ignore_errors=True)


def _hash(p: Path) -> str | None:
    try:
        return hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    """A cache file's JSON object; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _facts_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = data.get("files")
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("exprs"), dict)}


_FACTS_MAC_KEY = "stabcheck-typed-facts"


def _secret() -> bytes | None:
    """The per-user key of stabcheck's caches (`_cache.secret_key`, kept in the cache home even
    when `--cache-dir` points into a checkout); None: facts are neither trusted nor written."""
    return secret_key()


def _read_facts(path: Path, secret: bytes | None) -> dict[str, Any]:
    """A facts file authenticated like every stabcheck cache file (an HMAC under the per-user key,
    read without following a symlink): a planted or edited one is ignored and mypy runs."""
    if secret is None:
        return {}
    try:
        raw = read_bounded(path)
    except CacheRefused:
        return {}
    if raw is None:
        return {}
    head, _, payload = raw.partition(b"\n")
    if not head.startswith(MAGIC) or not hmac.compare_digest(head[len(MAGIC) :], mac(secret, _FACTS_MAC_KEY, payload).encode("ascii")):
        return {}
    try:
        data = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_facts(path: Path, secret: bytes | None, data: dict[str, Any]) -> None:
    if secret is None:
        return
    payload = json.dumps(data).encode("utf-8")
    _save_bytes(path, MAGIC + mac(secret, _FACTS_MAC_KEY, payload).encode("ascii") + b"\n" + payload)


def _save_bytes(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.path.islink(path.parent):
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only cache directory costs speed, not correctness


# -- per-file post-processing ---------------------------------------------------------------------
def _post(raw: dict[str, dict[str, Any]]) -> dict[str, FileTypes]:
    """Each file's `FileTypes` from its own facts alone: a file's types never depend on which
    other files are in the run (issue 16). A call into another module is judged by mypy's view
    of it through the import (its declared type), whether or not that module is checked too."""
    return {p: _file_types(v) for p, v in raw.items()}


def _file_types(v: dict[str, Any]) -> FileTypes:
    module = v["module"]
    functions: dict[str, dict[str, Any]] = v["functions"]
    prefix = module + "."

    def own(target: str) -> dict[str, Any] | None:
        return functions.get(target[len(prefix) :]) if target.startswith(prefix) else None

    def trusted_static(target: str) -> bool:
        fn = own(target)
        if fn is None:
            return True  # another module's declared `-> int`, as mypy reads it through the import
        rets = fn.get("returns") or []
        return bool(rets) and all(r in STATIC_KINDS for r in rets) and fn.get("declared") in (*STATIC_KINDS, None)

    aliases = {a: t for a, t in v.get("aliases", {}).items() if a.startswith(prefix)}

    def real(target: str) -> str:
        return aliases.get(target[1:], "") if target.startswith("@") else target

    exprs = dict(v["exprs"])
    static_calls: set[str] = set()
    for k, (kd, tgt) in v.get("calls", {}).items():
        tgt = real(tgt)
        fn = own(tgt) if tgt else None
        if kd == "any" and fn is not None:  # `step(x)` with `step = jax.jit(_step)`
            kd = fn.get("declared") or "any"
            if kd not in ("any", "static", "none"):
                exprs[k] = kd
        if kd in STATIC_KINDS and (not tgt or trusted_static(tgt)):
            static_calls.add(k)
    callees = {k: t for k, t in ((k, real(t)) for k, t in v["callees"].items()) if t and own(t) is not None}
    return FileTypes(module, exprs, callees, functions, frozenset(static_calls))


# -- running the rules with types -------------------------------------------------------------
def refine(data: bytes, path: str, config: Config, dispatcher: Dispatcher, types: FileTypes, untyped: FileResult) -> FileResult:
    """The file's findings with types: typed-only ones marked, refuted ones dropped, and the
    findings of the enabled rules' `typed_check`s (the union checks) added."""
    try:
        typed = check_bytes(data, path, config, dispatcher, types)
    except Exception:  # pragma: no cover - a bug in the typed tier must not cost the untyped findings
        return untyped
    try:  # one tree for the proofs and the union checks (check_bytes keeps its own to itself)
        tree: ast.Module | None = ast.parse(data, filename=path)
    except (SyntaxError, ValueError, RecursionError):
        tree = None
    before = {f.key for f in untyped.findings}
    nodes: dict[tuple[int, int, int, int], ast.AST] = {}
    if tree is not None and any(f.key not in before and f.code in _NEEDS_ARRAY for f in typed.findings):
        nodes = _spans(tree)
    findings = [f if f.key in before else f.refine(evidence={**f.evidence, "stage": "typed"}) for f in typed.findings if f.key in before or _proved(f, types, nodes)]
    have = {f.key for f in findings}
    extra: list[Finding] = []
    for check in dispatcher.typed_checks if tree is not None else ():
        try:
            extra += check(tree, data, path, types)
        except Exception:  # pragma: no cover - as above
            pass
    for f in extra:
        if f.key not in have:
            findings.append(f)
            have.add(f.key)
    return FileResult(findings, typed.suppressions)


# tracer leaks: a finding only the typed run makes must rest on mypy's own word that the value
# is a JAX array. Cross-file seeds and mypy-resolved callees carry the untyped heuristics into
# other files; in library code they reach functions that handle concrete and traced values alike
# (`node_replace_fns.count(node) == 0`, `is_concrete(x)`, `np.asarray(i)` after
# `isinstance(i, (int, np.integer))`), where mypy says "bool", "NumPy", or has no opinion (`Any`).
_NEEDS_ARRAY = frozenset({"STB101", "STB102", "STB103", "STB104"})


def _proved(f: Finding, types: FileTypes, nodes: dict[tuple[int, int, int, int], ast.AST]) -> bool:
    """Does mypy type the value the finding is about as a JAX array? For STB101 that is the tested
    expression (the finding's span); for the others, what the reported node consumes: a call's
    arguments (`float(x)`, `np.asarray(x)`), an index, an assigned value."""
    if f.code not in _NEEDS_ARRAY:
        return True
    s = f.span
    node = nodes.get((s.line, s.col - 1, s.end_line or -1, (s.end_col or 0) - 1))
    if node is None:
        return False
    values: list[ast.AST] = [node]
    if f.code != "STB101":
        if isinstance(node, ast.Call):
            values = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.Subscript):
            values = [node.slice]
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            values = [node.value]
    return any(types.exprs.get(_key(v) or "") == "array" for v in values)


def _spans(tree: ast.AST) -> dict[tuple[int, int, int, int], ast.AST]:
    out: dict[tuple[int, int, int, int], ast.AST] = {}
    for n in ast.walk(tree):
        end = getattr(n, "end_lineno", None)
        if end is not None:
            out.setdefault((n.lineno, n.col_offset, end, n.end_col_offset), n)  # type: ignore[attr-defined]
    return out


# -- benchmark ------------------------------------------------------------------------------------
def measure(files: Sequence[Path], config: Config, rules: Sequence[type[Rule]]) -> dict[str, Any]:
    """Cold and warm cost of the typed tier on the given files, next to the untyped static pass
    of the given rules.

    Cold: empty cache directory; warm: the same directory again, nothing changed.
    Returns seconds and the ratio warm/cold (target: under 0.2)."""
    disp = Dispatcher(rules)
    t0 = time.perf_counter()
    for f in files:
        check_bytes(f.read_bytes(), str(f), config, disp)
    untyped = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="stabcheck-bench-") as d:
        cold = prepare(files, Path(d))
        warm = prepare(files, Path(d))
    return {
        "files": len(files),
        "untyped_static_s": round(untyped, 4),
        "typed_cold_s": round(cold.seconds, 4),
        "typed_warm_s": round(warm.seconds, 4),
        "warm_over_cold": round(warm.seconds / cold.seconds, 4) if cold.seconds else None,
        "rechecked_warm": warm.rechecked,
        "typed_files": len(cold.files),
        "notes": cold.notes + warm.notes,
    }
