from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.ad._graph import ADGraph
from stabcheck.static.context import FileContext

_NORMS = frozenset({"jax.numpy.linalg.norm", "jax.numpy.linalg.vector_norm"})


class SquaredNormGradient(Rule):
    """## What it does
    Flags the square of a Euclidean norm, `jnp.linalg.norm(w) ** 2`, `jnp.square(norm(w))` or
    `norm(w) * norm(w)` (the default `ord`, `2` or `"fro"`; `axis=` too), in a function a
    derivative visibly reaches (the same premise as STB401: this module's `grad`,
    `value_and_grad`, `vjp`, `jacrev`... of it or of a caller, or a `stabcheck.Entry` with a
    derivative). Elsewhere it is a guess (`--preview`). A norm of a value no gradient reaches
    (a constant, a Python value under the transform) is not flagged; nor is a norm with another
    `ord` (`ord=1`, `jnp.inf`), whose square has a finite derivative at 0.

    ## Why is this bad?
    `norm` is a square root, whose derivative is infinite at 0; the square cancels it in value
    but not in the chain rule, which multiplies `2 * norm(w)` (0) by `d norm / dw` (0 / 0): the
    gradient is NaN wherever `w` is all zeros. Parameters start there more often than one
    thinks: zero-initialised biases (flax's and haiku's default), a padding row, the diagonal
    of a pairwise-difference matrix, the first step of a weight-decay term.

    ## Example
    ```python
    def loss(params, x, y):
        l2 = sum(jnp.linalg.norm(p) ** 2 for p in jax.tree.leaves(params))
        return jnp.mean((model(params, x) - y) ** 2) + 1e-4 * l2

    jax.grad(loss)(params, x, y)   # NaN in every leaf once a bias is all zeros
    ```

    ## Use instead
    Square without the root: `jnp.sum(w ** 2)` (or `jnp.vdot(w, w)`) has the same value and the gradient `2 * w` everywhere.
    ```python
    l2 = sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))
    ```
    """

    code = "STB411"
    name = "squared-norm-gradient"
    severity = "warning"
    stages = ("static", "confirmed")

    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def weight_decay(w):
            return 1e-4 * jnp.linalg.norm(w) ** 2  # expect: STB411

        g = jax.grad(weight_decay)
        """,
        """
        import jax
        import jax.numpy as jnp

        def energy(x):
            d = x[:, None, :] - x[None, :, :]  # the diagonal is all zeros
            return jnp.sum(jnp.square(jnp.linalg.norm(d, axis=-1)))  # expect: STB411

        forces = jax.grad(energy)
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        def weight_decay(w):
            return 1e-4 * jnp.sum(w ** 2)

        g = jax.grad(weight_decay)
        """,
        """
        import jax
        import jax.numpy as jnp

        def lasso(w):
            return jnp.linalg.norm(w, ord=1) ** 2  # |w| has a finite (sub)derivative at 0

        g = jax.grad(lasso)
        """,
        """
        import jax
        import jax.numpy as jnp

        def report(w):
            return jnp.linalg.norm(w) ** 2  # a metric: nothing differentiates it here

        print(report(jnp.ones(3)))
        """,
    )

    @only(callees=_NORMS)
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if not _euclidean(node, ctx) or not node.args:
            return
        up = ctx.parent_of(node)
        squared = (
            isinstance(up, ast.BinOp) and isinstance(up.op, ast.Pow) and up.left is node and isinstance(up.right, ast.Constant) and up.right.value == 2
        ) or (isinstance(up, ast.Call) and ctx.qualname(up.func) in ("jax.numpy.square", "jax.lax.square") and up.args and up.args[0] is node)
        if isinstance(up, ast.BinOp) and isinstance(up.op, ast.Mult) and up.left is node:
            squared = ctx.text(up.left) == ctx.text(up.right)
        if not squared:
            return
        graph = ADGraph.of(ctx.analysis)
        opaque = graph.ad_opaque(ctx.function)
        if opaque == "body":
            return  # a custom rule's primal, a Pallas kernel: autodiff never enters it
        arg = node.args[0]
        if not _local_names(arg, ctx):
            return  # a constant or a module constant: no gradient reaches it
        confidence = "proven" if opaque is None and graph.differentiated(ctx.function) else "guess"
        w = ctx.text(arg)
        self.report(
            ctx,
            up,
            f"`{ctx.text(up)}` squares a square root; its gradient is NaN wherever `{w}` is all zeros "
            "(the root's derivative at 0 is infinite, and the chain rule multiplies it by 0)",
            help=f"use `jnp.sum({_paren(w)} ** 2{_axis(node, ctx)})`: the same value, with the gradient `2 * {_paren(w)}` everywhere",
            detail=ctx.text(node),
            evidence={"norm": ctx.text(node)},
            confidence=confidence,
        )


def _local_names(e: ast.AST, ctx: FileContext) -> set[str]:
    """Names `e` reads that the enclosing functions bind (parameters, locals, loop variables)."""
    read = {n.id for n in ast.walk(e) if isinstance(n, ast.Name)} - set(ctx.names.aliases)
    local: set[str] = set()
    s = ctx.function
    while s is not None:
        node = s.node
        local |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}  # type: ignore[attr-defined]
        local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        s = s.parent
    return read & local


def _euclidean(call: ast.Call, ctx: FileContext) -> bool:
    """The 2-norm (or Frobenius norm): `ord` absent, None, 2 or "fro"."""
    ords = [k.value for k in call.keywords if k.arg == "ord"] + call.args[1:2]
    if any(k.arg is None for k in call.keywords):
        return False  # `**kwargs`: `ord` unknown
    return all(isinstance(o, ast.Constant) and o.value in (None, 2, "fro") for o in ords)


def _axis(call: ast.Call, ctx: FileContext) -> str:
    extra = [f"{k.arg}={ctx.text(k.value)}" for k in call.keywords if k.arg in ("axis", "keepdims")]
    if len(call.args) > 2:
        extra.insert(0, f"axis={ctx.text(call.args[2])}")
    return "".join(f", {e}" for e in extra)


def _paren(text: str) -> str:
    return text if text.replace("_", "").replace(".", "").isalnum() else f"({text})"
