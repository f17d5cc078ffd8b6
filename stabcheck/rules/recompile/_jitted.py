"""The jitted callables of a module, for the recompilation rules: which name calls which
compiled function, and which of its arguments are static."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from stabcheck.static.analysis import Analysis, FunctionInfo
from stabcheck.static.names import Names, Transform, statements

PLAIN_JIT = frozenset({"jax.jit", "jax.pmap"})


@dataclass(frozen=True, slots=True)
class Jitted:
    """A name bound to `jax.jit(f, ...)` (or a `@jax.jit`-decorated def) and its signature."""

    name: str
    transform: Transform
    params: tuple[str, ...]  # the wrapped function's positional parameters, if known
    static_pos: frozenset[int]
    static_names: frozenset[str]
    defaults: tuple[tuple[str, ast.expr], ...] = ()

    def is_static(self, pos: int | None, kw: str | None) -> bool:
        if kw is not None:
            return kw in self.static_names
        assert pos is not None
        return pos in self.static_pos

    def param_at(self, pos: int) -> str:
        return self.params[pos] if pos < len(self.params) else f"argument {pos}"


def _make(name: str, t: Transform, fn: ast.AST | None) -> Jitted:
    params: tuple[str, ...] = ()
    defaults: tuple[tuple[str, ast.expr], ...] = ()
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = fn.args
        pos = [x.arg for x in (*a.posonlyargs, *a.args)]
        params = tuple(pos)
        defaults = tuple(zip(pos[len(pos) - len(a.defaults) :], a.defaults))
    n = len(params)
    static_pos = {i if i >= 0 else n + i for i in t.static_argnums if n or i >= 0}
    static_names = set(t.static_argnames)
    for i in list(static_pos):
        if i < n:
            static_names.add(params[i])
    for nm in t.static_argnames:
        if nm in params:
            static_pos.add(params.index(nm))
    return Jitted(name, t, params, frozenset(static_pos), frozenset(static_names), defaults)


def jitted_functions(analysis: Analysis) -> dict[str, Jitted]:
    """Module-level (and function-local) names bound to a plain `jax.jit`/`jax.pmap`."""
    return analysis.memo("jitted", lambda: _jitted_functions(analysis))


def _jitted_functions(analysis: Analysis) -> dict[str, Jitted]:
    names = analysis.names
    out: dict[str, Jitted] = {}
    defined: dict[str, int] = {}
    for info in analysis.functions.values():
        if not isinstance(info.node, ast.Lambda) and info.cls is None:
            defined[info.node.name] = defined.get(info.node.name, 0) + 1
    for info in analysis.functions.values():
        node = info.node
        if isinstance(node, ast.Lambda) or info.cls is not None:
            continue
        if defined[node.name] > 1:
            continue  # several defs of one name (multiple dispatch, `typing.overload`): which one a call runs is not known
        # the jit must be the outermost decorator: an unknown one above it (plum's `@dispatch`)
        # makes the name something else, whose calls are not calls of the jitted function
        for i, dec in enumerate(node.decorator_list):
            t = names.transform(dec)
            if t is not None and t.qualname in PLAIN_JIT:
                if all(_keeps_jit(d, names) for d in node.decorator_list[:i]):
                    out[node.name] = _make(node.name, t, node)
                break
    for stmt in analysis.names.statements:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Call):
            j = inline_jit(stmt.value, names, analysis, stmt.targets[0].id)
            if j is not None:
                out[j.name] = j
    return out


def _keeps_jit(dec: ast.AST, names: Names) -> bool:
    """A decorator above `jax.jit` that returns a function calling it with the same arguments:
    `functools.wraps(...)` only."""
    return isinstance(dec, ast.Call) and names.qualname(dec.func) == "functools.wraps"


def inline_jit(call: ast.Call, names: Names, analysis: Analysis, name: str = "") -> Jitted | None:
    """`jax.jit(f, static_argnums=1)` / `partial(jax.jit, ...)(f)` as a Jitted, else None."""
    tc = names.transform_call(call)
    if tc is None or tc[0].qualname not in PLAIN_JIT or not tc[1]:
        return None
    t, fns = tc
    fn = fns[0]
    info = analysis.resolve(fn, None)
    return _make(name or ast.unparse(fn), t, info.node if info is not None else None)


def called_jitted(call: ast.Call, names: Names, analysis: Analysis, scope: FunctionInfo | None) -> Jitted | None:
    """The jitted function `call` calls: a name bound to `jax.jit(...)` or a `@jax.jit` def (not
    shadowed by a local def of the same name), or an inline `jax.jit(f, ...)(...)`."""
    if isinstance(call.func, ast.Name):
        j = jitted_functions(analysis).get(call.func.id)
        if j is None:
            return None
        info = analysis.resolve(call.func, scope)
        if info is not None and not (info.parent is None and any(t.qualname == j.transform.qualname for t in info.transforms)):
            return None  # a local function of the same name shadows the jitted one
        return j
    if isinstance(call.func, ast.Call):
        return inline_jit(call.func, names, analysis)
    return None


def call_args(call: ast.Call, j: Jitted) -> Iterator[tuple[int | None, str | None, str, ast.expr]]:
    """(position, keyword, parameter name, value) for each argument of a call of `j`."""
    for i, a in enumerate(call.args):
        if isinstance(a, ast.Starred):
            return
        yield i, None, j.param_at(i), a
    for k in call.keywords:
        if k.arg is None:
            continue
        if k.arg in j.params:
            yield j.params.index(k.arg), None, k.arg, k.value
        else:
            yield None, k.arg, k.arg, k.value
