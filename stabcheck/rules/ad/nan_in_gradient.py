from __future__ import annotations

from stabcheck.rule import Rule


class NanInGradient(Rule):
    """## What it does
    Reports NaN or Inf in an entry's outputs or gradients, found by running the transforms for
    real (confirm stage), at the user line of the first primitive that produced it: the jaxpr
    is re-run one equation at a time, nested calls and the backward pass included, and the
    first equation with finite inputs and a non-finite output is named (`sqrt`, `div`, `log`).

    ## Why is this bad?
    One NaN in a gradient turns every parameter it reaches into NaN at the next update, and
    the training run is lost. The place where a NaN is noticed (the loss, the optimizer) is
    rarely where it began; the first primitive that made it is where the fix goes. The classic
    case is `jnp.where(x > 0, jnp.sqrt(x), 0.)`: at `x = 0` the derivative of `sqrt` is inf,
    its cotangent is 0, and `0 * inf = NaN`.

    ## Example
    ```python
    def loss(x):
        return jnp.sum(jnp.where(x > 0, jnp.sqrt(x), 0.0))

    jax.grad(loss)(jnp.array([0.0, 1.0]))   # [nan, 0.5]
    ```

    ## Use instead
    Keep the unsafe primitive away from the inputs where its derivative blows up (the
    "double where"), or clip its input:
    ```python
    def loss(x):
        safe = jnp.where(x > 0, x, 1.0)
        return jnp.sum(jnp.where(x > 0, jnp.sqrt(safe), 0.0))
    ```
    """

    code = "STB408"
    name = "nan-in-gradient"
    stages = ("confirmed",)
