from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.tracer_leaks._values import bool_mask, traced_value
from stabcheck.static.context import FileContext

# functions whose output length is the number of matches: qualname -> first data argument
_SIZE_FUNCS = frozenset(
    f"jax.numpy.{n}"
    for n in (
        "nonzero", "argwhere", "flatnonzero", "unique", "unique_values", "unique_counts", "unique_inverse",
        "unique_all", "union1d", "intersect1d", "setdiff1d", "setxor1d", "extract", "compress",
    )
)


class DataDependentShape(Rule):
    """## What it does
    Flags operations inside a staged-out transform whose output *shape* depends on traced
    values: boolean-mask indexing `x[mask]` and `x.at[mask]` with a traced mask, and
    `jnp.nonzero`, `argwhere`, `flatnonzero`, `unique` (and the set functions), `extract`,
    `compress` and one-argument `jnp.where(cond)` called without `size=`.

    ## Why is this bad?
    XLA compiles programs for static shapes. How many elements a traced mask selects is
    unknown at trace time, so JAX raises `NonConcreteBooleanIndexError` or
    `ConcretizationTypeError` when the function is jitted or vmapped.

    ## Example
    ```python
    @jax.jit
    def positive_mean(x):
        return jnp.mean(x[x > 0])
    ```

    ## Use instead
    Keep the shape fixed: reduce with a `where=` mask or `jnp.where`, or pass `size=` (and
    `fill_value=`) so the output has a static length:
    ```python
    @jax.jit
    def positive_mean(x):
        return jnp.mean(x, where=x > 0)
    ```
    """

    code = "STB103"
    name = "data-dependent-shape"
    stages = ("static", "traced", "confirmed")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def positive_mean(x):
            return jnp.mean(x[x > 0])  # expect: STB103
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def clip_outliers(x):
            z = (x - x.mean()) / x.std()
            outlier = jnp.abs(z) > 3.0
            return x.at[outlier].set(0.0)  # expect: STB103
        """,
        """
        import jax
        import jax.numpy as jnp

        def active_units(h):
            idx = jnp.nonzero(h > 0)[0]  # expect: STB103
            labels = jnp.unique(jnp.argmax(h, axis=-1))  # expect: STB103
            return idx, labels

        batched = jax.vmap(active_units)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def nan_positions(grads):
            return jnp.where(jnp.isnan(grads))  # expect: STB103
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def positive_mean(x):
            return jnp.mean(x, where=x > 0)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def clip_outliers(x):
            z = (x - x.mean()) / x.std()
            return jnp.where(jnp.abs(z) > 3.0, 0.0, x)
        """,
        """
        import jax
        import jax.numpy as jnp

        def active_units(h):
            idx = jnp.nonzero(h > 0, size=h.shape[0], fill_value=-1)[0]
            labels = jnp.unique(jnp.argmax(h, axis=-1), size=4)
            return idx, labels

        batched = jax.vmap(active_units)
        """,
        """
        import numpy as np
        import jax
        import jax.numpy as jnp

        KEEP = np.array([True, False, True])

        @jax.jit
        def select(x, idx):
            return x[KEEP] + x[idx] + x.at[idx].get()
        """,
        """
        import jax.numpy as jnp

        def eager_positive(x):
            return x[x > 0]
        """,
    )

    @only(inside="abstract")
    def visit_Subscript(self, node: ast.Subscript, ctx: FileContext) -> None:
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for p in parts:
            if bool_mask(p, ctx):
                at = isinstance(node.value, ast.Attribute) and node.value.attr == "at"
                how = f"`.at[{ctx.text(p)}]`" if at else "boolean-mask indexing"
                self.report(
                    ctx,
                    node,
                    f"{how} with the traced mask `{ctx.text(p)}` selects a data-dependent number of elements; "
                    "the result has no static shape, so tracing raises NonConcreteBooleanIndexError",
                    help="use `jnp.where(mask, x, fill)`, a `where=` reduction, or `jnp.nonzero(mask, size=...)`",
                    detail=ctx.text(p),
                    operands=(p,),
                )
                return

    @only(inside="abstract")
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if any(k.arg == "size" for k in node.keywords):
            return
        q = ctx.qualname(node.func)
        name: str | None = None
        if q in _SIZE_FUNCS and node.args:
            name = q.replace("jax.numpy.", "jnp.")
        elif q == "jax.numpy.where" and len(node.args) == 1 and not node.keywords:
            name = "one-argument jnp.where"
        elif q is None and isinstance(node.func, ast.Attribute) and node.func.attr == "nonzero" and not node.args:
            if traced_value(node.func.value, ctx) and ctx.is_traced_array(node.func.value):
                self._size(ctx, node, ".nonzero()", node.func.value, node.func.value)
            return
        if name is None:
            return
        arg = node.args[0]
        traced = [a for a in node.args if traced_value(a, ctx)]
        if traced:
            self._size(ctx, node, name, arg, traced[0])

    def _size(self, ctx: FileContext, node: ast.Call, name: str, arg: ast.AST, traced: ast.AST) -> None:
        self.report(
            ctx,
            node,
            f"`{name}` of the traced `{ctx.text(arg)}` without `size=` returns a data-dependent number of elements; "
            "tracing raises ConcretizationTypeError",
            help="pass `size=` (and `fill_value=`) for a static output length, or use a mask with `jnp.where`",
            detail=ctx.text(arg),
            operands=(traced,),
        )
