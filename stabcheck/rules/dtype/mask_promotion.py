from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.dtype._dtypes import WIDE, dtype_arg, dtypes_mentioned, float_dtype, is_mask
from stabcheck.static.context import FileContext

_ARITH = (ast.Mult, ast.Add, ast.Sub, ast.Div)
_RANK = {"bfloat16": 1, "float16": 1, "float32": 2, "float64": 3, "float": 3}


class MaskPromotion(Rule):
    """## What it does
    Flags a boolean mask cast to a float type other than the data's and then combined with the
    data: `mask.astype(float)` (float64 under x64) in a transformed function that names a
    narrower float dtype (`float32`, `bfloat16`: elsewhere a guess, as data made with default
    dtypes is float64 under x64 too), or
    `mask.astype(jnp.float32)` in a function that works in another precision (bf16/f16 named
    in the function or its Module). Also flags `jnp.where(c, a, b)` whose branches carry
    explicit, different float dtypes.

    ## Why is this bad?
    JAX promotes to the wider operand: `bf16_x * mask.astype(jnp.float32)` is float32, and
    with `jax_enable_x64` on `x * mask.astype(float)` is float64. The layer's output dtype
    silently changes, the rest of the network runs in the wider type (memory, speed), and a
    `scan` carry or a `cond` branch built from it no longer matches its input.

    ## Example
    ```python
    class Dropout(nn.Module):
        dtype: jnp.dtype = jnp.bfloat16

        @nn.compact
        def __call__(self, x, keep):
            return x * keep.astype(jnp.float32)
    ```

    ## Use instead
    Cast the mask to the data's dtype, or select with the bool mask directly:
    ```python
    return x * keep.astype(x.dtype)   # or: jnp.where(keep, x, 0)
    ```
    """

    code = "STB304"
    name = "mask-promotion"
    stages = ("static", "traced", "confirmed", "runtime")
    INVALID = (
        """
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        class Dropout(nn.Module):
            rate: float
            dtype: jnp.dtype = jnp.bfloat16

            @nn.compact
            def __call__(self, x, key):
                keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
                return x * keep.astype(jnp.float32) / (1.0 - self.rate)  # expect: STB304
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnames="dtype")
        def masked_mean(x, lengths, dtype=jnp.float32):
            x = x.astype(dtype)
            mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
            return jnp.sum(x * mask.astype(float), axis=1) / lengths  # expect: STB304
        """,
        """
        import jax.numpy as jnp

        def merge(mask, h_bf16, h_f32):
            return jnp.where(mask, h_bf16.astype(jnp.bfloat16), h_f32.astype(jnp.float32))  # expect: STB304
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def masked_mean(x, lengths):
            mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
            # a guess (--preview): with x64 on, data made with default dtypes is float64 already
            return jnp.sum(x * mask.astype(float), axis=1) / lengths
        """,
        """
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        class Dropout(nn.Module):
            rate: float
            dtype: jnp.dtype = jnp.bfloat16

            @nn.compact
            def __call__(self, x, key):
                keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
                return x * keep.astype(x.dtype) / (1.0 - self.rate)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def masked_mean(x, lengths):
            mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
            return jnp.sum(x * mask.astype(jnp.float32), axis=1) / lengths  # float32 throughout
        """,
        """
        import jax.numpy as jnp

        def merge(mask, a, b):
            return jnp.where(mask, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
        """,
        """
        import numpy as np

        def weights(labels):
            mask = labels > 0
            return np.ones(3) * mask.astype(float)  # NumPy, not traced
        """,
    )

    @only(inside="transformed")
    def visit_BinOp(self, node: ast.BinOp, ctx: FileContext) -> None:
        if not isinstance(node.op, _ARITH):
            return
        for cast, data in ((node.left, node.right), (node.right, node.left)):
            if not (isinstance(cast, ast.Call) and isinstance(cast.func, ast.Attribute) and cast.func.attr == "astype" and cast.args):
                continue
            mask = cast.func.value
            dt = float_dtype(cast.args[0], ctx)
            if dt is None or not is_mask(mask, ctx):
                continue
            if not (ctx.is_traced(data) or ctx.is_traced(mask)):
                continue
            confidence = "proven"
            if dt in WIDE:
                lower = sorted(d for d in dtypes_mentioned(ctx) if _RANK.get(d, 0) < _RANK["float64"])
                other = lower[0] if lower else "float32 or lower"
                cost = "with `jax_enable_x64` on the product is float64"
                if not lower:
                    # nothing here says the data is narrower than float64: with x64 on, data made
                    # with default dtypes (`jnp.zeros(shape)`, a Python float) is float64 already
                    confidence = "guess"
            else:
                others = sorted(d for d in dtypes_mentioned(ctx) if _RANK.get(d, 0) < _RANK[dt])
                if not others:
                    continue
                other = others[0]
                cost = f"a {other} operand is promoted to {dt}"
            self.report(
                ctx,
                node,
                f"`{ctx.text(mask)}` is a mask cast to `{ctx.text(cast.args[0])}` while the data `{ctx.text(data)}` is {other}; {cost}, so the output and everything after it change dtype",
                help=f"cast the mask with the data's dtype (`{ctx.text(mask)}.astype({ctx.text(data) if isinstance(data, ast.Name) else 'x'}.dtype)`), or select with `jnp.where({ctx.text(mask)}, ...)`",
                detail=ctx.text(mask),
                evidence={"mask_dtype": dt, "data_dtype": other},
                confidence=confidence,
            )
            return

    @only(callees=("jax.numpy.where",))
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if len(node.args) != 3:
            return
        a, b = node.args[1], node.args[2]
        da, db = self._explicit(a, ctx), self._explicit(b, ctx)
        if da is None or db is None or da == db:
            return
        self.report(
            ctx,
            node,
            f"`jnp.where` selects between `{ctx.text(a)}` ({da}) and `{ctx.text(b)}` ({db}); the result is promoted to the wider type in both regions, so the branch with the narrower dtype silently changes dtype",
            help="cast both branches to one dtype (usually the data's: `.astype(x.dtype)`)",
            detail=f"{da}/{db}",
            evidence={"dtypes": [da, db]},
        )

    @staticmethod
    def _explicit(e: ast.AST, ctx: FileContext) -> str | None:
        if not isinstance(e, ast.Call):
            return None
        if isinstance(e.func, ast.Attribute) and e.func.attr == "astype" and e.args:
            return float_dtype(e.args[0], ctx)
        q = ctx.qualname(e.func) or ""
        if q.startswith("jax.numpy."):
            d = float_dtype(e.func, ctx)
            if d is not None and d != "float":
                return d  # jnp.float32(...)
            return float_dtype(dtype_arg(e), ctx)
        return None
