from __future__ import annotations

import ast
from collections import Counter

from stabcheck.finding import Finding
from stabcheck.rule import Rule
from stabcheck.rules.union import _typed
from stabcheck.rules.union._kinds import Exit, Kind, exits, kind_text, kinds_for
from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext
from stabcheck.static.typed import FileTypes


class UnionReturn(Rule):
    """## What it does
    Flags a transformed function (jitted, vmapped, a `lax` body, a Module's `__call__`, or a
    function such code calls with traced arguments) whose `return` statements hand back
    different kinds of value depending on a traced condition: `None` (or a bare `return`, or
    falling off the end) on one path and a value on another, tuples of different lengths, dicts
    with different keys, or an array on one path and a tuple on another.

    ## Why is this bad?
    JAX compiles one program with one output structure. Under `jit` the traced condition
    cannot pick a path at all; under `grad` alone the path is picked eagerly, so the output's
    *type* depends on the data, and whatever consumes it (`lu_solve`, an optimizer, a
    `lax.cond`) breaks for some inputs only. This is the union return type that DispatchDoctor
    reports in Julia.

    ## Example
    ```python
    def factorize(A):
        if jnp.allclose(A, jnp.diag(jnp.diag(A))):
            return jnp.diag(A)
        return lu_factor(A)            # a (lu, piv) tuple on this path

    @jax.jit
    def solve(A, b):
        return apply_factorization(factorize(A), b)
    ```

    ## Use instead
    Return one kind of value on every path (one factorization for every input), or select
    between values of one type with `lax.cond`/`jnp.where`:
    ```python
    def factorize(A):
        return lu_factor(A)
    ```
    Returns that differ only under a *static* condition (a `static_argnames` flag,
    `x is None`, `isinstance`, `x.ndim`) are not flagged: each static value compiles its own
    program.

    ## Options
    - `union-limit` (default 1): how many distinct kinds of return value a function may have
      before this rule fires; raise it to tolerate deliberate unions.
    """

    code = "STB201"
    name = "union-return"
    stages = ("static", "traced")
    options = {"union-limit": 1}
    INVALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax.scipy.linalg import lu_factor

        @jax.jit
        def factorize(A):
            if jnp.allclose(A, jnp.diag(jnp.diag(A))):
                return jnp.diag(A)
            return lu_factor(A)  # expect: STB201
        """,
        """
        import jax
        import jax.numpy as jnp

        def safe_normalize(v):
            n = jnp.linalg.norm(v)
            if n == 0:
                return None  # expect: STB201
            return v / n

        @jax.jit
        def project(params, x):
            d = safe_normalize(x @ params["w"])
            return d * 2.0
        """,
        """
        import jax
        import jax.numpy as jnp
        import optax

        def loss_and_metrics(params, batch):
            logits = batch["x"] @ params["w"]
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
            if loss > 10.0:
                return {"loss": loss}
            return {"loss": loss, "acc": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}  # expect: STB201

        metrics_fn = jax.jit(loss_and_metrics)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.vmap
        def clip_row(row):
            m = jnp.max(jnp.abs(row))
            if m > 1.0:
                return row / m, m
            return jnp.clip(row, -1.0, 1.0)  # expect: STB201
        """,
    )
    VALID = (
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnames="return_attention")
        def attend(q, k, v, return_attention=False):
            w = jax.nn.softmax(q @ k.T / jnp.sqrt(q.shape[-1]))
            out = w @ v
            if return_attention:
                return out, w
            return out
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        def scores(q, k, with_logits):
            logits = q @ k.T
            if with_logits:
                return jax.nn.softmax(logits), logits
            if logits.sum() > 1e6:
                return jnp.zeros_like(logits)
            return jax.nn.softmax(logits)

        attend = jax.jit(scores, static_argnums=2)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def apply(params, x, mask=None):
            y = x @ params["w"]
            if mask is None:
                return y
            return jnp.where(mask, y, 0.0)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax.scipy.linalg import lu_factor

        def factorize(A):
            if jnp.allclose(A, jnp.diag(jnp.diag(A))):
                return jnp.diag(A)
            return lu_factor(A)

        # factorize is never transformed here: the traced stage, not this rule, judges it
        diag_or_lu = factorize(jnp.eye(3))
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def huber(r, delta):
            a = jnp.abs(r)
            if r.ndim == 0:
                return jnp.where(a < delta, 0.5 * r**2, delta * (a - 0.5 * delta))
            return jnp.mean(jnp.where(a < delta, 0.5 * r**2, delta * (a - 0.5 * delta)), axis=-1)
        """,
        """
        import jax
        import jax.numpy as jnp

        def combine_masks(*masks):
            masks_list = [m for m in masks if m is not None]
            if not masks_list:
                return None
            return jnp.logical_and.reduce(jnp.stack(masks_list))

        @jax.jit
        def attend(q, k, mask):
            return jnp.where(combine_masks(mask, q > 0), q @ k.T, -1e9)
        """,
        """
        import jax
        import jax.numpy as jnp

        def step(carry, x):
            h = jnp.tanh(carry @ x)
            if x.shape[0] > 4:
                return h, h.sum()
            return h, 0.0

        def run(h0, xs):
            return jax.lax.scan(step, h0, xs)
        """,
    )

    @classmethod
    def typed_check(cls, tree: ast.Module, source: bytes, path: str, types: FileTypes) -> list[Finding]:
        return _typed.inferred_unions(cls, tree, source, path, types)

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: FileContext) -> None:
        self._check(node, ctx)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef, ctx: FileContext) -> None:
        self._check(node, ctx)

    def _check(self, node: ast.FunctionDef | ast.AsyncFunctionDef, ctx: FileContext) -> None:
        info = ctx.analysis.functions.get(node)
        if info is None or not info.transformed:
            return
        found = exits(node)
        if len(found) < 2:
            return
        kinds_engine = kinds_for(ctx.analysis)
        typed: list[tuple[Exit, Kind]] = []
        for e in found:
            k = kinds_engine.of(e.value, info)
            if k is not None:
                typed.append((e, _norm(k)))
        known = {k for _, k in typed if k != "some"}
        if "some" in {k for _, k in typed} and known != {"none"}:
            typed = [(e, k) for e, k in typed if k != "some"]  # unknown structure: judge the rest
        distinct = Counter(k for _, k in typed)
        limit = int(ctx.config.union_limit) if getattr(ctx.config, "union_limit", None) else 1
        if len(distinct) <= limit:
            return
        usual = self._usual(typed, distinct)
        reported: set[int] = set()
        for e, k in typed:
            if k == usual or id(e.node) in reported:
                continue
            if not self._traced_guard(e, info, ctx):
                continue  # reached under static conditions only: each value compiles its own program
            reported.add(id(e.node))
            what = "falls off the end and returns `None`" if e.value is None and not isinstance(e.node, ast.Return) else f"returns {kind_text(k)}"
            self.report(
                ctx,
                e.node,
                message=(
                    f"`{info.qualname}` {what} here but {kind_text(usual)} elsewhere, chosen by a traced value; "
                    "the output type depends on the data, so `jit` cannot compile it and consumers break for some inputs"
                ),
                help="return one kind of value on every path, or choose between values of one type with `lax.cond`/`jnp.where`",
                function=info.qualname,
                detail=f"{info.qualname}:{kind_text(k)}|{kind_text(usual)}",
                evidence={"kinds": sorted(kind_text(x) for x in distinct)},
                # the guard must be proven traced: a field of `self`, an `is_array(x)` helper,
                # a `None`-ness or shape test is a static fact choosing one structure per compile
                confidence="proven" if any(_proven_test(g, info, ctx) for g in e.guards) else "guess",
            )

    @staticmethod
    def _usual(typed: list[tuple[Exit, Kind]], distinct: Counter[Kind]) -> Kind:
        """The majority kind; on a tie, the first non-None kind (so `None` is the odd one)."""
        top = max(distinct.values())
        tied = [k for _, k in typed if distinct[k] == top]
        for k in tied:
            if k != "none":
                return k
        return tied[0]

    @staticmethod
    def _traced_guard(e: Exit, info: FunctionInfo, ctx: FileContext) -> bool:
        return any(_traced_test(g, info, ctx) for g in e.guards)


def _traced_test(test: ast.expr, info: FunctionInfo, ctx: FileContext) -> bool:
    """A condition whose truth depends on a traced array (a container's emptiness does not)."""
    if isinstance(test, ast.BoolOp):
        return any(_traced_test(v, info, ctx) for v in test.values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _traced_test(test.operand, info, ctx)
    return ctx.analysis.is_traced_array(test, info)


def _proven_test(test: ast.expr, info: FunctionInfo, ctx: FileContext) -> bool:
    if isinstance(test, ast.BoolOp):
        return any(_proven_test(v, info, ctx) for v in test.values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _proven_test(test.operand, info, ctx)
    return ctx.analysis.proves_traced(test, info)


def _norm(k: Kind) -> Kind:
    return "leaf" if k == "str" else k


