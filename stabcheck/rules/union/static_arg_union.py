from __future__ import annotations

from stabcheck.rule import Rule


class StaticArgUnion(Rule):
    """## What it does
    Reports (traced stage) a function whose output structure, dtype, shape or weak type changes
    with the value of a static argument, found by tracing an entry once per static value given
    in its `calls` list.

    ## Why is this bad?
    Each static value is a separate compilation with a different output type: callers that store
    the result in a loop carry, a train state or a pytree with a fixed structure break, or retrace,
    depending on a configuration value far away from the function.

    ## Example
    ```python
    @partial(jax.jit, static_argnums=1)
    def head(x, training):
        if training:
            return x, jnp.mean(x)      # a tuple
        return x                       # an array
    ```

    ## Use instead
    Return one structure for every static value:
    ```python
    @partial(jax.jit, static_argnums=1)
    def head(x, training):
        aux = jnp.mean(x) if training else jnp.zeros((), x.dtype)
        return x, aux
    ```
    """

    code = "STB205"
    name = "static-arg-union"
    severity = "warning"
    stages = ("traced", "runtime")
