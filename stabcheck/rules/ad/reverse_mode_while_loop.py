from __future__ import annotations

import ast

from stabcheck.rule import Rule
from stabcheck.rules.ad._graph import REVERSE, ADGraph
from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext

_FORI_BOUNDS = ("lower", "upper")


class ReverseModeWhileLoop(Rule):
    """## What it does
    Flags reverse-mode AD (`jax.grad`, `jax.value_and_grad`, `jax.vjp`, `jax.jacrev`,
    `jax.hessian`, `eqx.filter_grad`, `nnx.grad`) applied to a function that runs, itself or
    through a same-module call, a `lax.while_loop`, or a `lax.fori_loop` whose bounds are traced
    under `jit`. A function with a custom derivative (`jax.custom_jvp`, `jax.custom_vjp`,
    `eqx.filter_custom_jvp`/`_vjp`) is not looked into: its rule is the derivative, and reverse
    mode never goes through its loop.

    ## Why is this bad?
    A `while_loop` has no fixed trip count, so JAX cannot store what reverse mode needs:
    `ValueError: Reverse-mode differentiation does not work for lax.while_loop or lax.fori_loop
    with dynamic start/stop values`. A `fori_loop` with Python-int or shape-derived bounds is
    lowered to a `scan` and differentiates fine; with bounds that are traced under `jit` it is a
    `while_loop`. Forward mode (`jvp`, `jacfwd`) works in both cases.

    The finding is at the loop, the line to change; its message names the `grad` that reaches it.

    ## Example
    ```python
    def power_sum(x):
        def body(c):
            return c[0] * x, c[1] + 1.0
        return jnp.sum(lax.while_loop(lambda c: c[1] < 3.0, body, (x, 0.0))[0])

    g = jax.grad(power_sum)(x)
    ```

    ## Use instead
    A loop with a static trip count (`lax.scan`, or `lax.fori_loop` with Python-int bounds),
    or forward mode:
    ```python
    def power_sum(x):
        return jnp.sum(lax.fori_loop(0, 3, lambda i, c: c * x, x))
    ```
    """

    code = "STB404"
    name = "reverse-mode-while-loop"
    stages = ("static", "traced", "confirmed")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def power_sum(x):
            def cond(c):
                return c[1] < 3.0

            def body(c):
                return c[0] * x, c[1] + 1.0

            return jnp.sum(lax.while_loop(cond, body, (x, 0.0))[0])  # expect: STB404

        def newton_loss(x):
            return power_sum(x) ** 2

        grad_fn = jax.jit(jax.grad(newton_loss))
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.custom_jvp
        def newton_sqrt(a):
            return lax.while_loop(lambda y: jnp.abs(y * y - a) > 1e-6, lambda y: 0.5 * (y + a / y), a)

        @newton_sqrt.defjvp
        def newton_sqrt_jvp(primals, tangents):
            (a,), (da,) = primals, tangents
            y = newton_sqrt(a)
            return y, da / (2 * y)

        def refine(a):  # differentiated through its own loop, around the custom one
            return lax.while_loop(lambda y: y < a, lambda y: y * 2.0, newton_sqrt(a))  # expect: STB404

        g = jax.grad(refine)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def rollout(params, x0, n_steps):
            def step(i, x):
                return jnp.tanh(params @ x)
            return lax.fori_loop(0, n_steps, step, x0)  # expect: STB404

        @jax.jit
        def train_step(params, x0, n_steps):
            loss, g = jax.value_and_grad(lambda p: jnp.sum(rollout(p, x0, n_steps) ** 2))(params)
            return params - 0.1 * g, loss
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.custom_jvp
        def newton_sqrt(a):  # the custom rule is the derivative: AD never enters the loop
            return lax.while_loop(lambda y: jnp.abs(y * y - a) > 1e-6, lambda y: 0.5 * (y + a / y), a)

        @newton_sqrt.defjvp
        def newton_sqrt_jvp(primals, tangents):
            (a,), (da,) = primals, tangents
            y = newton_sqrt(a)
            return y, da / (2 * y)

        g = jax.grad(newton_sqrt)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def rollout(params, x0):
            def step(i, x):
                return jnp.tanh(params @ x)
            return lax.fori_loop(0, 10, step, x0)  # static bounds: lowered to scan

        @jax.jit
        def train_step(params, x0):
            return jax.grad(lambda p: jnp.sum(rollout(p, x0) ** 2))(params)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def power_sum(x):
            return jnp.sum(lax.while_loop(lambda c: c[1] < 3.0, lambda c: (c[0] * x, c[1] + 1.0), (x, 0.0))[0])

        jac = jax.jacfwd(power_sum)  # forward mode through while_loop works
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def unroll(x):
            return lax.fori_loop(0, x.shape[0], lambda i, c: c + x[i], 0.0)

        g = jax.jit(jax.grad(unroll))
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        tc = ctx.names.transform_call(node)
        if tc is None or not tc[1] or tc[0].family not in REVERSE:
            return
        fn = tc[1][0]
        while isinstance(fn, ast.Call):
            inner = ctx.names.transform_call(fn)
            if inner is None or not inner[1]:
                break
            if inner[0].family in REVERSE:
                return  # the inner application is reported on its own
            fn = inner[1][0]
        graph = ADGraph.of(ctx.analysis)
        info, _ = graph.target(fn, ctx.function)
        if info is None:
            return
        reached = graph.reach_ad(info)  # not into a custom_jvp/custom_vjp: its rule is the derivative
        loop = reached.get("jax.lax.while_loop")
        kind = "lax.while_loop"
        if loop is None:
            fori = [c for k, c in reached.items() if k == "jax.lax.fori_loop"]
            staged = _staged(node, ctx)
            loop = next((c for c in fori if isinstance(c, ast.Call) and staged and self._dynamic_fori(c, ctx)), None)
            kind = "lax.fori_loop with traced bounds"
        if loop is None:
            return
        applied = ctx.text(node.func)
        target = ctx.text(fn) if not isinstance(fn, ast.Lambda) else "a lambda"
        up = ctx.parent_of(loop)
        while up is not None and ctx.analysis.scope_of(up) is None:
            up = ctx.parent_of(up)
        owner = ctx.analysis.scope_of(up) if up is not None else None
        self.report(
            ctx,
            loop,  # the loop is the line to change; the `grad` that reaches it is named
            f"`{applied}` (line {node.lineno}) differentiates `{target}` in reverse mode, and it runs this `{kind}`; "
            "JAX raises ValueError: Reverse-mode differentiation does not work for lax.while_loop or lax.fori_loop with dynamic start/stop values",
            help="give the loop a static trip count (`lax.scan`, or `lax.fori_loop` with Python-int bounds), or use forward mode (`jax.jacfwd`, `jax.jvp`)",
            detail=f"{target}:{kind}",
            evidence={"grad_line": node.lineno, "loop": kind},
            function=owner.qualname if owner is not None else "",
        )

    @staticmethod
    def _dynamic_fori(call: ast.Call, ctx: FileContext) -> bool:
        """A fori_loop bound that is traced (the application itself is staged out by jit)."""
        scope = _scope_of(call, ctx)
        if scope is None or not scope.transformed:
            return False
        bounds = list(call.args[:2]) + [k.value for k in call.keywords if k.arg in _FORI_BOUNDS]
        return any(ctx.analysis.is_traced(b, scope) for b in bounds)


def _staged(node: ast.Call, ctx: FileContext) -> bool:
    """Is this AD application staged out: inside a jitted function, or wrapped by `jit`?
    (Eagerly, `grad` sees concrete Python-int loop bounds and `fori_loop` becomes a scan.)"""
    if ctx.in_abstract:
        return True
    child: ast.AST = node
    for anc in reversed(ctx.ancestors):
        tc = ctx.names.transform_call(anc) if isinstance(anc, ast.Call) else None
        if tc is None or not any(f is child for f in tc[1]):
            return False
        if tc[0].abstract:
            return True
        child = anc
    return False


def _scope_of(call: ast.Call, ctx: FileContext) -> FunctionInfo | None:
    """The innermost function whose body holds `call`."""
    best: FunctionInfo | None = None
    for info in ctx.analysis.functions.values():
        n = info.node
        if getattr(n, "lineno", 0) <= call.lineno <= (getattr(n, "end_lineno", 0) or 0):
            if any(c is call for c in ast.walk(n)):
                if best is None or n.lineno >= best.node.lineno:
                    best = info
    return best
