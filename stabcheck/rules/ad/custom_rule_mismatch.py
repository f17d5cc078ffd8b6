from __future__ import annotations

import ast

from stabcheck.rule import Rule
from stabcheck.rules.ad._graph import ADGraph, CustomVJP
from stabcheck.rules.union._kinds import explicit_dtype
from stabcheck.static.context import FileContext

_ARRAY_PREFIXES = ("jax.numpy.", "jax.lax.", "jax.nn.", "jax.scipy.", "numpy.")


class CustomRuleMismatch(Rule):
    """## What it does
    Flags the `bwd` rule of a `jax.custom_vjp` function (a `def` or a `lambda` given to
    `f.defvjp(fwd, bwd)`) that returns something other than a tuple with one cotangent per
    differentiable primal argument (the primal's positional arguments minus
    `nondiff_argnums`): a bare array, or a tuple of the wrong length. Also a `jax.custom_jvp`
    rule (`@f.defjvp`, `f.defjvp(rule)`) that returns its tangent cast to a written dtype
    (`(cos(x) * dx).astype(jnp.float16)`) and its primal output cast to another or not cast, where
    both are computed from the same inputs (otherwise a guess: the primal may already have that
    dtype): JAX needs the tangent in the primal output's dtype.

    ## Why is this bad?
    JAX matches the cotangents to the primal's arguments by structure. A wrong structure is
    only noticed when the function is differentiated, as
    `TypeError: Custom VJP bwd rule must produce an output with the same container (pytree)
    structure as the args tuple of the primal function`, often far from the rule. A `custom_jvp`
    rule's tangent of another dtype raises `TypeError: Custom JVP rule must produce primal and
    tangent outputs with corresponding shapes and dtypes` under `jvp` and `grad` alike.

    ## Example
    ```python
    @jax.custom_vjp
    def interpolate(values, points):
        return lu_solve(lu_factor(gram(points)), values)

    def _interpolate_bwd(res, g):
        (F,) = res
        return (lu_solve(F, g, trans=1),)  # one cotangent for two arguments
    ```

    ## Use instead
    One cotangent per differentiable argument, in order; `None` stands for a zero cotangent:
    ```python
    def _interpolate_bwd(res, g):
        (F,) = res
        return lu_solve(F, g, trans=1), None
    ```
    """

    code = "STB405"
    name = "custom-rule-mismatch"
    stages = ("static", "traced", "confirmed")
    INVALID = (
        """
        import jax
        from jax.scipy.linalg import lu_factor, lu_solve

        @jax.custom_vjp
        def interpolate(values, points):
            return lu_solve(lu_factor(gram(points)), values)

        def _interpolate_fwd(values, points):
            F = lu_factor(gram(points))
            return lu_solve(F, values), (F,)

        def _interpolate_bwd(res, g):
            (F,) = res
            return (lu_solve(F, g, trans=1),)  # expect: STB405

        interpolate.defvjp(_interpolate_fwd, _interpolate_bwd)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def scaled(x, scale):
            return x * scale

        scaled.defvjp(
            lambda x, scale: (x * scale, (x, scale)),
            lambda res, g: g * res[1],  # expect: STB405
        )
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.custom_vjp, nondiff_argnums=(0,))
        def clip_gradient(bound, x):
            return x

        def clip_fwd(bound, x):
            return x, None

        def clip_bwd(bound, _, g):
            return (None, jnp.clip(g, -bound, bound))  # expect: STB405

        clip_gradient.defvjp(clip_fwd, clip_bwd)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_jvp
        def half_sin(x):
            return jnp.sin(x)

        @half_sin.defjvp
        def _half_sin_jvp(primals, tangents):
            (x,), (dx,) = primals, tangents
            return half_sin(x), (jnp.cos(x) * dx).astype(jnp.float16)  # expect: STB405
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def scale(x, w, dims):
            return x * w

        def scale_fwd(x, w, dims):
            return scale(x, w, dims), (x, w)

        def scale_bwd(res, g):
            grads = res[1] * g, res[0] * g
            return grads + (None,)  # tuples concatenate: three cotangents
        scale.defvjp(scale_fwd, scale_bwd)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_jvp
        def half_sin(x):
            return jnp.sin(x)

        @half_sin.defjvp
        def _half_sin_jvp(primals, tangents):
            (x,), (dx,) = primals, tangents
            y = half_sin(x)
            return y, (jnp.cos(x) * dx).astype(y.dtype)
        """,
        """
        import jax
        from jax.scipy.linalg import lu_factor, lu_solve

        @jax.custom_vjp
        def interpolate(values, points):
            return lu_solve(lu_factor(gram(points)), values)

        def _interpolate_fwd(values, points):
            F = lu_factor(gram(points))
            return lu_solve(F, values), (F,)

        def _interpolate_bwd(res, g):
            (F,) = res
            return lu_solve(F, g, trans=1), None

        interpolate.defvjp(_interpolate_fwd, _interpolate_bwd)
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.custom_vjp, nondiff_argnums=(0,))
        def clip_gradient(bound, x):
            return x

        def clip_fwd(bound, x):
            return x, None

        def clip_bwd(bound, _, g):
            return (jnp.clip(g, -bound, bound),)

        clip_gradient.defvjp(clip_fwd, clip_bwd)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def f(x, y):
            return x * y

        def f_bwd(res, g):
            x, y = res
            grads = (g * y, g * x)
            return grads

        def f_fwd(x, y):
            return f(x, y), (x, y)

        f.defvjp(f_fwd, f_bwd)
        """,
    )

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: FileContext) -> None:
        for dec in node.decorator_list:
            if isinstance(dec, ast.Attribute) and dec.attr == "defjvp":
                self._jvp_rule(node, ctx.text(dec.value), ctx)

    def _jvp_rule(self, rule: ast.FunctionDef, primal: str, ctx: FileContext) -> None:
        """A `custom_jvp` rule whose tangent is cast to a written dtype its primal output lacks."""
        for value in self._returns(rule):
            if not (isinstance(value, ast.Tuple) and len(value.elts) == 2):
                continue
            out, tangent = value.elts
            dt = explicit_dtype(tangent, ctx.names)
            if dt is None:
                continue
            dp = explicit_dtype(out, ctx.names)
            if dp == dt:
                continue
            same = dp is not None or _shared_inputs(out, tangent, ctx)
            what = f"cast to {dp}" if dp is not None else f"not cast (`{ctx.text(out)}`)"
            self.report(
                ctx,
                tangent,
                f"`{rule.name}`, the `custom_jvp` rule of `{primal}`, returns its tangent cast to {dt} and its primal output {what}; "
                "JAX needs the tangent in the primal output's dtype and raises TypeError: Custom JVP rule must produce primal and "
                "tangent outputs with corresponding shapes and dtypes",
                help="cast the tangent to the primal output's dtype (`.astype(primal_out.dtype)`), or cast both",
                detail=f"{primal}:{rule.name}",
                evidence={"tangent_dtype": dt, "primal_dtype": dp or ""},
                function=rule.name,
                confidence="proven" if same else "guess",
            )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "defjvp" and len(node.args) == 1:
            info = ctx.analysis.resolve(node.args[0], ctx.function)
            if info is not None and isinstance(info.node, ast.FunctionDef):
                self._jvp_rule(info.node, ctx.text(node.func.value), ctx)
            return
        if not (isinstance(node.func, ast.Attribute) and node.func.attr == "defvjp"):
            return
        graph = ADGraph.of(ctx.analysis)
        cv = next((c for c in graph.custom.values() if c.defvjp is node), None)
        if cv is None or cv.bwd is None or cv.primal is None or cv.nondiff_argnums is None or cv.nondiff_argnames is None:
            return
        primal = cv.primal.node
        args = primal.args
        if args.vararg is not None:
            return
        positional = [a.arg for a in (*args.posonlyargs, *args.args)]
        nums, names = cv.nondiff_argnums, cv.nondiff_argnames
        diff = [p for i, p in enumerate(positional) if i not in nums and i - len(positional) not in nums and p not in names]
        bwd = cv.bwd_info
        if bwd is None:
            return
        bwd_name = getattr(bwd.node, "name", None) or "the bwd lambda"
        for value in self._returns(bwd.node):
            got = self._arity(value, bwd.node, ctx)
            if got is None or got == len(diff):
                continue
            shown = ", ".join(f"`{p}`" for p in diff)
            if got == -1:
                what = "a single array, not a tuple"
            else:
                what = f"{got} cotangent{'s' if got != 1 else ''}"
            self._emit(ctx, value, cv, bwd_name, what, len(diff), shown)

    def _emit(self, ctx: FileContext, value: ast.AST, cv: CustomVJP, bwd_name: str, what: str, n: int, shown: str) -> None:
        name = f"`{bwd_name}`" if not bwd_name.startswith("the ") else bwd_name
        self.report(
            ctx,
            value,
            f"{name} returns {what}, but the `custom_vjp` primal `{cv.name}` has {n} differentiable argument{'s' if n != 1 else ''} ({shown}); "
            "differentiating it raises TypeError: Custom VJP bwd rule must produce an output with the same container (pytree) structure as the args tuple of the primal function",
            help=f"return a tuple with one cotangent per differentiable argument of `{cv.name}`, in order (`None` for a zero cotangent)",
            detail=f"{cv.name}:{bwd_name}",
            evidence={"expected": n, "returned": what},
        )

    @staticmethod
    def _returns(fn: ast.AST) -> list[ast.AST]:
        if isinstance(fn, ast.Lambda):
            return [fn.body]
        out: list[ast.AST] = []
        stack = list(getattr(fn, "body", []))
        while stack:
            n = stack.pop()
            if isinstance(n, ast.Return) and n.value is not None:
                out.append(n.value)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            stack.extend(ast.iter_child_nodes(n))
        return out

    def _arity(self, value: ast.AST, fn: ast.AST, ctx: FileContext) -> int | None:
        """Tuple length of a return value; -1 for a certain non-tuple array; None if unknown."""
        if isinstance(value, (ast.Tuple, ast.List)):
            if any(isinstance(e, ast.Starred) for e in value.elts):
                return None
            return len(value.elts)
        if isinstance(value, ast.BinOp) and isinstance(value.op, (ast.Add, ast.Mult)):
            left, right = self._arity(value.left, fn, ctx), self._arity(value.right, fn, ctx)
            if isinstance(value.op, ast.Add) and left is not None and right is not None and left >= 0 and right >= 0:
                return left + right  # `grads + (None,)`: tuples concatenate
            if any(side is not None and side >= 0 for side in (left, right)) or _tuple_call(value.left, ctx) or _tuple_call(value.right, ctx):
                return None  # a tuple joined to something unknown, or repeated
            return -1
        if isinstance(value, (ast.BinOp, ast.UnaryOp)):
            return -1
        if isinstance(value, ast.Call):
            q = ctx.qualname(value.func) or ""
            if q.startswith(_ARRAY_PREFIXES) and not q.endswith((".split", ".unstack", ".meshgrid", ".divmod", ".broadcast_arrays", ".atleast_1d", ".linalg.eigh", ".linalg.qr", ".linalg.svd", ".linalg.slogdet")):
                return -1
            return None
        if isinstance(value, ast.Name):
            assigned = [n.value for n in ast.walk(fn) if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == value.id for t in n.targets)]
            if len(assigned) == 1 and isinstance(assigned[0], (ast.Tuple, ast.List, ast.BinOp, ast.UnaryOp)):
                return self._arity(assigned[0], fn, ctx)
        return None


def _tuple_call(e: ast.AST, ctx: FileContext) -> bool:
    return isinstance(e, ast.Call) and ctx.qualname(e.func) in ("builtins.tuple", "builtins.list")


def _shared_inputs(a: ast.AST, b: ast.AST, ctx: FileContext) -> bool:
    """Both expressions read one of the same names (`half_sin(x)` and `(cos(x) * dx).astype(...)`):
    the cast visibly changes the dtype of one output of the same computation."""
    aliases = set(ctx.names.aliases)
    callees = {id(n.func) for e in (a, b) for n in ast.walk(e) if isinstance(n, ast.Call)}

    def read(e: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(e) if isinstance(n, ast.Name) and n.id not in aliases and id(n) not in callees}

    return bool(read(a) & read(b))
