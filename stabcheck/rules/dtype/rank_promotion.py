from __future__ import annotations

from stabcheck.rule import Rule


class RankPromotion(Rule):
    """## What it does
    Reports (traced stage) an operator or ufunc (`+`, `*`, `jnp.add`, `jnp.maximum`, ...) whose
    operands have different non-zero ranks, so that NumPy-style rank promotion prepends axes to
    the smaller one: exactly the cases that `jax_numpy_rank_promotion="raise"` rejects.
    Scalars, explicit `b[None, :]`, `jnp.expand_dims` and `jnp.broadcast_to` are not reported.

    ## Why is this bad?
    Implicit rank promotion lines up trailing axes silently: a bias of shape `(n,)` added to a
    batch of shape `(n, n)` broadcasts along the wrong axis without an error, and a missing batch
    axis goes unnoticed. Projects that enable `jax_numpy_rank_promotion="raise"` fail here.

    ## Example
    ```python
    def dense(w, b, x):            # x: (batch, d_in), b: (d_out,)
        return x @ w + b           # b is promoted from rank 1 to rank 2
    ```

    ## Use instead
    Spell the broadcast out:
    ```python
    def dense(w, b, x):
        return x @ w + b[None, :]
    ```
    """

    code = "STB305"
    name = "rank-promotion"
    severity = "info"
    stages = ("traced",)
