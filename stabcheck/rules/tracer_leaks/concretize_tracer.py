from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.tracer_leaks._values import python_sequence, traced_value
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
}


class ConcretizeTracer(Rule):
    """## What it does
    Flags code inside a staged-out transform (`jit`, `vmap`, a `lax` body, ...) that needs the
    concrete value of a traced array: `int()`, `float()`, `complex()`, `.item()`, `.tolist()`,
    `np.asarray()`/`np.array()`, `range()` of a traced value, `jnp.arange`/`zeros`/`ones`/
    `full`/`eye`/`linspace`/`jax.nn.one_hot` with a traced size, and indexing a Python list or
    tuple (`x.shape` included) with a traced index.

    ## Why is this bad?
    Under `jit` a traced value has a shape and a dtype but no value. Turning it into a Python
    number, a NumPy array or a shape raises `ConcretizationTypeError`,
    `TracerIntegerConversionError` or `TracerArrayConversionError` when the function is
    traced. Under `grad` alone it happens to work, so the bug surfaces only once the code is
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
    )
    VALID = (
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
            for s in sizes:
                if traced_value(s, ctx):
                    short = q.replace("jax.numpy.", "jnp.").replace("jax.nn.", "jax.nn.")
                    self._flag(ctx, node, s, f"`{short}` with the traced size `{ctx.text(s)}`")
                    return
        elif isinstance(node.func, ast.Attribute) and node.func.attr in ("item", "tolist") and not node.args:
            if q is None or not q.startswith(("numpy.", "math.")):
                self._flag(ctx, node, node.func.value, f"`.{node.func.attr}()` of `{ctx.text(node.func.value)}`")

    @only(inside="abstract")
    def visit_Subscript(self, node: ast.Subscript, ctx: FileContext) -> None:
        if not python_sequence(node.value, ctx):
            return
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for p in parts:
            bounds = [b for b in (p.lower, p.upper, p.step) if b is not None] if isinstance(p, ast.Slice) else [p]
            for b in bounds:
                if traced_value(b, ctx):
                    self._flag(ctx, node, b, f"indexing the Python sequence `{ctx.text(node.value)}` with `{ctx.text(b)}`", exc="TracerIntegerConversionError")
                    return

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
