"""Run mypy as a library over the checked files and read its types into plain, JSON-able facts.

Only `stabcheck.static.typed` imports this module, and only when the typed tier is on: mypy is
heavy to import. mypy never imports the user's code; neither does this module.

Facts of one module (all positions are `ast`'s: 1-based line, 0-based column, end exclusive):

    {"module": "pkg.mod",
     "exprs":   {"l:c:el:ec": kind},            # kinds of names, attributes, calls, subscripts
     "callees": {"l:c:el:ec": "pkg.mod.Cls.fn"},  # callee expression -> the def it runs
     "functions": {"Cls.fn": {"params": [...], "method": bool, "kinds": {param: kind},
                              "declared": kind | None, "declared_text": str,
                              "returns": [kind, ...]}}}

A kind is a short string: "array" (a JAX array, maybe a tracer), "ndarray" (NumPy: concrete),
"static" (int/bool/str/bytes), "float" (Python float or complex), "none", "optional", "union",
"any", "tuple:N", "container" (also a pytree alias of arrays and containers), "object".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mypy import build
from mypy.find_sources import InvalidSourceList, create_source_list
from mypy.modulefinder import BuildSource
from mypy.nodes import (
    AssignmentStmt,
    CallExpr,
    ComparisonExpr,
    Decorator,
    Expression,
    FuncDef,
    IndexExpr,
    MemberExpr,
    MypyFile,
    NameExpr,
    OpExpr,
    OverloadedFuncDef,
    RefExpr,
    ReturnStmt,
    UnaryExpr,
    Var,
)
from mypy.options import Options
from mypy.types import (
    AnyType,
    CallableType,
    Instance,
    LiteralType,
    NoneType,
    Overloaded,
    TupleType,
    Type,
    TypedDictType,
    TypeOfAny,
    UninhabitedType,
    UnionType,
    get_proper_type,
)

ARRAY_TYPES = frozenset(
    {
        "jax._src.basearray.Array",
        "jax.Array",
        "jax._src.core.Tracer",
        "jax.core.Tracer",
        "jax._src.array.ArrayImpl",
        "jaxtyping.Array",
    }
)
STATIC_TYPES = frozenset({"builtins.int", "builtins.bool", "builtins.str", "builtins.bytes"})
FLOAT_TYPES = frozenset({"builtins.float", "builtins.complex"})
# NumPy arrays and scalars: array-shaped leaves, but never tracers ("ndarray")
NUMPY_TYPES = frozenset({"numpy.ndarray", "numpy.generic", "numpy.number", "numpy.bool", "numpy.bool_", "numpy.floating", "numpy.integer"})
CONTAINERS = frozenset(
    {"builtins.list", "builtins.dict", "builtins.set", "builtins.frozenset", "builtins.tuple"}
    | {f"typing.{n}" for n in ("Iterable", "Sequence", "Mapping", "MutableMapping", "MutableSequence", "Collection", "Container")}
)
# Callables that wrap a function and keep its meaning: look through them to the wrapped def.
WRAPPERS = frozenset(
    {
        "jax._src.api.jit",
        "jax.jit",
        "jax._src.pjit.jit",
        "jax._src.api.vmap",
        "jax.vmap",
        "jax._src.api.pmap",
        "jax._src.ad_checkpoint.checkpoint",
        "jax.checkpoint",
        "functools.partial",
        "functools.wraps",
        "equinox._jit.filter_jit",
        "flax.nnx.jit",
    }
)


class MypyUnavailable(Exception):
    """mypy could not run on these files (crash, bad stub, unparsable source list)."""


def options(cache_dir: Path, preserve_asts: bool) -> Options:
    """`preserve_asts=False` lets mypy strip the bodies of jax's own modules (4x faster cold) but
    frees our trees after checking; so a first build warms the cache, and a second one with
    `preserve_asts=True` re-checks only the modules whose facts we need (see `forget`)."""
    o = Options()
    o.incremental = True
    o.cache_dir = str(cache_dir)
    o.sqlite_cache = False  # one file per module, so that `forget` can drop a module's entry
    o.export_types = True
    o.preserve_asts = preserve_asts
    o.check_untyped_defs = True  # infer expression types inside unannotated functions too
    o.follow_imports = "silent"
    o.ignore_missing_imports = True
    o.show_traceback = False
    o.raise_exceptions = False
    o.fast_module_lookup = True
    # stabcheck's own options only: no config file (a repository's mypy.ini, setup.cfg or
    # `[tool.mypy]` is never read) and no plugins (a plugin is code mypy would import)
    o.config_file = None
    o.plugins = []
    return o


def rechecked(result: build.BuildResult, modules: dict[str, str]) -> set[str]:
    """Modules mypy checked in this build (a module taken fresh from its cache has no tree)."""
    return {m for m in modules if getattr(result.graph.get(m), "tree", None) is not None}


def forget(modules: list[str], srcs: list[BuildSource], opts: Options) -> None:
    """Drop these modules from mypy's cache so that the next build re-checks them."""
    base = os.path.join(opts.cache_dir, "%d.%d" % opts.python_version)
    paths = {s.module: s.path or "" for s in srcs}
    for m in modules:
        for name in build.get_cache_names(m, paths.get(m, ""), opts):
            if name:
                try:
                    os.remove(os.path.join(base, name))
                except OSError:
                    pass


def sources(paths: Sequence[Path | str], opts: Options, dropped: dict[str, str] | None = None) -> list[BuildSource]:
    """The build sources for the checked files; a stub checked next to its own module
    (`m.pyi` beside `m.py`, as jax ships `basearray`) is left out: mypy takes one file per
    module, and the rules check the `.py`. A second file that maps to a module name already
    taken (`a/train.py` and `b/train.py` without `__init__.py`) is left out too, and named in
    `dropped` (mypy would stop the whole build on it)."""
    given = {str(p) for p in paths}
    kept = [str(p) for p in paths if not (str(p).endswith(".pyi") and str(p)[:-1] in given)]
    try:
        srcs = list(create_source_list(kept, opts, allow_empty_dir=True))
    except InvalidSourceList as e:
        raise MypyUnavailable(f"mypy cannot map the checked files to modules: {e}") from None
    out: list[BuildSource] = []
    taken: dict[str, str] = {}
    for s in srcs:
        if s.module in taken and s.path:
            if dropped is not None:
                dropped[os.path.abspath(s.path)] = f"another checked file, `{taken[s.module]}`, is also module `{s.module}` to mypy"
            continue
        taken[s.module] = s.path or ""
        out.append(s)
    return out


class Blocked(MypyUnavailable):
    """A blocking error in one module (a relative import outside a package, a file mypy cannot
    parse): that module's path and mypy's message."""

    def __init__(self, module: str | None, message: str) -> None:
        super().__init__(message)
        self.module = module


def analyse(files: Sequence[str], cache_dir: str, old: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The whole mypy side of the typed tier (run in `stabcheck.static._mypy_child`): build the
    files, find which of them mypy re-checked or whose facts are stale (`old`: path -> {"hash",
    "module"}), re-check those keeping their trees, and extract their facts.

    One build per import root (`roots`): a file's types depend only on it and on what it
    imports, never on what else is in the run (issue 16: a library checked beside another saw
    that library's modules where, checked alone, it saw `Any`, and two roots' `utils` shadowed
    each other). A file with a blocking error is left out and its root's build repeated without
    it (a relative import outside a package stops mypy for every file otherwise). Returns
    {"paths": [the checked files mypy analysed], "fresh": {path: facts}, "dropped": {path: why}, "analysed":
    modules mypy analysed afresh, its own cache missing or stale (jax's, on a first run)}."""
    cache = Path(cache_dir)
    dropped: dict[str, str] = {}
    out: dict[str, Any] = {"paths": [], "fresh": {}, "dropped": dropped, "analysed": 0}
    for group in roots([str(p) for p in files], options(cache / "mypy", preserve_asts=False), dropped):
        modules, fresh, analysed = _analyse_root(group, cache, old, dropped)
        out["paths"] += sorted(modules.values())  # by path: two roots may each have a module `utils`
        out["fresh"].update(fresh)
        out["analysed"] += analysed
    return out


def roots(paths: list[str], opts: Options, dropped: dict[str, str]) -> list[list[str]]:
    """The checked files grouped by import root (mypy's `base_dir`: the directory above the
    outermost package holding the file), in a fixed order."""
    groups: dict[str, list[str]] = {}
    for s in sources(paths, opts, dropped):
        if s.path:
            groups.setdefault(s.base_dir or "", []).append(s.path)
    return [sorted(groups[b]) for b in sorted(groups)]


def _analyse_root(paths: list[str], cache: Path, old: dict[str, dict[str, Any]], dropped: dict[str, str]) -> tuple[dict[str, str], dict[str, dict[str, Any]], int]:
    opts = options(cache / "mypy", preserve_asts=False)
    for _ in range(8):
        srcs = sources(paths, opts, dropped)
        modules = module_names(srcs)
        if not modules:
            return {}, {}, 0
        try:
            first = run(srcs, opts)  # cheap when warm; strips jax's bodies when cold
        except Blocked as e:
            bad = modules.get(e.module or "")
            if bad is None:
                raise MypyUnavailable(str(e)) from None
            dropped[bad] = str(e).removeprefix("mypy stopped: ")
            paths = [p for p in paths if os.path.abspath(p) != bad]
            continue
        break
    else:
        raise MypyUnavailable("mypy stopped on too many files")
    analysed = sum(1 for st in first.graph.values() if getattr(st, "tree", None) is not None)
    need = rechecked(first, modules)
    need |= {m for m, p in modules.items() if old.get(p, {}).get("hash") != _digest(p) or old.get(p, {}).get("module") != m}
    fresh: dict[str, dict[str, Any]] = {}
    if need:
        opts = options(cache / "mypy", preserve_asts=True)
        forget(sorted(need), srcs, opts)
        result = run(srcs, opts)
        fresh = extract(result, {m: modules[m] for m in need})
    return modules, fresh, analysed


def _digest(path: str) -> str | None:
    """The content hash the parent keys a file's facts with (`typed._hash`)."""

    try:
        with open(path, "rb") as fh:
            return hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
    except OSError:
        return None


def run(srcs: list[BuildSource], opts: Options) -> build.BuildResult:
    try:
        return build.build(srcs, opts, stdout=_Null(), stderr=_Null())  # type: ignore[arg-type]
    except build.CompileError as e:  # a blocking error: a stub that does not parse, a relative import outside a package
        raise Blocked(e.module_with_blocker, "mypy stopped: " + "; ".join(e.messages[:2])[:300]) from None
    except (Exception, SystemExit) as e:  # an internal mypy error must not fail the run
        cause: BaseException | None = e
        for _ in range(8):  # mypy reports an internal MemoryError as SystemExit(2)
            if cause is None or isinstance(cause, MemoryError):
                break
            cause = cause.__context__
        if isinstance(cause, MemoryError) or "can't start new thread" in str(e):  # a thread's stack is memory too
            raise MemoryError from None
        raise MypyUnavailable(f"mypy crashed: {type(e).__name__}: {e}"[:300]) from None


class _Null:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


# -- kinds ----------------------------------------------------------------------------------------
def kind(t: Type | None, depth: int = 0) -> str:
    if t is None or depth > 6:
        return "any"
    p = get_proper_type(t)
    if isinstance(p, (AnyType, UninhabitedType)):
        return "any"
    if isinstance(p, NoneType):
        return "none"
    if isinstance(p, LiteralType):
        return kind(p.fallback, depth + 1)
    if isinstance(p, TupleType):
        if p.partial_fallback.type.fullname != "builtins.tuple" and not p.partial_fallback.type.is_named_tuple:
            return "object"
        return f"tuple:{len(p.items)}"
    if isinstance(p, TypedDictType):
        return "container"
    if isinstance(p, (CallableType, Overloaded)):
        return "callable"
    if isinstance(p, UnionType):
        kinds = {kind(i, depth + 1) for i in p.items}
        if "any" in kinds:
            return "any"
        if "none" in kinds:
            rest = kinds - {"none"}
            # `Optional[Array]`, an optional tuple or pytree: one call returns leaves, another
            # None. `Optional[SomeClass]` is a Python value (static under a transform).
            if rest & {"array", "ndarray", "container", "union"} or any(k.startswith("tuple:") for k in rest):
                return "optional"
            return "object" if rest - {"static", "float"} else "static"
        if "array" in kinds and kinds <= {"array", "ndarray", "static", "float"}:
            return "array"  # ArrayLike, chex.Array: one leaf whichever member, maybe a tracer
        if "ndarray" in kinds and kinds <= {"ndarray", "static", "float"}:
            return "ndarray"  # `int | np.integer`: a concrete leaf
        if len(kinds) == 1:
            return kinds.pop()
        if kinds <= {"static", "float"}:
            return "float"
        if kinds <= {"array", "ndarray", "static", "float", "container"}:
            return "container"  # a pytree alias (optax's `ArrayTree`: array | Iterable | Mapping)
        return "union"
    if isinstance(p, Instance):
        name = p.type.fullname
        if name in ARRAY_TYPES or any(b.type.fullname in ARRAY_TYPES for b in p.type.bases if isinstance(b, Instance)):
            return "array"
        if name in NUMPY_TYPES or any(b.type.fullname in NUMPY_TYPES for b in p.type.bases if isinstance(b, Instance)):
            return "ndarray"
        if name in STATIC_TYPES:
            return "static"
        if name in FLOAT_TYPES:
            return "float"
        if name in CONTAINERS:
            return "container"
        return "object"
    return "any"


def key(node: Expression | FuncDef) -> str | None:
    if node.end_line is None or node.end_column is None or node.line < 1:
        return None
    return f"{node.line}:{node.column}:{node.end_line}:{node.end_column}"


# -- callee resolution ------------------------------------------------------------------------------
def target_def(callee: Expression, types: dict[Expression, Type]) -> FuncDef | None:
    """The def a callee expression runs: looks through decorators (jit, partial), bound methods,
    `__call__` of an instance, and `f = jax.jit(g)` module variables."""
    if isinstance(callee, RefExpr):
        d = _def_of(callee.node)
        if d is not None:
            return d
    t = types.get(callee)
    p = get_proper_type(t) if t is not None else None
    if isinstance(p, CallableType) and isinstance(p.definition, FuncDef):
        return p.definition
    if isinstance(p, Instance):
        return _def_of(p.type.get_method("__call__"))
    return None


def _def_of(node: object) -> FuncDef | None:
    if isinstance(node, FuncDef):
        return node
    if isinstance(node, Decorator):
        return node.func
    if isinstance(node, OverloadedFuncDef) and node.impl is not None:
        return _def_of(node.impl)
    return None


def _unwrap_call(e: Expression) -> FuncDef | None:
    """`jax.jit(f, ...)`, `partial(f, ...)`, `jax.jit(partial(f, 1))` -> f's def."""
    for _ in range(6):
        if not isinstance(e, CallExpr) or not e.args:
            break
        callee = e.callee
        if isinstance(callee, CallExpr):  # partial(jax.jit, static_argnums=1)(f)
            callee = callee.args[0] if callee.args else callee
        name = callee.fullname if isinstance(callee, RefExpr) else ""
        if name not in WRAPPERS:
            break
        e = e.args[0]
    if isinstance(e, RefExpr):
        return _def_of(e.node)
    return None


# -- extraction -------------------------------------------------------------------------------------
# mypy is compiled with mypyc: its visitor traits cannot be subclassed here, so walk the tree by
# the attributes that hold child nodes (never `node`/`info`: those point at other definitions).
_CHILDREN = (
    "defs", "body", "func", "decorators", "expr", "lvalues", "rvalue", "lvalue", "else_body", "index",
    "target", "handlers", "finally_body", "items", "impl", "callee", "args", "base", "left", "right",
    "operands", "cond", "if_expr", "else_expr", "generator", "left_expr", "sequences", "condlists",
    "key", "value", "begin_index", "end_index", "stride", "indices",
)


def _children(node: object) -> list[object]:
    out: list[object] = []
    for name in _CHILDREN:
        v = getattr(node, name, None)
        if v is None or isinstance(v, (str, int, bool)):
            continue
        if isinstance(v, (list, tuple)):
            for item in v:
                if isinstance(item, tuple):
                    out.extend(x for x in item if x is not None)
                elif item is not None:
                    out.append(item)
        else:
            out.append(v)
    return [c for c in out if hasattr(c, "line")]


class _Extract:
    def __init__(self, module: str, types: dict[Expression, Type], checked: frozenset[str]) -> None:
        self.module = module
        self.types = types
        self.checked = checked
        self.exprs: dict[str, str] = {}
        self.callees: dict[str, str] = {}
        self.calls: dict[str, tuple[str, str]] = {}  # call -> (kind of its result, checked def or "")
        self.functions: dict[str, dict[str, Any]] = {}

    def walk(self, root: MypyFile) -> None:
        stack: list[tuple[object, dict[str, Any] | None]] = [(root, None)]
        seen: set[int] = set()
        while stack:
            node, fn = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, (NameExpr, MemberExpr, IndexExpr, ComparisonExpr, OpExpr, UnaryExpr)):
                self._record(node)
            elif isinstance(node, CallExpr):
                self._record(node)
                self._call(node)
            elif isinstance(node, FuncDef):
                fn = self._func(node)
            elif isinstance(node, ReturnStmt) and fn is not None:
                fn["returns"].append("none" if node.expr is None else kind(self.types.get(node.expr)))
            for ch in _children(node):
                stack.append((ch, fn))

    def _record(self, e: Expression) -> None:
        k = key(e)
        t = self.types.get(e)
        if k is None or t is None:
            return
        kd = kind(t)
        if kd not in ("any", "callable", "object"):
            self.exprs[k] = kd

    def _call(self, o: CallExpr) -> None:
        d = target_def(o.callee, self.types)
        k = key(o.callee)
        inside = d is not None and bool(d.fullname) and _module_of(d.fullname, self.checked)
        target = d.fullname if d is not None and inside else ""
        var = o.callee.node if isinstance(o.callee, RefExpr) else None
        if not inside and isinstance(var, Var) and var.fullname and _module_of(var.fullname, self.checked):
            target = "@" + var.fullname  # `step = jax.jit(_step)`: resolved against `aliases` later
        if target and k is not None:
            self.callees[k] = target
        ck = key(o)
        if ck is not None and o in self.types:
            kd = kind(self.types[o])
            if kd == "any" and d is not None:  # `jit(f)(x)`: mypy lost f's signature; f's declared return
                kd = _declared(d) or "any"
                if kd not in ("any", "callable", "object"):
                    self.exprs[ck] = kd
            self.calls[ck] = (kd, target)

    def _func(self, o: FuncDef) -> dict[str, Any] | None:
        qual = o.fullname.removeprefix(self.module + ".") if o.fullname.startswith(self.module + ".") else ""
        if not qual:
            return None
        sig = o.type if isinstance(o.type, CallableType) else None
        params = [a.variable.name for a in o.arguments]
        kinds = {}
        if sig is not None:
            for name, a, t in zip(params, o.arguments, sig.arg_types):
                if a.type_annotation is not None:
                    kinds[name] = kind(t)
        unanalyzed = o.unanalyzed_type
        annotated = isinstance(unanalyzed, CallableType) and not _implicit_any(unanalyzed.ret_type)
        declared = kind(sig.ret_type) if sig is not None and annotated else None
        info = {
            "params": params,
            "method": bool(o.info and o.info.fullname and not o.is_static and params[:1] in (["self"], ["cls"])),
            "kinds": kinds,
            "declared": declared,
            "declared_text": str(sig.ret_type) if declared is not None and sig is not None else "",
            "returns": [],
        }
        self.functions[qual] = info
        return info


def _declared(d: FuncDef) -> str | None:
    sig, raw = d.type, d.unanalyzed_type
    if isinstance(sig, CallableType) and isinstance(raw, CallableType) and not _implicit_any(raw.ret_type):
        return kind(sig.ret_type)
    return None


def _implicit_any(t: Type) -> bool:
    p = get_proper_type(t)
    return isinstance(p, AnyType) and p.type_of_any == TypeOfAny.unannotated


def _module_of(fullname: str, checked: frozenset[str]) -> bool:
    parts = fullname.split(".")
    return any(".".join(parts[:i]) in checked for i in range(len(parts) - 1, 0, -1))


def extract(result: build.BuildResult, modules: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Facts of each re-checked module, by path. Modules mypy took fresh from its cache have no
    tree and no types here; the caller keeps their facts from the previous run."""
    out: dict[str, dict[str, Any]] = {}
    for mod, path in modules.items():
        state = result.graph.get(mod)
        tree: MypyFile | None = getattr(state, "tree", None)
        if tree is None or not tree.defs:
            continue
        aliases: dict[str, str] = {}  # module-level `step = jax.jit(_step)`: "mod.step" -> "mod._step"
        for d in tree.defs:
            if isinstance(d, AssignmentStmt) and len(d.lvalues) == 1 and isinstance(d.lvalues[0], NameExpr) and isinstance(d.lvalues[0].node, Var):
                wrapped = _unwrap_call(d.rvalue)
                if wrapped is not None and wrapped.fullname:
                    aliases[d.lvalues[0].node.fullname] = wrapped.fullname
        ex = _Extract(mod, result.types, frozenset({mod}))  # callees within this module only: its facts never depend on what else is checked
        ex.walk(tree)
        out[path] = {"module": mod, "exprs": ex.exprs, "callees": ex.callees, "calls": ex.calls, "functions": ex.functions, "aliases": aliases}
    return out


def module_names(srcs: list[BuildSource]) -> dict[str, str]:
    return {s.module: os.path.abspath(s.path) for s in srcs if s.path}


__all__ = ["Blocked", "MypyUnavailable", "analyse", "extract", "kind", "module_names", "options", "run", "sources"]
