"""Map jaxpr equations and exceptions back to the user's line.

JAX records a Python traceback for every equation (`eqn.source_info.traceback`, innermost frame
first). The user's line is the innermost frame that is not inside JAX, stabcheck or the standard
library; among those, a frame in the user's project wins over one in an installed library
(site-packages), so a hazard that starts in the user's call to optax is reported at that call.

Importing this module does not import JAX; the helpers take JAX objects duck-typed.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import re
import sys
import sysconfig
import traceback as _tb
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from stabcheck.finding import Chain, Frame, char_col

_STABCHECK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STDLIB = tuple({os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib",)})
_LIB_MARKERS = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
_JAX_PARTS = tuple(os.sep + p + os.sep for p in ("jax", "jaxlib", "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin"))


@dataclass(frozen=True, slots=True)
class Site:
    """A user source location: absolute file, 1-based line and column, enclosing function."""

    file: str
    line: int
    col: int = 1
    function: str = ""
    library: bool = False  # the frame is inside an installed package, not the user's project
    # the user frames that called this one, innermost first (for the instability chain)
    outer: tuple[Site, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        # frames, tracebacks and `ast` count columns in UTF-8 bytes; a Site counts characters
        if self.col > 1:

            object.__setattr__(self, "col", char_col(linecache.getline(self.file, self.line).rstrip("\n"), self.col))


def is_internal(filename: str) -> bool:
    """True for JAX's, stabcheck's and the standard library's own files (never a user line)."""
    if not filename or filename.startswith("<"):
        return True
    path = os.path.realpath(filename) if os.path.isabs(filename) else filename
    if path.startswith(_STABCHECK_DIR + os.sep) and (os.sep + "fixtures" + os.sep) not in path[len(_STABCHECK_DIR) :]:
        return True
    if any(m + part[1:] in path for m in _LIB_MARKERS for part in _JAX_PARTS) or "/jax/_src/" in path.replace(os.sep, "/"):
        return True
    if any(path.startswith(s) for s in _STDLIB) and not is_library(path):
        return True
    return False


def is_library(filename: str) -> bool:
    return any(m in filename for m in _LIB_MARKERS)


def pick(frames: list[Site]) -> Site | None:
    """The innermost project frame, else the innermost library frame (frames innermost first)."""
    for s in frames:
        if not s.library:
            return s
    return frames[0] if frames else None


def eqn_frames(eqn: Any) -> list[Site]:
    """User frames of a jaxpr equation, innermost first."""
    tb = getattr(getattr(eqn, "source_info", None), "traceback", None)
    if tb is None:
        return []
    out: list[Site] = []
    for fr in getattr(tb, "frames", ()):
        name = fr.file_name
        if is_internal(name):
            continue
        line = getattr(fr, "start_line", None) or getattr(fr, "line_num", None) or 1
        col = (getattr(fr, "start_column", 0) or 0) + 1
        out.append(Site(name, int(line), int(col), fr.function_name, is_library(name)))
    return _linked(out)


def eqn_site(eqn: Any) -> Site | None:
    return pick(eqn_frames(eqn))


def _linked(frames: list[Site]) -> list[Site]:
    """Each frame with the frames outside it (`Site.outer`): frames innermost first."""
    return [replace(s, outer=tuple(frames[i + 1 :])) for i, s in enumerate(frames)]


def chain(site: Site | None, shown: Callable[[str], str], via: str = "") -> tuple[Chain, ...]:
    """The instability chain of a site: its line, then the user's calls that reach it out to the
    traced entry (`via` names what traces it); frames inside installed libraries are folded
    away. No chain when the site is in the entry function itself."""
    if site is None:
        return ()
    frames = [site, *(s for s in site.outer if not s.library)]
    if len(frames) < 2:
        return ()
    out = [Frame(shown(s.file), s.line, s.col, s.function) for s in frames]
    out[-1] = replace(out[-1], via=via)
    return (tuple(out),)


def with_via(chains: tuple[Chain, ...], via: str) -> tuple[Chain, ...]:
    """`chains` whose outermost frames say `via` where they said nothing."""
    return tuple(c[:-1] + (replace(c[-1], via=c[-1].via or via),) if c else c for c in chains)


def internal_functions(eqn: Any) -> list[str]:
    """Names of the JAX functions between the primitive and the innermost user frame."""
    tb = getattr(getattr(eqn, "source_info", None), "traceback", None)
    names: list[str] = []
    for fr in getattr(tb, "frames", ()) if tb is not None else ():
        if not is_internal(fr.file_name):
            break
        names.append(fr.function_name.rsplit(".", 1)[-1])
    return names


def exception_frames(exc: BaseException) -> list[Site]:
    """User frames of an exception's traceback (and its causes'), innermost first."""
    out: list[Site] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.extend(_tb_frames(e.__traceback__))
        e = e.__cause__ or (e.__context__ if not e.__suppress_context__ else None)
    return _linked(out)


def transformed_site(exc: BaseException, *, within: tuple[str, ...] = ()) -> Site | None:
    """Where the operation a transform failed on was written: JAX chains an error raised while
    transforming a primitive (a `while_loop` transposed by reverse mode) to a
    `JaxStackTraceBeforeTransformation` whose traceback ends at the user's call of the primitive.
    None when the exception carries no such cause."""
    cause = exc.__cause__
    if cause is None or type(cause).__name__ != "JaxStackTraceBeforeTransformation":
        return None
    return _choose(_linked(_tb_frames(cause.__traceback__)), within)


def _tb_frames(tb: TracebackType | None) -> list[Site]:
    frames: list[Site] = []
    for fs in _tb.extract_tb(tb):
        if is_internal(fs.filename):
            continue
        col = (getattr(fs, "colno", None) or 0) + 1
        frames.append(Site(fs.filename, fs.lineno or 1, col, fs.name, is_library(fs.filename)))
    frames.reverse()
    return frames


def exception_site(exc: BaseException, *, within: tuple[str, ...] = ()) -> Site | None:
    """The user line an exception points at; frames in `within` files (the entry's own module
    and its siblings) win over the rest of the user's code."""
    return _choose(exception_frames(exc), within)


def _choose(frames: list[Site], within: tuple[str, ...]) -> Site | None:
    """The innermost frame in a `within` file, else `pick`'s choice."""
    if within:
        inside = [s for s in frames if os.path.realpath(s.file) in within]
        if inside:
            return inside[0]
    return pick(frames)


def _source_tree(file: str) -> ast.Module | None:
    """FILE parsed from `linecache` (what the running code was loaded from), None if it does not parse."""
    try:
        return ast.parse("".join(linecache.getlines(file)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def function_site(fn: Any) -> Site | None:
    """Where a Python function is defined (a last resort: findings prefer the offending line)."""
    try:
        fn = inspect.unwrap(fn)  # `jax.jit(jax.grad(f))`, `eqx.filter_jit`: the user's def
    except ValueError:  # a cycle of __wrapped__
        fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return Site(code.co_filename, code.co_firstlineno, 1, getattr(fn, "__qualname__", ""), is_library(code.co_filename))


def def_line(file: str, first: int) -> int:
    """The `def` line of the function whose code starts at FILE:FIRST (`co_firstlineno`, which is
    its first decorator's line when it has decorators): the line a retrace finding names."""
    return _def_lines(file).get(first, first)


@functools.lru_cache(maxsize=256)
def _def_lines(file: str) -> dict[int, int]:
    """First decorator line -> `def` line, for every decorated function of FILE."""
    tree = _source_tree(file)
    if tree is None:
        return {}
    return {min(d.lineno for d in node.decorator_list): node.lineno for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list}


def dataclass_site(file: str, name: str) -> Site | None:
    """The `@dataclass` decorator line of the module-level class `name` of FILE: where
    `frozen=True` goes when an instance of it, passed for a static argument, cannot be hashed."""
    tree = _source_tree(file)
    if tree is None:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if (target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")) == "dataclass":
                    return Site(file, dec.lineno, dec.col_offset + 1, name, is_library(file))
    return None


def named_return_site(file: str, name: str) -> Site | None:
    """The first `return` of the function `name` defined in FILE (a custom rule JAX names in its
    error: `Custom VJP fwd rule f_fwd for function f must produce a pair`)."""
    tree = _source_tree(file)
    if tree is None:
        return None
    node = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name), None)
    if node is None:
        return None
    return return_site(file, min([node.lineno, *(d.lineno for d in node.decorator_list)]), name)


def literal_return_site(file: str, def_line: int, function: str = "") -> Site | None:
    """The first `return <number literal>` of the function defined at FILE:DEF_LINE (decorators
    included): where a jitted function hands back a weakly typed Python scalar, which no jaxpr
    equation produces."""
    return return_site(file, def_line, function, literal_only=True)


def return_site(file: str, def_line: int, function: str = "", *, literal_only: bool = False) -> Site | None:
    """The first `return` (with `literal_only`, the first that returns a Python number) of the
    function defined at FILE:DEF_LINE (decorators included), found with `ast`, nested functions
    and classes skipped: the line that hands JAX the function's outputs."""
    tree = _source_tree(file)
    if tree is None:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        if not first <= def_line <= node.lineno:
            continue
        stack: list[ast.AST] = list(node.body)
        while stack:
            n = stack.pop(0)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(n, ast.Return) and (not literal_only or _is_number(n.value)):
                return Site(file, n.lineno, n.col_offset + 1, function or node.name, is_library(file))
            stack.extend(ast.iter_child_nodes(n))
    return None


def _is_number(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex)) and not isinstance(node.value, bool)


# -- where a non-float leaf is made -----------------------------------------------------------
_LAST_KEY = re.compile(r"""(?:\[(['"])(?P<key>[^'"]+)\1\]|\.(?P<attr>[A-Za-z_]\w*))$""")


def leaf_origin(leaf: str, dtype: str, file: str, line: int, namespace: Mapping[str, Any] | None = None, *, depth: int = 2) -> Site | None:
    """Where the user's code makes the leaf `leaf` (`params['d']`, `state.count`) of an argument:
    an int or bool leaf given to `grad` is reported there, not at the `grad` (issue 18).

    The search starts in the function of FILE that holds LINE (the entry's factory, the test that
    applied `grad`) and follows the calls it makes to the user's own functions, `depth` calls
    deep, resolving their names in `namespace` (the start's module globals) and then in each
    callee's globals. It looks for the value given to the leaf's last key: an entry of a dict
    display (`{"d": 1}`), a keyword (`dict(d=1)`, `Params(d=1)`) or a keyed store
    (`p["d"] = 1`); where that value is a name, the line of the function that assigns the name
    (`mask = jnp.array([True, False])`). A value that is plainly not of the leaf's `dtype` kind
    (a float literal, `jnp.float32(1.0)`, `jnp.ones(3)`) is not the place; of the others, the one
    plainly of that kind (an int literal, `jnp.array([True, False])`), else the one left. None
    unless exactly one place is found."""
    m = _LAST_KEY.search(leaf)
    if m is None:
        return None
    key = m.group("key") or m.group("attr")
    kind = "bool" if dtype.startswith("bool") else "int" if "int" in dtype else ""
    node = _enclosing_def(file, line)
    todo: list[tuple[str, ast.AST | None, Mapping[str, Any], int]] = [(file, node, namespace or {}, 0)]
    seen: set[tuple[str, int]] = set()
    found: dict[str | None, dict[tuple[str, int], Site]] = {}
    while todo:
        f, fn, ns, d = todo.pop(0)
        if fn is None or (f, fn.lineno) in seen or is_internal(f) or is_library(f):
            continue
        seen.add((f, fn.lineno))
        for n in ast.walk(fn):
            values: list[ast.AST] = []
            if isinstance(n, ast.Dict):
                values = [v for k, v in zip(n.keys, n.values) if isinstance(k, ast.Constant) and k.value == key]
            elif isinstance(n, ast.Call):
                values = [kw.value for kw in n.keywords if kw.arg == key]
                callee = _resolve_function(n.func, ns) if d < depth else None
                if callee is not None:
                    code = callee.__code__
                    todo.append((code.co_filename, _enclosing_def(code.co_filename, code.co_firstlineno), callee.__globals__, d + 1))
            elif isinstance(n, ast.Assign) and len(n.targets) == 1:
                t = n.targets[0]
                if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == key:
                    values = [n.value]
            for v in values:
                at = _assigned(v, fn) if isinstance(v, ast.Name) else v
                got = _value_kind(at)
                if got is None or got == kind:
                    found.setdefault(got, {})[(f, at.lineno)] = Site(f, at.lineno, at.col_offset + 1, getattr(fn, "name", ""), is_library(f))
    sure, maybe = found.get(kind or "?", {}), found.get(None, {})
    one = sure if sure else maybe
    return next(iter(one.values())) if len(one) == 1 else None


_FLOATS = re.compile(r"float|bfloat|complex")
_DEFAULT_FLOAT = frozenset({"ones", "zeros", "full", "empty", "linspace", "eye", "normal", "uniform", "ones_like", "zeros_like"})


def _value_kind(v: ast.AST) -> str | None:
    """"int", "bool" or "float" when the expression plainly makes one (a literal, a comparison,
    a cast, an array of literals, a `dtype=`), else None."""
    if isinstance(v, ast.Constant):
        return "bool" if isinstance(v.value, bool) else "int" if isinstance(v.value, int) else "float" if isinstance(v.value, (float, complex)) else None
    if isinstance(v, (ast.Compare, ast.BoolOp)) or (isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.Not)):
        return "bool"
    if isinstance(v, (ast.List, ast.Tuple)) and v.elts:
        kinds = {_value_kind(e) for e in v.elts}
        return kinds.pop() if len(kinds) == 1 else None
    if isinstance(v, ast.Call):
        name = v.func.attr if isinstance(v.func, ast.Attribute) else v.func.id if isinstance(v.func, ast.Name) else ""
        dtypes = [kw.value for kw in v.keywords if kw.arg == "dtype"] + [a for a in v.args[1:2] if name in ("array", "asarray")]
        for d in dtypes:
            text = ast.unparse(d)
            return "float" if _FLOATS.search(text) else "bool" if "bool" in text else "int" if "int" in text else None
        if _FLOATS.search(name):
            return "float"
        if name in ("bool", "bool_"):
            return "bool"
        if re.fullmatch(r"u?int\d*", name):
            return "int"
        if name in _DEFAULT_FLOAT:
            return "float"
        if name in ("array", "asarray") and v.args:
            return _value_kind(v.args[0])
    return None


def module_namespace(file: str) -> Mapping[str, Any] | None:
    """The globals of the imported module whose source is FILE (a test module pytest imported),
    else None."""
    real = os.path.realpath(file)
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f and os.path.realpath(f) == real:
            return vars(module)
    return None


def _enclosing_def(file: str, line: int) -> ast.AST | None:
    """The innermost function of FILE whose lines (decorators included) hold LINE."""
    holding = [(first, node) for first, last, node in _def_spans(file) if first <= line <= last]
    return max(holding, key=lambda h: h[0])[1] if holding else None


@functools.lru_cache(maxsize=64)
def _def_spans(file: str) -> tuple[tuple[int, int, ast.AST], ...]:
    tree = _source_tree(file)
    if tree is None:
        return ()
    return tuple(
        (min([n.lineno, *(d.lineno for d in n.decorator_list)]), n.end_lineno or n.lineno, n)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    )


def _resolve_function(func: ast.AST, ns: Mapping[str, Any]) -> Any:
    """The plain Python function a call's `f` or `mod.f` names in `ns`, else None."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in ns:
        return None
    obj = ns[func.id]
    for p in reversed(parts):
        obj = getattr(obj, p, None)
    obj = getattr(obj, "__wrapped__", obj)
    return obj if hasattr(obj, "__code__") and hasattr(obj, "__globals__") else None


def _assigned(name: ast.Name, fn: ast.AST) -> ast.AST:
    """The value last assigned to `name` in `fn` before it is used (else the name itself)."""
    best: ast.Assign | ast.AnnAssign | None = None
    for n in ast.walk(fn):
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None and n.lineno <= name.lineno:
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            if any(isinstance(t, ast.Name) and t.id == name.id for t in targets) and (best is None or n.lineno > best.lineno):
                best = n
    return best.value if best is not None and best.value is not None else name
