from __future__ import annotations

import ast

from stabcheck.finding import Confidence, Span
from stabcheck.rule import Rule, only
from stabcheck.rules.tracer_leaks._values import concrete_here
from stabcheck.static.analysis import CONTAINER_NODES
from stabcheck.static.context import FileContext

_BOOL_OWNERS = (ast.If, ast.While, ast.Assert, ast.IfExp)
_SYMBOLS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


class BranchOnTracer(Rule):
    """## What it does
    Flags Python control flow on a traced value inside a staged-out transform: `if`, `while`,
    `assert`, a ternary, `and`/`or`/`not`, a comprehension filter, `bool()` or a chained
    comparison (`0 < x < 1` is `0 < x and x < 1`) whose operand is a traced array (a parameter of
    a `jit`/`vmap`-ed function, a `lax.scan`/`cond` body, a value computed from one, or, under
    `jit` or in a `lax` body, any jnp or `jax.random` result, even on constants). A parameter with
    a Python default that no visible call passes may be a Python value there: a test of it is a
    guess. A test of values the code has just shown concrete is not flagged:
    after `if isinstance(s, core.Tracer): return lax.cond(...)` (or under `if not
    isinstance(s, core.Tracer):`), `if s > 0:` sees a Python number; so does a check under
    `if jax.config.jax_disable_jit:`, which runs only where nothing is staged out. `extra or {}` (an `or`
    whose default is a container display) is a guess: the code expects a dict or None there, whose
    truth value is Python's. So is a test under a static configuration of the function: `if
    validate:` on a static parameter, `if arg is None:`, or a mode string (`elif loop ==
    "python":`, a debugging loop that only eager callers choose): which branch runs is the
    caller's choice, which the analysis does not follow.

    ## Why is this bad?
    Python needs a concrete `True` or `False`, but under `jit` the value is an abstract tracer:
    the call raises `TracerBoolConversionError`. Under `grad` alone the branch runs eagerly, so
    the bug hides until the function is jitted, and a function that returns different types on
    each branch cannot be compiled at all.

    ## Example
    ```python
    @jax.jit
    def relu(x):
        if x > 0:
            return x
        return jnp.zeros_like(x)
    ```

    ## Use instead
    Select on the value with `jnp.where`, `lax.select` or `lax.cond`:
    ```python
    @jax.jit
    def relu(x):
        return jnp.where(x > 0, x, 0.0)
    ```
    Or, if the argument really is a configuration value, mark it static
    (`jax.jit(f, static_argnums=1)`).

    Only operands the analysis proves traced are reported: a parameter of a visible transform,
    what `jnp`/`lax` compute from one, an array field its class declares. Python values under a
    transform are not: static pytree fields and aux data (`eqx.Module` non-array fields, also
    after `eqx.tree_at`; `register_pytree_node_class` aux data; `register_dataclass` meta fields;
    `flax.struct.field(pytree_node=False)`), items of containers of literals, sentinel tests,
    guard helpers (`eqx.is_array(x)`, `isinstance` wrappers), `eval_shape` results, arguments
    a `vmap` does not map (`in_axes` None) or a `shard_map` does not shard (`in_specs` None):
    both pass the Python value through. An operand of unknown kind is a guess, shown with
    `--preview`.
    """

    code = "STB101"
    name = "branch-on-tracer"
    stages = ("static", "traced", "confirmed")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def ramp(x):
            return jnp.piecewise(x, [x < 0, 0 < x < 1], [0.0, lambda v: v, 1.0])  # expect: STB101

        @jax.jit
        def maybe_flip(s):
            u = jax.random.uniform(jax.random.key(0))
            if u < 0.5:  # expect: STB101
                return -s
            return s
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def relu(x):
            if x > 0:  # expect: STB101
                return x
            return jnp.zeros_like(x)
        """,
        """
        import equinox as eqx
        import jax

        class SaveAt(eqx.Module):
            ts: jax.Array
            dense: bool = False

        @eqx.filter_jit
        def solve(y0, saveat: SaveAt):
            site = {"type": "sample", "value": saveat.ts}
            if saveat.ts[0] > 0:  # expect: STB101
                return y0 * 2
            if site["value"].sum() > 0:  # expect: STB101
                return y0
            return -y0
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnums=1)
        def clip_norm(g, max_norm):
            norm = jnp.linalg.norm(g)
            return g * max_norm / norm if norm > max_norm else g  # expect: STB101
        """,
        """
        import jax
        from jax import lax

        def cumulative(xs):
            def body(carry, x):
                while carry < 10:  # expect: STB101
                    carry = carry + x
                return carry, carry
            return lax.scan(body, 0.0, xs)
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            err = jnp.mean((x @ w) ** 2)
            assert err >= 0  # expect: STB101
            return err

        loss_jit = jax.jit(loss)
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def ramp(x):
            return jnp.piecewise(x, [x < 0, (0 < x) & (x < 1)], [0.0, lambda v: v, 1.0])

        def in_range(i, n):
            return 0 <= i < n  # Python ints: no transform here
        """,
        """
        from functools import partial
        import jax

        class Trainer:
            # a negative index counts from the end of the positional parameters: `mode` (DIffUCO)
            @partial(jax.jit, static_argnums=(0, -1))
            def sample(self, params, key, mode):
                if mode == "train":
                    return params * 2
                return params
        """,
        """
        import functools
        import jax
        from jax.sharding import PartitionSpec as P

        mesh = jax.make_mesh((1,), ("x",))

        # `None` in `in_specs`: the mesh's Python int reaches the body as it is
        @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), None), out_specs=P())
        def attend(q, cp_size):
            if cp_size > 1:
                return q * 2
            return q
        """,
        """
        import equinox as eqx
        import jax

        class SaveAt(eqx.Module):
            ts: jax.Array
            dense: bool = False

        @eqx.filter_jit
        def solve(y0, t0, saveat: SaveAt):
            saveat = eqx.tree_at(lambda s: s.ts, saveat, saveat.ts + t0)
            if saveat.dense:  # a static field, also after tree_at
                return y0 * 2
            return y0 + saveat.ts
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp
        from flax import struct

        @jax.tree_util.register_pytree_node_class
        class Irreps:
            def __init__(self, array, irreps):
                self.array, self.irreps = array, irreps

            def tree_flatten(self):
                return (self.array,), self.irreps

            @classmethod
            def tree_unflatten(cls, irreps, children):
                return cls(children[0], irreps)

        @struct.dataclass
        class Config:
            scale: jax.Array
            mode: str = struct.field(pytree_node=False, default="sum")

        @jax.jit
        def reduce(x: Irreps, cfg: Config):
            if x.irreps == "0e" and cfg.mode == "sum":  # aux data, a pytree_node=False field
                return jnp.sum(x.array) * cfg.scale
            return x.array
        """,
        """
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        _SENTINEL = object()

        @jax.jit
        def trace(x, state=_SENTINEL):
            sites = {"a": {"type": "sample", "value": x}}
            site = sites["a"]
            if site["type"] == "sample" and state == _SENTINEL:  # a literal, a sentinel test
                state = jnp.zeros_like(x)
            if eqx.is_array(state):  # a guard helper returns a Python bool
                x = x + state
            out = jax.eval_shape(lambda v: v * 2, x)
            if out.shape[0] > 2:  # eval_shape gives shapes, not tracers
                return x[:2]
            return x
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def relu(x):
            return jnp.where(x > 0, x, 0.0)
        """,
        """
        from functools import partial
        import jax

        @partial(jax.jit, static_argnames="training")
        def dropout(x, key, training):
            if not training:
                return x
            if x.ndim > 1 and x.shape[0] == 0:
                return x
            keep = jax.random.bernoulli(key, 0.9, x.shape)
            return x * keep / 0.9
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            if jnp.any(x < 0):  # grad alone runs eagerly: fine
                x = jnp.abs(x)
            return jnp.sum(w * x)

        g = jax.grad(loss)
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.vmap, in_axes=(0, None))
        def damping(r, order):
            g = jnp.exp(-r)
            if order >= 8:  # unmapped (in_axes None): a Python int
                g = g * (1.0 + r)
            return g
        """,
        """
        import jax

        @jax.jit
        def apply(params, x, mask=None):
            if mask is not None:
                x = x * mask
            if isinstance(params, dict):
                x = x @ params["w"]
            return x
        """,
    )

    @only(inside="abstract")
    def visit_If(self, node: ast.If, ctx: FileContext) -> None:
        self._test(node.test, ctx, "`if`")

    @only(inside="abstract")
    def visit_While(self, node: ast.While, ctx: FileContext) -> None:
        self._test(node.test, ctx, "`while`")

    @only(inside="abstract")
    def visit_Assert(self, node: ast.Assert, ctx: FileContext) -> None:
        self._test(node.test, ctx, "`assert`")

    @only(inside="abstract")
    def visit_IfExp(self, node: ast.IfExp, ctx: FileContext) -> None:
        self._test(node.test, ctx, "a conditional expression")

    @only(inside="abstract")
    def visit_comprehension(self, node: ast.comprehension, ctx: FileContext) -> None:
        for cond in node.ifs:
            self._test(cond, ctx, "a comprehension filter")

    @only(inside="abstract")
    def visit_BoolOp(self, node: ast.BoolOp, ctx: FileContext) -> None:
        if not self._owned(node, ctx):
            # `extra or {}`: the code expects a container or None, whose truth value is Python's
            default = isinstance(node.op, ast.Or) and _container_display(node.values[-1])
            for v in node.values[:-1]:  # `a or b` calls bool(a), not bool(b)
                self._test(v, ctx, "`and`/`or`", "guess" if default else "proven")

    @only(inside="abstract")
    def visit_UnaryOp(self, node: ast.UnaryOp, ctx: FileContext) -> None:
        if isinstance(node.op, ast.Not) and not self._owned(node, ctx):
            self._test(node.operand, ctx, "`not`")

    @only(inside="abstract")
    def visit_Compare(self, node: ast.Compare, ctx: FileContext) -> None:
        """`0 < x < 1` is `0 < x and x < 1`: Python calls bool() on every comparison but the last
        (jax-ml/jax#7969, a chained condition for `jnp.piecewise`)."""
        if len(node.ops) < 2 or any(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)) for op in node.ops):
            return
        sides = [node.left, *node.comparators]
        for i in range(len(node.ops) - 1):
            pair = sides[i : i + 2]
            # a comparison with a traced value is a traced bool (a bare parameter, which
            # `is_traced_array` leaves open as a possible pytree, compares only as an array)
            traced = next((x for x in pair if not isinstance(x, CONTAINER_NODES) and ctx.is_traced(x) and not concrete_here(x, ctx)), None)
            if traced is None:
                continue
            text = f"{ctx.text(pair[0])} {_SYMBOLS.get(type(node.ops[i]), '?')} {ctx.text(pair[1])}"
            self.report(
                ctx,
                node,
                f"`{text}` in `{ctx.text(node)}` is a traced value, but a chained comparison calls bool() on it (`a < b < c` is `a < b and b < c`); under `jit` this raises TracerBoolConversionError",
                help="combine the comparisons with `&` (`(a < b) & (b < c)`), or use `jnp.logical_and`",
                detail=text,
                operands=(traced,),
                span=Span(pair[0].lineno, pair[0].col_offset + 1, pair[1].end_lineno, (pair[1].end_col_offset or 0) + 1),
            )
            return

    @only(inside="abstract", callees=("builtins.bool",))
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if len(node.args) == 1:
            self._test(node.args[0], ctx, "`bool()`")

    @staticmethod
    def _owned(node: ast.AST, ctx: FileContext) -> bool:
        """True when an enclosing test already evaluates `node` in a boolean context."""
        parent = ctx.parent
        if isinstance(parent, _BOOL_OWNERS) and parent.test is node:
            return True
        if isinstance(parent, ast.comprehension) and node in parent.ifs:
            return True
        return isinstance(parent, ast.BoolOp) or (isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.Not))

    def _test(self, expr: ast.expr, ctx: FileContext, via: str, confidence: Confidence = "proven") -> None:
        if isinstance(expr, ast.BoolOp):
            for v in expr.values:
                self._test(v, ctx, via, confidence)
            return
        if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
            self._test(expr.operand, ctx, via, confidence)
            return
        if not ctx.in_abstract or not ctx.is_traced_array(expr) or concrete_here(expr, ctx):
            return
        text = ctx.text(expr)
        self.report(
            ctx,
            expr,
            f"`{text}` is a traced value, but {via} needs a concrete Python bool; under `jit` this raises TracerBoolConversionError",
            help="select with `jnp.where`/`lax.select`/`lax.cond`, or make the argument static (`static_argnums`)",
            detail=text,
            operands=(expr,),
            confidence=confidence,
        )


def _container_display(e: ast.AST) -> bool:
    """A list, tuple, dict or set display, or `dict()`/`list()`/`tuple()`/`set()`."""
    if isinstance(e, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
        return True
    return isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in ("dict", "list", "tuple", "set") and not e.args

