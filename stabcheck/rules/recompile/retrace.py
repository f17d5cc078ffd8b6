from __future__ import annotations

from typing import Any, ClassVar

from stabcheck.rule import Rule


class Retrace(Rule):
    """## What it does
    Reports an entry whose jitted function is compiled more than `max-traces` times when it is
    called on the example arguments, on every tuple in the entry's `calls`, and (for step
    entries with `state_argnums`) three more times with the returned state fed back. Each
    compilation is explained by the argument or state leaf whose shape, dtype or weak type
    changed, the argument that was None, or the static value that changed: a static argument, a
    field declared static, a Python number in an `eqx.Module` under `eqx.filter_jit`, or an
    object JAX keys by identity (an optax optimizer or a `jax.jit` built anew each time). A
    change inside a dataclass field is reported at the field's declaration (at the
    `self.field = jax.jit(...)` line for a jit built per object). For a `call` entry (a training
    loop), each jitted function JAX compiles more than `max-traces` times while it runs is
    reported at that function's `def`. `@stabcheck.stable` and `pytest --stabcheck` report each
    new signature JAX really traced, with the same words.

    ## Why is this bad?
    Every new abstract signature costs a full trace and an XLA compile, often seconds, where
    the step itself takes milliseconds. A Python scalar that is sometimes an `int` and
    sometimes a `float`, a weakly typed initial state that becomes strongly typed after one
    step, or a static argument that takes many values each silently multiply the run time.

    ## Example
    ```python
    @jax.jit
    def step(params, lr):
        return params - lr * params

    for lr in (1, 0.5, np.float32(0.1), jnp.float32(0.1)):   # 3 different signatures
        params = step(params, lr)
    ```

    ```python
    class Counter(eqx.Module):
        w: jax.Array
        step: int                      # static under eqx.filter_jit: one compile per value

    @partial(jax.jit, static_argnames="optimizer")
    def train_step(params, opt_state, optimizer): ...

    train_step(params, opt_state, optax.adam(1e-2))   # a new optimizer object: compiles again
    ```

    ## Use instead
    Give every call the same types: cast scalars once (`jnp.float32(lr)`), create the initial
    state with the dtypes the step returns, and keep static arguments to a few values. Store
    counters as arrays (`step: jax.Array`), build optimizers and `jax.jit` functions once and
    reuse them.
    ```python
    lr = jnp.float32(0.1)
    for _ in range(steps):
        params = step(params, lr)
    ```

    ## Options
    `max-traces` (default 3): how many compilations an entry may take before it is reported.
    """

    code = "STB504"
    name = "retrace"
    severity = "warning"
    stages = ("confirmed", "runtime")
    options: ClassVar[dict[str, Any]] = {"max-traces": 3}
