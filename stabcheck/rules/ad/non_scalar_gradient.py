from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.static.context import FileContext
from stabcheck.static.names import PARTIAL

_GRADS = frozenset({"jax.grad", "jax.value_and_grad", "equinox.filter_grad", "equinox.filter_value_and_grad", "flax.nnx.grad", "flax.nnx.value_and_grad"})


class NonScalarGradient(Rule):
    """## What it does
    Flags `jax.grad`/`jax.value_and_grad` (and `eqx.filter_grad`, `nnx.grad`) applied to a function
    that visibly returns a tuple (`return loss, aux`) without `has_aux=True`. The traced and confirm
    stages report every other non-scalar output they meet (shape `(1,)`, a vector) at the
    transform, from JAX's own error.

    ## Why is this bad?
    `grad` differentiates a scalar. A function that returns `(loss, metrics)` or an array of shape
    `(1,)` makes `grad` raise `TypeError: Gradient only defined for scalar-output functions` on the
    first call; training code written against a single-output loss breaks as soon as an auxiliary
    value is added to its return.

    ## Example
    ```python
    def loss(params, x):
        pred = model(params, x)
        return jnp.mean(pred ** 2), pred

    g = jax.grad(loss)(params, x)   # TypeError
    ```

    ## Use instead
    Declare the auxiliary output, or reduce to a scalar:
    ```python
    (value, pred), g = jax.value_and_grad(loss, has_aux=True)(params, x)
    ```
    """

    code = "STB409"
    name = "non-scalar-gradient"
    severity = "error"
    stages = ("static", "traced", "confirmed")

    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            pred = jnp.tanh(x @ w)
            return jnp.mean(pred ** 2), pred

        grads = jax.grad(loss)(jnp.ones(3), jnp.ones((2, 3)))  # expect: STB409
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.value_and_grad, argnums=0)  # expect: STB409
        def objective(w):
            return (w ** 2).sum(), {"norm": jnp.linalg.norm(w)}
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            pred = jnp.tanh(x @ w)
            return jnp.mean(pred ** 2), pred

        (value, pred), grads = jax.value_and_grad(loss, has_aux=True)(jnp.ones(3), jnp.ones((2, 3)))
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w):
            parts = (w.sum(), (w ** 2).sum())
            return parts[0] + parts[1]

        grads = jax.grad(loss)(jnp.ones(3))
        """,
    )

    @only(callees=_GRADS)
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if node.args:
            self._check(node, node.args[0], node.keywords, ctx)

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: FileContext) -> None:
        for dec in node.decorator_list:
            if ctx.qualname(dec) in _GRADS:
                self._check(dec, node, [], ctx)
            elif isinstance(dec, ast.Call) and ctx.qualname(dec.func) in PARTIAL and dec.args and ctx.qualname(dec.args[0]) in _GRADS:
                self._check(dec, node, dec.keywords, ctx)

    def _check(self, at: ast.AST, fn: ast.AST, keywords: list[ast.keyword], ctx: FileContext) -> None:
        for kw in keywords:
            if kw.arg == "has_aux" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                return  # has_aux given (and not a literal False): a tuple return is declared
        target = fn if isinstance(fn, (ast.FunctionDef, ast.Lambda)) else None
        if target is None and isinstance(fn, ast.Name):
            info = ctx.analysis.resolve(fn, ctx.function)
            target = info.node if info is not None else None
        if target is None:
            return
        tuples = _tuple_returns(target)
        if not tuples:
            return
        name = getattr(target, "name", "a lambda")
        self.report(
            ctx,
            at,
            f"`{ctx.text(at)}` differentiates `{name}`, which returns a tuple of {len(tuples[0].elts)} values without `has_aux=True`; "
            "`grad` needs a scalar output and raises `TypeError: Gradient only defined for scalar-output functions`",
            help="pass `has_aux=True` and return `(loss, aux)`, or return only the scalar loss",
            detail=name,
            evidence={"function": name},
        )


def _tuple_returns(fn: ast.AST) -> list[ast.Tuple]:
    """The function's returned tuple displays, when EVERY return it makes is one (else [])."""
    if isinstance(fn, ast.Lambda):
        return [fn.body] if isinstance(fn.body, ast.Tuple) else []
    found: list[ast.Tuple] = []
    stack: list[ast.AST] = list(fn.body)  # type: ignore[attr-defined]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(n, ast.Return):
            if not isinstance(n.value, ast.Tuple) or any(isinstance(e, ast.Starred) for e in n.value.elts):
                return []
            found.append(n.value)
            continue
        stack.extend(ast.iter_child_nodes(n))
    return found
