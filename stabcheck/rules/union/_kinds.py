"""What a return or carry expression visibly is: its pytree *kind* and its evident dtype.

Shared by the 2xx rules (union-return, branch-type-mismatch, carry-type-drift). Everything here
is a conservative reading of the source: `None` means "cannot tell", and rules stay silent on it.

Kinds: `"none"`, `"leaf"` (an array or a number), `("tuple", n)`, `("list", n)`,
`("dict", keys)` (keys `None` when they are not all string literals), `"str"`, and `"some"`: a
traced value of unknown structure, which is known only not to be `None`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from stabcheck.static.analysis import Analysis, FunctionInfo
from stabcheck.static.names import Names

Kind = str | tuple[str, object]

# Functions whose result is a tuple of known length (x64-independent, documented JAX API).
TUPLE_RESULTS: dict[str, int] = {
    "jax.scipy.linalg.lu_factor": 2,
    "jax.scipy.linalg.cho_factor": 2,
    "jax.scipy.linalg.lu": 3,
    "jax.scipy.linalg.qr": 2,
    "jax.scipy.linalg.eigh": 2,
    "jax.scipy.linalg.schur": 2,
    "jax.numpy.linalg.qr": 2,
    "jax.numpy.linalg.eigh": 2,
    "jax.numpy.linalg.eig": 2,
    "jax.numpy.linalg.slogdet": 2,
    "jax.numpy.linalg.svd": 3,
    "jax.numpy.divmod": 2,
    "jax.numpy.frexp": 2,
    "jax.numpy.modf": 2,
    "jax.lax.top_k": 2,
    "jax.lax.linalg.lu": 3,
    "jax.lax.linalg.qr": 2,
    "jax.lax.linalg.eigh": 2,
    "jax.random.split": 0,  # an array of keys, not a tuple: listed to mark it a leaf
}
# jnp/lax functions that do not return a single array.
NON_LEAF = frozenset(
    {
        "jax.numpy.nonzero",
        "jax.numpy.where",  # one-argument form returns a tuple
        "jax.numpy.split",
        "jax.numpy.array_split",
        "jax.numpy.hsplit",
        "jax.numpy.vsplit",
        "jax.numpy.dsplit",
        "jax.numpy.meshgrid",
        "jax.numpy.unique",
        "jax.numpy.broadcast_arrays",
        "jax.numpy.indices",
        "jax.numpy.histogram",
        "jax.numpy.linalg.lstsq",
        "jax.lax.cond",
        "jax.lax.switch",
        "jax.lax.scan",
        "jax.lax.while_loop",
        "jax.lax.fori_loop",
        "jax.lax.map",
        "jax.lax.associative_scan",
        "jax.lax.sort_key_val",
        "jax.lax.optimization_barrier",
        "jax.lax.stop_gradient",
        "jax.lax.psum",
        "jax.lax.pmean",
        "jax.lax.pmax",
        "jax.lax.all_gather",
    }
)
LEAF_PREFIXES = ("jax.numpy.", "jax.lax.", "jax.nn.", "jax.scipy.special.", "jax.random.")
NON_LEAF_METHODS = frozenset({"nonzero", "split", "items", "keys", "values", "copy", "get", "pop", "tree_flatten"})

DTYPE_NAMES = (
    "bool_", "bool", "int4", "int8", "int16", "int32", "int64", "uint4", "uint8", "uint16", "uint32", "uint64",
    "float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "float32", "float64", "complex64", "complex128",
)
_BUILTIN_DTYPES = {"builtins.float": "float32", "builtins.int": "int32", "builtins.bool": "bool", "builtins.complex": "complex64"}
FLOAT_FUNCS = frozenset(
    {
        "sin", "cos", "tan", "tanh", "sinh", "cosh", "exp", "exp2", "expm1", "log", "log1p", "log2", "log10", "sqrt",
        "rsqrt", "cbrt", "mean", "var", "std", "nanmean", "sigmoid", "softmax", "log_softmax", "relu", "gelu",
        "silu", "softplus", "logsumexp", "erf", "reciprocal", "arctan", "arcsin", "arccos", "arctan2", "hypot",
        "normal", "uniform", "linspace", "logistic", "true_divide", "divide", "norm",
    }
)
INT_FUNCS = frozenset({"argmax", "argmin", "argsort", "searchsorted", "count_nonzero", "floor_divide", "randint", "digitize", "bincount"})


def dtype_literal(expr: ast.AST | None, names: Names) -> str | None:
    """`jnp.float16` / `'float16'` / `np.int32` / `float` -> a canonical dtype name (x64 off)."""
    if expr is None:
        return None
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value if expr.value in DTYPE_NAMES else None
    q = names.qualname(expr)
    if q is None:
        return None
    if q in _BUILTIN_DTYPES:
        return _BUILTIN_DTYPES[q]
    if q.startswith(("jax.numpy.", "numpy.", "ml_dtypes.")):
        leaf = q.rsplit(".", 1)[1]
        if leaf in DTYPE_NAMES:
            return "bool" if leaf == "bool_" else leaf
    return None


def dtype_class(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype.startswith("complex"):
        return "complex"
    return "float"


def explicit_dtype(expr: ast.AST, names: Names) -> str | None:
    """The dtype an expression is explicitly cast or created with: `x.astype(D)`, `f(..., dtype=D)`,
    `jnp.float16(x)`. None when the dtype is not written as a literal (e.g. `x.astype(y.dtype)`)."""
    if not isinstance(expr, ast.Call):
        return None
    func = expr.func
    if isinstance(func, ast.Attribute) and func.attr in ("astype", "view") and expr.args:
        return dtype_literal(expr.args[0], names)
    for k in expr.keywords:
        if k.arg == "dtype":
            return dtype_literal(k.value, names)
    q = names.qualname(func)
    if q is not None:
        if q.startswith(("jax.numpy.", "numpy.")) and q.rsplit(".", 1)[1] in DTYPE_NAMES:
            return dtype_literal(func, names)
        pos = {"jax.numpy.zeros": 1, "jax.numpy.ones": 1, "jax.numpy.empty": 1, "jax.numpy.full": 2, "jax.numpy.array": 1, "jax.numpy.asarray": 1, "jax.numpy.zeros_like": 1, "jax.numpy.ones_like": 1, "jax.numpy.full_like": 2, "jax.numpy.arange": 3}.get(q)
        if pos is not None and len(expr.args) > pos:
            return dtype_literal(expr.args[pos], names)
    return None


def literal_class(expr: ast.AST) -> str | None:
    """`0` -> "int", `0.5` -> "float", `True` -> "bool" for Python number literals (also `-1`)."""
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, (ast.USub, ast.UAdd)):
        expr = expr.operand
    if isinstance(expr, ast.Constant):
        v = expr.value
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, int):
            return "int"
        if isinstance(v, float):
            return "float"
        if isinstance(v, complex):
            return "complex"
    return None


def evident_class(expr: ast.AST, names: Names, depth: int = 0) -> str | None:
    """"float"/"int"/"bool" when the source shows the value's dtype class, else None."""
    if depth > 6:
        return None
    d = explicit_dtype(expr, names)
    if d is not None:
        return dtype_class(d)
    if isinstance(expr, ast.Compare):
        return "bool"
    if isinstance(expr, ast.BinOp):
        if isinstance(expr.op, ast.Div):
            return "float"
        sides = [evident_class(expr.left, names, depth + 1), evident_class(expr.right, names, depth + 1)]
        sides += [literal_class(expr.left), literal_class(expr.right)]
        if "float" in sides:
            return "float"
        return None
    if isinstance(expr, ast.UnaryOp) and not isinstance(expr.op, ast.Not):
        return evident_class(expr.operand, names, depth + 1)
    if isinstance(expr, ast.Call):
        q = names.qualname(expr.func)
        leaf = q.rsplit(".", 1)[1] if q is not None and q.startswith(LEAF_PREFIXES) else None
        if leaf is None and isinstance(expr.func, ast.Attribute) and q is None:
            leaf = expr.func.attr if expr.func.attr in ("mean", "var", "std") else None
        if leaf in FLOAT_FUNCS:
            return "float"
        if leaf in INT_FUNCS:
            return "int"
    return None


def strong_int_init(expr: ast.AST, names: Names) -> bool:
    """A strongly typed integer array: `jnp.int32(0)`, `jnp.zeros(n, int)`, `x.astype(jnp.int32)`,
    `jnp.arange(n)`. Python literals and `jnp.array(0)` are weakly typed: JAX promotes those."""
    d = explicit_dtype(expr, names)
    if d is not None:
        return dtype_class(d) == "int"
    if isinstance(expr, ast.Call):
        q = names.qualname(expr.func)
        if q == "jax.numpy.arange" and all(literal_class(a) == "int" or not isinstance(a, ast.Constant) for a in expr.args):
            return not any(literal_class(a) == "float" for a in expr.args)
        if q is not None and q.startswith("jax.numpy.") and q.rsplit(".", 1)[1] in INT_FUNCS:
            return True
    return False


# -- return statements and their path conditions ------------------------------------------------
@dataclass(frozen=True, slots=True)
class Exit:
    """One way a function hands back a value: `value` (None for a bare `return` or falling off
    the end), the node to report at, and the `if`/`while` tests that lead there."""

    value: ast.expr | None
    node: ast.AST
    guards: tuple[ast.expr, ...]


def exits(fn: ast.AST) -> list[Exit]:
    """The returns of a def (or the body of a lambda), with the conditions guarding each, and a
    final implicit `return None` when control can fall off the end of a def that returns a value."""
    if isinstance(fn, ast.Lambda):
        return list(_expand(fn.body, fn.body, ()))
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []
    if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _own(fn.body)):
        return []
    out: list[Exit] = []
    falls, guards = _block(fn.body, (), out)
    if falls and any(e.value is not None for e in out) and fn.body:
        last = fn.body[-1]
        out.append(Exit(None, last, guards))
    return out


def _expand(value: ast.expr, node: ast.AST, guards: tuple[ast.expr, ...]) -> Iterator[Exit]:
    """`return a if c else b` is two exits guarded by `c`."""
    if isinstance(value, ast.IfExp):
        yield from _expand(value.body, node, (*guards, value.test))
        yield from _expand(value.orelse, node, (*guards, value.test))
    else:
        yield Exit(value, node, guards)


def _block(stmts: list[ast.stmt], guards: tuple[ast.expr, ...], out: list[Exit]) -> tuple[bool, tuple[ast.expr, ...]]:
    """Collect exits of a statement list; returns (can fall through, guards after it)."""
    for s in stmts:
        if isinstance(s, ast.Return):
            if s.value is None:
                out.append(Exit(None, s, guards))
            else:
                out.extend(_expand(s.value, s, guards))
            return False, guards
        if isinstance(s, ast.Raise):
            return False, guards
        if isinstance(s, ast.If):
            g = (*guards, s.test)
            body_falls, _ = _block(s.body, g, out)
            else_falls, _ = _block(s.orelse, g, out) if s.orelse else (True, g)
            if not body_falls and not else_falls:
                return False, guards
            if not body_falls or not else_falls:
                guards = g  # what follows runs only when the test went one way
        elif isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            g = (*guards, s.test) if isinstance(s, ast.While) else guards
            _block(s.body, g, out)
            _block(s.orelse, g, out)
            if isinstance(s, ast.While) and isinstance(s.test, ast.Constant) and s.test.value is True and not _breaks(s.body):
                return False, guards
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            falls, guards = _block(s.body, guards, out)
            if not falls:
                return False, guards
        elif isinstance(s, ast.Try):
            body_falls, _ = _block(s.body + s.orelse, guards, out)
            handlers_fall = False
            for h in s.handlers:
                hf, _ = _block(h.body, guards, out)
                handlers_fall = handlers_fall or hf
            _block(s.finalbody, guards, out)
            if not body_falls and not handlers_fall:
                return False, guards
        elif isinstance(s, ast.Match):
            g = (*guards, s.subject)
            for case in s.cases:
                _block(case.body, g, out)
            guards = g
    return True, guards


def _breaks(stmts: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Break) for n in _own(stmts))


def _own(stmts: list[ast.stmt] | list[ast.AST]) -> Iterator[ast.AST]:
    stack: list[ast.AST] = list(stmts)
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(n))


# -- kinds -------------------------------------------------------------------------------------
class Kinds:
    """Infers the kind of expressions inside one function, following single assignments and
    calls to functions of the same module."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.names = analysis.names
        self._fn_kinds: dict[ast.AST, Kind | None] = {}
        self._assigns: dict[ast.AST, dict[str, list[ast.expr]]] = {}

    def of(self, expr: ast.expr | None, info: FunctionInfo | None, depth: int = 0) -> Kind | None:
        if expr is None:
            return "none"
        if depth > 8:
            return None
        if isinstance(expr, ast.Constant):
            if expr.value is None:
                return "none"
            if isinstance(expr.value, str):
                return "str"
            return "leaf" if isinstance(expr.value, (int, float, complex)) else None
        if isinstance(expr, ast.Tuple):
            return None if any(isinstance(e, ast.Starred) for e in expr.elts) else ("tuple", len(expr.elts))
        if isinstance(expr, ast.List):
            return None if any(isinstance(e, ast.Starred) for e in expr.elts) else ("list", len(expr.elts))
        if isinstance(expr, ast.Dict):
            if all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in expr.keys):
                return ("dict", frozenset(k.value for k in expr.keys))  # type: ignore[union-attr]
            return ("dict", None)
        if isinstance(expr, (ast.Compare, ast.UnaryOp)):
            return "leaf" if self._traced(expr, info) or literal_class(expr) else None
        if isinstance(expr, ast.BinOp):
            sides = [self.of(expr.left, info, depth + 1), self.of(expr.right, info, depth + 1)]
            if any(isinstance(s, tuple) for s in sides) or "str" in sides:
                return None  # tuple concatenation, string formatting
            if "leaf" in sides or self._traced(expr, info):
                return "leaf"
            return None
        if isinstance(expr, ast.Name):
            vals = self.assignments(info).get(expr.id, [])
            if len(vals) == 1:
                return self.of(vals[0], info, depth + 1)
            return "some" if not vals and self._traced(expr, info) and not _may_be_none(expr.id, info) else None
        if isinstance(expr, ast.Call):
            return self._call(expr, info, depth)
        if isinstance(expr, ast.Subscript) and not isinstance(expr.slice, ast.Slice):
            return "some" if self._traced(expr, info) else None
        return None

    def _traced(self, expr: ast.AST, info: FunctionInfo | None) -> bool:
        return info is not None and self.analysis.is_traced(expr, info)

    def _call(self, call: ast.Call, info: FunctionInfo | None, depth: int) -> Kind | None:
        q = self.names.qualname(call.func)
        if q is not None:
            n = TUPLE_RESULTS.get(q)
            if n is not None:
                if q == "jax.numpy.linalg.svd" and any(k.arg == "compute_uv" for k in call.keywords):
                    return None
                return ("tuple", n) if n else "leaf"
            if q in NON_LEAF:
                if q == "jax.numpy.where" and len(call.args) == 3:
                    return "leaf"
                return None
            if q.startswith(LEAF_PREFIXES):
                return "leaf"
            if q.startswith("builtins."):
                name = q.removeprefix("builtins.")
                if name == "tuple" or name == "list" or name == "dict":
                    return None
                return "leaf" if name in ("abs", "sum", "max", "min", "pow", "round") and self._traced(call, info) else None
            return None
        if isinstance(call.func, ast.Attribute):
            if explicit_dtype(call, self.names) is not None:
                return "leaf"
            if call.func.attr in NON_LEAF_METHODS:
                return None
            if self._traced(call.func.value, info) and call.func.attr in _ARRAY_METHODS:
                return "leaf"
        callee = self.analysis.resolve(call.func, info)
        if callee is not None and callee is not info:
            return self.function_kind(callee, depth + 1)
        return None

    def function_kind(self, fn: FunctionInfo, depth: int = 0) -> Kind | None:
        """The one kind all of a function's exits share, or None (mixed or unknown)."""
        if fn.node in self._fn_kinds:
            return self._fn_kinds[fn.node]
        self._fn_kinds[fn.node] = None  # recursion guard
        kinds = {self.of(e.value, fn, depth) for e in exits(fn.node)}
        if len(kinds) > 1 and "none" not in kinds:
            kinds.discard("some")
        kind = kinds.pop() if len(kinds) == 1 else None
        self._fn_kinds[fn.node] = kind
        return kind

    def assignments(self, info: FunctionInfo | None) -> dict[str, list[ast.expr]]:
        """Values assigned to each plain name in the function (augmented assignments count)."""
        if info is None:
            return {}
        cached = self._assigns.get(info.node)
        if cached is not None:
            return cached
        out: dict[str, list[ast.expr]] = {}
        body: list[ast.AST] = list(info.node.body) if isinstance(info.node.body, list) else [info.node.body]
        for n in _own(body):
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    if isinstance(t, ast.Name):
                        out.setdefault(t.id, []).append(n.value)
                    else:
                        for m in ast.walk(t):
                            if isinstance(m, ast.Name):
                                out.setdefault(m.id, []).extend([n.value, n.value])  # unpacked: unknown
            elif isinstance(n, (ast.AugAssign, ast.AnnAssign)) and isinstance(n.target, ast.Name) and n.value is not None:
                out.setdefault(n.target.id, []).append(n.value)
            elif isinstance(n, (ast.For, ast.AsyncFor, ast.comprehension, ast.NamedExpr, ast.withitem)):
                target = getattr(n, "target", None) or getattr(n, "optional_vars", None)
                for m in ast.walk(target) if target is not None else ():
                    if isinstance(m, ast.Name):
                        out.setdefault(m.id, []).extend([m, m])
        self._assigns[info.node] = out
        return out


def _may_be_none(name: str, info: FunctionInfo | None) -> bool:
    """The name is not a parameter of an enclosing function, or one that defaults to `None`."""
    s = info
    while s is not None:
        if name in s.params:
            args = s.node.args
            positional = [*args.posonlyargs, *args.args]
            defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
            pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
            for a, d in pairs:
                if a.arg == name:
                    return isinstance(d, ast.Constant) and d.value is None
            return False  # *args / **kwargs
        s = s.parent
    return True


_ARRAY_METHODS = frozenset(
    {
        "sum", "mean", "max", "min", "prod", "std", "var", "reshape", "ravel", "flatten", "transpose", "squeeze",
        "astype", "clip", "round", "cumsum", "cumprod", "dot", "conj", "real", "imag", "argmax", "argmin", "all",
        "any", "set", "add", "multiply", "divide", "power", "apply", "swapaxes", "T", "take", "repeat",
    }
)


def kind_text(kind: Kind | None) -> str:
    if kind == "some":
        return "a value"
    if kind == "none":
        return "`None`"
    if kind == "leaf":
        return "an array"
    if kind == "str":
        return "a string"
    if isinstance(kind, tuple):
        tag, n = kind
        if tag == "dict":
            if not isinstance(n, frozenset):
                return "a dict"
            return "a dict with keys " + (", ".join(f"`{k}`" for k in sorted(str(x) for x in n)) if n else "(none)")
        return f"a {n}-{tag}" if tag == "tuple" else f"a list of {n}"
    return "an unknown value"


def kinds_differ(a: Kind | None, b: Kind | None) -> bool:
    if a is None or b is None or a == b:
        return False
    if a == "some" or b == "some":
        return "none" in (a, b)
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] == "dict" and (a[1] is None or b[1] is None):
        return False
    return True


def kinds_for(analysis: Analysis) -> Kinds:
    """One `Kinds` per analysed file, shared by the rules that ask; it lives on the Analysis, so
    it goes when the file's analysis goes (a module-level table would keep every file alive)."""
    return analysis.memo("kinds", lambda: Kinds(analysis))
