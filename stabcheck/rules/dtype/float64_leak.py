from __future__ import annotations

import ast

from stabcheck.rule import Rule, only
from stabcheck.rules.dtype._dtypes import WIDE, dtype_arg, float_dtype, is_mask, numpy_float64
from stabcheck.static import xfile
from stabcheck.static.context import FileContext

_COST = "Everything downstream then runs in float64 too (2-64x slower on accelerators, twice the memory), and the output dtype depends on a global flag"
# jnp functions whose operands are combined arithmetically (promotion applies)
_COMBINING = frozenset(
    {"add", "subtract", "multiply", "divide", "true_divide", "dot", "matmul", "einsum", "where", "maximum", "minimum", "power", "inner", "outer", "tensordot", "concatenate", "stack", "hstack", "vstack", "select", "kron"}
)


class Float64Leak(Rule):
    """## What it does
    Flags, inside a transformed function (`jit`, `vmap`, `grad`, a `scan` body, a Module's
    `__call__`, or a function one of those calls), what pulls float64 into the computation:
    `jnp.float64`/`np.float64`, `dtype=float`/`dtype=np.float64` in a `jnp`/`lax` call,
    `.astype(float)`, and NumPy float arrays built without a dtype (`np.array([1.0, 0.0])`,
    `np.ones(n)`, `np.linspace(...)`, a module constant bound to one, like
    `MASK64 = np.array([1.0, 0.0])[:, None]`) combined arithmetically with traced data.

    Outside a transform too, it flags a JAX call that asks for float64 by name
    (`jnp.zeros(n, dtype=jnp.float64)`, `jax.random.uniform(key, dtype=jnp.float64)`,
    `jnp.float64(x)`) in a project that never turns x64 on: JAX silently narrows the request and
    returns float32 (jax-ml/jax#17366). Where a file of the project names the flag (reads
    `jax.config.jax_enable_x64`, tests both precisions, tells its users to turn it on) or its
    test configuration sets `JAX_ENABLE_X64` (tox's `setenv`, pytest-env in `pyproject.toml`,
    `setup.cfg`, `tox.ini`, `pytest.ini`, `.env`), the project knows what happens without it
    (code under `if jax.config.jax_enable_x64:`, a test skipped without x64, a library
    documenting both precisions): silent.

    ## Why is this bad?
    `dtype=float`/`.astype(float)` ask for the default float (float32 unless x64 is on, and then
    float64 on purpose): those are guesses, shown with `--preview`. Where the project turns x64
    on itself (any file of the project — the nearest directory holding `pyproject.toml`,
    `setup.py`, `setup.cfg` or `.git` —, whichever of its files a run names: a pre-commit run on
    staged files, `check -` and the editor see what `check .` sees; without such a directory,
    the checked files: `jax.config.update("jax_enable_x64", v)` through any alias of the
    config and with any `v` but a literal False, an `enable_x64()` call, `JAX_ENABLE_X64` set in
    `os.environ`), float64 asked for by name (`jnp.float64`, `dtype=float`) is intended there and
    is a guess too; a NumPy float64 constant that promotes float32 data is reported either way
    (with x64 on it is real), except where x64 is on and the file never names a narrower float
    (`float32`, `bfloat16`, `float16`): that program computes in float64 by design, and the
    finding is a guess.

    The traced stage (`--trace`) reports where float32 or bfloat16 data is first promoted in the
    program: a `convert_element_type` to float64, and a matrix product of float32 data with a
    float64 operand, which has no convert at all (a NumPy float64 constant, or a library layer's
    weights drawn with the x64 default dtype: the finding is then at the user's call of the layer).

    Python's `float` and NumPy's default float are 64-bit. With `jax_enable_x64` off they are
    silently truncated to float32; with it on, the operation and everything downstream runs in
    float64: 2-64x slower on GPUs and TPUs, twice the memory, and a program whose dtypes
    depend on a global flag.

    ## Example
    ```python
    MASK64 = np.array([1.0, 0.0])[:, None]

    @jax.jit
    def couple(x):
        return MASK64 * x
    ```

    ## Use instead
    Build constants with the data's dtype (or as bool, and select with `jnp.where`):
    ```python
    MASK = np.array([True, False])[:, None]

    @jax.jit
    def couple(x):
        return jnp.where(MASK, x, 0)
    ```

    A float64 request outside a transform, with x64 off, is worse: the program asks for double
    precision and silently computes in single (a UserWarning only, easily lost in a training log).

    ## Options
    None. NumPy constants in functions that are never transformed in the checked source are left
    to the traced stage, which sees the real dtypes. The traced stage also reports, as proven,
    each place an entry asks explicitly for a dtype JAX cannot give and silently narrows, at the
    line JAX's warning names.
    """

    code = "STB301"
    name = "float64-leak"
    fixable = "safe"
    stages = ("static", "traced", "confirmed", "runtime")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        MASK64 = np.array([1.0, 0.0])[:, None]

        @jax.jit
        def couple(x):
            x_even = MASK64 * x  # expect: STB301
            x_odd = (1 - MASK64) * x  # expect: STB301
            return jnp.concatenate([x_even, x_odd], axis=0)
        """,
        """
        import flax.linen as nn
        import jax.numpy as jnp
        import numpy as np

        class PositionalEncoding(nn.Module):
            @nn.compact
            def __call__(self, x):
                pos = jnp.arange(x.shape[-2], dtype=jnp.float64)[:, None]  # expect: STB301
                freqs = np.linspace(0.0, 1.0, x.shape[-1])
                return jnp.sin(pos) + x * freqs  # expect: STB301
        """,
        """
        import jax
        import jax.numpy as jnp

        # reading the flag is not turning it on
        ACC = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32

        @jax.jit
        def count(mask):
            return jnp.sum(mask).astype(jnp.float64)  # expect: STB301
        """,
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        jax.config.update("jax_enable_x64", True)
        MASK64 = np.array([1.0, 0.0])[:, None]

        @jax.jit
        def couple(x):  # x64 on: float32 data promoted to float64 by a NumPy constant
            x = x.astype(jnp.float32)
            return MASK64 * x  # expect: STB301
        """,
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        def loss(w, x, y):
            pred = x @ w
            scale = np.float64(0.5)
            return jnp.mean((pred - y) ** 2) * scale  # expect: STB301

        grad_fn = jax.grad(loss)
        """,
        """
        import jax
        import jax.numpy as jnp

        # nothing in this project turns x64 on: JAX narrows both requests to float32
        def init(key, n):
            w = jax.random.uniform(key, (n,), dtype=jnp.float64)  # expect: STB301
            b = jnp.zeros(n, dtype=jnp.float64)  # expect: STB301
            return w, b
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def normalize(x):
            # Python's float is the default float: float32 here, float64 only where the program
            # turns x64 on, and then on purpose (shown as a guess with --preview)
            x = x.astype(float)
            return (x - x.mean()) / (x.std() + 1e-6)
        """,
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        MASK = np.array([True, False])[:, None]
        WEIGHTS = np.array([1.0, 0.5], dtype=np.float32)

        @jax.jit
        def couple(x):
            return jnp.where(MASK, x, 0) * WEIGHTS[:, None]
        """,
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        @jax.jit
        def normalize(x):
            x = x.astype(jnp.float32)
            idx = np.arange(3)
            return x * np.pi + x[idx].sum() + x.shape[0] * 2.0
        """,
        """
        import jax
        import jax.numpy as jnp

        # the project turns x64 on (here, or in any file of the project: its package `__init__`, a
        # config default): float64 asked for by name is intended (a guess, --preview)
        jax.config.update("jax_enable_x64", True)

        @jax.jit
        def count(mask):
            return jnp.sum(mask).astype(jnp.float64)
        """,
        """
        import jax
        import numpy as np

        # a double-precision code (deepmodeling/DMFF turns x64 on in its settings module): a
        # NumPy float64 table matches the program's precision (a guess, --preview)
        jax.config.update("jax_enable_x64", True)
        TABLE = np.zeros((245, 16))

        @jax.jit
        def energy(fmat):
            return (fmat.T * TABLE).sum()
        """,
        """
        import numpy as np

        def load_batch(path):
            data = np.load(path).astype(float)  # NumPy preprocessing, never traced
            return data * np.ones(3)
        """,
        """
        import jax.numpy as jnp
        import numpy as np

        TABLE = np.linspace(0.0, 1.0, 16)

        def apply(x):  # not transformed in this file: left to the traced stage
            return TABLE * x
        """,
        """
        import jax
        import jax.numpy as jnp

        def init(key, n):
            # Python's float is the default float; the float64 request is made only where x64 is on
            w = jax.random.uniform(key, (n,), dtype=float)
            if jax.config.jax_enable_x64:
                return w, jnp.zeros(n, dtype=jnp.float64)
            return w, jnp.zeros(n, dtype=jnp.float32)
        """,
        """
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)  # a double-precision program, on purpose

        def init(n):
            return jnp.zeros(n, dtype=jnp.float64)
        """,
        """
        import jax
        import jax.numpy as jnp

        # a library offering both precisions (pyqg-jax): it knows float64 needs x64, and asks
        # for it where available
        DOUBLE = jax.config.jax_enable_x64

        def invert(wv2):
            return 1.0 / wv2.astype(jnp.float64)

        def solve(f):
            return jnp.float64(f)
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if not ctx.in_transform:
            self._truncated(node, ctx)
            return
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "astype" and node.args:
            dt = float_dtype(node.args[0], ctx)
            if dt in WIDE and not is_mask(func.value, ctx) and not numpy_float64(func.value, ctx):
                self._explicit(ctx, node, node.args[0], dt)
            return
        q = ctx.qualname(func) or ""
        if not q.startswith("jax."):
            return
        dt_expr = dtype_arg(node)
        dt = float_dtype(dt_expr, ctx)
        if dt_expr is not None and dt in WIDE:
            self._explicit(ctx, node, dt_expr, dt)
            return
        if q == "jax.numpy.float64" and node.args and ctx.is_traced(node.args[0]):
            self._explicit(ctx, node, func, "float64")
            return
        if q.startswith("jax.numpy.") and q.rsplit(".", 1)[1] in _COMBINING:
            args = [*node.args, *(k.value for k in node.keywords)]
            flat = [e for a in args for e in (a.elts if isinstance(a, (ast.List, ast.Tuple)) else [a])]
            const = next((a for a in flat if not ctx.is_traced(a) and numpy_float64(a, ctx)), None)
            data = next((a for a in flat if ctx.is_traced(a)), None)
            if const is not None and data is not None:
                self._combined(ctx, node, const, data)

    @only(inside="transformed")
    def visit_BinOp(self, node: ast.BinOp, ctx: FileContext) -> None:
        if isinstance(node.op, (ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift)):
            return
        for const, data in ((node.left, node.right), (node.right, node.left)):
            if ctx.is_traced(data) and not ctx.is_traced(const) and numpy_float64(const, ctx):
                self._combined(ctx, node, const, data)
                return

    def _truncated(self, node: ast.Call, ctx: FileContext) -> None:
        """Outside a transform: a JAX call that names float64 (`jnp.zeros(n, dtype=jnp.float64)`,
        `jax.random.uniform(key, dtype=jnp.float64)`, `jnp.float64(x)`) in a project that never
        turns x64 on, nor names the flag, gets float32 back (jax-ml/jax#17366). Python's `float`
        asks for the default float, not for float64: silent."""
        q = ctx.qualname(node.func) or ""
        if not q.startswith("jax."):
            return
        dt_expr = dtype_arg(node)
        if dt_expr is None and q in ("jax.numpy.float64", "jax.numpy.double") and node.args:
            dt_expr = node.func
        if dt_expr is None or float_dtype(dt_expr, ctx) != "float64" or _x64_named(ctx):
            return
        spelled = ctx.text(dt_expr)
        self.report(
            ctx,
            node,
            f"`{ctx.text(node)}` asks for float64 (`{spelled}`), which JAX gives only with `jax_enable_x64` on, and nothing in this project turns it on. "
            "It returns float32 (a UserWarning only, easily lost in a training log): the precision asked for is silently lost",
            help="ask for `jnp.float32` (or the data's dtype), or turn x64 on where the program starts: `jax.config.update(\"jax_enable_x64\", True)`",
            detail=spelled,
        )

    def _explicit(self, ctx: FileContext, node: ast.Call, dt_expr: ast.AST, dt: str) -> None:
        spelled = ctx.text(dt_expr)
        what = "Python's `float` is float64" if dt == "float" else f"`{spelled}` is float64"
        self.report(
            ctx,
            node,
            f"`{ctx.text(node)}` asks for float64 in a transformed function ({what}), which `jax_enable_x64` makes real. {_COST}",
            help="use the data's dtype (`x.dtype`) or an explicit `jnp.float32`",
            detail=spelled,
            # where the project turns x64 on (this file or any checked file), float64 asked for by
            # name is intended; Python's `float` is the default float (float32 with x64 off): both
            # guesses (`--preview`)
            confidence="guess" if dt == "float" or _x64_on(ctx) else "proven",
        )

    def _combined(self, ctx: FileContext, node: ast.AST, const: ast.AST, data: ast.AST) -> None:
        name = ctx.text(const)
        self.report(
            ctx,
            node,
            f"`{name}` is a NumPy float64 array; with `jax_enable_x64` on, `{ctx.text(node)}` runs in float64 whatever the dtype of `{ctx.text(data)}`. {_COST}",
            help=f"build it as bool (and select with `jnp.where`), or with the data's dtype (`np.asarray(..., dtype=np.float32)` or `.astype({ctx.text(data)}.dtype)`)"
            if len(ctx.text(data)) < 30
            else "build it as bool (and select with `jnp.where`), or with the data's dtype",
            detail=name,
            # with x64 on in the project, a file that never asks for a narrower float computes in
            # float64 by design: the constant matches it (a guess, `--preview`)
            confidence="guess" if _x64_on(ctx) and not _names_narrow_float(ctx) else "proven",
        )


_NARROW = frozenset({"float32", "bfloat16", "float16"})


def _names_narrow_float(ctx: FileContext) -> bool:
    """The file names float32, bfloat16 or float16 somewhere (a dtype, a cast, a string)."""
    return ctx.analysis.memo(
        "names_narrow_float",
        lambda: any(
            (isinstance(n, ast.Attribute) and n.attr in _NARROW) or (isinstance(n, ast.Name) and n.id in _NARROW) or (isinstance(n, ast.Constant) and n.value in _NARROW)
            for n in ast.walk(ctx.tree)
        ),
    )


def _x64_named(ctx: FileContext) -> bool:
    """This file, or any file of its project, turns x64 on or names the flag (`xfile.source_x64`):
    the project knows that JAX narrows float64 without it (a library offering both precisions, a
    test of each); an explicit float64 outside a transform is then its choice."""
    return xfile.project_names_x64(ctx.path) or bool(ctx.analysis.memo("names_x64", lambda: xfile.names_x64(ctx.tree)))


def _x64_on(ctx: FileContext) -> bool:
    """This file, or any file of its project (`api._x64_elsewhere`), turns `jax_enable_x64` on."""
    if xfile.project_x64(ctx.path):
        return True
    return bool(ctx.analysis.memo("enables_x64", lambda: xfile.enables_x64(ctx.tree)))
