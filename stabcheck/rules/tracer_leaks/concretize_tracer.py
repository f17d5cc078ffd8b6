from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.tracer_leaks._values import python_sequence, traced_value
from stabcheck.static.analysis import STATIC_JAX
from stabcheck.static.context import FileContext

_CASTS = {"builtins.int": "`int()`", "builtins.float": "`float()`", "builtins.complex": "`complex()`"}
_NUMPY = frozenset({"numpy.asarray", "numpy.array", "numpy.asanyarray", "numpy.ascontiguousarray"})
# jnp constructors whose *size* arguments must be concrete: name -> (positions, keywords)
_SIZED: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "jax.numpy.arange": ((0, 1, 2), ("start", "stop", "step")),
    "jax.numpy.zeros": ((0,), ("shape",)),
    "jax.numpy.ones": ((0,), ("shape",)),
    "jax.numpy.empty": ((0,), ("shape",)),
    "jax.numpy.full": ((0,), ("shape",)),
    "jax.numpy.eye": ((0, 1), ("N", "M")),
    "jax.numpy.identity": ((0,), ("n",)),
    "jax.numpy.tri": ((0, 1), ("N", "M")),
    "jax.numpy.linspace": ((2,), ("num",)),
    "jax.nn.one_hot": ((1,), ("num_classes",)),
    # samplers: the shape of the draw (jax-ml/jax#648: `random.normal(key, (n_samps,))`)
    **{f"jax.random.{n}": ((1,), ("shape",)) for n in ("normal", "uniform", "exponential", "laplace", "logistic", "gumbel", "cauchy", "rademacher", "maxwell", "randint", "bits")},
    **{f"jax.random.{n}": ((2,), ("shape",)) for n in ("bernoulli", "gamma", "loggamma", "poisson", "t", "dirichlet")},
    **{f"jax.random.{n}": ((3,), ("shape",)) for n in ("truncated_normal", "beta", "categorical")},
    "jax.random.split": ((1,), ("num",)),
}
# what tracing raises for a traced size, by JAX 0.10 (a shape: TypeError; a count: Concretization)
_SIZE_ERRORS = {
    "jax.numpy.arange": "ConcretizationTypeError",
    "jax.numpy.linspace": "ConcretizationTypeError",
    "jax.nn.one_hot": "ConcretizationTypeError",
    "jax.random.split": "TypeError",
}
_SHAPE_ERROR = 'TypeError ("Shapes must be 1D sequences of concrete values of integer type")'
_JITS = frozenset({"jax.jit", "equinox.filter_jit", "jax.pmap"})


class ConcretizeTracer(Rule):
    """## What it does
    Flags code inside a staged-out transform (`jit`, `vmap`, a `lax` body, ...) that needs the
    concrete value of a traced array: `int()`, `float()`, `complex()`, `.item()`, `.tolist()`,
    `np.asarray()`/`np.array()`, `range()` of a traced value, `jnp.arange`/`zeros`/`ones`/
    `full`/`eye`/`linspace`/`jax.nn.one_hot`, a `jax.random` sampler's `shape` or `split`'s `num`
    with a traced size or a traced dimension in a shape tuple (or a size computed with a jnp op
    on static values, such as `jnp.add(x.size, 1)`, `jnp.array(n)` or `jnp.maximum(span / dt, 1)`:
    a tracer under `jit` even on constants; that finding is at the jnp op, the line to change), indexing a Python list or tuple (`x.shape` included) with a traced index,
    and slicing a traced array with a traced bound (`x[:n]`, `x.at[:pos].get()`).

    ## Why is this bad?
    Under `jit` a traced value has a shape and a dtype but no value. Turning it into a Python
    number, a NumPy array or a shape raises `ConcretizationTypeError`,
    `TracerIntegerConversionError`, `TracerArrayConversionError` or (a shape) `TypeError` when
    the function is traced. Under `grad` alone it happens to work, so the bug surfaces only once the code is
    jitted.

    ## Example
    ```python
    @jax.jit
    def accuracy(logits, labels):
        return float(jnp.mean(jnp.argmax(logits, -1) == labels))
    ```

    ## Use instead
    Keep the value an array inside the transform and convert after it returns, or make the
    argument static when it really is a size (`static_argnums`):
    ```python
    @jax.jit
    def accuracy(logits, labels):
        return jnp.mean(jnp.argmax(logits, -1) == labels)

    acc = float(accuracy(logits, labels))
    ```
    """

    code = "STB102"
    name = "concretize-tracer"
    stages = ("static", "traced", "confirmed")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax import random

        @jax.jit
        def sample(key, n_samps, x0):
            steps = random.normal(key, (n_samps,))  # expect: STB102
            return x0 + jnp.cumsum(0.1 * steps)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def custom_ones(arr):
            count = jnp.add(arr.size, 1)  # expect: STB102
            return jnp.ones((count,))
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def accuracy(logits, labels):
            return float(jnp.mean(jnp.argmax(logits, -1) == labels))  # expect: STB102
        """,
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        def train_step(params, batch):
            loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
            history = np.asarray(loss)  # expect: STB102
            return loss, loss.item()  # expect: STB102

        step = jax.jit(train_step)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def positions(tokens, length):
            pos = jnp.arange(length)  # expect: STB102
            return tokens + jax.nn.one_hot(pos, tokens.shape[-1])
        """,
        """
        import jax
        import jax.numpy as jnp

        ACTIVATIONS = [jax.nn.relu, jax.nn.gelu, jnp.tanh]

        @jax.vmap
        def mixed(x, which):
            return ACTIVATIONS[which](x)  # expect: STB102

        @jax.jit
        def last_dim(x, axis):
            return jnp.ones(3) * x.shape[axis]  # expect: STB102
        """,
        """
        from jax import lax

        def power_sum(x, n):
            def body(i, acc):
                for _ in range(i):  # expect: STB102
                    acc = acc * x
                return acc
            return lax.fori_loop(0, n, body, x)
        """,
        """
        import jax

        @jax.jit
        def take_prefix(x, pos):
            head = x[:pos]  # expect: STB102
            return x.at[pos:].set(0.0), head  # expect: STB102
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp
        from functools import partial
        from jax import random

        @partial(jax.jit, static_argnums=1)
        def sample(key, n_samps, x0):
            steps = random.normal(key, (n_samps,))  # n_samps is static
            return x0 + jnp.cumsum(0.1 * steps)

        @jax.jit
        def flips(key, x):
            return random.bernoulli(key, 0.5, x.shape)  # a shape is static
        """,
        """
        import jax
        import jax.numpy as jnp

        def inner(nw, x, m):
            return jnp.arange(nw + 1).sum() * x + m

        def outer(lik, xs, ms):
            # axes built as a list, then set by index (momi3): `nw` is unmapped, a Python int
            m_axes = 3 * [None]
            m_axes[2] = 0
            x_axes = [None] * 3
            x_axes[1] = 0
            return jax.vmap(jax.vmap(inner, m_axes), x_axes)(lik.shape[0] - 1, xs, ms)
        """,
        """
        from functools import partial
        import jax
        from jax import lax

        @partial(jax.jit, static_argnames="size")
        def take_window(x, start, size):
            head = x[:size]  # a static bound
            return lax.dynamic_slice(x, (start,), (size,)), head, x[start]  # a traced index is fine
        """,
        """
        from functools import partial
        import jax

        def unpack(flat, n):
            return flat[:n], flat[n:]

        def impl(*flat, n, scale):
            a, b = unpack(flat, n)
            return sum(a) * scale - sum(b)

        def batched(args, params):
            # `partial` binds the keyword-only `n` and `scale`: Python values, not traced
            return jax.vmap(partial(impl, **params))(*args), jax.vmap(partial(unpack, n=2))(args)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def custom_ones(arr):
            count = arr.size + 1
            return jnp.ones((count,)) * jnp.add(arr.size, 1)
        """,
        """
        import jax
        import numpy as np

        @jax.jit
        def scaled(x, s):
            if isinstance(s, (int, float)):
                s = float(s)  # only a Python number gets here: never a tracer
            shape = x.shape if hasattr(x, "shape") else np.asarray(x).shape
            if not isinstance(s, jax.core.Tracer):
                s = np.asarray(s)
            return x * s, shape
        """,
        """
        import jax
        import numpy as np

        def as_numpy(x):
            if isinstance(x, jax.Array):
                return x  # arrays (tracers among them) pass through
            return np.asarray(x)  # only Python and NumPy values get here

        @jax.jit
        def f(x):
            return as_numpy(x) * 2
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def accuracy(logits, labels):
            return jnp.mean(jnp.argmax(logits, -1) == labels)

        def report(logits, labels):
            return float(accuracy(logits, labels))
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnames="length")
        def positions(tokens, length):
            pos = jnp.arange(length)
            steps = int(tokens.shape[0]) * len(tokens)
            return tokens + jax.nn.one_hot(pos, tokens.shape[-1]) * steps
        """,
        """
        import jax
        import jax.numpy as jnp

        def loss(w, x):
            scale = float(jnp.max(jnp.abs(x)))  # grad alone runs eagerly: fine
            return jnp.sum((w * x / scale) ** 2)

        g = jax.grad(loss)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.jit
        def mixed(x, which):
            branches = [jax.nn.relu, jax.nn.gelu, jnp.tanh]
            layers = [x, x * 2]
            return lax.switch(which, branches, x) + layers[0] + jnp.zeros(x.shape[0])
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def padded_dims(x, offsets):
            shifted = [o * 2 for o in offsets]
            sizes = [i for i in shifted]
            for i, d in enumerate(x.shape):  # this `i` is not the comprehension's traced `i`
                sizes.append(x.shape[i] + d)
            return jnp.asarray(sizes)
        """,
        """
        import equinox as eqx
        import jax.numpy as jnp

        @eqx.filter_jit
        def repeat(x, times):
            return jnp.concatenate([x] * int(times))
        """,
    )

    @only(inside="abstract")
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        q = ctx.qualname(node.func)
        if q in _CASTS and len(node.args) == 1 and not node.keywords:
            self._flag(ctx, node, node.args[0], f"{_CASTS[q]} of `{ctx.text(node.args[0])}`")
        elif q == "builtins.range":
            for a in node.args:
                if traced_value(a, ctx):
                    self._flag(ctx, node, a, f"`range()` over `{ctx.text(a)}`", exc="TracerIntegerConversionError")
                    return
        elif q in _NUMPY and node.args:
            self._flag(ctx, node, node.args[0], f"`{q.replace('numpy.', 'np.')}` of `{ctx.text(node.args[0])}`", exc="TracerArrayConversionError")
        elif q in _SIZED:
            positions, keywords = _SIZED[q]
            sizes = [node.args[i] for i in positions if i < len(node.args)]
            sizes += [k.value for k in node.keywords if k.arg in keywords]
            short = q.replace("jax.numpy.", "jnp.")
            for s in sizes:  # a jnp op on static values first: it is traced only because jit stages it
                for part in s.elts if isinstance(s, (ast.Tuple, ast.List)) else [s]:
                    op = _jnp_op(part, ctx)
                    if op is not None:
                        self._jnp_size(ctx, node, part, op, short, _SIZE_ERRORS.get(q, _SHAPE_ERROR))
                        return
            for s in sizes:
                for part in [*(s.elts if isinstance(s, (ast.Tuple, ast.List)) else ()), s]:  # `(n,)`: the traced dimension
                    if traced_value(part, ctx):
                        self._flag(ctx, node, part, f"`{short}` with the traced size `{ctx.text(part)}`", exc=_SIZE_ERRORS.get(q, _SHAPE_ERROR))
                        return
        elif isinstance(node.func, ast.Attribute) and node.func.attr in ("item", "tolist") and not node.args:
            if q is None or not q.startswith(("numpy.", "math.")):
                self._flag(ctx, node, node.func.value, f"`.{node.func.attr}()` of `{ctx.text(node.func.value)}`")

    @only(inside="abstract")
    def visit_Subscript(self, node: ast.Subscript, ctx: FileContext) -> None:
        if not python_sequence(node.value, ctx):
            self._traced_slice(node, ctx)
            return
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for p in parts:
            bounds = [b for b in (p.lower, p.upper, p.step) if b is not None] if isinstance(p, ast.Slice) else [p]
            for b in bounds:
                if traced_value(b, ctx):
                    self._flag(ctx, node, b, f"indexing the Python sequence `{ctx.text(node.value)}` with `{ctx.text(b)}`", exc="TracerIntegerConversionError")
                    return

    def _traced_slice(self, node: ast.Subscript, ctx: FileContext) -> None:
        """`x[:n]`, `x.at[n:].set(v)` with a traced bound, on a proven traced array `x`: slice
        bounds must be static ints (jax-ml/jax#1007)."""
        base = node.value.value if isinstance(node.value, ast.Attribute) and node.value.attr == "at" else node.value
        if not ctx.proves_traced(base):
            return
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for p in parts:
            if not isinstance(p, ast.Slice):
                continue
            for b in (p.lower, p.upper, p.step):
                if b is not None and traced_value(b, ctx) and ctx.proves_traced(b):
                    self.report(
                        ctx,
                        node,
                        f"`{ctx.text(node)}` slices with the traced bound `{ctx.text(b)}`: slice bounds must be static Python ints, "
                        "so tracing raises IndexError (\"Slice entries must be static integers\")",
                        help="use `lax.dynamic_slice(x, (start,), (size,))` (or `lax.dynamic_update_slice`) with a static size, "
                        "a mask with `jnp.where`, or make the bound a static argument",
                        detail=ctx.text(b),
                        operands=(b,),
                    )
                    return

    def _jnp_size(self, ctx: FileContext, node: ast.AST, part: ast.AST, op: ast.Call, short: str, exc: str) -> None:
        """A size computed with a jnp op (`jnp.add(x.size, 1)`, `jnp.maximum(jnp.abs(span / dt), 1)`):
        reported at the op, the line to change, when it is bound on a line of its own."""
        # jit stages every jnp op out; under vmap or grad alone a jnp op on Python ints stays
        # concrete and the size works, so only a function that is itself jitted is proven
        jitted = ctx.function is not None and any(t.qualname in _JITS for t in ctx.function.transforms)
        at = op if op.lineno != getattr(node, "lineno", op.lineno) else node
        used = f"`{short}` with the size `{ctx.text(part)}`" if at is node else f"`{ctx.text(op)}` is a size for `{short}` (line {getattr(node, 'lineno', 0)}) and"
        self.report(
            ctx,
            at,
            f"{used}, computed with `{ctx.text(op.func)}`, needs a concrete value, but a jnp op "
            f"returns a traced array under `jit` even on static values; tracing raises {exc}"
            if at is node
            else f"{used} needs a concrete value, but a jnp op returns a traced array under `jit` even on static values; tracing raises {exc}",
            help="compute sizes with Python (or NumPy) arithmetic on static values (`x.size + 1`, `math.prod(x.shape)`, `int(np.maximum(...))`), not with jnp",
            detail=ctx.text(part),
            confidence="proven" if jitted else "guess",
        )

    def _flag(self, ctx: FileContext, node: ast.AST, value: ast.AST, what: str, exc: str = "ConcretizationTypeError") -> None:
        if not traced_value(value, ctx):
            return
        culprit = ctx.text(value)
        self.report(
            ctx,
            node,
            f"{what} needs a concrete value, but `{culprit}` is traced here; tracing raises {exc}",
            help="keep it an array (`jnp.asarray`, `lax.switch`, `jnp.where`) and convert after the transform returns, or mark the argument static",
            detail=culprit,
            operands=(value,),
        )


def _jnp_op(e: ast.expr, ctx: FileContext, depth: int = 0) -> ast.Call | None:
    """The jnp call whose result `e` is, through arithmetic (`num_steps + 1`), a method of its result
    (`.astype(int)`) and local names bound exactly once; a jnp call that computes a value (not
    `jnp.shape`/`ndim`/`size`/dtype queries), which jit stages out even on static values."""
    if depth > 4:
        return None
    if isinstance(e, ast.Name):
        value = ctx.analysis.bound_once(e.id, ctx.function)
        return _jnp_op(value, ctx, depth + 1) if isinstance(value, ast.expr) else None
    if isinstance(e, ast.BinOp):
        return _jnp_op(e.left, ctx, depth + 1) or _jnp_op(e.right, ctx, depth + 1)
    if isinstance(e, ast.UnaryOp):
        return _jnp_op(e.operand, ctx, depth + 1)
    if not isinstance(e, ast.Call):
        return None
    q = ctx.qualname(e.func)
    if q is not None and q.startswith("jax.numpy.") and q not in STATIC_JAX and not q.startswith("jax.numpy.dtypes."):
        # on static values only (`arr.size`, constants, other such ops): `jnp.sum(mask)` is traced
        # by its input, which the traced-size check names
        args = [*e.args, *(k.value for k in e.keywords)]
        return e if all(_static_operand(a, ctx, depth + 1) for a in args) else None
    if q is None and isinstance(e.func, ast.Attribute) and e.func.attr in ("astype", "reshape", "squeeze", "sum", "max", "min", "prod"):
        return _jnp_op(e.func.value, ctx, depth + 1)  # `jnp.ceil(n).astype(int)`
    return None


def _static_operand(a: ast.expr, ctx: FileContext, depth: int) -> bool:
    """A value that is static but for jit's staging: a Python value, or a jnp op on such values."""
    if isinstance(a, (ast.BinOp, ast.UnaryOp)):
        return all(_static_operand(x, ctx, depth + 1) for x in ast.iter_child_nodes(a) if isinstance(x, ast.expr))
    if isinstance(a, (ast.Tuple, ast.List)):
        return all(_static_operand(x, ctx, depth + 1) for x in a.elts)
    return _jnp_op(a, ctx, depth) is not None or not traced_value(a, ctx)
