from __future__ import annotations

from stabcheck.rule import Rule


class CallbackInAd(Rule):
    """## What it does
    Reports (traced stage) a `jax.pure_callback` or `jax.experimental.io_callback` that `grad`,
    `jvp` or another autodiff transform reaches without a custom derivative rule around it.

    ## Why is this bad?
    JAX cannot differentiate through Python code it calls back into: the transform raises
    (`Pure callbacks do not support JVP`), or the callback's contribution to the gradient is
    silently missing when the value is treated as a constant.

    ## Example
    ```python
    def loss(x):
        y = jax.pure_callback(np.sinh, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return jnp.sum(y)

    jax.grad(loss)(x)                      # fails
    ```

    ## Use instead
    Wrap the callback in `jax.custom_jvp`/`jax.custom_vjp` with a derivative written in JAX, or
    replace it with `jnp` code:
    ```python
    @jax.custom_jvp
    def sinh(x):
        return jax.pure_callback(np.sinh, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    sinh.defjvp(lambda p, t: (sinh(p[0]), jnp.cosh(p[0]) * t[0]))
    ```
    """

    code = "STB407"
    name = "callback-in-ad"
    stages = ("traced", "confirmed")
