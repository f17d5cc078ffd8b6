from __future__ import annotations

import ast

from stabcheck.rule import Rule
from stabcheck.static.context import FileContext

_GRADS = frozenset({"jax.grad", "jax.value_and_grad"})
_INT_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "bool_"})
_MAKERS = frozenset({"array", "asarray", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "empty"})


class NonDifferentiableLeaf(Rule):
    """## What it does
    Reports (traced stage) a bool or integer leaf in the arguments that `grad` differentiates,
    naming the leaf's path in the pytree (for example `params['mask']`), at the line that makes
    the leaf where one place does: the value given to its key (`"d": 1`, `dict(d=1)`,
    `p["d"] = 1`, or the assignment of the name given there) in the entry's factory, the test
    that called `grad` (`pytest --stabcheck`, and the replay of its recording) or the functions
    they call, two calls deep. Elsewhere it is reported where `grad` is applied.

    The static stage reports the case it sees whole: `jax.grad(f)(params, ...)` (or
    `value_and_grad`, or a name bound to one) where a differentiated argument is, or is a dict,
    list or tuple display holding (either spelled there or bound once to a name), a Python
    `int`/`bool` literal (`jax.grad(square)(3)`), an integer
    `jnp.array` literal, `jnp.arange` without a float dtype, or an array made with an integer or
    bool `dtype`, reported at the line that creates the leaf.

    ## Why is this bad?
    `jax.grad` raises `TypeError: grad requires real- or complex-valued inputs` for the whole
    step. With `allow_int=True` it returns `float0` zeros instead, which an optimizer cannot
    apply. Masks and counters kept in the parameter tree are the usual cause.

    ## Example
    ```python
    params = {"w": w, "mask": jnp.array([True, False])}
    grads = jax.grad(loss)(params, x)      # TypeError
    ```

    ## Use instead
    Keep non-float state out of the differentiated tree (close over it, pass it as another
    argument, or filter it with `eqx.filter_grad`):
    ```python
    grads = jax.grad(loss)(params, mask, x)    # mask is argument 1, not differentiated
    ```
    """

    code = "STB402"
    name = "non-differentiable-leaf"
    stages = ("static", "traced", "confirmed", "runtime")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def loss(p, x):
            return jnp.sum(p["w"] * x) + p["step"]

        params = {
            "w": jnp.ones(3),
            "step": 0,  # expect: STB402
        }
        grads = jax.grad(loss)(params, jnp.ones(3))
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(p, x):
            w, mask = p
            return jnp.sum(w * x * mask)

        def train(x):
            params = (jnp.ones(3), jnp.array([True, False, True]))  # expect: STB402
            value, grads = jax.value_and_grad(loss)(params, x)
            return grads
        """,
        """
        import jax

        def square(x):
            return x**2

        def slope():
            val = 3  # expect: STB402
            return jax.grad(square)(val)
        """,
    )
    VALID = (
        """
        import jax

        def square(x):
            return x**2

        def slope():
            val = 3.0
            return jax.grad(square)(val)
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(p, step, x):
            return jnp.sum(p["w"] * x) + step

        params = {"w": jnp.ones(3), "b": 0.0}
        grads = jax.grad(loss)(params, 0, jnp.ones(3))  # the int is argument 1: not differentiated
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(p, x):
            return jnp.sum(p["w"] * x)

        params = {"w": jnp.ones(3), "idx": jnp.arange(3, dtype=jnp.float32)}
        grads = jax.grad(loss, allow_int=True)(params, jnp.ones(3))  # allow_int: float0 zeros, asked for
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        grad = node.func if isinstance(node.func, ast.Call) else _bound_grad(node.func, ctx)
        if grad is None or ctx.qualname(grad.func) not in _GRADS or not grad.args:
            return
        if any(k.arg == "allow_int" for k in grad.keywords):
            return
        argnums = _argnums(grad)
        if argnums is None:
            return
        for i in argnums:
            if i >= len(node.args) or any(isinstance(a, ast.Starred) for a in node.args[: i + 1]):
                continue
            display = _display(node.args[i], ctx)
            if display is None:
                continue
            whole = ctx.text(node.args[i])
            for path, leaf, what in _int_leaves(display, ctx, whole):
                role = "the argument" if path == whole else "a leaf of the argument"
                self.report(
                    ctx,
                    leaf,
                    f"`{path}` is {what}, {role} `{ctx.text(grad)}` differentiates (line {node.lineno}); "
                    "JAX raises TypeError: grad requires real- or complex-valued inputs",
                    help="keep integer and bool state out of the differentiated argument (pass it separately, or use `eqx.filter_grad`), "
                    "or make it a float (`0.0`)",
                    detail=path,
                    evidence={"leaf": path},
                )


def _bound_grad(func: ast.AST, ctx: FileContext) -> ast.Call | None:
    """`g` bound once (in this scope or at module level) to `jax.grad(...)`."""
    if not isinstance(func, ast.Name) or func.id not in _grad_names(ctx):
        return None
    value = _single_binding(func.id, ctx)
    return value if isinstance(value, ast.Call) else None


def _grad_names(ctx: FileContext) -> frozenset[str]:
    """The names the module assigns a `grad` call anywhere (`g = jax.grad(loss)`): only a call
    through one of them can be a bound gradient, so the others skip the binding lookup."""
    return ctx.analysis.memo(
        "grad_names",
        lambda: frozenset(
            t.id
            for n in ctx.names.statements  # an assignment is a statement: no need to walk expressions
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and ctx.qualname(n.value.func) in _GRADS
            for t in n.targets
            if isinstance(t, ast.Name)
        ),
    )


def _single_binding(name: str, ctx: FileContext) -> ast.AST | None:
    scopes: list[tuple[ast.AST, bool]] = [(ctx.function.node, False)] if ctx.function is not None else []
    scopes.append((ctx.tree, ctx.function is not None))  # from a function: module level only
    for scope, top_level in scopes:
        binds = _binding_index(scope, top_level, ctx).get(name, [])
        if len(binds) == 1 and isinstance(binds[0], ast.Assign) and len(binds[0].targets) == 1 and isinstance(binds[0].targets[0], ast.Name):
            return binds[0].value
        if binds:
            return None
    return None


_BINDERS = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With, ast.NamedExpr)


def _binding_index(scope: ast.AST, top_level: bool, ctx: FileContext) -> dict[str, list[ast.AST]]:
    """Name -> the statements that bind it in `scope` (its top-level statements only, or every
    node under it), made once per scope: a file of many `grad` calls asks again for each."""
    cache: dict[tuple[int, bool], dict[str, list[ast.AST]]] = ctx.analysis.memo("binding_index", dict)
    index = cache.get((id(scope), top_level))
    if index is None:
        index = cache[(id(scope), top_level)] = {}
        nodes = scope.body if top_level else ast.walk(scope)  # type: ignore[attr-defined]
        for n in nodes:
            if isinstance(n, _BINDERS):
                for name in dict.fromkeys(_bound(n)):
                    index.setdefault(name, []).append(n)
    return index


def _bound(node: ast.AST) -> list[str]:
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.NamedExpr)):
        targets = [node.target]
    elif isinstance(node, ast.With):
        targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _argnums(grad: ast.Call) -> tuple[int, ...] | None:
    kw = next((k.value for k in grad.keywords if k.arg == "argnums"), grad.args[1] if len(grad.args) > 1 else None)
    if kw is None:
        return (0,)
    if isinstance(kw, ast.Constant) and isinstance(kw.value, int) and not isinstance(kw.value, bool) and kw.value >= 0:
        return (kw.value,)
    if isinstance(kw, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) and isinstance(e.value, int) and e.value >= 0 for e in kw.elts):
        return tuple(e.value for e in kw.elts)  # type: ignore[union-attr]
    return None


def _display(arg: ast.AST, ctx: FileContext) -> ast.AST | None:
    """The value the source spells for a differentiated argument: a display, a literal or an
    array call (`jax.grad(square)(3)`), or what a name bound once holds (`val = 3`, jax-ml/jax#424)."""
    if isinstance(arg, (ast.Dict, ast.List, ast.Tuple, ast.Constant, ast.Call)):
        return arg
    if isinstance(arg, ast.Name):
        value = _single_binding(arg.id, ctx)
        if isinstance(value, (ast.Dict, ast.List, ast.Tuple, ast.Constant, ast.Call)):
            return value
    return None


def _int_leaves(node: ast.AST, ctx: FileContext, path: str) -> list[tuple[str, ast.AST, str]]:
    if isinstance(node, ast.Dict):
        out = []
        for k, v in zip(node.keys, node.values):
            if k is None:
                continue  # `**other`: its leaves are not seen
            key = f"[{ctx.text(k)}]"
            out += _int_leaves(v, ctx, path + key)
        return out
    if isinstance(node, (ast.List, ast.Tuple)):
        return [x for i, e in enumerate(node.elts) if not isinstance(e, ast.Starred) for x in _int_leaves(e, ctx, f"{path}[{i}]")]
    what = _integer(node, ctx)
    return [(path, node, what)] if what else []


def _integer(node: ast.AST, ctx: FileContext) -> str:
    """What makes `node` an integer or bool leaf, or ''."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return "a Python bool"
        if isinstance(node.value, int):
            return "a Python int (int32 to JAX)"
        return ""
    if not isinstance(node, ast.Call):
        return ""
    q = ctx.qualname(node.func) or ""
    if not q.startswith("jax.numpy."):
        return ""
    fname = q.rsplit(".", 1)[1]
    dtype = next((k.value for k in node.keywords if k.arg == "dtype"), None)
    if dtype is not None:
        d = (ctx.qualname(dtype) or ctx.text(dtype)).rsplit(".", 1)[-1].strip("'\"")
        return f"an array of dtype {d}" if d in _INT_DTYPES and fname in _MAKERS | {"arange"} else ""
    if fname == "arange" and node.args and all(isinstance(a, ast.Constant) and isinstance(a.value, int) and not isinstance(a.value, bool) for a in node.args):
        return "an integer `jnp.arange`"
    if fname in ("array", "asarray") and node.args:
        lits = [n.value for n in ast.walk(node.args[0]) if isinstance(n, ast.Constant)]
        shapes_only = all(isinstance(n, (ast.Constant, ast.List, ast.Tuple, ast.Load, ast.UnaryOp, ast.USub)) for n in ast.walk(node.args[0]))
        if lits and shapes_only and all(isinstance(v, bool) for v in lits):
            return "a bool array"
        if lits and shapes_only and all(isinstance(v, int) for v in lits):
            return "an integer array"
    return ""
