from __future__ import annotations

from stabcheck.rule import Rule


class PytreeStructureMismatch(Rule):
    """## What it does
    Reports (traced and confirm stages) two pytrees of different structure combined leaf by leaf:
    `jax.tree.map(f, a, b)` where `b` holds `None` for a part that `a` has (a frozen or optional
    sub-tree), dicts with other keys, a tuple against a list, or custom nodes of other classes —
    at the user line that combines them, from JAX's own `pytree structure error`.

    ## Why is this bad?
    Tree utilities require identical structures, so the mismatch raises `ValueError` the first time
    the code runs with the odd tree — often only in the configuration that freezes a layer or
    drops an optional state, far from where the `None` was put in.

    ## Example
    ```python
    grads = {"encoder": g_enc, "head": None}          # head frozen
    params = jax.tree.map(lambda p, g: p - lr * g, params, grads)   # ValueError
    ```

    ## Use instead
    Keep the structures equal (zeros for the frozen part), or treat `None` as a leaf on purpose:
    ```python
    params = jax.tree.map(lambda p, g: p if g is None else p - lr * g, params, grads,
                          is_leaf=lambda x: x is None)
    ```
    """

    code = "STB206"
    name = "pytree-structure-mismatch"
    severity = "error"
    stages = ("traced", "confirmed")
