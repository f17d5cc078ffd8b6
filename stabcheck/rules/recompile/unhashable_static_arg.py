from __future__ import annotations

import ast

from stabcheck.rule import Rule
from stabcheck.rules.recompile._jitted import Jitted, call_args, inline_jit, jitted_functions
from stabcheck.static.context import FileContext

_ARRAY_MAKERS = frozenset(
    {"array", "asarray", "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "zeros_like", "ones_like", "full_like", "stack", "concatenate"}
)
_CONTAINERS = {ast.List: "a list", ast.ListComp: "a list", ast.Dict: "a dict", ast.DictComp: "a dict", ast.Set: "a set", ast.SetComp: "a set"}


class UnhashableStaticArg(Rule):
    """## What it does
    Flags a call of a `jax.jit`/`jax.pmap` function that passes a list, dict, set or array
    (a literal, a `list()`/`dict()`/`set()` call, an `np`/`jnp` array, or a local name bound to
    one) for a parameter declared static with `static_argnums` or `static_argnames`.

    ## Why is this bad?
    JAX keys its compilation cache on the static arguments' hashes. An unhashable value raises
    `ValueError: Non-hashable static arguments are not supported` at the call. (A mutable
    *default* is never hashed, since JAX only sees the arguments actually passed.)

    ## Example
    ```python
    @partial(jax.jit, static_argnames="features")
    def mlp(params, x, features):
        ...

    y = mlp(params, x, features=[64, 64, 10])
    ```

    ## Use instead
    Pass a hashable value: a tuple for a list, a frozen mapping or tuple of pairs for a dict:
    ```python
    y = mlp(params, x, features=(64, 64, 10))
    ```
    """

    code = "STB502"
    name = "unhashable-static-arg"
    stages = ("static", "traced", "confirmed")
    fixable = "safe"
    INVALID = (
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnames="features")
        def mlp(params, x, features):
            for w, n in zip(params, features):
                x = jax.nn.relu(x @ w[:, :n])
            return x

        def predict(params, x):
            return mlp(params, x, features=[64, 64, 10])  # expect: STB502
        """,
        """
        import jax
        import numpy as np

        def pool(x, window):
            return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID")

        pool_jit = jax.jit(pool, static_argnums=1)
        window = [1, 2, 2, 1]
        y = pool_jit(np.ones((1, 8, 8, 1)), window)  # expect: STB502
        z = jax.jit(pool, static_argnums=(1,))(np.ones((1, 8, 8, 1)), np.array([1, 2, 2, 1]))  # expect: STB502
        """,
        """
        import jax

        def apply(x, config):
            return x * config["scale"]

        apply_jit = jax.jit(apply, static_argnames="config")
        out = apply_jit(1.0, {"scale": 2.0})  # expect: STB502
        """,
    )
    VALID = (
        """
        from functools import partial
        import jax

        @partial(jax.jit, static_argnames="features")
        def mlp(params, x, features):
            for w, n in zip(params, features):
                x = jax.nn.relu(x @ w[:, :n])
            return x

        def predict(params, x):
            return mlp(params, x, features=(64, 64, 10))
        """,
        """
        import jax

        def apply(x, scales=[1.0, 2.0]):  # a default is never hashed by jit
            return x * len(scales)

        apply_jit = jax.jit(apply, static_argnames="scales")
        out = apply_jit(1.0)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def total(xs):
            return sum(jnp.sum(x) for x in xs)  # not static: a list of arrays is a pytree

        t = total([jnp.ones(2), jnp.ones(3)])
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        j: Jitted | None = None
        if isinstance(node.func, ast.Name):
            j = jitted_functions(ctx.analysis).get(node.func.id)
            if j is not None and ctx.analysis.resolve(node.func, ctx.function) is not None and not _is_decorated_def(node.func, ctx, j):
                j = None  # a local function of the same name shadows the jitted one
        elif isinstance(node.func, ast.Call):
            j = inline_jit(node.func, ctx.names, ctx.analysis)
        if j is None or not (j.static_pos or j.static_names):
            return
        for pos, kw, pname, value in call_args(node, j):
            if not j.is_static(pos, kw):
                continue
            what = self._unhashable(value, ctx)
            if what is None:
                continue
            shown = ctx.text(value)
            self.report(
                ctx,
                value,
                f"`{shown}` is {what} passed for `{pname}`, a static argument of `{j.name}`; static arguments must be hashable, so the call raises ValueError: Non-hashable static arguments are not supported",
                help="pass a tuple instead of a list (a tuple of pairs or a frozen dataclass instead of a dict), or make the argument non-static",
                detail=f"{j.name}:{pname}",
                evidence={"kind": what},
            )

    def _unhashable(self, value: ast.AST, ctx: FileContext, depth: int = 0) -> str | None:
        for t, what in _CONTAINERS.items():
            if isinstance(value, t):
                return what
        if isinstance(value, ast.Call):
            q = ctx.qualname(value.func) or ""
            if q in ("builtins.list", "builtins.dict", "builtins.set", "builtins.bytearray"):
                return "a " + q.split(".")[1]
            if q.startswith(("numpy.", "jax.numpy.")) and q.rsplit(".", 1)[1] in _ARRAY_MAKERS:
                return "an array"
            return None
        if isinstance(value, ast.Name) and depth == 0:
            scope_node: ast.AST = ctx.function.node if ctx.function is not None else ctx.tree
            binds = [n.value for n in ast.walk(scope_node) if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == value.id for t in n.targets)]
            if len(binds) == 1:
                return self._unhashable(binds[0], ctx, depth + 1)
        return None


def _is_decorated_def(func: ast.Name, ctx: FileContext, j: Jitted) -> bool:
    info = ctx.analysis.resolve(func, ctx.function)
    return info is not None and info.parent is None and any(t.qualname == j.transform.qualname for t in info.transforms)
