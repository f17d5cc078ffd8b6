from __future__ import annotations

import ast
from typing import Literal

from stabcheck.rule import Rule, in_test_function, only
from stabcheck.rules.tracer_leaks._values import traced_value
from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext

_MUTATORS = frozenset({"append", "extend", "insert", "add", "update", "setdefault", "appendleft", "extendleft", "put", "put_nowait"})


class SideEffectInTransform(Rule):
    """## What it does
    Flags Python side effects inside a staged-out transform (`jit`, `vmap`, a `lax` body, ...):
    `print()` of a traced value (in a Module method that no visible transform reaches, which
    `init`/`apply` may run eagerly, only a guess), assignments to `global` names or to `nonlocal` names of an
    enclosing function that is not itself transformed (a counter a test increments, `n += 1`,
    is a guess: tests count traces on purpose), and storing a
    traced value outside the function: `SOME_LIST.append(x)`, `CACHE[key] = x` on a module or
    closure container, or `self.attr = x` in a class that is not a flax/equinox Module. A function
    handed to a host callback (`jax.debug.callback(log, x)`, `jax.pure_callback`, `io_callback`)
    is not traced: JAX runs it on the host with values, at every step, so its side effects are
    what it is for. `self.attr = x` in a method decorated with `jax.jit` (`self` not static) is a
    guess: JAX runs the method on the copy of `self` it unflattens (distrax's `Jittable`), not on
    the caller's object. So is a store followed by a call on `self` that may take the value back
    out before the trace ends (`self.set_state(s)`, `self.v = ...`, `return self.pop_state()`):
    a method this module does not define for the class, or one that rebinds the attribute or uses
    `setattr`/`__dict__`. A `nonlocal` name that a `lax` body only rebinds from its carry (its
    first use stores it) and that the enclosing function rebinds to the transform's result
    (`(acc, n), _ = lax.scan(body, (acc, 0), xs)`) is a guess too: the tracer stored is dead.
    The confirm stage reports a real run's `UnexpectedTracerError` here too, at the line that
    made the leaked value (JAX names it), where the static stage does not see the store (a
    dict reached through an object's field, as a lazily created parameter is).

    ## Why is this bad?
    A transformed function's Python body runs once, when it is traced; the compiled program
    replays only the array operations. A `print` shows `Traced<float32[]>` once instead of a
    value per call, a global counter counts traces instead of calls, and a traced value stored
    outside escapes its trace: using it later raises `UnexpectedTracerError`.

    ## Example
    ```python
    losses = []

    @jax.jit
    def train_step(params, batch):
        loss = loss_fn(params, batch)
        losses.append(loss)
        return loss
    ```

    ## Use instead
    Return what you want to keep and collect it outside; print with `jax.debug.print`, which
    runs on every call:
    ```python
    @jax.jit
    def train_step(params, batch):
        loss = loss_fn(params, batch)
        jax.debug.print("loss {}", loss)
        return loss

    losses.append(train_step(params, batch))
    ```
    """

    code = "STB104"
    name = "side-effect-in-transform"
    severity = "warning"
    stages = ("static", "confirmed")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        losses = []

        @jax.jit
        def train_step(params, batch):
            loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
            print("loss", loss)  # expect: STB104
            losses.append(loss)  # expect: STB104
            return loss
        """,
        """
        import jax

        n_calls = 0

        @jax.jit
        def forward(x):
            global n_calls
            n_calls += 1  # expect: STB104
            return x * 2
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        class Trainer:
            def __init__(self, lr):
                self.lr = lr

            @partial(jax.jit, static_argnums=0)
            def step(self, params, grads):
                new = jax.tree.map(lambda p, g: p - self.lr * g, params, grads)
                self.last_grads = grads  # expect: STB104
                return new
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def cumulative(xs):
            total = 0.0

            def body(carry, x):
                nonlocal total
                total = total + x  # expect: STB104
                return carry + x, carry

            return lax.scan(body, 0.0, xs)
        """,
    )
    VALID = (
        """
        import flax.linen as nn

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.Dense(4)(x)
                print("after dense", x[0, :4])  # init/apply run it eagerly; no jit in sight: a guess
                return x
        """,
        """
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        _shapes = {}

        def cached_eval_shape(fun, *args):
            key = (fun, tuple((a.shape, a.dtype) for a in args))
            if key not in _shapes:
                _shapes[key] = eqx.filter_eval_shape(fun, *args)  # shapes and dtypes, not tracers
            return _shapes[key]

        @jax.jit
        def f(x):
            return jnp.zeros(cached_eval_shape(jnp.sin, x).shape) + x
        """,
        """
        import jax

        class Accumulator:
            def __init__(self, x):
                self.total = x.sum()  # an object built inside the trace dies with it

            def mean(self, n):
                return self.total / n

        @jax.jit
        def mean_of(x):
            return Accumulator(x).mean(x.shape[0])

        def output_structure(f, x):
            structure = None

            def capture(v):
                nonlocal structure
                out = f(v)
                structure = jax.tree_util.tree_structure(out)  # eval_shape runs it once, on purpose
                return out

            jax.eval_shape(capture, x)
            return structure
        """,
        """
        import jax
        import jax.numpy as jnp

        losses = []

        @jax.jit
        def train_step(params, batch):
            loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
            jax.debug.print("loss {}", loss)
            print("tracing train_step")
            return loss

        def train(params, batches):
            for b in batches:
                losses.append(train_step(params, b))
            return losses
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def forward(params, x):
            cache = {}
            outs = []
            for name in ("a", "b"):
                cache[name] = x @ params[name]
                outs.append(cache[name])
            return sum(outs)
        """,
        """
        import flax.linen as nn
        import jax.numpy as jnp

        class Dense(nn.Module):
            features: int

            @nn.compact
            def __call__(self, x):
                w = self.param("w", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
                return x @ w
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def two_pass(x):
            stats = None

            def collect(v):
                nonlocal stats
                stats = jnp.mean(v)
                return v - stats

            y = collect(x)
            return y / stats

        def grad_logger(loss_fn):
            history = []

            def wrapped(params, x):
                g = jax.grad(loss_fn)(params, x)
                history.append(g)  # not transformed: runs per call
                return g

            return wrapped, history
        """,
    )

    @only(inside="abstract")
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        q = ctx.qualname(node.func)
        if q == "builtins.print":
            traced = [a for a in node.args if traced_value(a, ctx)]
            traced += [v for a in node.args if isinstance(a, ast.JoinedStr) for v in a.values if isinstance(v, ast.FormattedValue) and traced_value(v.value, ctx)]
            if traced:
                culprit = ctx.text(traced[0])
                self.report(
                    ctx,
                    node,
                    f"`print` of the traced `{culprit}` runs once, when the function is traced, and shows a tracer, not the value; "
                    "later calls print nothing",
                    help="use `jax.debug.print(\"... {}\", value)`, which prints on every call",
                    detail=f"print:{culprit}",
                    # a Module method is assumed traced, but `init`/`apply` run it eagerly, printing
                    # values, until something jits it: without a visible transform, a guess
                    confidence="guess" if _module_method_only(ctx.function) else "proven",
                )
            return
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _MUTATORS and isinstance(func.value, ast.Name):
            owner = _outer_owner(func.value.id, ctx)
            if owner is None:
                return
            values = [*node.args, *(k.value for k in node.keywords)]
            if any(traced_value(v, ctx) for v in values):
                self._escape(ctx, node, f"`{ctx.text(node)}` stores a traced value in the {owner} `{func.value.id}`", func.value.id)

    @only(inside="abstract")
    def visit_Assign(self, node: ast.Assign, ctx: FileContext) -> None:
        for t in node.targets:
            self._target(t, node.value, node, ctx)

    @only(inside="abstract")
    def visit_AugAssign(self, node: ast.AugAssign, ctx: FileContext) -> None:
        self._target(node.target, node.value, node, ctx)

    @only(inside="abstract")
    def visit_AnnAssign(self, node: ast.AnnAssign, ctx: FileContext) -> None:
        if node.value is not None:
            self._target(node.target, node.value, node, ctx)

    def _target(self, target: ast.expr, value: ast.expr, node: ast.stmt, ctx: FileContext) -> None:
        if not ctx.in_abstract or ctx.function is None:
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._target(t, value, node, ctx)
            return
        if isinstance(target, ast.Name):
            kind = _declared(ctx.function, target.id)
            if kind == "nonlocal" and not ctx.function.transforms and _binder_traced(ctx.function, target.id):
                return  # a plain nested function of the same trace: no trace boundary is crossed
            if kind is not None and _shape_only(ctx.function) and not ctx.proves_traced(value):
                return  # `jax.eval_shape` runs the function once, on purpose, to learn about it
            if kind is not None:
                leaks = traced_value(value, ctx)
                confidence: Literal["proven", "guess"] = "guess" if not leaks and isinstance(node, ast.AugAssign) and in_test_function(ctx) else "proven"
                if kind == "nonlocal" and _carry_alias(ctx.function, target.id, ctx):
                    # `nonlocal acc` then `acc, n = carry` in a scan body, and `(acc, n), _ =
                    # lax.scan(body, ...)` outside: the body never reads the stale closure value
                    # and the outer name is rebound to the scan's result; the tracer is dead
                    confidence = "guess"
                self.report(
                    ctx,
                    node,
                    f"`{target.id}` is a {kind} variable assigned inside a transformed function; the assignment runs once per trace, not once per call"
                    + (", and leaks a tracer" if leaks else ""),
                    help="return the new value and keep state outside the transform (or in the carry of a `lax` loop)",
                    detail=target.id,
                    # a test counting traces (`nonlocal n; n += 1`, then `assert n == 1`) does
                    # it on purpose: once per trace is what it measures
                    confidence=confidence,
                )
            return
        if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            owner = _outer_owner(target.value.id, ctx)
            if owner is not None and traced_value(value, ctx):
                self._escape(ctx, node, f"`{ctx.text(target)} = ...` stores a traced value in the {owner} `{target.value.id}`", target.value.id)
            return
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            cls = _self_class(ctx.function)
            if cls is None or _is_module(cls, ctx) or not traced_value(value, ctx):
                return
            method = _method(ctx.function)
            if method is None or method.name in _BUILDERS:
                return  # `__init__` of an object built inside the trace: it dies with the trace
            # a method some transform is applied to stores on an object from outside the trace;
            # a method merely called from traced code may be on an object built in the trace
            confidence = "proven" if method.transforms and not _self_traced(method, ctx) else "guess"
            if confidence == "proven" and _may_take_back(method, target.attr, node, cls, ctx):
                # `self.set_state(state)`, `self.velocities = ...`, then `return self.pop_state()`:
                # a later call on `self` that this module does not show, or that rebinds the
                # attribute, may read the state out and clear it before the trace ends
                confidence = "guess"
            self._escape(ctx, node, f"`self.{target.attr} = {ctx.text(value)}` stores a traced value on the `{cls.name}` instance", f"self.{target.attr}", confidence)

    def _escape(self, ctx: FileContext, node: ast.AST, what: str, detail: str, confidence: Literal["proven", "guess"] = "proven") -> None:
        self.report(
            ctx,
            node,
            f"{what}; the tracer outlives its trace, so using it later raises UnexpectedTracerError, and the store happens once per trace, not per call",
            help="return the value from the transformed function and store it outside",
            detail=detail,
            confidence=confidence,
        )


def _self_traced(method: FunctionInfo, ctx: FileContext) -> bool:
    """`@jax.jit` on the method itself, `self` not static: JAX flattens `self` (it must be a
    pytree, or the call raises) and the method runs on the copy it unflattens, so a store on
    `self` lands on that copy, not on the caller's object (distrax's `Jittable`)."""
    first = method.params[0] if method.params else ""
    return first == "self" and first not in method.static_params and any(ctx.names.transform(d) is not None for d in method.node.decorator_list)


_BUILDERS = frozenset({"__init__", "__post_init__", "__new__", "__setstate__", "tree_unflatten", "__check_init__"})


def _module_method_only(info: FunctionInfo | None) -> bool:
    """Traced only by the assumption that a flax/equinox Module method runs under a transform:
    no transform is visible on it or on the functions it is nested in."""
    s = info
    while s is not None:
        if s.transforms:
            return False
        if s.entry.endswith("(a Module method)"):
            return True
        s = s.parent
    return False


def _method(info: FunctionInfo) -> FunctionInfo | None:
    s: FunctionInfo | None = info
    while s is not None and s.cls is None:
        s = s.parent
    return s


def _shape_only(info: FunctionInfo) -> bool:
    """The function (or the one it is nested in) is run only by `eval_shape`/`make_jaxpr`."""
    s: FunctionInfo | None = info
    while s is not None:
        if s.transforms:
            return all(t.family == "trace" for t in s.transforms)
        s = s.parent
    return False


def _carry_alias(info: FunctionInfo, name: str, ctx: FileContext) -> bool:
    """The function's first use of the `nonlocal` name stores it (it never reads the enclosing
    function's value), and the enclosing function rebinds the name in the statement that hands
    this function to a transform (`(acc, n), _ = lax.scan(body, (acc, 0), xs)`)."""
    uses = sorted((n for n in ctx.analysis.own_nodes(info) if isinstance(n, ast.Name) and n.id == name), key=lambda n: (n.lineno, n.col_offset))
    if not uses or not isinstance(uses[0].ctx, ast.Store):
        return False
    first = uses[0]
    stmt = ctx.parent_of(first)
    while stmt is not None and not isinstance(stmt, ast.stmt):
        stmt = ctx.parent_of(stmt)
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(stmt.value)):
        return False  # `acc = acc + x`: the right-hand side reads the closure value first
    outer = info.parent
    if outer is None or isinstance(outer.node, ast.Lambda) or isinstance(info.node, ast.Lambda):
        return False
    fname = info.node.name
    for st in ast.walk(outer.node):
        if isinstance(st, ast.Assign) and any(isinstance(c, ast.Call) and any(isinstance(a, ast.Name) and a.id == fname for a in c.args) for c in ast.walk(st.value)):
            if any(isinstance(n, ast.Name) and n.id == name for t in st.targets for n in ast.walk(t)):
                return True
    return False


def _declared(info: FunctionInfo, name: str) -> str | None:
    """`global`/`nonlocal` if the function declares `name` so."""
    body = info.node.body if isinstance(info.node.body, list) else []
    stack: list[ast.AST] = list(body)
    while stack:  # statements only: `global`/`nonlocal` are statements, never inside expressions
        n = stack.pop()
        if isinstance(n, ast.Global) and name in n.names:
            return "global"
        if isinstance(n, ast.Nonlocal) and name in n.names:
            return "nonlocal"
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                stack.extend(getattr(n, field, None) or ())
    return None


def _binds(info: FunctionInfo, name: str) -> bool:
    """The function binds `name` itself (`name = ...`, `for name in`, ...), not `name[k] = ...`."""
    if name not in info.assigned:
        return False
    body = info.node.body if isinstance(info.node.body, list) else []
    stack: list[ast.AST] = list(body)
    while stack:
        n = stack.pop()
        targets: list[ast.AST] = []
        if isinstance(n, ast.Assign):
            targets = list(n.targets)
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.NamedExpr, ast.comprehension)):
            targets = [n.target]
        elif isinstance(n, ast.withitem) and n.optional_vars is not None:
            targets = [n.optional_vars]
        for t in targets:
            todo = [t]
            while todo:
                x = todo.pop()
                if isinstance(x, ast.Name) and x.id == name:
                    return True
                if isinstance(x, (ast.Tuple, ast.List)):
                    todo.extend(x.elts)
                elif isinstance(x, ast.Starred):
                    todo.append(x.value)
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(n))
    return False


def _binder_traced(info: FunctionInfo, name: str) -> bool:
    s = info.parent
    while s is not None:
        if name in s.params or _binds(s, name):
            return s.transformed
        s = s.parent
    return False


def _outer_owner(name: str, ctx: FileContext) -> str | None:
    """"module-level"/"closure" when `name` is a Python container (list, dict, set, deque) bound
    outside the current function, else None."""
    info = ctx.function
    if info is None or name in info.params or _binds(info, name):
        return None
    s = info.parent
    while s is not None:
        if name in s.params:
            return None  # an argument of the enclosing function: the caller's object
        if _binds(s, name):
            if s.transformed:
                return None
            body = s.node.body if isinstance(s.node.body, list) else []
            return "closure" if _binds_container(body, name, ctx) else None
        s = s.parent
    return "module-level" if _binds_container(ctx.tree.body, name, ctx) else None


_CONTAINER_CALLS = frozenset({"builtins.list", "builtins.dict", "builtins.set", "collections.deque", "collections.defaultdict", "collections.OrderedDict", "collections.Counter"})


def _binds_container(body: list[ast.stmt], name: str, ctx: FileContext) -> bool:
    """Every plain assignment of `name` among these statements is a list/dict/set display or constructor."""
    values: list[ast.expr] = []
    for st in body:
        if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in st.targets):
            values.append(st.value)
        elif isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and st.target.id == name and st.value is not None:
            values.append(st.value)
    return bool(values) and all(
        isinstance(v, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp))
        or (isinstance(v, ast.Call) and ctx.qualname(v.func) in _CONTAINER_CALLS)
        for v in values
    )


def _may_take_back(method: FunctionInfo, attr: str, store: ast.AST, cls: ast.ClassDef, ctx: FileContext) -> bool:
    """After `store`, `method` calls a method of `self` that the class does not define here (a
    base class's, e.g. kfac's `Stateful.pop_state`), or one that rebinds `self.<attr>`, uses
    `setattr` or touches `__dict__` (directly or through another such call)."""
    defs = {b.name: b for b in cls.body if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def clears(fn: ast.AST, depth: int) -> bool:
        for n in ast.walk(fn):
            if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                if any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self" and t.attr == attr for tt in targets for t in ast.walk(tt)):
                    return True
            if isinstance(n, ast.Attribute) and n.attr == "__dict__":
                return True
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("setattr", "delattr"):
                return True
            if depth and isinstance(n, ast.Call) and _self_call(n) and calls(n, depth - 1):
                return True
        return False

    def calls(call: ast.Call, depth: int) -> bool:
        callee = defs.get(call.func.attr)  # type: ignore[attr-defined]
        return callee is None or clears(callee, depth)

    after = getattr(store, "end_lineno", None) or getattr(store, "lineno", 0)
    return any(isinstance(n, ast.Call) and _self_call(n) and n.lineno > after and calls(n, 2) for n in ctx.analysis.own_nodes(method))


def _self_call(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.value.id == "self"


def _self_class(info: FunctionInfo) -> ast.ClassDef | None:
    s: FunctionInfo | None = info
    while s is not None:
        if s.cls is not None:
            return s.cls if "self" in s.params else None
        s = s.parent
    return None


def _is_module(cls: ast.ClassDef, ctx: FileContext) -> bool:
    for b in cls.bases:
        q = ctx.qualname(b) or ctx.text(b)
        if q.endswith(("Module", "Layer", "Model")) or q.startswith(("flax.", "equinox.", "haiku.")):
            return True
    return False
