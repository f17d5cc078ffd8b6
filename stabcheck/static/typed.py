"""The typed tier: mypy's inferred types make the static rules precise and follow calls across files.

`prepare(files, cache_root)` runs mypy once (as a library, incrementally, never importing user
code) over the checked files and turns its type map into per-file `FileTypes`: the kind of each
expression ("array", "static", "optional", "tuple:2", ...), the def each call runs (through
`jit`, `partial`, bound methods, `__call__`), declared parameter/return kinds, and the
*seeds*: functions of this file that a transformed function of another file calls with traced
arguments. The traced-value analysis (`Analysis(tree, names, types)`) asks a `FileTypes`:

* a call whose declared and inferred result is `int`/`bool`/`str`/`None` is static;
* a parameter declared (through any alias) as an array is an array, one declared `int`/`bool`/
  `str` is static;
* a callee it cannot see syntactically (`self.encoder(x)`, `model.apply(x)`, `step = jit(f)`)
  resolves to its def; a callee in another checked file is seeded as transformed there.

`refine(...)` runs a file's static rules with and without types: findings only the typed run
makes carry `evidence["stage"] = "typed"`, findings types prove wrong are dropped, and the
declared/inferred union checks (STB202/STB201) that need mypy's view are added.

Facts are cached under `<cache>/typed/` next to mypy's own cache (`<cache>/mypy/`), so an
unchanged tree costs one fresh mypy build (no re-check) plus a JSON read. A mypy crash or a
stub that does not parse degrades to the untyped analysis with one note.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabcheck.errors import ConfigError
from stabcheck.finding import Finding
from stabcheck.static.analysis import Analysis, traced_parameters
from stabcheck.static.engine import Dispatcher, FileResult, check_bytes
from stabcheck.static.names import Names

if TYPE_CHECKING:
    from stabcheck.config import Config
    from stabcheck.rule import Rule

FACTS_VERSION = "7"
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
    seeds: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)

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
        for qual, (params, abstract) in self.seeds.items():
            yield qual, frozenset(params), abstract

    def digest(self) -> str:
        """Changes whenever what the analysis would see of this file changes (for result caches)."""
        blob = json.dumps([self.module, self.exprs, self.callees, self.functions, sorted(self.static_calls), self.seeds], sort_keys=True, default=list)
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class Prepared:
    """The typed tier's result for one run: types per (absolute) path, notes, timings."""

    files: dict[str, FileTypes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rechecked: int = 0


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


def available() -> bool:
    """Can mypy run here (is it importable)?"""
    try:
        import mypy.build  # noqa: F401 - mypy: only when asked
    except Exception:
        return False
    return True


# -- running mypy ---------------------------------------------------------------------------
ENV_VAR = "STABCHECK_TYPES"
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


def on_by_default() -> bool:
    """Whether the typed tier runs when neither the config (`types = ...`) nor the command line
    (`--types/--no-types`) says: `STABCHECK_TYPES` if set, else whether mypy is installed (found,
    not imported: a run that ends up untyped never pays for importing it)."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        v = value.strip().lower()
        if v in _TRUE or v in _FALSE:
            return v in _TRUE
        raise ConfigError(ENV_VAR, value, "true or false (1/0, yes/no, on/off)", "the environment")
    try:
        return importlib.util.find_spec("mypy") is not None
    except (ImportError, ValueError):
        return False


def prepare(files: Sequence[Path], cache_root: Path | None = None) -> Prepared:
    """Run mypy over `files` (incrementally) and compute the per-file types and seeds."""
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
        tree = _tree_key(hashes)
        raw = _raw_facts(py, hashes, tree, cache_root, out)
        if raw is not None:
            # the cross-file seeds need every file's analysis: kept next to the facts, for the tree
            # they were computed on (`_tree_key`), so an unchanged tree skips that too
            seeds_file = cache_root / "typed" / "seeds.json"
            seeds = _load_seeds(seeds_file, tree)
            out.files = _post(raw, seeds)
            if seeds is None:
                _save_json(seeds_file, {"tree": tree, "seeds": {p: ft.seeds for p, ft in out.files.items() if ft.seeds}})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    out.seconds = time.perf_counter() - start
    return out


def _raw_facts(py: list[Path], hashes: dict[str, str | None], tree: str, cache_root: Path, out: Prepared) -> dict[str, dict[str, Any]] | None:
    facts_file = cache_root / "typed" / "facts.json"
    saved = _read_json(facts_file)
    if saved.get("tree") == tree and isinstance(saved.get("files"), dict):  # the same files, unchanged, in an unchanged environment: mypy has nothing to do
        same = _facts_of(saved)
        return {p: same[p] for p in hashes if p in same}
    try:
        from stabcheck.static import _mypy_extract as mx  # mypy: only when the typed tier runs
    except Exception as e:  # mypy missing or broken: untyped analysis
        out.notes.append(f"typed tier off: mypy cannot be imported ({type(e).__name__}: {e})"[:300])
        return None
    import mypy.version  # mypy: only when the typed tier runs

    cache_key = f"{FACTS_VERSION}|{mypy.version.__version__}"
    old = _facts_of(saved) if saved.get("key") == cache_key else {}
    try:
        opts = mx.options(cache_root / "mypy", preserve_asts=False)
        srcs = mx.sources(py, opts)
        modules = mx.module_names(srcs)
        first = mx.run(srcs, opts)  # cheap when warm; strips jax's bodies when cold
        need = mx.rechecked(first, modules)
        need |= {m for m, p in modules.items() if old.get(p, {}).get("hash") != hashes.get(p) or old.get(p, {}).get("module") != m}
        fresh: dict[str, dict[str, Any]] = {}
        if need:
            opts = mx.options(cache_root / "mypy", preserve_asts=True)
            mx.forget(sorted(need), srcs, opts)
            result = mx.run(srcs, opts)
            fresh = mx.extract(result, {m: modules[m] for m in need})
    except mx.MypyUnavailable as e:
        out.notes.append(f"typed tier off for this run: {e}; the untyped analysis was used")
        return None
    except (RecursionError, OSError) as e:
        out.notes.append(f"typed tier off for this run: {type(e).__name__} while running mypy; the untyped analysis was used")
        return None
    out.rechecked = len(fresh)
    raw: dict[str, dict[str, Any]] = {}
    for p in modules.values():
        if p in fresh:
            raw[p] = {**fresh[p], "hash": hashes.get(p)}
        elif p in old:
            raw[p] = old[p]
    _save_facts(facts_file, cache_key, {**old, **raw}, tree)
    return raw


def _tree_key(hashes: dict[str, str | None]) -> str:
    """The checked files and their contents, stabcheck's and mypy's versions, and the Python
    environment mypy reads JAX's signatures from (each import-path directory's modification
    time: installing, upgrading or removing a package changes it). Equal keys: nothing to do."""
    from importlib import metadata  # ~15 ms: only when the typed tier runs

    try:
        mypy_version = metadata.version("mypy")
    except metadata.PackageNotFoundError:
        mypy_version = ""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{FACTS_VERSION}|{mypy_version}|{sys.version}".encode())
    paths = sysconfig.get_paths()
    sites = {paths["purelib"], paths["platlib"], *(d for d in sys.path if d.endswith(("site-packages", "dist-packages")))}
    for d in sorted(sites):  # not sys.path[0]: it differs between `stabcheck`, `python -m` and `-c`
        try:
            h.update(f"{d}:{os.stat(d).st_mtime_ns}".encode())
        except OSError:
            continue
    for path, digest in sorted(hashes.items()):
        h.update(f"{path}={digest}".encode())
    return h.hexdigest()


def _hash(p: Path) -> str | None:
    try:
        return hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    """A cache file's JSON object; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _facts_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = data.get("files")
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("exprs"), dict)}


def _save_facts(path: Path, key: str, files: dict[str, dict[str, Any]], tree: str = "") -> None:
    _save_json(path, {"key": key, "tree": tree, "files": files})


def _save_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache directory costs speed, not correctness


# -- cross-file post-processing ------------------------------------------------------------------
def _load_seeds(path: Path, tree: str) -> dict[str, dict[str, tuple[set[str], bool]]] | None:
    data = _read_json(path)
    if data.get("tree") != tree or not isinstance(data.get("seeds"), dict):
        return None
    try:
        return {p: {q: (set(params), bool(abstract)) for q, (params, abstract) in fs.items()} for p, fs in data["seeds"].items()}
    except (TypeError, ValueError):
        return None


def _post(raw: dict[str, dict[str, Any]], seeds: dict[str, dict[str, tuple[set[str], bool]]] | None = None) -> dict[str, FileTypes]:
    by_module = {v["module"]: p for p, v in raw.items()}
    functions = {f"{v['module']}.{q}": fn for v in raw.values() for q, fn in v["functions"].items()}

    def trusted_static(target: str) -> bool:
        fn = functions.get(target)
        if fn is None:
            return True  # a library's declared `-> int`
        rets = fn.get("returns") or []
        return bool(rets) and all(r in STATIC_KINDS for r in rets) and fn.get("declared") in (*STATIC_KINDS, None)

    aliases = {a: t for v in raw.values() for a, t in v.get("aliases", {}).items()}

    def real(target: str) -> str:
        return aliases.get(target[1:], "") if target.startswith("@") else target

    files: dict[str, FileTypes] = {}
    for p, v in raw.items():
        exprs = dict(v["exprs"])
        static_calls: set[str] = set()
        for k, (kd, tgt) in v.get("calls", {}).items():
            tgt = real(tgt)
            if kd == "any" and tgt in functions:  # `step(x)` with `step = jax.jit(_step)`
                kd = functions[tgt].get("declared") or "any"
                if kd not in ("any", "static", "none"):
                    exprs[k] = kd
            if kd in STATIC_KINDS and (not tgt or trusted_static(tgt)):
                static_calls.add(k)
        callees = {k: t for k, t in ((k, real(t)) for k, t in v["callees"].items()) if t}
        files[p] = FileTypes(v["module"], exprs, callees, v["functions"], frozenset(static_calls))
    if seeds is not None:
        return {p: _with_seeds(ft, seeds.get(p, {})) for p, ft in files.items()}
    return _seed(files, by_module)


def _owner(full: str, by_module: dict[str, str]) -> tuple[str, str] | None:
    parts = full.split(".")
    for i in range(len(parts) - 1, 0, -1):
        mod = ".".join(parts[:i])
        if mod in by_module:
            return by_module[mod], ".".join(parts[i:])
    return None


def _seed(files: dict[str, FileTypes], by_module: dict[str, str]) -> dict[str, FileTypes]:
    """Mark defs that transformed code of *another* file calls with traced arguments, to a fixpoint."""
    trees: dict[str, ast.Module] = {}
    for p in files:
        try:
            trees[p] = ast.parse(Path(p).read_bytes(), filename=p)
        except (OSError, SyntaxError, ValueError, RecursionError):
            continue
    seeds: dict[str, dict[str, tuple[set[str], bool]]] = {}
    dirty = set(trees)
    for _ in range(6):
        if not dirty:
            break
        grew: set[str] = set()
        for p in sorted(dirty):
            ft = _with_seeds(files[p], seeds.get(p, {}))
            try:
                an = Analysis(trees[p], Names(trees[p]), ft)
            except RecursionError:
                continue
            for info in list(an.functions.values()):
                if not info.transformed:
                    continue
                for node in an.own_nodes(info):
                    if not isinstance(node, ast.Call):
                        continue
                    full = ft.target(node.func)
                    where = _owner(full, by_module) if full else None
                    if where is None or where[0] == p or where[0] not in files:
                        continue
                    tpath, tqual = where
                    fn = files[tpath].functions.get(tqual)
                    if fn is None:
                        continue
                    params = list(fn["params"])
                    if fn.get("method") and (isinstance(node.func, ast.Attribute) or tqual.endswith(".__call__")):
                        params = params[1:]
                    traced = traced_parameters(node, params, lambda e: an.is_traced(e, info))
                    traced = {t for t in traced if fn["kinds"].get(t) not in STATIC_KINDS}
                    if not traced:
                        continue
                    cur = seeds.setdefault(tpath, {}).get(tqual, (set(), False))
                    new = (cur[0] | traced, cur[1] or info.abstract)
                    if new != cur:
                        seeds[tpath][tqual] = new
                        grew.add(tpath)
        dirty = grew
    return {p: _with_seeds(ft, seeds.get(p, {})) for p, ft in files.items()}


def _with_seeds(ft: FileTypes, seeds: dict[str, tuple[set[str], bool]]) -> FileTypes:
    return FileTypes(ft.module, ft.exprs, ft.callees, ft.functions, ft.static_calls, {q: (tuple(sorted(s)), a) for q, (s, a) in seeds.items()})


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
