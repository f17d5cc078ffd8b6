"""What the dtype rules share: reading a dtype expression, recognising NumPy float64 constants
and boolean masks in source."""

from __future__ import annotations

import ast

from stabcheck.static.context import FileContext

# qualified name or string spelling -> canonical float dtype ("float" is float64 under x64)
_FLOAT_NAMES: dict[str, str] = {
    "builtins.float": "float",
    "float": "float",
    "numpy.float64": "float64",
    "numpy.double": "float64",
    "jax.numpy.float64": "float64",
    "jax.numpy.double": "float64",
    "float64": "float64",
    "f8": "float64",
    "double": "float64",
    "numpy.float32": "float32",
    "jax.numpy.float32": "float32",
    "float32": "float32",
    "f4": "float32",
    "numpy.float16": "float16",
    "jax.numpy.float16": "float16",
    "float16": "float16",
    "jax.numpy.bfloat16": "bfloat16",
    "ml_dtypes.bfloat16": "bfloat16",
    "bfloat16": "bfloat16",
}
WIDE = frozenset({"float", "float64"})
_NP_FLOAT_MAKERS = frozenset({"ones", "zeros", "full", "empty", "linspace", "eye", "identity", "logspace", "geomspace"})
_NP_RANDOM = ("numpy.random.",)
_MASK_CALLS = frozenset(
    {
        "jax.numpy.isfinite",
        "jax.numpy.isnan",
        "jax.numpy.isinf",
        "jax.numpy.logical_and",
        "jax.numpy.logical_or",
        "jax.numpy.logical_not",
        "jax.numpy.logical_xor",
        "jax.numpy.greater",
        "jax.numpy.less",
        "jax.numpy.equal",
        "jax.numpy.not_equal",
        "jax.numpy.greater_equal",
        "jax.numpy.less_equal",
        "jax.random.bernoulli",
        "jax.numpy.tril",
        "jax.numpy.triu",
    }
)


def float_dtype(expr: ast.AST | None, ctx: FileContext) -> str | None:
    """`jnp.bfloat16` -> "bfloat16", `float` -> "float", `"float64"` -> "float64"; else None."""
    if expr is None:
        return None
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return _FLOAT_NAMES.get(expr.value)
    if isinstance(expr, ast.Call) and ctx.qualname(expr.func) in ("jax.numpy.dtype", "numpy.dtype") and expr.args:
        return float_dtype(expr.args[0], ctx)
    q = ctx.qualname(expr)
    return _FLOAT_NAMES.get(q) if q is not None else None


def dtype_arg(call: ast.Call) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == "dtype"), None)


def numpy_float64(expr: ast.AST, ctx: FileContext, depth: int = 0) -> bool:
    """Is `expr` a NumPy float64 array or scalar built in source (a literal `np.array([1.0])`,
    `np.ones(n)`, `np.linspace`, `np.float64(..)`, a module constant bound to one, ...)?"""
    if depth > 6:
        return False
    rec = lambda e: numpy_float64(e, ctx, depth + 1)  # noqa: E731
    if isinstance(expr, ast.Name):
        bound = _binding(expr.id, ctx)
        return bound is not None and rec(bound)
    if isinstance(expr, ast.Subscript):
        return rec(expr.value)
    if isinstance(expr, ast.Attribute):
        return expr.attr == "T" and rec(expr.value)
    if isinstance(expr, ast.UnaryOp):
        return rec(expr.operand)
    if isinstance(expr, ast.BinOp):
        l, r = rec(expr.left), rec(expr.right)
        return (l and (r or _pure_number(expr.right))) or (r and _pure_number(expr.left))
    if not isinstance(expr, ast.Call):
        return False
    q = ctx.qualname(expr.func) or ""
    if isinstance(expr.func, ast.Attribute) and expr.func.attr == "astype" and expr.args:
        return float_dtype(expr.args[0], ctx) in WIDE and rec(expr.func.value)
    if not q.startswith("numpy."):
        return False
    dt = dtype_arg(expr)
    if dt is not None:
        return float_dtype(dt, ctx) in WIDE
    name = q[len("numpy.") :]
    if name in ("float64", "double"):
        return True
    if name in ("array", "asarray") and expr.args:
        return _has_float_literal(expr.args[0]) and len(expr.args) == 1
    if name in _NP_FLOAT_MAKERS:
        return True
    if name == "arange":
        return any(_has_float_literal(a) for a in expr.args)
    if q.startswith(_NP_RANDOM) and q.rsplit(".", 1)[1] in ("rand", "randn", "normal", "uniform", "random", "standard_normal"):
        return True
    return False


def _pure_number(e: ast.AST) -> bool:
    if isinstance(e, ast.UnaryOp):
        e = e.operand
    return isinstance(e, ast.Constant) and isinstance(e.value, (int, float)) and not isinstance(e.value, bool)


def _has_float_literal(e: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, float) for n in ast.walk(e))


def _binding(name: str, ctx: FileContext) -> ast.expr | None:
    """The one value `name` is bound to: in the current function, else at module level."""
    fn = ctx.function
    while fn is not None:
        if name in fn.params:
            return None
        vals = _assigned(fn.node, name)
        if vals:
            return vals[0] if len(vals) == 1 else None
        fn = fn.parent
    vals = [v for s in ctx.tree.body for v in _stmt_binding(s, name)]
    return vals[0] if len(vals) == 1 else None


def _assigned(fn: ast.AST, name: str) -> list[ast.expr]:
    out: list[ast.expr] = []
    body = getattr(fn, "body", None)
    stack: list[ast.AST] = list(body) if isinstance(body, list) else []
    while stack:
        n = stack.pop()
        out.extend(_stmt_binding(n, name))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        stack.extend(c for c in ast.iter_child_nodes(n) if isinstance(c, ast.stmt))
    return out


def _stmt_binding(s: ast.AST, name: str) -> list[ast.expr]:
    if isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in s.targets):
        return [s.value]
    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.target.id == name and s.value is not None:
        return [s.value]
    if isinstance(s, (ast.AugAssign, ast.For)) and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(s.target)):
        return [s.target, s.target]  # rebound: not a single known value
    return []


def is_mask(expr: ast.AST, ctx: FileContext, depth: int = 0) -> bool:
    """A boolean mask: a comparison, a logical op, `jnp.isfinite`, `bernoulli`, or a name/field
    called `mask`/`*_mask`/`keep` or bound to one of those."""
    if depth > 4:
        return False
    if isinstance(expr, ast.Compare):
        return True
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Invert):
        return is_mask(expr.operand, ctx, depth + 1)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.BitAnd, ast.BitOr, ast.BitXor)):
        return is_mask(expr.left, ctx, depth + 1) or is_mask(expr.right, ctx, depth + 1)
    if isinstance(expr, ast.Call):
        q = ctx.qualname(expr.func) or ""
        if q in _MASK_CALLS:
            return True
        dt = dtype_arg(expr)
        return dt is not None and (ctx.qualname(dt) in ("builtins.bool", "jax.numpy.bool_", "numpy.bool_") or (isinstance(dt, ast.Constant) and dt.value == "bool"))
    label = _label(expr)
    if label is not None and (label == "mask" or label.endswith("_mask") or label.startswith("mask_") or label in ("keep", "valid")):
        return True
    if isinstance(expr, ast.Name):
        bound = _binding(expr.id, ctx)
        return bound is not None and is_mask(bound, ctx, depth + 1)
    return False


def _label(expr: ast.AST) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id.lower()
    if isinstance(expr, ast.Attribute):
        return expr.attr.lower()
    if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant) and isinstance(expr.slice.value, str):
        return expr.slice.value.lower()
    return None


def dtypes_mentioned(ctx: FileContext) -> set[str]:
    """Float dtypes named in the current function, its enclosing functions and its class."""
    out: set[str] = set()
    fn = ctx.function
    nodes: list[ast.AST] = []
    while fn is not None:
        nodes.append(fn.node)
        if fn.cls is not None:
            nodes.append(fn.cls)
        fn = fn.parent
    for root in nodes:
        for n in ast.walk(root):
            if isinstance(n, (ast.Attribute, ast.Name)) or (isinstance(n, ast.Constant) and isinstance(n.value, str)):
                d = float_dtype(n, ctx)
                if d is not None and d != "float":
                    out.add(d)
    return out
