from __future__ import annotations

from stabcheck.rule import Rule


class NonDifferentiableLeaf(Rule):
    """## What it does
    Reports (traced stage) a bool or integer leaf in the arguments that `grad` differentiates,
    naming the leaf's path in the pytree (for example `params['mask']`).

    ## Why is this bad?
    `jax.grad` raises `TypeError: grad requires real- or complex-valued inputs` for the whole
    step. With `allow_int=True` it returns `float0` zeros instead, which an optimizer cannot
    apply. Masks and counters kept in the parameter tree are the usual cause.

    ## Example
    ```python
    params = {"w": w, "mask": jnp.array([True, False])}
    grads = jax.grad(loss)(params, x)      # TypeError
    ```

    ## Use instead
    Keep non-float state out of the differentiated tree (close over it, pass it as another
    argument, or filter it with `eqx.filter_grad`):
    ```python
    grads = jax.grad(loss)(params, mask, x)    # mask is argument 1, not differentiated
    ```
    """

    code = "STB402"
    name = "non-differentiable-leaf"
    stages = ("traced", "confirmed", "runtime")
