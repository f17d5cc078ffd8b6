from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.static.context import FileContext

_INF_NAMES = frozenset({"jax.numpy.inf", "numpy.inf", "math.inf", "jax.numpy.PINF", "numpy.PINF", "jax.numpy.NINF", "numpy.NINF"})
_ARRAYS = frozenset({"jax.numpy.asarray", "jax.numpy.array", "numpy.asarray", "numpy.array"})
_BOOL_DTYPES = frozenset({"builtins.bool", "jax.numpy.bool_", "numpy.bool_", "jax.numpy.bool", "numpy.bool"})


class InfMaskProduct(Rule):
    """## What it does
    Flags an infinity multiplied by a numeric 0/1 mask: `(1.0 - mask) * -jnp.inf`,
    `(mask - 1) * jnp.inf`, `mask.astype(jnp.float32) * -jnp.inf`, `jnp.multiply(m, np.inf)`
    (or a local name bound to such a mask), with the infinity spelled `jnp.inf`, `np.inf`,
    `math.inf` or `float("inf")`. A mask named as one (`mask`, `attn_mask`) of unknown dtype is
    only a guess (`--preview`): JAX multiplies a *boolean* by selecting, so `bool_mask * -jnp.inf`
    gives `0` where the mask is False, but NumPy and every numeric mask give NaN. A comparison
    (`x > 0`) or `~mask` times an infinity is boolean and not flagged.

    ## Why is this bad?
    `0 * inf` is NaN, not 0. Wherever the mask's factor is 0 (the positions it means to keep) the
    product is NaN, and so is everything computed from it: the softmax of the row, the loss, and
    every gradient. Nothing raises; the first sign is a NaN loss.

    ## Example
    ```python
    def attend(scores, mask):
        masked = scores + (1.0 - mask) * -jnp.inf   # NaN wherever mask == 1
        return jax.nn.softmax(masked)
    ```

    ## Use instead
    Select instead of multiplying, and prefer a large finite negative to `-inf` (a fully masked row then stays finite):
    ```python
    def attend(scores, mask):
        masked = jnp.where(mask > 0, scores, jnp.finfo(scores.dtype).min)
        return jax.nn.softmax(masked)
    ```
    """

    code = "STB412"
    name = "inf-mask-product"
    severity = "error"
    stages = ("static", "confirmed")

    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def attend(scores, mask):
            masked = scores + (1.0 - mask) * -jnp.inf  # expect: STB412
            return jax.nn.softmax(masked)
        """,
        """
        import numpy as np
        import jax.numpy as jnp

        def penalty(x, valid):
            keep = valid.astype(jnp.float32)
            return x + np.inf * keep  # expect: STB412
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        def attend(scores, mask):
            masked = jnp.where(mask > 0, scores, jnp.finfo(scores.dtype).min)
            return jax.nn.softmax(masked)
        """,
        """
        import jax.numpy as jnp

        def barrier(x):
            return x + (x < 0) * jnp.inf  # a comparison is boolean: JAX selects, no NaN
        """,
        """
        import jax.numpy as jnp

        def big(x):
            return -jnp.inf * jnp.ones_like(x)  # never 0
        """,
    )

    def visit_BinOp(self, node: ast.BinOp, ctx: FileContext) -> None:
        if isinstance(node.op, ast.Mult):
            self._check(node, node.left, node.right, ctx)

    @only(callees=("jax.numpy.multiply", "numpy.multiply"))
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if len(node.args) == 2:
            self._check(node, *node.args, ctx)

    def _check(self, node: ast.AST, a: ast.AST, b: ast.AST, ctx: FileContext) -> None:
        for inf, factor in ((a, b), (b, a)):
            if not _infinite(inf, ctx):
                continue
            kind = _numeric_mask(factor, ctx, 0)
            if kind is None:
                continue
            self.report(
                ctx,
                node,
                f"`{ctx.text(node)}` multiplies an infinity by `{ctx.text(factor)}`; it is NaN wherever that factor is 0 "
                "(0 * inf is NaN, not 0), so the positions the mask keeps become NaN, and so does everything computed from them",
                help="select instead of multiplying: `jnp.where(mask, x, -jnp.inf)`, or a large finite negative (`jnp.finfo(x.dtype).min`)",
                detail=ctx.text(factor),
                evidence={"factor": ctx.text(factor)},
                confidence="proven" if kind == "numeric" else "guess",
            )
            return


def _infinite(e: ast.AST, ctx: FileContext) -> bool:
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd)):
        e = e.operand
    if isinstance(e, ast.Call) and ctx.qualname(e.func) == "builtins.float" and len(e.args) == 1:
        arg = e.args[0]
        return isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.strip().lstrip("+-").lower() in ("inf", "infinity")
    return ctx.qualname(e) in _INF_NAMES


def _numeric_mask(e: ast.AST, ctx: FileContext, depth: int) -> str | None:
    """"numeric" if `e` is visibly a numeric (not boolean) 0/1 mask, "named" if it is only named
    as a mask (dtype unknown), None otherwise."""
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Sub):
        one = [s for s in (e.left, e.right) if isinstance(s, ast.Constant) and s.value == 1 and not isinstance(s.value, bool)]
        if one:
            return "numeric"  # `1 - m` (a number even for a boolean m), `m - 1`
    if isinstance(e, ast.Call):
        if isinstance(e.func, ast.Attribute) and e.func.attr == "astype" and e.args and not _bool_dtype(e.args[0], ctx):
            return "numeric" if _mask_like(e.func.value, ctx) else None
        if ctx.qualname(e.func) in _ARRAYS and e.args:
            dtypes = [k.value for k in e.keywords if k.arg == "dtype"] + e.args[1:2]
            if dtypes and not _bool_dtype(dtypes[0], ctx) and _mask_like(e.args[0], ctx):
                return "numeric"
        return None
    if isinstance(e, ast.Name) and depth < 2 and ctx.function is not None:
        value = ctx.analysis.bound_once(e.id, ctx.function)
        if value is not None:
            kind = _numeric_mask(value, ctx, depth + 1)
            if kind is not None:
                return kind
    if isinstance(e, (ast.Name, ast.Attribute)) and "mask" in ctx.text(e).rsplit(".", 1)[-1].lower():
        return "named"
    return None


def _mask_like(e: ast.AST, ctx: FileContext) -> bool:
    """A boolean or 0/1 value: a comparison, a logical op, or a name that says it is a mask."""
    if isinstance(e, ast.Compare) or (isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Invert)):
        return True
    if isinstance(e, ast.Call) and (ctx.qualname(e.func) or "").startswith(("jax.numpy.logical_", "jax.numpy.isfinite", "jax.numpy.isnan")):
        return True
    text = ctx.text(e).rsplit(".", 1)[-1].lower()
    return isinstance(e, (ast.Name, ast.Attribute, ast.Subscript)) and any(w in text for w in ("mask", "valid", "keep", "done", "pad"))


def _bool_dtype(e: ast.AST, ctx: FileContext) -> bool:
    return ctx.qualname(e) in _BOOL_DTYPES or (isinstance(e, ast.Constant) and e.value == "bool")
