from __future__ import annotations

from stabcheck.rule import Rule


class RankPromotion(Rule):
    """## What it does
    Reports (traced stage) an operator or ufunc (`+`, `-`, `*`, `jnp.maximum`, ...) whose operands
    have different ranks, where NumPy-style rank promotion then expands axes of *both* operands, so
    the result is larger than either input: `(n,) - (n, 1) -> (n, n)`. Ordinary promotion that lines
    a bias up with the data's trailing axes (`x @ w + b`) is not reported, nor are scalars, explicit
    `b[None, :]`, `jnp.expand_dims` and `jnp.broadcast_to`.

    ## Why is this bad?
    The shapes only line up by accident: a target of shape `(n,)` subtracted from predictions of
    shape `(n, 1)` silently builds an `(n, n)` matrix, the loss is wrong by a factor and the memory
    grows quadratically, with no error. Projects that enable
    `jax_numpy_rank_promotion="raise"` fail here.

    ## Example
    ```python
    def mse(w, x, y):              # x: (n, d), w: (d, 1), y: (n,)
        pred = x @ w               # (n, 1)
        return jnp.mean((pred - y) ** 2)   # (n, 1) - (n,) -> (n, n)
    ```

    ## Use instead
    Make the shapes agree before combining them:
    ```python
    def mse(w, x, y):
        pred = (x @ w)[:, 0]       # (n,)
        return jnp.mean((pred - y) ** 2)
    ```
    """

    code = "STB305"
    name = "rank-promotion"
    severity = "info"
    stages = ("traced", "runtime")
