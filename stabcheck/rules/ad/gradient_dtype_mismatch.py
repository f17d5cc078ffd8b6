from __future__ import annotations

from stabcheck.rule import Rule


class GradientDtypeMismatch(Rule):
    """## What it does
    Reports a gradient leaf whose dtype differs from its parameter's, found by running `grad`
    of an entry for real (confirm stage): for example a `custom_vjp` whose bwd rule returns
    `bfloat16` or `int32` cotangents for a `float32` input.

    ## Why is this bad?
    JAX accepts a wrong cotangent dtype from a custom rule without an error (checked with
    JAX 0.10.2: a bf16 cotangent for an f32 input comes back as a bf16 gradient, an int32 one
    as int32). The update then runs in the wrong precision, an integer gradient truncates to
    zero, and the optimizer state changes dtype at the next step, which recompiles the step.

    ## Example
    ```python
    @jax.custom_vjp
    def scale(x):
        return 2 * x

    def scale_fwd(x):
        return 2 * x, None

    def scale_bwd(_, g):
        return ((2 * g).astype(jnp.bfloat16),)   # the parameter is float32

    scale.defvjp(scale_fwd, scale_bwd)
    ```

    ## Use instead
    Return each cotangent in its primal input's dtype:
    ```python
    def scale_fwd(x):
        return 2 * x, x.dtype

    def scale_bwd(dtype, g):
        return ((2 * g).astype(dtype),)
    ```
    """

    code = "STB406"
    name = "gradient-dtype-mismatch"
    stages = ("confirmed", "runtime")
