from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from typing import Literal

from stabcheck.rule import Rule
from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext
from stabcheck.static.names import PARTIAL

_COMPILING = frozenset({"jit"})
# transforms that return a new function object on every call (`jax.grad(f) is not jax.grad(f)`):
# `jax.jit` of one is a new cache key each time; `jax.checkpoint(f)` is cached by JAX
_NEW_FUNCTION = frozenset({"grad", "jacrev", "jacfwd", "hessian", "vmap"})
_CACHES = frozenset({"functools.cache", "functools.lru_cache", "functools.cached_property"})


class JitInLoop(Rule):
    """## What it does
    Flags a compiling transform (`jax.jit`, `jax.pmap`, `eqx.filter_jit`, `nnx.jit`) that is
    built afresh each time it runs: inside a loop, or called inline (`jax.jit(lambda v: ...)(x)`)
    or defined and used inside another function, when what it wraps is a new object each time
    (a `lambda`, a nested `def`, a `functools.partial`, a `jax.grad`/`jax.value_and_grad`/`jax.vmap`
    of any function: each call of those returns a new function; built per call of a function
    rather than in a loop, this last is only a guess) — a build under an `if` in the loop
    (`if need_compile:`) is only a guess, as it runs on the iterations the condition picks —, and a `jax.jit` of a bound method, lambda
    or partial stored on the object in `__init__` (on an `eqx.Module`, a `jax.jit` of anything:
    the jit object is a static field, hashed by identity, so every new Module retraces the
    `filter_jit` function it is given to) when the module builds such objects in a loop (a
    compile per object; a guess when the objects are built once).

    In a loop, the finding is a guess (`--preview`) when the iterations may need different
    programs anyway: the jitted function reads a value the iteration derives from the loop
    variable (`ma = Model(size)`, then `jax.jit(lambda x: ma.apply(p, x))`), or its call gets an
    argument computed from it (`x = jnp.ones((n, n))`: a new shape each size), or the loop walks a
    display of static configurations, or the function jitted is the iteration's own item
    (`for t in trainers: jax.jit(partial(t.loss_fn, cfg))`: one program per item); likewise a
    function that jits inside itself code taken from its argument (`estimator.scan(...)`) counts
    as called per step only where a loop passes it the same object, not each iteration's own. So
    is a jitted function the iteration keeps (appends to a list, stores in a container or on an
    object: `clist.append(Constraint(fun=fun_jit))`, or collects in a comprehension:
    `{k: jax.jit(partial(run, m)) for k, m in models.items()}`): one compile per element, each
    reused by the calls that come later. The loop variable itself passed as an argument
    (`step(params, batch)`, also taken apart: `x, y = batch`) is data of one kind: still a finding.
    A jit built inside another function is likewise a guess when what it jits closes over a
    value that function computes from its parameters (`W = geometry(view)`, then
    `jax.jit(fwd)` of a `fwd` that reads `W`) or tests one of them in Python (`if prime:`): each
    call may be a program of its own; a parameter closed over as data only (`x` in
    `jnp.sum(x * w)`) belongs in an argument, and the compile per call is needless.

    In test files (`test_*.py`, `*_test.py`, `conftest.py`, anything under `tests/`) the finding
    is a guess, shown only with `--preview`: a test compiles each variant on purpose, and a
    recompile costs time, not a wrong result.

    ## Why is this bad?
    JAX caches compiled programs by the wrapped function's identity. A new lambda, nested
    function or `partial` per iteration or per call is a new key: every iteration (or every call
    of the outer function) traces and compiles again, often costing seconds where the step
    itself costs microseconds. `jax.jit(f)` of a module-level `f` hits the cache and is fine.

    ## Example
    ```python
    for batch in batches:
        step = jax.jit(lambda p, b: update(p, b, lr))
        params = step(params, batch)
    ```

    ## Use instead
    Build the jitted function once, outside the loop, and pass what varies as arguments:
    ```python
    step = jax.jit(update)
    for batch in batches:
        params = step(params, batch, lr)
    ```
    A factory that builds the jitted function once and returns it (`make_train_step(loss)`)
    is fine.
    """

    code = "STB501"
    name = "jit-in-loop"
    fixable = "unsafe"
    cost_only = True
    INVALID = (
        """
        import jax

        def train_epoch(params, batches):
            for x, y in batches:
                loss, grads = jax.jit(jax.value_and_grad(mse_loss))(params, x, y)  # expect: STB501
                params = update(params, grads)
            return params
        """,
        """
        import jax

        def train(params, batches, lr):
            for batch in batches:
                step = jax.jit(lambda p, b: update(p, b, lr))  # expect: STB501
                params = step(params, batch)
            return params
        """,
        """
        import jax
        import jax.numpy as jnp

        def serve(requests, w):
            for x in requests:  # the loop variable itself as the argument: one kind of input
                f = jax.jit(lambda v: jnp.tanh(v @ w))  # expect: STB501
                yield f(x)
        """,
        """
        import jax
        import jax.numpy as jnp

        def train(params, batches, lr):
            for batch in batches:
                x, y = batch["x"], batch["y"]  # parts of the loop variable: one kind of input
                step = jax.jit(lambda p, a, b: p - lr * jnp.mean((a @ p - b) ** 2))  # expect: STB501
                params = step(params, x, y)
            return params
        """,
        """
        import jax
        from functools import partial

        def evaluate(model, xs, temperature):
            return jax.jit(partial(model, temperature=temperature))(xs)  # expect: STB501

        def sweep(model, batches):
            return [evaluate(model, xs, 0.5) for xs in batches]
        """,
        """
        import jax
        import jax.numpy as jnp

        def predict(w, x):
            @jax.jit  # expect: STB501
            def forward(v):
                return jnp.tanh(w @ v)
            return forward(x)

        def serve(w, requests):
            for x in requests:
                yield predict(w, x)
        """,
        """
        import jax

        class Scaler:
            def __init__(self, factor):
                self.factor = factor
                self.apply = jax.jit(self._apply)  # expect: STB501

            def _apply(self, x):
                return x * self.factor

        def rescale(x):
            for _ in range(4):
                x = Scaler(0.5).apply(x)
            return x
        """,
        """
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        class Trajectory(eqx.Module):
            scale: jax.Array
            forward: object

            def __init__(self, fk):
                self.scale = jnp.ones(3)
                self.forward = jax.jit(fk)  # expect: STB501

        @eqx.filter_jit
        def predict(model, x):
            return model.forward(model.scale * x)

        def rollout(fk, x):
            return [predict(Trajectory(fk), x) for _ in range(4)]
        """,
    )
    VALID = (
        """
        import jax

        GRAD_FN = jax.jit(jax.value_and_grad(mse_loss))  # built once

        def train_epoch(params, batches):
            for x, y in batches:
                loss, grads = GRAD_FN(params, x, y)
                params = update(params, grads)
            return params

        def remat_epoch(params, batches):
            for x, y in batches:
                params = jax.jit(jax.checkpoint(step))(params, x, y)  # jax.checkpoint(step) is cached by JAX
            return params
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def run_controller(kind, xs):
            # the parameter picks the update rule that the jitted scan reaches through `step`
            # (jax_mppi): one program per controller kind, wherever the jit is built (a guess)
            if kind == "mppi":
                def update_fn(s, o):
                    return s + o
            else:
                def update_fn(s, o):
                    return s * o

            def step(c, x):
                return update_fn(c, x), c

            scan_fn = jax.jit(lambda c, x: lax.scan(step, c, x))
            return scan_fn(jnp.zeros(()), xs)
        """,
        """
        import jax
        import jax.numpy as jnp

        def run(prime):
            @jax.jit
            def evolve(x):
                if prime:  # the flag picks the traced code: each call may be its own program (a guess)
                    x = x + jax.grad(lambda v: jnp.sum(v ** 2))(x)
                return x * 2

            return evolve(jnp.ones(3))

        for prime in (False, True):
            run(prime)
        """,
        """
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        def kinematics(q):
            return jnp.sin(q)

        KINEMATICS = jax.jit(kinematics)  # built once: one static object for every Trajectory

        class Trajectory(eqx.Module):
            scale: jax.Array
            forward: object

            def __init__(self, fk):
                self.scale = jnp.ones(3)
                self.forward = fk

        @eqx.filter_jit
        def predict(model, x):
            return model.forward(model.scale * x)

        def rollout(x):
            return [predict(Trajectory(KINEMATICS), x) for _ in range(4)]
        """,
        """
        import jax
        import jax.numpy as jnp

        def kinematics(q):
            return jnp.sin(q)

        class Robot:  # a plain class: every `jax.jit(kinematics)` shares JAX's trace cache
            def __init__(self):
                self.forward = jax.jit(kinematics)

        def rollout(x):
            return [Robot().forward(x) for _ in range(4)]
        """,
        """
        import jax

        class Scaler:
            def __init__(self, factor):
                self.factor = factor
                self.apply = jax.jit(self._apply)  # one object per run: a guess (--preview)

            def _apply(self, x):
                return x * self.factor

        def rescale(x):
            scaler = Scaler(0.5)
            for _ in range(4):
                x = scaler.apply(x)
            return x
        """,
        """
        import jax

        def update(p, b, lr):
            return p - lr * b

        step = jax.jit(update)

        def train(params, batches, lr):
            for batch in batches:
                params = step(params, batch, lr)
            return params
        """,
        """
        import jax

        def make_train_step(loss_fn):
            @jax.jit
            def train_step(params, x):
                return params - 0.1 * jax.grad(loss_fn)(params, x)
            return train_step
        """,
        """
        import jax

        def loss(p, x):
            return (p * x).sum()

        def run(p, xs):
            for x in xs:
                p = jax.jit(loss)(p, x)  # module-level function: cache hit
            return p
        """,
        """
        import jax
        from functools import partial
        from jax import lax

        def run_inference(step, state, keys):
            # a one-shot driver: it runs once per fit, so one compile per call is the cost of the fit
            final, history = jax.jit(partial(lax.scan, step))(state, keys)
            return final, history
        """,
        """
        import jax

        class Model:
            @jax.jit
            def __call__(self, x):
                @jax.jit  # inside a jitted method: inlined into the outer trace, no recompile
                def inner(v):
                    return v * 2
                return inner(x)
        """,
        """
        from functools import partial
        import jax

        def fit(update, state, batches, schedule):
            need_compile, n = True, 1
            for step, batch in enumerate(batches):
                if step in schedule:
                    n, need_compile = n + 1, True
                if need_compile:  # rebuilt when the configuration changed: a guess (--preview)
                    update_jit = jax.jit(partial(update, num_cats=n))
                    need_compile = False
                state = update_jit(state, batch)
            return state
        """,
        """
        from functools import partial
        import jax

        @partial(jax.jit, static_argnums=1)
        def transform(x, n):
            for i in range(2):
                def step(v):
                    return v * i
                x = jax.pmap(step)(x)  # built in a loop, but traced once per compile of `transform`
            return x
        """,
        """
        import jax
        from functools import partial

        def sweep(f, x):
            # one compile per distinct static configuration is needed whichever way it is spelled
            return [jax.jit(partial(f, method=m))(x) for m in ("lu", "qr", "cholesky")]
        """,
        """
        import jax
        import jax.numpy as jnp

        def benchmark(sizes, make_layer, key):
            # a benchmark over problem sizes: each iteration's layer, parameters and input have
            # their own shapes, so each needs its own compile anyway (a guess, --preview)
            for n in sizes:
                x = jnp.ones((n, n))
                layer = make_layer(n)
                params = layer.init(key, x)
                apply = jax.jit(lambda v: layer.apply(params, v))
                apply(x).block_until_ready()
        """,
        """
        import functools
        import jax

        def purify(trainers, scale):
            # each trainer's loss is its own program: compiled once on first use, reused every
            # step; built outside the loop it would compile as often (a guess, --preview)
            return tuple(jax.jit(functools.partial(t.loss_fn, scale)) for t in trainers)
        """,
    )

    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        tc = ctx.names.transform_call(node)
        if tc is None or tc[0].family not in _COMPILING or not tc[1]:
            return
        fn = tc[1][0]
        fresh = self._fresh(fn, ctx)
        if fresh is None:
            self._per_instance(node, fn, ctx)
            return
        what, per_iteration = fresh
        wrapper = _wrapped(fn, ctx) is not None
        fn = _innermost(fn, ctx)  # judge what the program is made of by the function the transforms wrap
        parent = ctx.parent
        confidence = "proven"
        if _inside_trace(ctx):
            return  # traced once per compile of the enclosing jitted function, then cached with it
        if ctx.loops:
            if not per_iteration:
                return  # the same function object every iteration: one compile, reused
            where = "inside a loop"
            if _binds_loop_target(fn, ctx.loops[-1]) or _jits_loop_item(fn, ctx.loops[-1], ctx) or _varies_with_loop(node, fn, ctx):
                confidence = "guess"  # one compile per distinct configuration may be needed anyway
            elif _conditional_in_loop(ctx):
                confidence = "guess"  # `if need_compile:`: rebuilt only when something changed
            elif _kept(node, ctx):
                confidence = "guess"  # one per element, kept (appended, stored) and reused: each compile serves many calls
        elif _per_call_outer(ctx) and isinstance(parent, ast.Call) and parent.func is node:
            where = f"and called inline inside `{ctx.function.qualname}`"  # type: ignore[union-attr]
            confidence = _repeated(ctx, fn)
        elif _per_call_outer(ctx) and self._used_locally(node, ctx):
            where = f"inside `{ctx.function.qualname}` and used there"  # type: ignore[union-attr]
            confidence = _repeated(ctx, fn)
        else:
            return
        if wrapper and not ctx.loops:
            confidence = "guess"  # `jax.jit(jax.vmap(f))` per call of a function: whether the calls that reach it repeat is not shown
        name = ctx.qualname(node.func) or ctx.text(node.func)
        self.report(
            ctx,
            node,
            f"`{name.removeprefix('jax.')}` of {what} is built {where}; each time it is a new function to JAX, so it traces and compiles again",
            help="build the jitted function once (at module level or in a factory that returns it) and pass what varies as arguments",
            detail=what,
            confidence=confidence,
        )

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: FileContext) -> None:
        outer = ctx.function
        for dec in node.decorator_list:
            t = ctx.names.transform(dec)
            if t is None or t.family not in _COMPILING:
                continue
            confidence = "proven"
            if _inside_trace(ctx):
                return
            if ctx.loops:
                where = "inside a loop: each iteration defines a new function"
                if _varies_with_loop(node, node, ctx):
                    confidence = "guess"  # a function of the iteration's sizes or configuration
            elif outer is not None and _per_call_outer(ctx) and _called(outer.node, node.name) and not _escapes(outer.node, node.name):
                where = f"inside `{outer.qualname}` and called there: each call of `{outer.qualname}` defines a new function"
                confidence = _repeated(ctx, node)
            else:
                return
            self.report(
                ctx,
                dec,
                f"`{node.name}` is jitted {where}, so it traces and compiles again",
                help="move the jitted function to module level (pass closed-over values as arguments), or build it once in a factory",
                detail=node.name,
                confidence=confidence,
            )
            return

    def _per_instance(self, node: ast.Call, fn: ast.AST, ctx: FileContext) -> None:
        """`self.step = jax.jit(self._apply)` in `__init__`: the bound method (or lambda, partial) is
        a new function per object, so every object compiles again (jax-ml/jax#9672). Proven when
        this module builds objects of the class in a loop; a guess otherwise (one object per run)."""
        info = ctx.function
        if info is None or info.name != "__init__" or info.cls is None or not info.params:
            return
        me = info.params[0]
        parent = ctx.parent
        if not (isinstance(parent, ast.Assign) and any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == me for t in parent.targets)):
            return
        bound = isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) and fn.value.id == me
        fresh = bound or isinstance(fn, ast.Lambda) or (isinstance(fn, ast.Call) and ctx.qualname(fn.func) == "functools.partial")
        # on an `eqx.Module` the jit object itself is a field: not an array, so a static leaf that
        # `filter_jit` hashes by identity; a new one per object retraces whatever it wraps
        # (equinox#686), where a plain class's `jax.jit(f)` of one `f` shares JAX's trace cache
        static_field = not fresh and _equinox_module(info.cls, ctx)
        if not (fresh or static_field):
            return
        cls = info.cls.name
        built_in_loop = any(isinstance(c.func, ast.Name) and c.func.id == cls and _in_loop(c, ctx) for _s, c in ctx.analysis.calls)
        method = bound and any(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) and b.name == fn.attr for b in info.cls.body)  # type: ignore[attr-defined]
        what = f"the bound method `{ctx.text(fn)}`" if method else f"`{ctx.text(fn)}`"
        why = (
            f"it is a new object in a static field of every `{cls}` (an `eqx.Module`), so a jitted function given a new `{cls}` traces and compiles again"
            if static_field
            else f"it is a new function for every `{cls}` object, so each object traces and compiles again"
        )
        self.report(
            ctx,
            node,
            f"`{ctx.text(node.func)}` of {what} is built in `{cls}.__init__`: {why}{' (this module builds them in a loop)' if built_in_loop else ''}",
            help="jit a module-level function (or decorate the method with `partial(jax.jit, static_argnums=0)` on a hashable class) "
            "and pass the object's arrays as arguments, or build the object once",
            detail=f"{cls}.__init__",
            confidence="proven" if built_in_loop else "guess",
        )

    @staticmethod
    def _fresh(fn: ast.AST, ctx: FileContext) -> tuple[str, bool] | None:
        """Describe `fn` if it is a new object each time; and whether it is new every iteration
        of the innermost enclosing loop (True) or only every call of the enclosing function."""
        if isinstance(fn, ast.Lambda):
            return "a lambda", True
        if isinstance(fn, ast.Call) and ctx.qualname(fn.func) in ("functools.partial",):
            return f"`{ctx.text(fn)}`", True
        if _wrapped(fn, ctx) is not None:
            inner = _innermost(fn, ctx)
            if isinstance(inner, ast.Call) and ctx.qualname(inner.func) not in PARTIAL:
                return None  # `jax.vmap(make_train(config))`: a factory's program, one per configuration
            if isinstance(inner, ast.Name) and _assigned_here(inner.id, ctx):
                return None  # `fr = make_pair(x)`, then `jax.vmap(fr)`: likewise
            if isinstance(inner, ast.Lambda) and any(isinstance(n, ast.Name) and _made_in_loop(n.id, ctx) for n in ast.walk(inner.body)):
                return None  # `jax.grad(lambda x: pick(x))` of a `pick` each iteration defines anew
            return f"`{ctx.text(fn)}`", True  # `jax.grad(loss)` wraps `loss` in a new function each time
        if isinstance(fn, ast.Name) and ctx.function is not None:
            s = ctx.function
            if fn.id in s.defs:
                loop = ctx.loops[-1] if ctx.loops else None
                inside = loop is not None and any(n is s.defs[fn.id].node for n in ast.walk(loop))
                return f"the nested function `{fn.id}`", inside
            # a def of an enclosing function is one object for every call of this one: `jit` of
            # it hits JAX's cache (it is new only per call of the enclosing function)
        return None

    @staticmethod
    def _used_locally(node: ast.Call, ctx: FileContext) -> bool:
        parent = ctx.parent
        if not (isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name)):
            return False
        name = parent.targets[0].id
        fn = ctx.function.node if ctx.function is not None else None
        return fn is not None and _called(fn, name) and not _escapes(fn, name)


def _equinox_module(cls: ast.ClassDef, ctx: FileContext) -> bool:
    """`cls` derives from `eqx.Module`, directly or through a class of this module."""
    seen: set[str] = set()
    todo = [cls]
    while todo:
        c = todo.pop()
        for b in c.bases:
            if ctx.qualname(b) == "equinox.Module":
                return True
            if isinstance(b, ast.Name) and b.id not in seen:
                seen.add(b.id)
                todo.extend(n for n in ctx.tree.body if isinstance(n, ast.ClassDef) and n.name == b.id)
    return False


_KEEPERS = frozenset({"append", "extend", "insert", "add", "setdefault"})


def _kept(node: ast.Call, ctx: FileContext) -> bool:
    """The jitted function built in the loop is kept beyond its iteration: appended to a list
    (`out.append(jax.jit(f))`, `clist.append(Constraint(fun=fun_jit))`) or stored in a container
    or on an object (`fns[k] = fun_jit`); jax_fdm builds one per constraint type, calls it once
    to warm it up, and SciPy calls each many times; or it is the element a comprehension
    collects (`{k: jax.jit(partial(run, m)) for k, m in models.items()}`: one jitted function
    per model, each compiled on its first call and reused)."""
    parent = ctx.parent
    if isinstance(parent, (ast.ListComp, ast.SetComp, ast.GeneratorExp)) and parent.elt is node:
        return True
    if isinstance(parent, ast.DictComp) and parent.value is node:
        return True
    if isinstance(parent, ast.Call) and parent.func is not node:
        return isinstance(parent.func, ast.Attribute) and parent.func.attr in _KEEPERS
    if not (isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name)):
        return False
    name = parent.targets[0].id
    loop = ctx.loops[-1]
    for n in ast.walk(loop):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _KEEPERS:
            if any(_mentions(a, name) for a in [*n.args, *(k.value for k in n.keywords)]):
                return True
        if _stored(n, name):
            return True
    return False


def _conditional_in_loop(ctx: FileContext) -> bool:
    """The build sits under an `if` (or `try`'s handler) inside the innermost loop: it runs only
    on the iterations the condition picks (`if need_compile:` after the configuration changed),
    not provably on every one."""
    loop = ctx.loops[-1]
    chain = ctx.ancestors
    for i, n in enumerate(chain):
        if n is loop:
            return any(isinstance(m, (ast.If, ast.IfExp, ast.ExceptHandler, ast.Match)) for m in chain[i + 1 :])
    return False


def _wrapped(fn: ast.AST, ctx: FileContext) -> ast.AST | None:
    """The function `fn` wraps when it is a call of a JAX transform that returns a new function
    each time (`jax.grad(loss)`, `jax.vmap(one)`); None otherwise."""
    if not (isinstance(fn, ast.Call) and (ctx.qualname(fn.func) or "").startswith("jax.")):
        return None
    inner = ctx.names.transform_call(fn)
    return inner[1][0] if inner is not None and inner[0].family in _NEW_FUNCTION and inner[1] else None


def _innermost(fn: ast.AST, ctx: FileContext) -> ast.AST:
    """What `fn` wraps through `jax.grad`/`jax.vmap`/... calls (`fn` itself when it is none)."""
    while (inner := _wrapped(fn, ctx)) is not None:
        fn = inner
    return fn


def _assigned_here(name: str, ctx: FileContext) -> bool:
    """`name` is a variable the enclosing function or loops assign (not a def, not a parameter)."""
    if _made_in_loop(name, ctx):
        return True
    return ctx.function is not None and name in ctx.analysis.assigned(ctx.function)


def _made_in_loop(name: str, ctx: FileContext) -> bool:
    """An enclosing loop binds `name` (assigns it or defines it) on each iteration."""
    return any(
        (isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)) or (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
        for loop in ctx.loops
        for n in ast.walk(loop)
    )


def _inside_trace(ctx: FileContext) -> bool:
    """Inside a function that a compiling transform traces (nested defs included): an inner `jit`
    or `pmap` there, even one built in a loop, is traced into the outer program when that is
    compiled, and later calls reuse the outer compile."""
    return ctx.function is not None and ctx.function.abstract


def _per_call_outer(ctx: FileContext) -> bool:
    """The enclosing function is one that runs per step, so a compile there is per call.

    Not: module level, tests (run once), functions memoised with functools.cache.
    """
    fn = ctx.function
    if fn is None or isinstance(fn.node, ast.Lambda) or fn.abstract:
        return False  # inside a traced function, an inner jit is inlined into the outer trace
    s: FunctionInfo | None = fn
    while s is not None:
        if s.name.startswith("test") or (s.cls is not None and "Test" in s.cls.name):
            return False  # tests run once
        s = s.parent
    return not any(ctx.qualname(d.func if isinstance(d, ast.Call) else d) in _CACHES for d in fn.node.decorator_list)


def _repeated(ctx: FileContext, fn: ast.AST) -> Literal["proven", "guess"]:
    """A compile per call of the enclosing function costs only if that function runs many times:
    proven when this module calls it from a loop; otherwise it may be a one-shot driver (a fit, an
    adaptation, a diagnostic), and the finding is a guess. A loop that passes each iteration's
    own object as an argument the jitted `fn` takes its code from (`estimator.scan(...)` of the
    enclosing function's `estimator`, once per agent) compiles a different program per call
    wherever the jit is built: that call does not count."""
    outer = ctx.function
    if outer is None:
        return "guess"
    name = outer.name
    if isinstance(fn, ast.Name):  # `jax.jit(evalf)` of a nested def
        info = ctx.analysis.resolve(fn, outer)
        fn = info.node if info is not None else fn
    if _per_call_program(fn, outer):
        return "guess"
    code = _code_params(fn, outer)
    for _scope, call in ctx.analysis.calls:
        callee = call.func
        called = callee.id if isinstance(callee, ast.Name) else callee.attr if isinstance(callee, ast.Attribute) else None
        if called == name and _in_loop(call, ctx) and not (code and _passes_loop_item(call, outer, code, ctx)):
            return "proven"
    return "guess"


def _per_call_program(fn: ast.AST, outer: FunctionInfo) -> bool:
    """Does the function jitted inside `outer` close over what may make each call's program a
    different one: a value `outer` computes from its parameters (`W = geom(view)`, a pattern
    built from the input), or a parameter it tests in Python (`if prime:`)? Then a call per
    configuration may need its own compile wherever the jit is built, as for a loop's iteration
    (`_varies_with_loop`); a parameter read as data only (`x` in `jnp.sum(x * w)`) belongs in an
    argument, and the compile per call is needless."""
    params = set(outer.params) - {"self", "cls"}
    if not params or not isinstance(fn, (ast.Lambda, ast.FunctionDef, ast.Call)):
        return False
    own: set[str] = set()
    if isinstance(fn, ast.Call):  # `partial(f, cfg)`: what it binds
        parts: list[ast.AST] = [*fn.args[1:], *(k.value for k in fn.keywords)]
    else:
        parts = [fn.body] if isinstance(fn, ast.Lambda) else list(fn.body)
        own = set(_bound_in(fn))
    body = _own_body(outer.node)
    # the defs of `outer` that the jitted code calls are jitted code too (`lambda c, x:
    # lax.scan(step, c, x)` with `step` calling `update_fn`): their bodies count, transitively
    nested = {n.name: n for n in body if isinstance(n, ast.FunctionDef) and n is not fn}
    seen: set[str] = set()
    todo = list(parts)
    while todo:
        for m in ast.walk(todo.pop()):
            if isinstance(m, ast.Name) and m.id in nested and m.id not in seen and m.id not in own:
                seen.add(m.id)
                parts.extend(nested[m.id].body)
                todo.extend(nested[m.id].body)
                own |= set(_bound_in(nested[m.id]))
    if not isinstance(fn, ast.Call):
        for n in (m for part in parts for m in ast.walk(part)):
            if isinstance(n, (ast.If, ast.While, ast.IfExp)) and _reads_any(n.test, params):
                return True  # `if prime:`: the parameter picks the traced code
    computed: set[str] = set()
    derived = set(params)
    assigns = [n for n in body if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and n.value is not None]
    branches = [n for n in body if isinstance(n, ast.If)]
    changed = True
    while changed:
        changed = False
        bound: list[ast.AST] = []
        for a in assigns:
            if _reads_any(a.value, derived):  # type: ignore[arg-type]
                bound.extend(a.targets if isinstance(a, ast.Assign) else [a.target])
        for br in branches:  # `if kind == "a": def update_fn(...)`: the parameter picks what is bound
            if _reads_any(br.test, derived):
                bound.extend(m for m in _own_nodes([*br.body, *br.orelse], enter_roots=False) if isinstance(m, (ast.Name, ast.FunctionDef)))
        for t in bound:
            for m in [t] if isinstance(t, ast.FunctionDef) else ast.walk(t):
                name = m.name if isinstance(m, ast.FunctionDef) else m.id if isinstance(m, ast.Name) and isinstance(m.ctx, ast.Store) else None
                if name is not None and name not in derived:
                    derived.add(name)
                    computed.add(name)
                    changed = True
    return any(_reads_any(part, computed - own) for part in parts)


def _bound_in(fn: ast.AST) -> list[str]:
    """Names a lambda or def binds itself: its parameters and its own assignments."""
    args = fn.args  # type: ignore[attr-defined]
    out = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    out += [x.arg for x in (args.vararg, args.kwarg) if x is not None]
    body = [fn.body] if isinstance(fn, ast.Lambda) else fn.body  # type: ignore[attr-defined]
    out += [m.id for n in body for m in ast.walk(n) if isinstance(m, ast.Name) and isinstance(m.ctx, ast.Store)]
    return out


# array methods: calling one on an argument computes on data, it does not take code from it
_ARRAY_METHODS = frozenset(
    "sum mean max min prod std var any all argmax argmin cumsum cumprod reshape astype transpose swapaxes squeeze ravel flatten "
    "dot clip round conj copy item tolist at get set add multiply T real imag sort argsort take repeat".split()
)


def _code_params(fn: ast.AST, outer: FunctionInfo) -> set[str]:
    """The parameters of `outer` that `fn` (built inside it) takes code from: called
    (`step(x)`) or whose methods it calls (`estimator.scan(x)`), array methods aside."""
    params = set(outer.params)
    out: set[str] = set()
    for n in ast.walk(fn):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name) and f.id in params:
                out.add(f.id)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in params and f.attr not in _ARRAY_METHODS:
                out.add(f.value.id)
    return out


def _passes_loop_item(call: ast.Call, outer: FunctionInfo, code: set[str], ctx: FileContext) -> bool:
    """Does `call` (of `outer`, in a loop) give one of the `code` parameters a value read from
    the target of a loop around it?"""
    targets = {n for loop in _loops_around(call, ctx) if isinstance(loop, (ast.For, ast.AsyncFor)) for n in _loop_names(loop)}
    given = [(outer.params[i], a) for i, a in enumerate(call.args) if i < len(outer.params)]
    given += [(k.arg, k.value) for k in call.keywords if k.arg]
    return any(p in code and _reads_any(a, targets) for p, a in given)


def _in_loop(node: ast.AST, ctx: FileContext) -> bool:
    return next(_loops_around(node, ctx), None) is not None


def _loops_around(node: ast.AST, ctx: FileContext) -> Iterator[ast.AST]:
    """The loops and comprehensions holding `node`, in a function's own body or at the module's
    top level."""
    for info in ctx.analysis.functions.values():
        if isinstance(info.node, ast.Lambda):
            continue
        for n in _own_body(info.node):
            if isinstance(n, _LOOP_NODES) and any(m is node for m in ast.walk(n)):
                yield n
    for st in ctx.tree.body:
        if isinstance(st, _LOOP_NODES) and any(m is node for m in ast.walk(st)):
            yield st


def _generators(loop: ast.AST) -> list[tuple[ast.AST, ast.AST]]:
    """(target, iterable) of a `for` loop or of each generator of a comprehension."""
    if isinstance(loop, (ast.For, ast.AsyncFor)):
        return [(loop.target, loop.iter)]
    return [(g.target, g.iter) for g in getattr(loop, "generators", ())]


def _loop_names(loop: ast.AST) -> set[str]:
    """The names a loop (or comprehension) binds each iteration."""
    return {n.id for t, _ in _generators(loop) for n in ast.walk(t) if isinstance(n, ast.Name)}


def _binds_loop_target(fn: ast.AST, loop: ast.AST) -> bool:
    """`jax.jit(partial(f, cfg=cfg))` in `for cfg in configs`: the loop walks distinct static
    configurations, each of which needs its own compile whichever way it is spelled."""
    # only a loop over a display of non-numeric literals (`("lu", "qr")`, `(True, False)`) is known
    # to walk static configurations; numbers may as well be data that belong in a traced argument
    targets = {n.id for t, it in _generators(loop) if _config_display(it) for n in ast.walk(t) if isinstance(n, ast.Name)}
    if not targets:
        return False
    parts = [*fn.args[1:], *(k.value for k in fn.keywords)] if isinstance(fn, ast.Call) else [fn.body] if isinstance(fn, ast.Lambda) else []
    return any(isinstance(m, ast.Name) and m.id in targets for p in parts for m in ast.walk(p))


def _jits_loop_item(fn: ast.AST, loop: ast.AST, ctx: FileContext) -> bool:
    """`for t in trainers: jax.jit(partial(t.loss_fn, cfg))`: the function jitted (not a value
    bound to it) is the iteration's own item, a different program each time, which needs its own
    compile wherever it is built."""
    if isinstance(fn, ast.Call) and ctx.qualname(fn.func) in PARTIAL and fn.args:
        fn = fn.args[0]
    return isinstance(fn, (ast.Name, ast.Attribute, ast.Subscript)) and _reads_any(fn, _loop_names(loop))


def _varies_with_loop(node: ast.AST, fn: ast.AST, ctx: FileContext) -> bool:
    """Does each iteration of the innermost loop jit a different program: the jitted function
    reads a value the iteration computes from the loop variable (`ma = Model(size)`, then
    `jax.jit(lambda x: ma.apply(p, x))`), or its call gets an argument derived from it
    (`x = jnp.ones((n, n))`, then `f(x)`: a new shape)? Then the loop may walk problem sizes or
    configurations, each needing its own compile whichever way it is spelled. The loop variable
    itself passed as an argument (`step(params, batch)`) is data of one kind: not a new program."""
    loop = ctx.loops[-1]
    targets = _loop_names(loop)
    if not targets:
        return False
    body = _own_nodes(loop.body if isinstance(loop, (ast.For, ast.AsyncFor, ast.While)) else [loop], enter_roots=True)
    jitted: set[str] = set()
    parent = ctx.parent
    if isinstance(parent, ast.Assign):
        jitted = {t.id for t in parent.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.FunctionDef):
        jitted.add(node.name)
    # names the iteration derives from the loop variable (not by calling the jitted function:
    # `params = step(params, batch)` is the carry, of one shape every iteration)
    derived = set(targets)
    same_kind = set(targets)  # the loop variable, and parts of it taken apart (`x, y = batch`)
    assigns = [n for n in body if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and n.value is not None]
    changed = True
    while changed:
        changed = False
        for a in assigns:
            v = a.value
            assert v is not None
            if a is parent or (isinstance(v, ast.Call) and (v.func is node or (isinstance(v.func, ast.Name) and v.func.id in jitted))):
                continue  # the jitted function itself, and what it returns
            if not _reads_any(v, derived):
                continue
            part = isinstance(a, ast.Assign) and _takes_apart(v) and not _reads_any(v, derived - same_kind)
            for t in a.targets if isinstance(a, ast.Assign) else [a.target]:
                for m in ast.walk(t):
                    if isinstance(m, ast.Name) and m.ctx.__class__ is ast.Store and m.id not in derived:
                        derived.add(m.id)
                        if part:
                            same_kind.add(m.id)
                        changed = True
    computed = derived - same_kind
    # the jitted function closes over a value of this iteration
    closure: list[ast.AST]
    if isinstance(fn, ast.Lambda):
        closure = [fn.body]
    elif isinstance(fn, ast.Call):
        closure = [*fn.args, *(k.value for k in fn.keywords)]
    elif isinstance(fn, ast.FunctionDef):
        closure = list(fn.body)
    else:
        closure = []
    # (the loop variable itself closed over, `partial(scale, factor=f)`, is a value that belongs
    # in an argument: one compile would do, as `_binds_loop_target` says for numbers)
    if any(_reads_any(c, computed) for c in closure):
        return True
    # an argument of its calls computed from the loop variable (a new shape or value kind)
    calls = [n for n in body if isinstance(n, ast.Call) and ((isinstance(n.func, ast.Name) and n.func.id in jitted) or n.func is node)]
    if isinstance(ctx.parent, ast.Call) and ctx.parent.func is node:
        calls.append(ctx.parent)
    return any(_reads_any(a, computed) for c in calls for a in [*c.args, *(k.value for k in c.keywords)])


def _takes_apart(v: ast.AST) -> bool:
    """`batch`, `batch["x"]`, `batch.x`, `(x, y)`: parts of a value, nothing computed from it."""
    if isinstance(v, (ast.Tuple, ast.List)):
        return all(_takes_apart(e) for e in v.elts)
    if isinstance(v, ast.Subscript):
        return _takes_apart(v.value) and isinstance(v.slice, (ast.Constant, ast.Name))
    if isinstance(v, ast.Attribute):
        return _takes_apart(v.value)
    return isinstance(v, ast.Name)


def _reads_any(expr: ast.AST, names: set[str]) -> bool:
    return any(isinstance(m, ast.Name) and m.id in names for m in ast.walk(expr))


def _own_nodes(roots: Iterable[ast.AST], enter_roots: bool) -> list[ast.AST]:
    """`roots` and what they hold, not descending into the functions, lambdas and classes defined
    inside them (their bodies run later, if ever); a root that is itself a def is entered when
    `enter_roots` (the jitted def in a loop body: what it reads is what the iteration jits)."""
    out: list[ast.AST] = []
    stack = [(n, True) for n in reversed(list(roots))]  # in source order, each root depth-first
    while stack:
        n, root = stack.pop()
        out.append(n)
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)) or (root and enter_roots):
            stack.extend((c, False) for c in ast.iter_child_nodes(n))
    return out


def _config_display(it: ast.AST) -> bool:
    """A display of non-numeric literals, or of displays of them (`(["a", "b"], ["b"])`)."""
    return (
        isinstance(it, (ast.Tuple, ast.List, ast.Set))
        and bool(it.elts)
        and all((isinstance(e, ast.Constant) and (e.value is None or isinstance(e.value, (str, bool)))) or _config_display(e) for e in it.elts)
    )


def _own_body(fn: ast.AST) -> list[ast.AST]:
    """Nodes of `fn`'s body, not descending into nested functions (their calls run later, if ever)."""
    return _own_nodes(getattr(fn, "body", []), enter_roots=False)


_LOOP_NODES = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _called(fn: ast.AST, name: str) -> bool:
    """Called directly in `fn`'s own body, and not from a loop there (a loop reuses the compile)."""
    in_loop: set[int] = set()
    for n in _own_body(fn):
        if isinstance(n, _LOOP_NODES):
            in_loop |= {id(m) for m in ast.walk(n)}
    calls = [n for n in _own_body(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name]
    return bool(calls) and not any(id(c) in in_loop for c in calls)


def _mentions(expr: ast.AST, name: str) -> bool:
    """`name` appears in `expr` other than as the callee of a call (`f(x)` uses, not passes, f)."""
    callees = {id(n.func) for n in ast.walk(expr) if isinstance(n, ast.Call)}
    return any(isinstance(m, ast.Name) and m.id == name and id(m) not in callees for m in ast.walk(expr))


def _escapes(fn: ast.AST, name: str) -> bool:
    """The name is returned, yielded, stored on an object or in a container: a factory."""
    for n in ast.walk(fn):
        if isinstance(n, (ast.Return, ast.Yield)) and n.value is not None and _mentions(n.value, name):
            return True
        if _stored(n, name):
            return True
        if isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names:
            return True
    return False


def _stored(n: ast.AST, name: str) -> bool:
    """`obj.attr = ...name...` or `d[k] = ...name...`: kept on an object or in a container."""
    return isinstance(n, ast.Assign) and any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in n.targets) and _mentions(n.value, name)
