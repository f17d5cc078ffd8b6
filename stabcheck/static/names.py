"""Light name resolution on `ast`: imports, aliases and the one place that knows every spelling
of a JAX transform (`@jit`, `@jax.jit`, `@partial(jax.jit, static_argnums=1)`, `jax.jit(f)`,
`eqx.filter_jit`, `nnx.jit`, `lax.scan` bodies, ...)."""

from __future__ import annotations

import ast
import builtins
import functools
from dataclasses import dataclass, field

_BUILTINS = frozenset(dir(builtins))

# Module-name aliases that mean the same thing.
_CANONICAL_PREFIXES = (
    ("jax._src.numpy", "jax.numpy"),
    ("jax.experimental.pjit.pjit", "jax.jit"),
    ("jax.pjit", "jax.jit"),
    ("eqx.", "equinox."),
    ("jax.remat", "jax.checkpoint"),
    ("jax.ad_checkpoint.checkpoint", "jax.checkpoint"),
    ("jax.experimental.shard_map.shard_map", "jax.shard_map"),
    ("flax.experimental.nnx", "flax.nnx"),
)

# kind: "abstract" transforms stage the function out (bool() on a tracer fails);
#       "diff" transforms differentiate but run eagerly unless also under jit.
TRANSFORMS: dict[str, tuple[str, str]] = {
    # qualified name: (family, kind)
    "jax.jit": ("jit", "abstract"),
    "jax.pmap": ("jit", "abstract"),
    "equinox.filter_jit": ("jit", "abstract"),
    "equinox.filter_pmap": ("jit", "abstract"),
    "flax.nnx.jit": ("jit", "abstract"),
    "flax.linen.jit": ("jit", "abstract"),
    "jax.checkpoint": ("remat", "abstract"),
    "flax.linen.remat": ("remat", "abstract"),
    "flax.nnx.remat": ("remat", "abstract"),
    "jax.shard_map": ("shard_map", "abstract"),
    "jax.vmap": ("vmap", "abstract"),
    "equinox.filter_vmap": ("vmap", "abstract"),
    "flax.nnx.vmap": ("vmap", "abstract"),
    "jax.eval_shape": ("trace", "abstract"),
    "equinox.filter_eval_shape": ("trace", "abstract"),
    "jax.make_jaxpr": ("trace", "abstract"),
    "equinox.filter_make_jaxpr": ("trace", "abstract"),
    "jax.grad": ("grad", "diff"),
    "jax.value_and_grad": ("grad", "diff"),
    "jax.jacrev": ("jacrev", "diff"),
    "jax.jacfwd": ("jacfwd", "diff"),
    "jax.hessian": ("hessian", "diff"),
    "jax.jvp": ("jvp", "diff"),
    "jax.vjp": ("vjp", "diff"),
    "jax.linearize": ("linearize", "diff"),
    "equinox.filter_grad": ("grad", "diff"),
    "equinox.filter_value_and_grad": ("grad", "diff"),
    "equinox.filter_jvp": ("jvp", "diff"),
    "equinox.filter_vjp": ("vjp", "diff"),
    "flax.nnx.grad": ("grad", "diff"),
    "flax.nnx.value_and_grad": ("grad", "diff"),
}

# Control-flow primitives: qualified name -> positions of the function arguments
# (a position holding a list/tuple means every element is a function).
CONTROL_FLOW: dict[str, tuple[int, ...]] = {
    "jax.lax.scan": (0,),
    "jax.lax.cond": (1, 2),
    "jax.lax.switch": (1,),
    "jax.lax.while_loop": (0, 1),
    "jax.lax.fori_loop": (2,),
    "jax.lax.map": (0,),
    "jax.lax.associative_scan": (0,),
    "jax.lax.custom_root": (1, 2),
}
CONTROL_FLOW_KEYWORDS: dict[str, tuple[str, ...]] = {
    "jax.lax.scan": ("f",),
    "jax.lax.cond": ("true_fun", "false_fun"),
    "jax.lax.switch": ("branches",),
    "jax.lax.while_loop": ("cond_fun", "body_fun"),
    "jax.lax.fori_loop": ("body_fun",),
    "jax.lax.map": ("f",),
}

PARTIAL = frozenset({"functools.partial", "jax.tree_util.Partial"})


@dataclass(frozen=True, slots=True)
class Transform:
    """A recognised transform application: what it is and which parameters it keeps static."""

    qualname: str
    family: str  # jit, vmap, grad, jacfwd, scan, cond, ...
    abstract: bool
    static_argnums: tuple[int, ...] = ()
    static_argnames: tuple[str, ...] = ()
    filtered: bool = False  # eqx.filter_* / nnx: non-array arguments are static
    unsure: bool = False  # which arguments it traces is not known (`vmap`'s `in_axes` computed)
    node: ast.AST | None = field(default=None, compare=False)


@functools.lru_cache(maxsize=8192)
def canonical(name: str) -> str:
    for old, new in _CANONICAL_PREFIXES:
        if name == old or name.startswith(old + ".") or (old.endswith(".") and name.startswith(old)):
            return new + name[len(old) :]
    return name


_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def statements(body: list[ast.stmt]) -> list[ast.AST]:
    """Every statement of a module, nested bodies included; expressions are not visited
    (imports are statements, so this finds them all at a fraction of a full walk's cost)."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        out.append(node)
        for name in _BODIES:
            sub = getattr(node, name, None)
            if sub:
                stack.extend(sub)
    return out


class Names:
    """The import aliases of one module (imports anywhere in the file count)."""

    __slots__ = ("aliases", "defined", "statements", "_qualnames", "_transform_calls")

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: dict[str, str] = {}
        self.defined: set[str] = set()
        self._qualnames: dict[int, str | None] = {}
        self._transform_calls: dict[int, tuple[Transform, list[ast.AST]] | None] = {}
        self.statements = statements(tree.body)  # every statement, nested bodies included
        for node in self.statements:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = canonical(a.name)
                    else:
                        top = a.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom):
                if node.level or not node.module:
                    continue
                for a in node.names:
                    if a.name == "*":
                        continue
                    self.aliases[a.asname or a.name] = canonical(f"{node.module}.{a.name}")
        assigned: dict[str, int] = {}  # how many module-level assignments bind each name
        defs: set[str] = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defined.add(node.name)
                defs.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        self.defined.add(t.id)
                        assigned[t.id] = assigned.get(t.id, 0) + 1
        # a module-level alias bound once (`partial = functools.partial`, `jit = jax.jit`) names
        # what it is bound to, as an import alias does
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and isinstance(node.value, (ast.Name, ast.Attribute)):
                name = node.targets[0].id
                once = assigned.get(name) == 1 and name not in defs and name not in self.aliases
                q = self._qualname(node.value) if once else None
                if q is not None:
                    self.aliases[name] = q

    def qualname(self, expr: ast.AST) -> str | None:
        """`jnp.where` -> `jax.numpy.where`; `jit` -> `jax.jit`; a local name -> None.

        Memoised per node: every rule that visits a call asks about the same callee."""
        key = id(expr)
        memo = self._qualnames
        if key in memo:
            return memo[key]
        q = memo[key] = self._qualname(expr)
        return q

    def _qualname(self, expr: ast.AST) -> str | None:
        parts: list[str] = []
        while isinstance(expr, ast.Attribute):
            parts.append(expr.attr)
            expr = expr.value
        if not isinstance(expr, ast.Name):
            return None
        base = self.aliases.get(expr.id)
        if base is None:
            if expr.id in _BUILTINS and expr.id not in self.defined:
                base = "builtins." + expr.id
            else:
                return None
        parts.append(base)
        return canonical(".".join(reversed(parts)))

    def is_jax(self, qual: str | None, *prefixes: str) -> bool:
        return qual is not None and any(qual == p or qual.startswith(p + ".") for p in prefixes)

    # -- transforms ----------------------------------------------------------------
    def transform(self, expr: ast.AST) -> Transform | None:
        """The transform that `expr` denotes when used as a decorator or callee.

        Recognises `jax.jit`, `jit`, `partial(jax.jit, static_argnums=1)`,
        `jax.jit(static_argnames=...)` (decorator factory) and their aliases.
        """
        keywords: list[ast.keyword] = []
        target = expr
        if isinstance(expr, ast.Call):
            q = self.qualname(expr.func)
            if q in PARTIAL and expr.args:
                target = expr.args[0]
                keywords = expr.keywords
            elif q in TRANSFORMS and not expr.args:
                target = expr.func
                keywords = expr.keywords
            else:
                return None
        q = self.qualname(target)
        if q is None or q not in TRANSFORMS:
            return None
        return make_transform(q, keywords, expr)

    def transform_call(self, call: ast.Call) -> tuple[Transform, list[ast.AST]] | None:
        """For `jax.jit(f, ...)`, `lax.scan(body, ...)`: the transform and the function args.

        Memoised per call: the analysis asks about every call, and three rules ask again."""
        key = id(call)
        memo = self._transform_calls
        if key in memo:
            return memo[key]
        found = memo[key] = self._transform_call(call)
        return found

    def _transform_call(self, call: ast.Call) -> tuple[Transform, list[ast.AST]] | None:
        q = self.qualname(call.func)
        if q is None:
            # `partial(jax.jit, static_argnums=1)(f)`
            if isinstance(call.func, ast.Call):
                t = self.transform(call.func)
                if t is not None and call.args:
                    return t, [call.args[0]]
            return None
        if q in TRANSFORMS:
            if not call.args:
                fn = next((k.value for k in call.keywords if k.arg in ("fun", "f")), None)
                if fn is None:
                    return None
                return make_transform(q, call.keywords, call), [fn]
            return make_transform(q, call.keywords, call), [call.args[0]]
        if q in CONTROL_FLOW:
            fns: list[ast.AST] = []
            for pos in CONTROL_FLOW[q]:
                if pos < len(call.args):
                    arg = call.args[pos]
                    fns.extend(arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else [arg])
            for k in call.keywords:
                if k.arg in CONTROL_FLOW_KEYWORDS.get(q, ()):
                    fns.extend(k.value.elts if isinstance(k.value, (ast.List, ast.Tuple)) else [k.value])
            family = q.rsplit(".", 1)[1]
            return Transform(q, family, True, node=call), fns
        return None


def make_transform(q: str, keywords: list[ast.keyword], node: ast.AST) -> Transform:
    family, kind = TRANSFORMS[q]
    nums: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    for k in keywords:
        if k.arg in ("static_argnums", "static_broadcasted_argnums"):
            nums = _int_tuple(k.value)
        elif k.arg == "static_argnames":
            names = _str_tuple(k.value)
    filtered = q.startswith(("equinox.", "flax.nnx."))
    return Transform(q, family, kind == "abstract", nums, names, filtered, node=node)


def _int(v: ast.AST) -> int | None:
    """An int literal, negative ones included (`-1` is a unary minus on `1` in the tree)."""
    if isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub):
        inner = _int(v.operand)
        return -inner if inner is not None else None
    return v.value if isinstance(v, ast.Constant) and isinstance(v.value, int) and not isinstance(v.value, bool) else None


def _int_tuple(v: ast.AST) -> tuple[int, ...]:
    """`static_argnums`' ints: `1`, `(0, 2)`, `(0, -1)` (JAX counts a negative one from the end of
    the positional parameters)."""
    if isinstance(v, (ast.Tuple, ast.List)):
        return tuple(i for e in v.elts if (i := _int(e)) is not None)
    i = _int(v)
    return (i,) if i is not None else ()


def _str_tuple(v: ast.AST) -> tuple[str, ...]:
    if isinstance(v, ast.Constant) and isinstance(v.value, str):
        return (v.value,)
    if isinstance(v, (ast.Tuple, ast.List)):
        return tuple(e.value for e in v.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return ()
