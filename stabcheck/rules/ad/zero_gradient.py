from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.ad._graph import ENTRY, ENTRY_DERIVATIVES, GRADS, ADGraph
from stabcheck.static.context import FileContext
from stabcheck.static.names import PARTIAL

# calls whose output has no derivative with respect to their inputs
_FLAT = frozenset(
    f"jax.numpy.{n}"
    for n in (
        "round", "around", "rint", "floor", "ceil", "trunc", "fix", "sign", "argmax", "argmin", "argsort", "nanargmax", "nanargmin",
        "greater", "greater_equal", "less", "less_equal", "equal", "not_equal", "logical_and", "logical_or", "logical_not", "logical_xor",
        "isnan", "isinf", "isfinite", "isclose", "searchsorted", "digitize", "floor_divide", "heaviside", "count_nonzero",
        "int8", "int16", "int32", "int64", "uint8", "uint32", "bool_",
    )
) | frozenset({"jax.lax.round", "jax.lax.floor", "jax.lax.ceil", "jax.lax.sign", "jax.lax.argmax", "jax.lax.argmin", "jax.nn.one_hot", "builtins.int", "builtins.bool"})
# calls that pass gradients through from all of their array arguments, but take functions or
# loop over code: not followed
_OPAQUE = frozenset({"jax.lax.cond", "jax.lax.switch", "jax.lax.scan", "jax.lax.fori_loop", "jax.lax.while_loop", "jax.lax.map", "jax.lax.custom_root", "jax.numpy.vectorize", "jax.numpy.piecewise", "jax.lax.stop_gradient"})
_INT_DTYPES = frozenset({"builtins.int", "builtins.bool", "jax.numpy.int8", "jax.numpy.int16", "jax.numpy.int32", "jax.numpy.int64", "jax.numpy.uint8", "jax.numpy.uint32", "jax.numpy.bool_", "numpy.int32", "numpy.int64", "numpy.bool_"})
_METHODS = frozenset({"sum", "mean", "max", "min", "prod", "reshape", "transpose", "squeeze", "ravel", "flatten", "cumsum", "dot", "clip", "std", "var", "T", "real", "conj"})
_FLAT_METHODS = frozenset({"argmax", "argmin", "argsort", "round", "nonzero"})


class ZeroGradient(Rule):
    """## What it does
    Reports (traced stage, under `grad`) a differentiated input that the output depends on only
    through primitives without a derivative — a comparison (`x > t`), rounding (`round`,
    `floor`), `sign`, `argmax`, a cast to an integer — so that `grad` returns exactly zero for it.
    Reported at the first such primitive its value flows into. The classic case is a bisection or
    a search in `lax.while_loop` whose input only enters through the comparison that picks the
    half: reverse mode does not even raise, since no tangent reaches the loop.

    ## Why is this bad?
    Nothing fails: the gradient is a well-formed array of zeros, the optimizer takes no step for
    that parameter, and the model trains on as if the parameter were frozen. The bug surfaces
    weeks later as a parameter that never moved.

    ## Example
    ```python
    def sqrt_bisect(x):
        def body(c):
            lo, hi = c
            mid = (lo + hi) / 2
            left = mid * mid > x                 # x only enters through this comparison
            return jnp.where(left, lo, mid), jnp.where(left, mid, hi)
        lo, hi = lax.while_loop(lambda c: c[1] - c[0] > 1e-4, body, (0.0, 10.0))
        return (lo + hi) / 2

    jax.grad(sqrt_bisect)(4.0)                   # 0.0, silently
    ```

    ## Use instead
    Differentiate the solution, not the search: implicit differentiation with `jax.custom_jvp`
    (for `y = sqrt(x)`: `dy = dx / (2 y)`), or a smooth surrogate for the comparison.
    ```python
    @jax.custom_jvp
    def sqrt_bisect(x): ...

    @sqrt_bisect.defjvp
    def _jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        y = sqrt_bisect(x)
        return y, dx / (2 * y)
    ```
    """

    code = "STB410"
    name = "zero-gradient"
    severity = "warning"
    stages = ("static", "traced")

    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def positives(x):
            return jnp.sum(x > 0).astype(jnp.float32)  # expect: STB410

        g = jax.grad(positives)
        """,
        """
        import jax
        import jax.numpy as jnp

        def quantized(w, x):
            q = jnp.round(w * 127) / 127  # expect: STB410
            return jnp.sum((x @ q) ** 2)

        g = jax.grad(quantized)
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def quantized(w, x):
            q = w + lax.stop_gradient(jnp.round(w * 127) / 127 - w)  # straight-through
            return jnp.sum((x @ q) ** 2)

        g = jax.grad(quantized)
        """,
        """
        import jax
        import jax.numpy as jnp

        def relu_loss(x):
            return jnp.sum(jnp.where(x > 0, x, 0.0))  # x reaches the output through the where

        g = jax.grad(relu_loss)
        """,
        """
        import jax
        import jax.numpy as jnp

        def accuracy(params, x, y):
            return jnp.mean(jnp.argmax(model(params, x), -1) == y)  # `model` is not followed

        g = jax.grad(accuracy)
        """,
    )

    @only(callees=GRADS | ENTRY)
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        fn = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg in ("fun", "fn", "f")), None)
        if fn is None:
            return
        if ctx.qualname(node.func) in ENTRY:
            declared = next((k.value for k in node.keywords if k.arg == "transforms"), None)
            if declared is not None and not (isinstance(declared, (ast.Tuple, ast.List)) and {e.value for e in declared.elts if isinstance(e, ast.Constant)} & ENTRY_DERIVATIVES):
                return
        self._check(node, fn, node.keywords, ctx)

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: FileContext) -> None:
        for dec in node.decorator_list:
            if ctx.qualname(dec) in GRADS:
                self._check(dec, node, [], ctx)
            elif isinstance(dec, ast.Call) and ctx.qualname(dec.func) in GRADS:
                self._check(dec, node, dec.keywords, ctx)
            elif isinstance(dec, ast.Call) and ctx.qualname(dec.func) in PARTIAL and dec.args and ctx.qualname(dec.args[0]) in GRADS:
                self._check(dec, node, dec.keywords, ctx)

    def _check(self, at: ast.AST, fn: ast.AST, keywords: list[ast.keyword], ctx: FileContext) -> None:
        target: ast.AST | None = fn if isinstance(fn, ast.FunctionDef) else None
        if target is None:
            info = ADGraph.of(ctx.analysis).target(fn, ctx.function)[0]
            target = info.node if info is not None else None
        if not isinstance(target, ast.FunctionDef):
            return
        params = [a.arg for a in (*target.args.posonlyargs, *target.args.args)]
        argnums = next((k.value for k in keywords if k.arg == "argnums"), None)
        if argnums is None:
            nums: list[int] = [0]
        elif isinstance(argnums, ast.Constant) and isinstance(argnums.value, int):
            nums = [argnums.value]
        elif isinstance(argnums, ast.Tuple) and all(isinstance(e, ast.Constant) and isinstance(e.value, int) for e in argnums.elts):
            nums = [e.value for e in argnums.elts]  # type: ignore[union-attr]
        else:
            return
        aux = any(k.arg == "has_aux" and not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in keywords)
        done = ctx.analysis.memo("zero-gradient", set)
        for i in nums:
            if not 0 <= i < len(params) or (id(target), i) in done:
                continue
            flow = _Flow(ctx, params[i], params)
            blocked = flow.returns(target, aux)
            if blocked is None:
                continue
            done.add((id(target), i))
            self.report(
                ctx,
                blocked,
                f"`{target.name}` is differentiated with respect to `{params[i]}`, which reaches its output only through "
                f"`{ctx.text(blocked)}` (no derivative: a comparison, rounding, an index or an integer cast); "
                "`grad` returns exactly zero for it, silently",
                help="differentiate a smooth surrogate (`jax.nn.sigmoid(k * x)` for `x > 0`), a straight-through estimator "
                "(`x + lax.stop_gradient(jnp.round(x) - x)`), or give the function a `jax.custom_jvp`",
                detail=f"{target.name}:{params[i]}",
                evidence={"argument": params[i]},
                function=target.name,
            )


class _Flow:
    """How the differentiated parameter reaches a value of a straight-line function: through
    differentiable operations ("d"), only through ones without a derivative ("b"), or through
    something not followed ("u": a call of another function, a loop, a branch)."""

    def __init__(self, ctx: FileContext, param: str, params: list[str]) -> None:
        self.ctx = ctx
        self.param = param
        self.params = set(params)
        self.env: dict[str, frozenset[str]] = {}
        self.first_block: ast.AST | None = None

    def returns(self, fn: ast.FunctionDef, aux: bool) -> ast.AST | None:
        """The first operation that blocks the parameter, if every return reaches it only
        through blocked paths; None otherwise."""
        body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body
        flags: set[str] = set()
        for st in body:
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                name = st.targets[0].id
                if name in self.env or name in self.params:
                    return None  # rebound: not followed
                self.env[name] = self.dep(st.value)
            elif isinstance(st, ast.Return) and st.value is not None:
                value = st.value
                if aux:
                    if not (isinstance(value, ast.Tuple) and len(value.elts) == 2):
                        return None
                    value = value.elts[0]
                flags |= self.dep(value)
            else:
                return None  # a branch, a loop, a nested def: not followed
        return self.first_block if flags == {"b"} else None

    def _block(self, flags: frozenset[str], node: ast.AST) -> frozenset[str]:
        if "u" in flags:
            return frozenset({"u"})
        if flags & {"d", "b"}:
            if "d" in flags and self.first_block is None:
                self.first_block = node
            return frozenset({"b"})
        return frozenset()

    def dep(self, e: ast.AST | None) -> frozenset[str]:
        if e is None or isinstance(e, ast.Constant):
            return frozenset()
        if isinstance(e, ast.Name):
            if e.id == self.param:
                return frozenset({"d"})
            return self.env.get(e.id, frozenset())
        if isinstance(e, ast.Attribute):
            if e.attr in ("shape", "ndim", "size", "dtype"):
                return frozenset()
            return self.dep(e.value)
        if isinstance(e, ast.Subscript):
            return self.dep(e.value) | self._block(self.dep(e.slice), e)
        if isinstance(e, ast.Slice):
            return self.dep(e.lower) | self.dep(e.upper) | self.dep(e.step)
        if isinstance(e, ast.BinOp):
            return self.dep(e.left) | self.dep(e.right)
        if isinstance(e, ast.UnaryOp):
            inner = self.dep(e.operand)
            return self._block(inner, e) if isinstance(e.op, (ast.Not, ast.Invert)) else inner
        if isinstance(e, (ast.Compare, ast.BoolOp)):
            parts = [e.left, *e.comparators] if isinstance(e, ast.Compare) else e.values
            return self._block(frozenset().union(*(self.dep(p) for p in parts)), e)
        if isinstance(e, (ast.Tuple, ast.List)):
            return frozenset().union(*(self.dep(x) for x in e.elts)) if e.elts else frozenset()
        if isinstance(e, ast.Call):
            return self._call(e)
        return frozenset({"u"})

    def _call(self, e: ast.Call) -> frozenset[str]:
        ctx = self.ctx
        args = [*e.args, *(k.value for k in e.keywords)]
        if any(isinstance(a, ast.Starred) for a in e.args) or any(k.arg is None for k in e.keywords):
            return frozenset({"u"})
        q = ctx.qualname(e.func) or ""
        if isinstance(e.func, ast.Attribute) and not q.startswith(("jax.", "numpy.")):
            recv = self.dep(e.func.value)
            if e.func.attr == "astype":
                if e.args and ctx.qualname(e.args[0]) in _INT_DTYPES:
                    return self._block(recv, e)
                return recv
            if e.func.attr in _FLAT_METHODS:
                return self._block(recv | frozenset().union(*(self.dep(a) for a in args)), e)
            if e.func.attr in _METHODS:
                return recv | frozenset().union(*(self.dep(a) for a in args))
            return frozenset({"u"})
        if q in _FLAT:
            return self._block(frozenset().union(*(self.dep(a) for a in args)), e)
        if q == "jax.numpy.where" and len(e.args) == 3:
            return self._block(self.dep(e.args[0]), e) | self.dep(e.args[1]) | self.dep(e.args[2])
        if q in _OPAQUE or not q.startswith(("jax.numpy.", "jax.nn.", "jax.lax.", "jax.scipy.")):
            return frozenset({"u"})
        if any(isinstance(a, ast.Lambda) for a in args):
            return frozenset({"u"})
        return frozenset().union(*(self.dep(a) for a in args)) if args else frozenset()
