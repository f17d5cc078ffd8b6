from __future__ import annotations

import ast
from typing import Literal

from stabcheck.rule import Rule, only
from stabcheck.rules.ad._graph import GRADS
from stabcheck.static.context import FileContext
from stabcheck.static.names import PARTIAL



class NonScalarGradient(Rule):
    """## What it does
    Flags `jax.grad`/`jax.value_and_grad` (and `eqx.filter_grad`, `nnx.grad`) applied to a function
    that visibly returns a tuple (`return loss, aux`) without `has_aux=True`, or whose every
    return (its loss, with `has_aux=True`) is an array of rank 1 or more whatever the inputs:
    an added axis (`loss[None]`), `jnp.ravel`/`stack`/`atleast_1d`/`expand_dims`, `.reshape(1)`,
    `.flatten()`. A name bound more than once in its scope (a tuple-returning def in one branch,
    a scalar lambda in the other) is not one function: a guess (`--preview`). The traced and confirm stages report every other non-scalar output they meet
    (shape `(1,)`, a vector) at the transform, from JAX's own error.

    ## Why is this bad?
    `grad` differentiates a scalar. A function that returns `(loss, metrics)` or an array of shape
    `(1,)` makes `grad` raise `TypeError: Gradient only defined for scalar-output functions` on the
    first call; training code written against a single-output loss breaks as soon as an auxiliary
    value is added to its return.

    ## Example
    ```python
    def loss(params, x):
        pred = model(params, x)
        return jnp.mean(pred ** 2), pred

    g = jax.grad(loss)(params, x)   # TypeError
    ```

    ## Use instead
    Declare the auxiliary output, or reduce to a scalar:
    ```python
    (value, pred), g = jax.value_and_grad(loss, has_aux=True)(params, x)
    ```
    """

    code = "STB409"
    name = "non-scalar-gradient"
    severity = "error"
    stages = ("static", "traced", "confirmed")

    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            pred = jnp.tanh(x @ w)
            return jnp.mean(pred ** 2), pred

        grads = jax.grad(loss)(jnp.ones(3), jnp.ones((2, 3)))  # expect: STB409
        """,
        """
        import jax
        import jax.numpy as jnp

        def value_and_grad_real(fun, x, has_aux):
            def real_fun(w):  # bound once: it is the function `grad` gets
                val, aux = fun(w)
                return val.real, aux

            return jax.value_and_grad(real_fun)(x)  # expect: STB409
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.value_and_grad, argnums=0)  # expect: STB409
        def objective(w):
            return (w ** 2).sum(), {"norm": jnp.linalg.norm(w)}
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            return jnp.mean((x @ w) ** 2)[None]

        grads = jax.grad(loss)(jnp.ones(3), jnp.ones((2, 3)))  # expect: STB409
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_gradient
        def clip_grad(x):  # returns (output, vjp) by protocol: the output is the scalar
            return jnp.sum(x), lambda g: (jnp.clip(g, -1.0, 1.0) * jnp.ones_like(x),)

        g = jax.grad(clip_grad)(jnp.ones(3))
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            pred = jnp.tanh(x @ w)
            return jnp.mean(pred ** 2), pred

        (value, pred), grads = jax.value_and_grad(loss, has_aux=True)(jnp.ones(3), jnp.ones((2, 3)))
        """,
        """
        import jax
        import jax.numpy as jnp

        def value_and_grad_real(fun, x, has_aux):
            if has_aux:
                def real_fun(w):
                    val, aux = fun(w)
                    return val.real, aux
            else:
                real_fun = lambda w: fun(w).real
            # which `real_fun` runs is chosen at run time, with `has_aux` to match
            return jax.value_and_grad(real_fun, has_aux=False)(x) if not has_aux else jax.value_and_grad(real_fun, has_aux=True)(x)
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w):
            parts = (w.sum(), (w ** 2).sum())
            return parts[0] + parts[1]

        grads = jax.grad(loss)(jnp.ones(3))
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            return jnp.mean((x @ w) ** 2)[None].sum()

        grads = jax.grad(loss)(jnp.ones(3), jnp.ones((2, 3)))
        """,
    )

    @only(callees=GRADS)
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if node.args:
            self._check(node, node.args[0], node.keywords, ctx)

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: FileContext) -> None:
        for dec in node.decorator_list:
            if ctx.qualname(dec) in GRADS:
                self._check(dec, node, [], ctx)
            elif isinstance(dec, ast.Call) and ctx.qualname(dec.func) in PARTIAL and dec.args and ctx.qualname(dec.args[0]) in GRADS:
                self._check(dec, node, dec.keywords, ctx)

    def _check(self, at: ast.AST, fn: ast.AST, keywords: list[ast.keyword], ctx: FileContext) -> None:
        keywords = [kw for kw in keywords if not (kw.arg == "has_aux" and isinstance(kw.value, ast.Constant) and kw.value.value is False)]
        target = fn if isinstance(fn, (ast.FunctionDef, ast.Lambda)) else None
        confidence: Literal["proven", "guess"] = "proven"
        if target is None and isinstance(fn, ast.Name):
            info = ctx.analysis.resolve(fn, ctx.function)
            target = info.node if info is not None else None
            if target is not None and _bound_more_than_once(fn.id, ctx):
                # `real_fun` is a tuple-returning def in one branch and a scalar lambda in the
                # other: which one `grad` gets is decided at run time
                confidence = "guess"
        if target is None or _custom_gradient(target, ctx):
            return
        name = getattr(target, "name", "a lambda")
        aux = any(kw.arg == "has_aux" for kw in keywords)
        arrays = _array_returns(target, ctx, aux)
        if arrays:
            what = "its loss as " if aux else ""
            self.report(
                ctx,
                at,
                f"`{ctx.text(at)}` differentiates `{name}`, which returns {what}`{ctx.text(arrays[0])}`: an array of rank 1 or more "
                "whatever its input; `grad` needs a scalar output and raises `TypeError: Gradient only defined for scalar-output functions`",
                help="reduce the output to a scalar (`.sum()`, `.reshape(())`, `[0]`), or use `jax.jacobian` for a non-scalar derivative",
                detail=f"{name}:array",
                evidence={"function": name},
                confidence=confidence,
            )
            return
        if aux:
            return  # has_aux given (and not a literal False): a tuple return is declared
        tuples = _tuple_returns(target)
        if not tuples:
            return
        self.report(
            ctx,
            at,
            f"`{ctx.text(at)}` differentiates `{name}`, which returns a tuple of {len(tuples[0].elts)} values without `has_aux=True`; "
            "`grad` needs a scalar output and raises `TypeError: Gradient only defined for scalar-output functions`",
            help="pass `has_aux=True` and return `(loss, aux)`, or return only the scalar loss",
            detail=name,
            evidence={"function": name},
            confidence=confidence,
        )


def _custom_gradient(fn: ast.AST, ctx: FileContext) -> bool:
    """A `@jax.custom_gradient` def returns `(output, vjp)` by protocol: its output is the first."""
    return any(ctx.qualname(d) == "jax.custom_gradient" for d in getattr(fn, "decorator_list", ()))


def _bound_more_than_once(name: str, ctx: FileContext) -> bool:
    """`name` is bound more than once in the scope that defines it (a def in one branch, a
    lambda or another def in the other; a rebinding): the function it names is not one."""
    s = ctx.function
    while s is not None and name not in s.defs:
        s = s.parent
    scope: ast.AST = s.node if s is not None else ctx.tree
    count = 0
    stack = list(scope.body) if isinstance(scope.body, list) else [scope.body]  # type: ignore[attr-defined]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            count += n.name == name
            stack.extend(n.decorator_list)
            continue
        if isinstance(n, ast.Lambda):
            continue
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id == name:
            count += 1
        elif isinstance(n, ast.alias) and (n.asname or n.name.split(".")[0]) == name:
            count += 1
        stack.extend(ast.iter_child_nodes(n))
    return count > 1


# jnp functions whose result has rank 1 or more whatever their (valid) arguments
_RANKED = frozenset(
    f"jax.numpy.{n}" for n in ("atleast_1d", "atleast_2d", "atleast_3d", "ravel", "stack", "concatenate", "hstack", "vstack", "expand_dims", "column_stack")
)


def _returned(fn: ast.AST) -> list[ast.expr] | None:
    """Every value the function returns, or None when one return has no value (or none exist)."""
    if isinstance(fn, ast.Lambda):
        return [fn.body]
    found: list[ast.expr] = []
    stack: list[ast.AST] = list(fn.body)  # type: ignore[attr-defined]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(n, ast.Return):
            if n.value is None:
                return None
            found.append(n.value)
            continue
        stack.extend(ast.iter_child_nodes(n))
    return found or None


def _ranked(e: ast.expr, ctx: FileContext) -> bool:
    """`e` is an array of rank >= 1 whatever its operands: `x[None]`, `jnp.ravel(x)`, `x.reshape(1)`."""
    if isinstance(e, ast.Subscript):
        idx = e.slice.elts if isinstance(e.slice, ast.Tuple) else [e.slice]
        if not any((isinstance(i, ast.Constant) and i.value is None) or ctx.qualname(i) == "jax.numpy.newaxis" for i in idx):
            return False
        # a `None` index adds an axis to an array; a plain name might be a dict with a None key,
        # so the value must visibly be an array: arithmetic, a jnp call, or a slice beside the None
        sliced = any(isinstance(i, ast.Slice) or (isinstance(i, ast.Constant) and i.value is Ellipsis) for i in idx)
        arith = isinstance(e.value, ast.BinOp) or (isinstance(e.value, ast.Call) and (ctx.qualname(e.value.func) or "").startswith("jax.numpy."))
        return sliced or arith
    if not isinstance(e, ast.Call):
        return False
    q = ctx.qualname(e.func) or ""
    if q in _RANKED:
        return True
    if q in ("jax.numpy.array", "jax.numpy.asarray") and e.args and isinstance(e.args[0], (ast.List, ast.Tuple)) and e.args[0].elts:
        return not any(isinstance(x, ast.Starred) for x in e.args[0].elts)
    if isinstance(e.func, ast.Attribute) and not q.startswith(("jax.", "numpy.")) and isinstance(e.func.value, (ast.Name, ast.Call, ast.Subscript, ast.Attribute)):
        if e.func.attr in ("ravel", "flatten") and not e.args and not e.keywords:
            return True
        if e.func.attr == "reshape" and e.args and not e.keywords:
            dims = e.args[0].elts if len(e.args) == 1 and isinstance(e.args[0], ast.Tuple) else e.args
            return bool(dims) and all(isinstance(d, ast.Constant) and type(d.value) is int for d in dims)
    return False


def _array_returns(fn: ast.AST, ctx: FileContext, aux: bool) -> list[ast.expr]:
    """The returned values (their loss parts, with `has_aux`) when EVERY one is visibly of rank >= 1."""
    values = _returned(fn)
    if not values:
        return []
    if aux:
        if not all(isinstance(v, ast.Tuple) and len(v.elts) == 2 and not isinstance(v.elts[0], ast.Starred) for v in values):
            return []
        values = [v.elts[0] for v in values]  # type: ignore[attr-defined]
    return values if all(_ranked(v, ctx) for v in values) else []


def _tuple_returns(fn: ast.AST) -> list[ast.Tuple]:
    """The function's returned tuple displays, when EVERY return it makes is one (else [])."""
    found = _returned(fn) or []
    if all(isinstance(v, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in v.elts) for v in found):
        return found  # type: ignore[return-value]
    return []
