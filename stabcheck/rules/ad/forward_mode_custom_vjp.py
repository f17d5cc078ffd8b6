from __future__ import annotations

import ast

from stabcheck.rule import Rule
from stabcheck.rules.ad._graph import FORWARD, REVERSE, ADGraph, CustomVJP
from stabcheck.static.context import FileContext


class ForwardModeCustomVJP(Rule):
    """## What it does
    Flags forward-mode AD (`jax.jvp`, `jax.jacfwd`, `jax.linearize`, `eqx.filter_jvp`, and
    the `jacfwd` inside `jacrev(jacfwd(f))`) applied to a function that is, or calls within the
    same module, a `jax.custom_vjp` function. `jax.hessian` (forward over reverse) is flagged
    only when the custom rule's `fwd` calls the primal itself.

    ## Why is this bad?
    A `custom_vjp` function only defines reverse mode. Forward mode raises
    `TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function`, at the
    point where the transform runs (for `linearize`, when the linear function is first called).
    `hessian` differentiates the vjp rule, which is fine unless `fwd` calls the primal.

    ## Example
    ```python
    @jax.custom_vjp
    def softclip(x):
        return jnp.tanh(x)

    softclip.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))

    def loss(x):
        return jnp.sum(softclip(x) ** 2)

    jac = jax.jacfwd(loss)(x)
    ```

    ## Use instead
    Differentiate in reverse mode (`jax.jacrev`, `jax.grad`, `jax.hessian`), or define the rule
    with `jax.custom_jvp`, which JAX can transpose for both modes:
    ```python
    jac = jax.jacrev(loss)(x)
    ```
    """

    code = "STB403"
    name = "forward-mode-custom-vjp"
    stages = ("static", "traced", "confirmed")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def softclip(x):
            return jnp.tanh(x)

        softclip.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))

        def loss(x):
            return jnp.sum(softclip(x) ** 2)

        def curvature(x):
            jac = jax.jacfwd(loss)(x)  # expect: STB403
            hess = jax.jacrev(jax.jacfwd(loss))(x)  # expect: STB403
            y, f_jvp = jax.linearize(loss, x)  # expect: STB403
            return jac, hess, f_jvp(x)
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.custom_vjp, nondiff_argnums=(1,))
        def clip_gradient(x, bound):
            return x

        def _fwd(x, bound):
            return x, None

        def _bwd(bound, res, g):
            return (jnp.clip(g, -bound, bound),)

        clip_gradient.defvjp(_fwd, _bwd)

        def model(w, x):
            return jnp.tanh(clip_gradient(w, 1.0) @ x)

        def tangent(w, x, v):
            return jax.jvp(lambda w: model(w, x), (w,), (v,))  # expect: STB403
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def safe_log(x):
            return jnp.log(x)

        def _fwd(x):
            return safe_log(x), x

        def _bwd(x, g):
            return (g / jnp.maximum(x, 1e-6),)

        safe_log.defvjp(_fwd, _bwd)

        newton_hessian = jax.hessian(lambda x: jnp.sum(safe_log(x)))  # expect: STB403
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def softclip(x):
            return jnp.tanh(x)

        softclip.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))

        def loss(x):
            return jnp.sum(softclip(x) ** 2)

        grad = jax.grad(loss)
        hess = jax.hessian(loss)  # fwd does not call the primal: forward over reverse works
        jac = jax.jacfwd(jax.jacrev(loss))
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_jvp
        def softplus(x):
            return jnp.logaddexp(x, 0.0)

        @softplus.defjvp
        def _softplus_jvp(primals, tangents):
            (x,), (t,) = primals, tangents
            return softplus(x), jax.nn.sigmoid(x) * t

        jac = jax.jacfwd(lambda x: jnp.sum(softplus(x)))
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def softclip(x):
            return jnp.tanh(x)

        softclip.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))

        def features(x):
            return jnp.sin(x) * 2.0

        jac = jax.jacfwd(features)  # never reaches softclip
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        tc = ctx.names.transform_call(node)
        if tc is None or not tc[1]:
            return
        t, fns = tc
        graph = ADGraph.of(ctx.analysis)
        if not graph.custom:
            return
        if t.family == "hessian":
            via_reverse = True
        elif t.family in FORWARD:
            via_reverse = False
        else:
            return
        fn = fns[0]
        while isinstance(fn, ast.Call):
            inner = ctx.names.transform_call(fn)
            if inner is None or not inner[1]:
                break
            if inner[0].family in FORWARD or inner[0].family == "hessian":
                return  # the inner application is reported on its own
            if inner[0].family in REVERSE:
                via_reverse = True
            fn = inner[1][0]
        info, own = graph.target(fn, ctx.function)
        hits: list[CustomVJP] = []
        if own is not None:
            hits.append(graph.custom[own])
        elif info is not None:
            hits.extend(graph.custom[k] for k in graph.reach(info) if k in graph.custom)
        if via_reverse:
            hits = [cv for cv in hits if graph.fwd_calls_primal(cv)]
        if not hits:
            return
        cv = hits[0]
        applied = ctx.text(node.func)
        target = ctx.text(fn) if not isinstance(fn, ast.Lambda) else "a lambda"
        calls = f"is the `custom_vjp` function `{cv.name}`" if own is not None else f"calls the `custom_vjp` function `{cv.name}`"
        why = (
            f"`{applied}` differentiates `{target}` in forward mode, and it {calls}; "
            "JAX raises TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function"
        )
        if via_reverse:
            why = (
                f"`{applied}` differentiates `{target}` forward over reverse, and the `fwd` rule of the `custom_vjp` function "
                f"`{cv.name}` calls `{cv.name}` itself; JAX raises TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function"
            )
        self.report(
            ctx,
            node,
            why,
            help=f"differentiate in reverse mode (`jax.jacrev`, `jax.grad`), or define `{cv.name}` with `jax.custom_jvp`"
            + (f"; in `fwd`, compute the output without calling `{cv.name}`" if via_reverse else ""),
            detail=f"{target}->{cv.name}",
            evidence={"custom_vjp": cv.name, "transform": applied},
        )
