"""Small questions the 1xx rules ask about an expression, on top of `static.analysis`."""

from __future__ import annotations

import ast

from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext

_MASK_FUNCS = frozenset(
    f"jax.numpy.{n}"
    for n in (
        "logical_and", "logical_or", "logical_not", "logical_xor", "isnan", "isinf", "isfinite", "isclose",
        "isneginf", "isposinf", "signbit", "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
        "isin", "iscomplex", "isreal",
    )
)
_BOOL_DTYPES = frozenset({"builtins.bool", "jax.numpy.bool_", "jax.numpy.bool", "numpy.bool_", "numpy.bool"})


def traced_value(expr: ast.AST, ctx: FileContext) -> bool:
    """Is `expr` traced here? A bare parameter of an `eqx.filter_*`/`nnx` transform counts only
    when annotated as an array: those transforms keep Python ints and floats static."""
    if not ctx.is_traced(expr):
        return False
    if _pytree_metadata(expr, ctx):
        return False
    if isinstance(expr, ast.Name) and ctx.function is not None:
        owner = _param_owner(expr.id, ctx.function)
        if owner is not None and owner.transforms and all(t.filtered for t in owner.transforms):
            return ctx.is_traced_array(expr)
    return True


_ARRAY_ATTRS = frozenset({"T", "mT", "real", "imag", "at", "value"})


def _pytree_metadata(expr: ast.AST, ctx: FileContext) -> bool:
    """`arr.n_sparse`, `cfg.depth`: an attribute of a parameter that is not an array attribute
    may be static pytree metadata (aux data), so it is not known to be traced."""
    if not isinstance(expr, ast.Attribute) or expr.attr in _ARRAY_ATTRS:
        return False
    root: ast.AST = expr
    while isinstance(root, ast.Attribute):
        root = root.value
    return isinstance(root, ast.Name) and ctx.function is not None and _param_owner(root.id, ctx.function) is not None


def _param_owner(name: str, scope: FunctionInfo) -> FunctionInfo | None:
    s: FunctionInfo | None = scope
    while s is not None:
        if name in s.params and name not in s.assigned:
            return s
        if name in s.assigned:
            return None
        s = s.parent
    return None


def local_values(ctx: FileContext, name: str) -> list[ast.expr]:
    """Values bound to `name` by plain assignment in the enclosing functions (not in functions
    nested in them), else at module level."""
    s = ctx.function
    while s is not None:
        if name in s.params:
            return []
        if name in s.assigned:
            return _assigned(ctx.analysis.own_nodes(s), name)
        s = s.parent
    return _assigned(ctx.tree.body, name)


def _assigned(nodes: list[ast.AST] | list[ast.stmt], name: str) -> list[ast.expr]:
    out: list[ast.expr] = []
    for n in nodes:
        if n.__class__ is ast.Assign and any(isinstance(t, ast.Name) and t.id == name for t in n.targets):  # type: ignore[attr-defined]
            out.append(n.value)  # type: ignore[attr-defined]
        elif n.__class__ is ast.AnnAssign and isinstance(n.target, ast.Name) and n.target.id == name and n.value is not None:  # type: ignore[attr-defined]
            out.append(n.value)  # type: ignore[attr-defined]
    return out


def python_sequence(expr: ast.AST, ctx: FileContext) -> bool:
    """A Python list or tuple: a display, `list(...)`/`tuple(...)`, or a name bound only to those."""
    if isinstance(expr, (ast.List, ast.Tuple, ast.ListComp)):
        return True
    if isinstance(expr, ast.Attribute) and expr.attr == "shape":
        return True  # `x.shape` is a Python tuple even under `jit`
    if isinstance(expr, ast.Call) and ctx.qualname(expr.func) in ("builtins.list", "builtins.tuple", "builtins.sorted"):
        return True
    if isinstance(expr, ast.Name):
        vals = local_values(ctx, expr.id)
        return bool(vals) and all(isinstance(v, (ast.List, ast.Tuple, ast.ListComp)) or (isinstance(v, ast.Call) and ctx.qualname(v.func) in ("builtins.list", "builtins.tuple", "builtins.sorted")) for v in vals)
    return False


def bool_mask(expr: ast.AST, ctx: FileContext, depth: int = 0) -> bool:
    """A traced boolean array: a comparison, `~m`, `m1 & m2`, `jnp.isnan(x)`, `x.astype(bool)`,
    or a name bound to one of those."""
    if depth > 4:
        return False
    if isinstance(expr, ast.Compare):
        if all(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)) for op in expr.ops):
            return False
        return traced_value(expr, ctx)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Invert):
        return bool_mask(expr.operand, ctx, depth + 1)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.BitAnd, ast.BitOr, ast.BitXor)):
        return bool_mask(expr.left, ctx, depth + 1) or bool_mask(expr.right, ctx, depth + 1)
    if isinstance(expr, ast.Call):
        q = ctx.qualname(expr.func)
        if q in _MASK_FUNCS:
            return traced_value(expr, ctx)
        if isinstance(expr.func, ast.Attribute) and expr.func.attr == "astype" and expr.args:
            return ctx.qualname(expr.args[0]) in _BOOL_DTYPES and traced_value(expr.func.value, ctx)
        return False
    if isinstance(expr, ast.Name):
        vals = local_values(ctx, expr.id)
        if vals:
            return all(bool_mask(v, ctx, depth + 1) for v in vals)
        return _bool_annotated(expr.id, ctx) and traced_value(expr, ctx)
    return False


def _bool_annotated(name: str, ctx: FileContext) -> bool:
    s = ctx.function
    while s is not None:
        if name in s.params:
            args = s.node.args
            for a in (*args.posonlyargs, *args.args, *args.kwonlyargs):
                if a.arg == name and a.annotation is not None:
                    text = ast.unparse(a.annotation)
                    return text.startswith(("Bool[", "jaxtyping.Bool[", "jt.Bool["))
            return False
        s = s.parent
    return False
