from __future__ import annotations

from stabcheck.rule import Rule


class WeakTypeOutput(Rule):
    """## What it does
    Reports (traced stage) an output or a train-state leaf of an entry that is weakly typed: its
    dtype comes from a Python scalar (`0.0`, `1`) rather than from an array, shown by JAX as
    `~float32`.

    ## Why is this bad?
    A weak value takes the dtype of whatever it meets next, so the same code computes in bf16 in
    one place and float32 in another. Fed back as a loop carry or optimizer state it becomes
    strongly typed after one step, which changes the abstract signature: `jit` retraces and
    `lax.scan` rejects the carry.

    ## Example
    ```python
    def init(params):
        return {"step": 0.0, "params": params}   # `step` is a weak float32
    ```

    ## Use instead
    Create the value with an explicit dtype:
    ```python
    def init(params):
        return {"step": jnp.zeros((), jnp.float32), "params": params}
    ```
    """

    code = "STB302"
    name = "weak-type-output"
    severity = "warning"
    stages = ("traced", "runtime")
