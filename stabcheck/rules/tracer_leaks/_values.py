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
# the last name of a type that only a tracer (or a JAX array, which may be one) is
_TRACER_TYPES = frozenset({"Tracer", "Array", "ArrayImpl", "DynamicJaxprTracer", "JVPTracer", "BatchTracer"})
# the last name of a concrete type: Python values and NumPy arrays and scalars
_CONCRETE_TYPES = frozenset(
    {"int", "float", "bool", "complex", "str", "bytes", "list", "tuple", "dict", "set", "frozenset", "ndarray", "generic", "number", "integer", "floating", "bool_", "NoneType"}
)
_ARRAY_MARKS = frozenset({"shape", "dtype", "aval", "ndim", "__jax_array__"})


def guarded_concrete(name: str, ctx: FileContext) -> bool:
    """Does an enclosing `if`/conditional expression prove `name` concrete where the visited node
    is? Libraries handle concrete and traced values in one function and branch on which it is:
    `isinstance(x, (int, np.integer))`, `type(x) is int`, `not isinstance(x, core.Tracer)`,
    `core.is_concrete(x)`, `jax.config.jax_disable_jit` (the body), `hasattr(x, "shape")`,
    `isinstance(x, jax.Array)` (the other branch, or what follows it when its body returns or
    raises)."""
    child: ast.AST = ctx.node
    for anc in reversed(ctx.ancestors):
        if isinstance(anc, (ast.If, ast.IfExp)) and child is not anc.test:
            in_body = child is anc.body if isinstance(anc, ast.IfExp) else any(child is st for st in anc.body)
            verdict = _concrete_when(anc.test, name)
            if verdict is not None and verdict == in_body:
                return True
        if _after_early_exit(anc, child, name):
            return True
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return False
        child = anc
    return False


def concrete_here(expr: ast.AST, ctx: FileContext) -> bool:
    """Every traced name `expr` reads is proven concrete where the visited node is
    (`guarded_concrete`): `scale > 0` after `if isinstance(scale, core.Tracer): return ...`."""
    if isinstance(expr, ast.Name):
        return guarded_concrete(expr.id, ctx)
    names = [n for n in ast.walk(expr) if isinstance(n, ast.Name) and ctx.is_traced(n)]
    return bool(names) and all(guarded_concrete(n.id, ctx) for n in names)


_EXITS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def _after_early_exit(block: ast.AST, stmt: ast.AST, name: str) -> bool:
    """`if isinstance(x, core.Tracer): return ...` earlier in the same block: after it, `x` is
    concrete (the test failed, or the function would have left)."""
    for field in ("body", "orelse", "finalbody"):
        stmts = getattr(block, field, None)
        if not isinstance(stmts, list) or not any(st is stmt for st in stmts):
            continue
        for st in stmts:
            if st is stmt:
                return False
            if isinstance(st, ast.If) and not st.orelse and st.body and isinstance(st.body[-1], _EXITS) and _concrete_when(st.test, name) is False:
                return True
    return False


def _concrete_when(test: ast.AST, name: str) -> bool | None:
    """True: `name` is concrete when `test` holds; False: when it fails; None: it says nothing."""
    if any((isinstance(n, ast.Attribute) and n.attr == "jax_disable_jit") or (isinstance(n, ast.Constant) and n.value == "jax_disable_jit") for n in ast.walk(test)):
        return True  # `if jax.config.jax_disable_jit:` runs only where nothing is staged out
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _concrete_when(test.operand, name)
        return None if inner is None else not inner
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):  # `a and b` holds: both hold
        return True if any(_concrete_when(v, name) is True for v in test.values) else None
    if isinstance(test, ast.Call) and test.args and isinstance(test.args[0], ast.Name) and test.args[0].id == name:
        fn = _last_name(test.func)
        if fn == "isinstance" and len(test.args) == 2:
            kinds = {_last_name(t) for t in (test.args[1].elts if isinstance(test.args[1], ast.Tuple) else [test.args[1]])}
            if kinds and kinds <= _CONCRETE_TYPES:
                return True
            if kinds & _TRACER_TYPES:
                return False
        elif fn == "hasattr" and len(test.args) == 2 and isinstance(test.args[1], ast.Constant) and test.args[1].value in _ARRAY_MARKS:
            return False
        elif fn in ("is_concrete", "is_constant_dim", "is_python_scalar"):
            return True
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Call) and _last_name(test.left.func) == "type":
        arg = test.left.args[0] if test.left.args else None
        if isinstance(arg, ast.Name) and arg.id == name and isinstance(test.ops[0], (ast.Is, ast.Eq, ast.In)):
            right = test.comparators[0]
            kinds = {_last_name(t) for t in (right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right])}
            if kinds <= _CONCRETE_TYPES or (isinstance(test.ops[0], ast.In) and isinstance(right, ast.Name) and "scalar" in right.id):
                return True
    return None


def _last_name(e: ast.AST) -> str:
    return e.id if isinstance(e, ast.Name) else e.attr if isinstance(e, ast.Attribute) else ""


def traced_value(expr: ast.AST, ctx: FileContext) -> bool:
    """Is `expr` traced here? A bare parameter of an `eqx.filter_*`/`nnx` transform counts only
    when annotated as an array: those transforms keep Python ints and floats static. A name that
    an enclosing test proves concrete (`guarded_concrete`) is not traced there."""
    if not ctx.is_traced(expr):
        return False
    if _pytree_metadata(expr, ctx):
        return False
    if concrete_here(expr, ctx):
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
