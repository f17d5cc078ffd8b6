from __future__ import annotations

from stabcheck.rule import Rule


class NonArrayArgument(Rule):
    """## What it does
    Reports (traced and confirm stages) a value that is neither an array, a Python scalar nor a
    registered pytree of them — a flax `linen.Module`, an optimizer object, a plain class instance
    — passed as a traced (non-static) argument of a jitted or differentiated function, from
    JAX's `as an abstract array` or `is not a valid JAX type` error.

    ## Why is this bad?
    `jit` must turn every non-static argument into an abstract array; an arbitrary object cannot
    be, so the call raises `TypeError` before anything is compiled. Marking the object static
    instead makes it part of the cache key: fine for a hashable configuration object, a retrace per
    instance for one that is rebuilt every step.

    ## Example
    ```python
    @jax.jit
    def apply(model, params, x):          # model: a flax linen Module
        return model.apply(params, x)

    apply(model, params, x)               # TypeError: ... is not a valid JAX type
    ```

    ## Use instead
    Close over the module, or declare it static (it is hashable and built once):
    ```python
    @partial(jax.jit, static_argnums=0)
    def apply(model, params, x):
        return model.apply(params, x)
    ```
    """

    code = "STB505"
    name = "non-array-argument"
    severity = "error"
    stages = ("traced", "confirmed")
