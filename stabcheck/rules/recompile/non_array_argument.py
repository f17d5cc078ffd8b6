from __future__ import annotations

import ast

from stabcheck.rule import Rule
from stabcheck.rules.recompile._jitted import call_args, called_jitted
from stabcheck.static.context import FileContext
from stabcheck.static.names import Transform

# transforms that turn every non-static argument into an abstract array (vmap is left out: its
# `in_axes=None` arguments are passed through)
_ABSTRACTING = frozenset({"jax.jit", "jax.pmap", "jax.checkpoint"})
# bases whose subclasses are never pytrees: a flax linen Module is a dataclass JAX cannot trace
_NON_PYTREE_BASES = frozenset({"builtins.object", "flax.linen.Module", "flax.linen.module.Module"})
_PLAIN_DECORATORS = frozenset({"dataclasses.dataclass"})
_REGISTER = ("register_pytree", "register_dataclass", "register_static", "register_pytree_with_keys")
_PYTREE_METHODS = frozenset({"tree_flatten", "tree_unflatten", "tree_flatten_with_keys", "__jax_array__"})


class NonArrayArgument(Rule):
    """## What it does
    Reports (traced and confirm stages) a value that is neither an array, a Python scalar nor a
    registered pytree of them — a flax `linen.Module`, an optimizer object, a plain class instance
    — passed as a traced (non-static) argument of a jitted or differentiated function, from
    JAX's `as an abstract array` or `is not a valid JAX type` error.

    The static stage reports the case it can prove from the source: a method decorated with
    `jax.jit`, `jax.pmap` or `jax.checkpoint`/`remat` whose `self` is not static, in a class that
    is provably not a pytree (no base but `object` or a flax `linen.Module`, no pytree
    registration or flatten method, not subclassed in the module, not abstract). It names the
    parameter each `static_argnums` index really reaches: the indices count `self` as 0. And a
    call of a `jax.jit`/`jax.pmap` function that passes, for a non-static parameter, an instance
    of such a class or of a flax `linen` layer (`nn.Dense(3)`), built in the call or bound once
    to a name (jax-ml/jax#15115).

    ## Why is this bad?
    `jit` must turn every non-static argument into an abstract array; an arbitrary object cannot
    be, so the call raises `TypeError` before anything is compiled. Marking the object static
    instead makes it part of the cache key: fine for a hashable configuration object, a retrace per
    instance for one that is rebuilt every step.

    ## Example
    ```python
    @jax.jit
    def apply(model, params, x):          # model: a flax linen Module
        return model.apply(params, x)

    apply(model, params, x)               # TypeError: ... is not a valid JAX type
    ```

    ## Use instead
    Close over the module, or declare it static (it is hashable and built once):
    ```python
    @partial(jax.jit, static_argnums=0)
    def apply(model, params, x):
        return model.apply(params, x)
    ```
    """

    code = "STB505"
    name = "non-array-argument"
    severity = "error"
    stages = ("static", "traced", "confirmed")
    INVALID = (
        """
        import jax

        class Scaler:
            def __init__(self, w):
                self.w = w

            @jax.jit  # expect: STB505
            def __call__(self, x):
                return x * self.w
        """,
        """
        from functools import partial
        import jax

        class Block:
            def __init__(self, depth):
                self.depth = depth

            @partial(jax.checkpoint, static_argnums=(1,))  # expect: STB505
            def apply(self, x, n):
                for _ in range(n):
                    x = jax.numpy.sin(x)
                return x
        """,
        """
        from dataclasses import dataclass
        from functools import partial
        import jax

        @dataclass(frozen=True)
        class Config:
            scale: float

            @partial(jax.jit, static_argnames="n")  # expect: STB505
            def run(self, x, n):
                return x * self.scale * n
        """,
        """
        import jax
        import flax.linen as nn

        @jax.jit
        def apply(model, params, x):
            return model.apply(params, x)

        model = nn.Dense(3)
        params = model.init(jax.random.key(0), jax.numpy.ones(2))
        y = apply(model, params, jax.numpy.ones(2))  # expect: STB505
        """,
    )
    VALID = (
        """
        from functools import partial
        import jax

        class Scaler:
            def __init__(self, w):
                self.w = w

            @partial(jax.jit, static_argnums=0)  # self is static: hashed by identity
            def __call__(self, x):
                return x * self.w
        """,
        """
        import jax

        @jax.tree_util.register_pytree_node_class
        class Scaler:
            def __init__(self, w):
                self.w = w

            def tree_flatten(self):
                return (self.w,), None

            @classmethod
            def tree_unflatten(cls, aux, children):
                return cls(*children)

            @jax.jit
            def __call__(self, x):
                return x * self.w
        """,
        """
        import jax
        import equinox as eqx

        class Scaler(eqx.Module):  # an equinox Module is a pytree
            w: jax.Array

            @jax.jit
            def __call__(self, x):
                return x * self.w
        """,
        """
        import jax

        class Base:  # subclassed by a pytree below: its methods may get pytree instances
            def __init__(self, w):
                self.w = w

            @jax.jit
            def __call__(self, x):
                return x * self.w

        @jax.tree_util.register_pytree_node_class
        class Leaf(Base):
            def tree_flatten(self):
                return (self.w,), None

            @classmethod
            def tree_unflatten(cls, aux, children):
                return cls(*children)
        """,
        """
        import jax

        class Model:
            def __init__(self, w):
                self.w = w
                self.step = jax.jit(self._step)  # a bound method: self is not an argument

            def _step(self, x):
                return x * self.w
        """,
        """
        from functools import partial
        import jax
        import flax.linen as nn

        @partial(jax.jit, static_argnums=0)
        def apply(model, params, x):
            return model.apply(params, x)

        model = nn.Dense(3)
        params = model.init(jax.random.key(0), jax.numpy.ones(2))
        y = apply(model, params, jax.numpy.ones(2))  # the module is static: hashable, built once
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        j = called_jitted(node, ctx.names, ctx.analysis, ctx.function)
        if j is None:
            return
        for pos, kw, pname, value in call_args(node, j):
            if j.is_static(pos, kw):
                continue
            what = _object(value, ctx)
            if what is None:
                continue
            self.report(
                ctx,
                value,
                f"`{ctx.text(value)}` is {what}, passed for `{pname}`, a traced argument of `{j.name}`: jit cannot turn it into an "
                "abstract array, so the call raises TypeError",
                help=f"declare `{pname}` static (`static_argnames={pname!r}`; the object must hash stably), close over it, or pass its arrays",
                detail=f"{j.name}:{pname}",
                evidence={"kind": what},
            )

    def visit_ClassDef(self, node: ast.ClassDef, ctx: FileContext) -> None:
        if not _plain_class(node, ctx):
            return
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._method(stmt, node, ctx)

    def _method(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, cls: ast.ClassDef, ctx: FileContext) -> None:
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
        if not params or params[0] != "self" or not fn.decorator_list:
            return
        if any(ctx.qualname(d) in ("builtins.staticmethod", "builtins.classmethod") for d in fn.decorator_list):
            return
        inner = fn.decorator_list[-1]  # the decorator applied to the def itself
        t = ctx.names.transform(inner)
        if t is None or t.qualname not in _ABSTRACTING or _self_static(t, len(params)):
            return
        how = f"`{ctx.text(inner).lstrip('@')}`"
        shifted = _shifted_indices(t, params)
        why = f"; its indices count `self` as 0, so {shifted}" if shifted else ""
        self.report(
            ctx,
            inner,
            f"{how} makes `self` of `{cls.name}.{fn.name}` a traced argument, and `{cls.name}` is a plain class, not a pytree: "
            f"every call raises TypeError (`{cls.name}` cannot be interpreted as an abstract array){why}",
            help="mark `self` static (`static_argnums=0`: the instance must hash stably), register the class as a pytree, "
            "or transform a function of the arrays and call it from the method",
            detail=f"{cls.name}.{fn.name}:self",
            evidence={"class": cls.name, "transform": t.qualname},
            function=f"{cls.name}.{fn.name}",
        )


def _self_static(t: Transform, n: int) -> bool:
    return 0 in t.static_argnums or (n > 0 and -n in t.static_argnums) or "self" in t.static_argnames


def _shifted_indices(t: Transform, params: list[str]) -> str:
    shown = [f"{i} is `{params[i]}`" for i in t.static_argnums if 0 < i < len(params)]
    return ", ".join(shown)


def _plain_class(cls: ast.ClassDef, ctx: FileContext) -> bool:
    """Instances of `cls` are provably not pytrees: no base but `object` (or a linen Module), a
    plain `@dataclass` at most, no flatten method, no registration and no subclass in this
    module, and an `__init__` or dataclass fields (a mixin or abstract base is not judged)."""
    if ctx.analysis.class_nodes.get(cls.name) is not cls or cls.keywords:
        return False
    for b in cls.bases:
        if ctx.qualname(b) not in _NON_PYTREE_BASES:
            return False
    dataclass = False
    for d in cls.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if ctx.qualname(target) not in _PLAIN_DECORATORS:
            return False
        dataclass = True
    names = {s.name for s in cls.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if names & _PYTREE_METHODS:
        return False
    linen = any(ctx.qualname(b) != "builtins.object" for b in cls.bases)
    if not (dataclass or linen or "__init__" in names):
        return False
    subclassed, registered = _subclassed_and_registered(ctx)
    return cls.name not in subclassed and cls.name not in registered


def _subclassed_and_registered(ctx: FileContext) -> tuple[frozenset[str], frozenset[str]]:
    """The names this module uses as a class's base, and those it passes to a pytree
    registration: one walk per file (it was one per class)."""
    def collect() -> tuple[frozenset[str], frozenset[str]]:
        bases: set[str] = set()
        registered: set[str] = set()
        for other in ast.walk(ctx.tree):
            if isinstance(other, ast.ClassDef):
                bases.update(b.id for b in other.bases if isinstance(b, ast.Name) and b.id != other.name)
            elif isinstance(other, ast.Call) and any(isinstance(a, ast.Name) for a in other.args):
                q = ctx.qualname(other.func) or ""
                if any(r in q for r in _REGISTER):
                    registered.update(a.id for a in other.args if isinstance(a, ast.Name))
        return frozenset(bases), frozenset(registered)

    return ctx.analysis.memo("subclassed_and_registered", collect)


def _object(value: ast.AST, ctx: FileContext, depth: int = 0) -> str | None:
    """What `value` is when it is provably an object JAX cannot trace: an instance of a plain
    class of this module, or a flax linen layer; else None."""
    if isinstance(value, ast.Call):
        q = ctx.qualname(value.func) or ""
        if q.startswith("flax.linen.") and q.rsplit(".", 1)[1][:1].isupper() and q not in ("flax.linen.Module", "flax.linen.Variable"):
            return f"a flax linen `{q.rsplit('.', 1)[1]}` module"
        if isinstance(value.func, ast.Name) and ctx.analysis.resolve(value.func, ctx.function) is None:
            cls = ctx.analysis.class_nodes.get(value.func.id)
            if cls is not None and _plain_class(cls, ctx) and not _shadowed(value.func.id, ctx):
                return f"an instance of `{cls.name}`, a plain class (not a pytree)"
        return None
    if isinstance(value, ast.Name) and depth == 0:
        scope: ast.AST = ctx.function.node if ctx.function is not None else ctx.tree
        binds = [n for n in ast.walk(scope) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With, ast.NamedExpr)) and _binds(n, value.id)]
        if len(binds) == 1 and isinstance(binds[0], ast.Assign) and len(binds[0].targets) == 1 and isinstance(binds[0].targets[0], ast.Name):
            return _object(binds[0].value, ctx, depth + 1)
    return None


def _binds(node: ast.AST, name: str) -> bool:
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.NamedExpr)):
        targets = [node.target]
    elif isinstance(node, ast.With):
        targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
    return any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t))


def _shadowed(name: str, ctx: FileContext) -> bool:
    """`name` is rebound at module level besides its class statement."""
    return any(_binds(st, name) for st in ctx.tree.body if not isinstance(st, ast.ClassDef))
