from __future__ import annotations

from stabcheck.rule import Rule


class ZeroGradient(Rule):
    """## What it does
    Reports (traced stage, under `grad`) a differentiated input that the output depends on only
    through primitives without a derivative — a comparison (`x > t`), rounding (`round`,
    `floor`), `sign`, `argmax`, a cast to an integer — so that `grad` returns exactly zero for it.
    Reported at the first such primitive its value flows into. The classic case is a bisection or
    a search in `lax.while_loop` whose input only enters through the comparison that picks the
    half: reverse mode does not even raise, since no tangent reaches the loop.

    ## Why is this bad?
    Nothing fails: the gradient is a well-formed array of zeros, the optimizer takes no step for
    that parameter, and the model trains on as if the parameter were frozen. The bug surfaces
    weeks later as a parameter that never moved.

    ## Example
    ```python
    def sqrt_bisect(x):
        def body(c):
            lo, hi = c
            mid = (lo + hi) / 2
            left = mid * mid > x                 # x only enters through this comparison
            return jnp.where(left, lo, mid), jnp.where(left, mid, hi)
        lo, hi = lax.while_loop(lambda c: c[1] - c[0] > 1e-4, body, (0.0, 10.0))
        return (lo + hi) / 2

    jax.grad(sqrt_bisect)(4.0)                   # 0.0, silently
    ```

    ## Use instead
    Differentiate the solution, not the search: implicit differentiation with `jax.custom_jvp`
    (for `y = sqrt(x)`: `dy = dx / (2 y)`), or a smooth surrogate for the comparison.
    ```python
    @jax.custom_jvp
    def sqrt_bisect(x): ...

    @sqrt_bisect.defjvp
    def _jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        y = sqrt_bisect(x)
        return y, dx / (2 * y)
    ```
    """

    code = "STB410"
    name = "zero-gradient"
    severity = "warning"
    stages = ("traced",)
