from __future__ import annotations

import ast

from stabcheck.rule import Rule
from stabcheck.rules.recompile._jitted import call_args, called_jitted, jitted_functions
from stabcheck.static.context import FileContext

_ARRAY_MAKERS = frozenset(
    {"array", "asarray", "zeros", "ones", "full", "empty", "arange", "linspace", "eye", "zeros_like", "ones_like", "full_like", "stack", "concatenate"}
)
# jnp/lax functions that always return an array (a jax Array is unhashable, even 0-d): a static
# argument computed with one raises, e.g. `n=jnp.sum(mask)` instead of `n=int(mask.sum())`
_ARRAY_OPS = frozenset(
    {"sum", "prod", "max", "min", "mean", "argmax", "argmin", "count_nonzero", "cumsum", "add", "subtract", "multiply",
     "floor_divide", "ceil", "floor", "round", "rint", "abs", "maximum", "minimum", "sqrt", "log2", "power", "where",
     "reshape", "int32", "int64", "float32", "float64"}
)
_CONTAINERS = {ast.List: "a list", ast.ListComp: "a list", ast.Dict: "a dict", ast.DictComp: "a dict", ast.Set: "a set", ast.SetComp: "a set"}


# annotations that declare exactly an array (not `ArrayLike`, which admits Python scalars): a
# field declared static with one of these holds an array in the treedef
_EXACT_ARRAYS = frozenset({"Array", "ndarray", "Tensor"})
_STATIC_FIELD_MAKERS = frozenset({"equinox.field", "equinox.static_field", "flax.struct.field", "dataclasses.field"})


class UnhashableStaticArg(Rule):
    """## What it does
    Flags a call of a `jax.jit`/`jax.pmap` function that passes a list, dict, set or array
    (a literal, a `list()`/`dict()`/`set()` call, an `np`/`jnp` array, the result of a `jnp`/`lax`
    operation such as `jnp.sum(mask)` — a jax array, even 0-d — or a local name bound to one),
    or an instance of one of the module's `@dataclass`es that is neither `frozen` nor
    `unsafe_hash` (Python sets its `__hash__` to None; reported at the `@dataclass` line, where
    `frozen=True` goes), for a parameter declared static with
    `static_argnums` or `static_argnames`. Also flags a
    pytree field declared static (`eqx.field(static=True)`, flax `struct.field(pytree_node=False)`,
    `dataclasses.field(metadata={"static": True})` of a `jax.tree_util.register_dataclass` class)
    whose annotation is an array type, and `jax.vmap(f)(xs, n)` where `vmap` maps `n`, a static
    argument of the jitted `f` (a batch tracer reaches it), (`jax.Array`, `np.ndarray`, `Float[Array, "n"]`): the
    array becomes part of the treedef, which `jit` hashes and compares with `==`.

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

    For a static array field, equinox warns "A JAX array is being set as static!"; the first
    jitted call works, and the next call with another instance raises `ValueError: static
    arguments should be comparable using __eq__` (an array's `==` is elementwise).

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
        import dataclasses
        from functools import partial
        import jax

        @dataclasses.dataclass  # expect: STB502
        class Config:
            some_value: int

        @partial(jax.jit, static_argnums=1)
        def do_stuff(data, config):
            return data * config.some_value

        def evaluate(data):
            return do_stuff(data, Config(3))
        """,
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
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnums=1)
        def scale(x, n):
            return x * n

        ys = jax.vmap(scale)(jnp.ones(3), jnp.arange(3))  # expect: STB502
        """,
        """
        import jax

        def apply(x, config):
            return x * config["scale"]

        apply_jit = jax.jit(apply, static_argnames="config")
        out = apply_jit(1.0, {"scale": 2.0})  # expect: STB502
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnames="n")
        def first(x, n):
            return x[:n]

        mask = jnp.array([1, 0, 1])
        y = first(jnp.ones(3), n=jnp.sum(mask))  # expect: STB502
        """,
        """
        import equinox as eqx
        import jax
        import numpy as np

        class Gather(eqx.Module):
            w: jax.Array
            idx: np.ndarray = eqx.field(static=True)  # expect: STB502
        """,
        """
        import dataclasses
        import jax
        import numpy as np

        @jax.tree_util.register_dataclass
        @dataclasses.dataclass
        class Grid:
            values: jax.Array
            nodes: np.ndarray = dataclasses.field(metadata={"static": True})  # expect: STB502
        """,
    )
    VALID = (
        """
        import dataclasses
        from functools import partial
        import jax

        @dataclasses.dataclass(frozen=True)
        class Config:
            some_value: int

        @dataclasses.dataclass(eq=False)
        class Handle:  # hashed by identity
            name: str

        @partial(jax.jit, static_argnums=(1, 2))
        def do_stuff(data, config, handle):
            return data * config.some_value

        def evaluate(data):
            return do_stuff(data, Config(3), Handle("a"))
        """,
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
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnames="n")
        def first(x, n):
            return x[:n]

        mask = jnp.array([1, 0, 1])
        y = first(jnp.ones(3), n=int(jnp.sum(mask)))  # a Python int: hashable
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnums=1)
        def scale(x, n):
            return x * n

        ys = jax.vmap(scale, in_axes=(0, None))(jnp.ones(3), 2)  # the static argument is not mapped
        """,
        """
        import equinox as eqx
        import jax

        class Gather(eqx.Module):
            w: jax.Array
            idx: tuple[int, ...] = eqx.field(static=True)  # a tuple of ints: hashable
            scale: jax.typing.ArrayLike = eqx.field(static=True)  # may be a Python float
        """,
        """
        import dataclasses
        import jax
        import numpy as np

        @jax.tree_util.register_dataclass
        @dataclasses.dataclass
        class Grid:
            values: np.ndarray  # a traced field
            nodes: tuple = dataclasses.field(metadata={"static": True})  # hashable: compared by value
            scale: np.ndarray = dataclasses.field(default=None, metadata={"static": False})
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if isinstance(node.func, ast.Call) and ctx.qualname(node.func.func) == "jax.vmap":
            self._vmapped(node, node.func, ctx)
            return
        j = called_jitted(node, ctx.names, ctx.analysis, ctx.function)
        if j is None or not (j.static_pos or j.static_names):
            return
        for pos, kw, pname, value in call_args(node, j):
            if not j.is_static(pos, kw):
                continue
            what = self._unhashable(value, ctx)
            if what is None:
                continue
            shown = ctx.text(value)
            dec = _instance_decorator(value, ctx)  # a mutable dataclass: the fix is at its definition
            self.report(
                ctx,
                dec if dec is not None else value,
                f"`{shown}` is {what} passed for `{pname}`, a static argument of `{j.name}`"
                + (f" (line {value.lineno})" if dec is not None else "")
                + "; static arguments must be hashable, so the call raises ValueError: Non-hashable static arguments are not supported",
                help=(
                    "make the dataclass hashable (`@dataclass(frozen=True)`), or make the argument non-static"
                    if "dataclass" in what
                    else "pass a tuple instead of a list (a tuple of pairs or a frozen dataclass instead of a dict), or make the argument non-static"
                ),
                detail=f"{j.name}:{pname}",
                evidence={"kind": what},
                function="" if dec is not None else None,
            )

    def _vmapped(self, node: ast.Call, vmap: ast.Call, ctx: FileContext) -> None:
        """`jax.vmap(f)(xs, n)` with `f` jitted and `n` static: vmap hands `f` a batch tracer (or
        an array) for every mapped argument, and a tracer cannot be hashed."""
        if not vmap.args or not isinstance(vmap.args[0], ast.Name):
            return
        j = jitted_functions(ctx.analysis).get(vmap.args[0].id)
        if j is None or not (j.static_pos or j.static_names):
            return
        in_axes = vmap.args[1] if len(vmap.args) > 1 else next((k.value for k in vmap.keywords if k.arg == "in_axes"), None)
        for pos, kw, pname, value in call_args(node, j):
            if not j.is_static(pos, kw) or not _mapped(in_axes, pos):
                continue
            self.report(
                ctx,
                vmap,
                f"`{ctx.text(vmap)}` maps `{pname}`, a static argument of `{j.name}`: vmap passes `{j.name}` a batch tracer for it, "
                "which cannot be hashed, so the call raises ValueError: Non-hashable static arguments are not supported",
                help=f"unmap it (`in_axes` with None at its position) so the Python value reaches `{j.name}` unchanged, or make it non-static",
                detail=f"{j.name}:{pname}",
                evidence={"kind": "vmapped static argument"},
            )
            return

    def visit_ClassDef(self, node: ast.ClassDef, ctx: FileContext) -> None:
        for st in node.body:
            if not (isinstance(st, ast.AnnAssign) and isinstance(st.value, ast.Call) and isinstance(st.target, ast.Name)):
                continue
            if ctx.qualname(st.value.func) not in _STATIC_FIELD_MAKERS or not _declared_static(st.value) or not _exact_array(st.annotation):
                continue
            self.report(
                ctx,
                st,
                f"`{node.name}.{st.target.id}` is declared static but annotated `{ctx.text(st.annotation)}`: the array becomes part of the "
                "treedef that `jit` hashes and compares with `==`, so a call with another instance raises ValueError (static arguments should be comparable)",
                help="make the field a normal (traced) field, or store a hashable value such as a tuple of ints",
                detail=f"{node.name}.{st.target.id}",
                evidence={"kind": "static field"},
                function=node.name,
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
            if q.startswith(("jax.numpy.", "jax.lax.")) and q.rsplit(".", 1)[1] in _ARRAY_OPS:
                return "a jax array (what `" + q.replace("jax.numpy.", "jnp.").replace("jax.lax.", "lax.") + "` returns, even 0-d)"
            cls = _mutable_dataclass(value.func, ctx)
            if cls is not None:
                return f"an instance of `{cls}`, a dataclass neither frozen nor `unsafe_hash` (Python sets its `__hash__` to None)"
            return None
        if isinstance(value, ast.Name) and depth == 0:
            bound = _single_value(value, ctx)
            if bound is not None:
                return self._unhashable(bound, ctx, depth + 1)
        return None


def _single_value(name: ast.Name, ctx: FileContext) -> ast.expr | None:
    """What `name` is assigned where the enclosing function (or the module) assigns it exactly once."""
    scope_node: ast.AST = ctx.function.node if ctx.function is not None else ctx.tree
    binds = [n.value for n in ast.walk(scope_node) if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name.id for t in n.targets)]
    return binds[0] if len(binds) == 1 else None


def _mutable_dataclass(func: ast.AST, ctx: FileContext) -> str | None:
    """The name of the class `func` names when it is a `@dataclass` of this module that is
    unhashable: `eq` left on (the default) without `frozen=True` or `unsafe_hash=True`, and no
    `__hash__` of its own (jax-ml/jax#3701)."""
    dec = _mutable_dataclass_decorator(func, ctx)
    return func.id if dec is not None and isinstance(func, ast.Name) else None


def _instance_decorator(value: ast.AST, ctx: FileContext) -> ast.expr | None:
    """The `@dataclass` decorator of the unhashable dataclass `value` is an instance of (`Cfg(3)`,
    or a name bound once to it): the line to change."""
    if isinstance(value, ast.Name):
        value = _single_value(value, ctx) or value
    return _mutable_dataclass_decorator(value.func, ctx) if isinstance(value, ast.Call) else None


def _mutable_dataclass_decorator(func: ast.AST, ctx: FileContext) -> ast.expr | None:
    if not isinstance(func, ast.Name):
        return None
    cls = next((n for n in ctx.tree.body if isinstance(n, ast.ClassDef) and n.name == func.id), None)
    if cls is None or cls.bases or any(isinstance(b, ast.FunctionDef) and b.name == "__hash__" for b in cls.body):
        return None
    for dec in cls.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if ctx.qualname(target) != "dataclasses.dataclass":
            continue
        flags = {k.arg: k.value for k in dec.keywords} if isinstance(dec, ast.Call) else {}
        if isinstance(dec, ast.Call) and (dec.args or any(k.arg is None for k in dec.keywords)):
            return None
        if any(not (isinstance(v, ast.Constant) and isinstance(v.value, bool)) for v in flags.values() if v is not None):
            return None  # a flag computed at run time
        on = {k: v.value for k, v in flags.items() if k is not None and isinstance(v, ast.Constant)}
        if on.get("eq", True) and not on.get("frozen", False) and not on.get("unsafe_hash", False):
            return dec
    return None


def _mapped(in_axes: ast.AST | None, pos: int | None) -> bool:
    """Whether `in_axes` maps argument `pos` (keyword arguments are always mapped along 0)."""
    if in_axes is None or pos is None:
        return True
    if isinstance(in_axes, ast.Constant):
        return in_axes.value is not None
    if isinstance(in_axes, (ast.Tuple, ast.List)) and pos < len(in_axes.elts) and not any(isinstance(e, ast.Starred) for e in in_axes.elts):
        e = in_axes.elts[pos]
        return not (isinstance(e, ast.Constant) and e.value is None)
    return False


def _declared_static(call: ast.Call) -> bool:
    for k in call.keywords:
        if k.arg == "static" and isinstance(k.value, ast.Constant) and k.value.value is True:
            return True
        if k.arg == "metadata" and isinstance(k.value, ast.Dict):  # `jax.tree_util.register_dataclass`
            if any(isinstance(key, ast.Constant) and key.value == "static" and isinstance(v, ast.Constant) and v.value is True for key, v in zip(k.value.keys, k.value.values)):
                return True
        if k.arg == "pytree_node" and isinstance(k.value, ast.Constant) and k.value.value is False:
            return True
    return False


def _exact_array(ann: ast.AST) -> bool:
    """`jax.Array`, `np.ndarray`, `jnp.ndarray`, jaxtyping's `Float[Array, "n"]`: exactly an array."""
    if isinstance(ann, ast.Subscript):
        first = ann.slice.elts[0] if isinstance(ann.slice, ast.Tuple) and ann.slice.elts else ann.slice
        return _exact_array(first)
    last = ann.attr if isinstance(ann, ast.Attribute) else ann.id if isinstance(ann, ast.Name) else ""
    return last in _EXACT_ARRAYS
