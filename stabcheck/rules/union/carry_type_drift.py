from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.union._kinds import Kinds, dtype_class, evident_class, explicit_dtype, exits, kind_text, kinds_differ, kinds_for, literal_class, strong_int_init
from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext

# primitive -> (position of the body, position of the initial carry, keyword of the carry)
_LOOPS: dict[str, tuple[int, int, str]] = {
    "jax.lax.scan": (0, 1, "init"),
    "jax.lax.fori_loop": (2, 3, "init_val"),
    "jax.lax.while_loop": (1, 2, "init_val"),
}


class CarryTypeDrift(Rule):
    """## What it does
    Flags a `lax.scan`, `lax.fori_loop` or `lax.while_loop` body whose returned carry visibly
    differs from the initial carry: another structure or tuple length, an explicit
    `astype(...)`/`dtype=` to a dtype the initial carry does not have, or float arithmetic on a
    carry initialised as a strongly typed integer (`jnp.int32(0)`, `jnp.zeros(n, int)`), or an
    initial carry of `None` that the body replaces by an array (`x if c is None else c + x`: the
    `c is None` branch is the one traced). An initial carry whose dtype the module does not show
    (a name bound more than once, as `pos, _ = lax.scan(step, pos, xs)` does) is not compared
    with a cast.

    ## Why is this bad?
    A loop compiles its body once for one carry type; the output carry must match the input
    carry exactly in structure, shape and dtype. JAX raises `TypeError` ("carry input and
    carry output must have equal types") when the loop is traced. A Python literal initial
    carry (`0`, `0.0`) is weakly typed and JAX 0.10 promotes it to the body's dtype, so that
    case is not flagged.

    ## Example
    ```python
    def body(i, count):
        return count + 0.5 * x[i]
    total = lax.fori_loop(0, n, body, jnp.int32(0))
    ```

    ## Use instead
    Initialise the carry with the dtype and structure the body produces, and cast to the
    carry's own dtype (`c.astype(init.dtype)`) rather than to a literal one:
    ```python
    total = lax.fori_loop(0, n, body, jnp.float32(0))
    ```
    """

    code = "STB204"
    name = "carry-type-drift"
    stages = ("static", "traced")
    INVALID = (
        """
        import jax.numpy as jnp
        from jax import lax

        def weighted_count(x, n):
            def body(i, count):
                return count + 0.5 * x[i]  # expect: STB204
            return lax.fori_loop(0, n, body, jnp.zeros((), jnp.int32))
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.jit
        def rnn(params, xs):
            h0 = jnp.zeros(params["w"].shape[0], jnp.float32)

            def cell(h, x):
                h = jnp.tanh(params["w"] @ h + x)
                return h.astype(jnp.bfloat16), h  # expect: STB204

            return lax.scan(cell, h0, xs)
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def newton(f, df, x0):
            def body(state):
                x, it = state
                return x - f(x) / df(x)  # expect: STB204

            return lax.while_loop(lambda s: s[1] < 20, body, (x0, 0))
        """,
        """
        import jax
        from jax import lax

        @jax.jit
        def running_sum(xs):
            def body(total, x):
                total = x if total is None else total + x  # expect: STB204
                return total, total

            return lax.scan(body, None, xs)
        """,
    )
    VALID = (
        """
        import jax
        from jax import lax

        @jax.jit
        def doubled(xs):
            def body(carry, x):
                return carry, x * 2.0  # a None carry handed back: scan as a map
            return lax.scan(body, None, xs)
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def weighted_sum(x, n):
            def body(i, total):
                return total + 0.5 * x[i]
            return lax.fori_loop(0, n, body, 0)  # weak literal: JAX promotes it to float32
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.jit
        def rnn(params, xs):
            h0 = jnp.zeros(params["w"].shape[0], jnp.bfloat16)

            def cell(h, x):
                new = jnp.tanh(params["w"] @ h.astype(jnp.float32) + x)
                return new.astype(h.dtype), new

            return lax.scan(cell, h0, xs)
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def newton(f, df, x0):
            def body(state):
                x, it = state
                return x - f(x) / df(x), it + 1

            return lax.while_loop(lambda s: s[1] < 20, body, (x0, 0))
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def count_positive(x):
            def body(i, count):
                return count + (x[i] > 0).astype(jnp.int32)
            return lax.fori_loop(0, x.shape[0], body, jnp.int32(0))
        """,
        """
        import jax
        from jax import lax

        @jax.jit
        def two_phases(x):
            # one name for two bodies (tensorneat): each loop runs the def above it
            def body(c):
                i, a = c
                return i + 1, a * 2
            i, a = lax.while_loop(lambda c: c[0] < 3, body, (0, x))

            def body(c):
                i, a, b = c
                return i + 1, a, b + a
            return lax.while_loop(lambda c: c[0] < 3, body, (0, a, x))
        """,
    )

    @only(callees=_LOOPS)
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        q = ctx.qualname(node.func)
        spec = _LOOPS[q or ""]
        body_pos, init_pos, init_kw = spec
        kw = {k.arg: k.value for k in node.keywords}
        body = node.args[body_pos] if len(node.args) > body_pos else kw.get("f" if q == "jax.lax.scan" else "body_fun")
        init = node.args[init_pos] if len(node.args) > init_pos else kw.get(init_kw)
        if body is None or init is None:
            return
        info = ctx.analysis.resolve(body, ctx.function)
        if info is None:
            return
        kinds = kinds_for(ctx.analysis)
        init = _follow(init, ctx.function, kinds)
        prim = q.rsplit(".", 1)[1]  # type: ignore[union-attr]
        for e in exits(info.node):
            carry = e.value
            if q == "jax.lax.scan":
                if not (isinstance(carry, ast.Tuple) and len(carry.elts) == 2):
                    continue
                carry = carry.elts[0]
            if carry is None:
                continue
            pos = 1 if q == "jax.lax.fori_loop" else 0
            if isinstance(carry, ast.Name) and len(info.params) > pos and carry.id == info.params[pos] and carry.id not in info.assigned:
                continue  # the carry handed back unchanged
            why = _from_none(init, _follow(carry, info, kinds), info, q, node, ctx) or _drift(init, ctx.function, carry, info, kinds, ctx)
            if why is None:
                continue
            node_at, what = why
            # a carry chosen by a static test (`(out, None) if force_scan else out`) is one
            # structure per trace: only a traced guard proves the drift
            static_guard = any(not ctx.analysis.proves_traced(g, info) for g in e.guards)
            self.report(
                ctx,
                node_at,
                message=(
                    f"the `lax.{prim}` body `{info.qualname}` returns a carry that differs from its initial value: {what}; "
                    "the carry's type must stay fixed, so tracing raises TypeError"
                ),
                help="initialise the carry with the structure and dtype the body returns, or cast to the carry's own `.dtype`",
                function=info.qualname,
                detail=f"{info.qualname}:{what}",
                confidence="guess" if static_guard else "proven",
            )
            return


def _from_none(init: ast.expr, carry: ast.expr, info: FunctionInfo, q: str | None, call: ast.Call, ctx: FileContext) -> tuple[ast.AST, str] | None:
    """An initial carry of `None` (an empty pytree) that the body visibly replaces by an array:
    arithmetic, a JAX call, the scanned slice, or the branch a `c is None` test takes while
    tracing (`x if c is None else c + x`: the first step's branch, traced once, returns `x`)."""
    if not (isinstance(init, ast.Constant) and init.value is None) or not info.params:
        return None
    pos = 1 if q == "jax.lax.fori_loop" else 0
    if len(info.params) <= pos:
        return None
    c = info.params[pos]
    xs_given = q == "jax.lax.scan" and len(call.args) > 2 and not (isinstance(call.args[2], ast.Constant) and call.args[2].value is None)
    x = info.params[1] if xs_given and len(info.params) > 1 else None

    def taken(e: ast.expr) -> ast.expr:
        while isinstance(e, ast.IfExp) and isinstance(e.test, ast.Compare) and len(e.test.ops) == 1:
            t = e.test
            if not (isinstance(t.left, ast.Name) and t.left.id == c and isinstance(t.comparators[0], ast.Constant) and t.comparators[0].value is None):
                break
            if isinstance(t.ops[0], ast.Is):
                e = e.body
            elif isinstance(t.ops[0], ast.IsNot):
                e = e.orelse
            else:
                break
        return e

    e = taken(carry)
    array = (
        isinstance(e, ast.BinOp)
        or (isinstance(e, ast.Call) and (ctx.qualname(e.func) or "").startswith("jax."))
        or (isinstance(e, ast.Name) and x is not None and e.id == x and x not in info.assigned)
    )
    if not array:
        return None
    return e, f"`{ctx.text(e)}` is an array, but the initial carry is `None` (an empty pytree)"


_X64_OFF = {"int64": "int32", "uint64": "uint32", "float64": "float32", "complex128": "complex64"}


def _follow(expr: ast.expr, scope: FunctionInfo | None, kinds: Kinds) -> ast.expr:
    """A name assigned once in the enclosing function stands for its value."""
    for _ in range(4):
        if not isinstance(expr, ast.Name):
            break
        vals = kinds.assignments(scope).get(expr.id, [])
        if len(vals) != 1:
            break
        expr = vals[0]
    return expr


def _drift(init: ast.expr, si: FunctionInfo | None, carry: ast.expr, sc: FunctionInfo, kinds: Kinds, ctx: FileContext) -> tuple[ast.AST, str] | None:
    carry = _follow(carry, sc, kinds)
    ki, kc = kinds.of(init, si), kinds.of(carry, sc)
    if kinds_differ(ki, kc):
        return carry, f"{kind_text(kc)}, but the initial carry `{ctx.text(init)}` is {kind_text(ki)}"
    if isinstance(init, (ast.Tuple, ast.List)) and isinstance(carry, (ast.Tuple, ast.List)) and len(init.elts) == len(carry.elts):
        for a, b in zip(init.elts, carry.elts):
            found = _drift(_follow(a, si, kinds), si, b, sc, kinds, ctx)
            if found is not None:
                return found
        return None
    names = ctx.names
    cast = explicit_dtype(carry, names)
    if cast is not None:
        have = explicit_dtype(init, names)
        if have == cast:
            return None
        narrow = _X64_OFF.get(cast)
        if narrow is not None and (have == narrow or (have is None and evident_class(init, names) == dtype_class(cast))):
            return None  # x64 is off by default: `astype(jnp.int64)` is int32, the carry's default int
        lit = literal_class(init)
        if have is None and lit is not None and (lit != "bool" or dtype_class(cast) == "bool"):
            return None  # a weakly typed Python number takes the body's dtype
        if have is None and lit is None and evident_class(init, names) is None:
            return None  # the initial carry's dtype is not known here (a name bound more than once)
        start = f"{have}" if have else "a value of another dtype" if lit is None else f"a Python {lit}"
        return carry, f"`{ctx.text(carry)}` is cast to {cast}, but the initial carry `{ctx.text(init)}` is {start}"
    if strong_int_init(init, names) and evident_class(carry, names) == "float":
        return carry, f"`{ctx.text(carry)}` is float, but the initial carry `{ctx.text(init)}` is an integer array"
    return None
