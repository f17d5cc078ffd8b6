from __future__ import annotations

import ast
import typing
from collections import defaultdict

from stabcheck.rule import Rule
from stabcheck.rules.recompile._jitted import Jitted, call_args, jitted_functions
from stabcheck.static.context import FileContext

_WEAK_MAKERS = frozenset({"jax.numpy.asarray", "jax.numpy.array"})
_ARRAY_MAKERS = frozenset({"array", "asarray", "zeros", "ones", "full", "arange", "linspace", "float32", "float16", "bfloat16", "float64", "int32", "int64"})
_KIND_TEXT = {"none": "`None`", "int": "a Python int", "float": "a Python float", "array": "an array", "other": "a value"}


class PythonScalarArg(Rule):
    """## What it does
    Flags a `jax.jit` function whose non-static argument changes kind between calls (a Python
    number and then an array, `None` and then a value, an int and then a float), so that JAX
    traces and compiles it again. The patterns:

    * a loop-carried value that starts as a Python number (`loss = 0.0`) and is then fed back
      as the jitted function's own output, an array: weak-typed scalar first, strong array
      afterwards (a guess, `--preview`, where the function hands that parameter back having
      only added numbers that are not visibly arrays, `step += args.num_envs`: weak stays weak);
    * `None` at one call site and a value at another, a Python int at one and a Python float
      at another, or a Python number at one and an array at another.

    In test files (`test_*.py`, `*_test.py`, `conftest.py`, anything under `tests/`) the finding
    is a guess, shown only with `--preview`: a test compiles each variant on purpose, and a
    recompile costs time, not a wrong result.

    A Python scalar whose *value* merely changes does not retrace and is not flagged. Only a
    name that is the jitted function itself counts: the jit must be its outermost decorator
    (or under `functools.wraps`) and the name defined once; a def under another decorator
    (multiple dispatch, plum's `@dispatch`) or one of several defs of one name is not.

    ## Why is this bad?
    A jitted function is compiled once per distinct input signature. A Python `1.0` is a
    weak-typed float32 scalar; the function's output is a strong float32 array; `None` is an
    empty pytree: each is a new signature, so the step is compiled again (seconds, for a
    large model), and a cache-size or retrace check fails.

    ## Example
    ```python
    @jax.jit
    def ema(avg, x):
        return 0.9 * avg + 0.1 * jnp.mean(x)

    avg = 0.0
    for batch in batches:
        avg = ema(avg, batch)
    ```

    ## Use instead
    Start the carried value as a strongly typed array:
    ```python
    avg = jnp.float32(0.0)  # or jnp.zeros((), jnp.float32)
    for batch in batches:
        avg = ema(avg, batch)
    ```
    """

    code = "STB503"
    name = "python-scalar-arg"
    severity = "warning"
    cost_only = True
    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def ema(avg, x):
            return 0.9 * avg + 0.1 * jnp.mean(x)

        def track(batches):
            avg = 0.0
            for batch in batches:
                avg = ema(avg, batch)  # expect: STB503
            return avg
        """,
        """
        import jax
        import jax.numpy as jnp

        def apply(params, x, mask):
            h = x @ params
            return h if mask is None else h * mask

        apply_jit = jax.jit(apply)
        train_out = apply_jit(jnp.ones((2, 2)), jnp.ones(2), None)
        eval_out = apply_jit(jnp.ones((2, 2)), jnp.ones(2), jnp.ones(2))  # expect: STB503
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def step(params, lr):
            return params * (1 - lr)

        p = step(jnp.ones(3), 1)
        p = step(p, 0.5)  # expect: STB503
        """,
        """
        import functools
        import jax
        import jax.numpy as jnp

        def apply(params, x, mask):
            h = x @ params
            return h if mask is None else h * mask

        @functools.wraps(apply)
        @jax.jit
        def apply_jit(params, x, mask):
            h = x @ params
            return h if mask is None else h * mask

        train_out = apply_jit(jnp.ones((2, 2)), jnp.ones(2), None)
        eval_out = apply_jit(jnp.ones((2, 2)), jnp.ones(2), jnp.ones(2))  # expect: STB503
        """,
    )
    VALID = (
        """
        from functools import partial
        import jax
        from plum import dispatch

        # multiple dispatch: `random_state` is the dispatcher, which picks one of the defs by
        # the argument types; its calls are not calls of one jitted function
        @dispatch
        def random_state(hilb: object, key, batches: int):
            return random_state(hilb, hilb.constraint, key, batches)

        @dispatch
        @partial(jax.jit, static_argnames=("hilb", "batches"))
        def random_state(hilb: object, constraint: None, key, batches: int):
            return jax.random.bernoulli(key, 0.5, (batches, hilb.size))

        @dispatch
        @partial(jax.jit, static_argnames=("hilb", "batches"))
        def random_state(hilb: object, constraint: object, key, batches: int):
            return random_state(hilb, None, key, batches)
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def ema(avg, x):
            return 0.9 * avg + 0.1 * jnp.mean(x)

        def track(batches):
            avg = jnp.float32(0.0)
            for batch in batches:
                avg = ema(avg, batch)
            return avg
        """,
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def sgd(params, grads, lr):
            return params - lr * grads

        def train(params, grads_seq):
            for i, grads in enumerate(grads_seq):
                lr = 0.1 / (1 + i)  # a Python float whose value changes: no retrace
                params = sgd(params, grads, lr)
            return params
        """,
        """
        import jax
        import jax.numpy as jnp

        NUM_ENVS = 8

        @jax.jit
        def rollout(x, global_step):
            for _ in range(4):
                global_step += NUM_ENVS  # a weak int plus Python ints: still weak, one compile
                x = x + 1.0
            return x, global_step

        def train(x, n):
            global_step = 0
            for _ in range(n):
                x, global_step = rollout(x, global_step)
            return x
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        @partial(jax.jit, static_argnames="mode")
        def run(x, mode):
            return x if mode is None else x * 2

        a = run(jnp.ones(2), mode=None)
        b = run(jnp.ones(2), mode="double")
        """,
    )

    # -- a loop-carried value that starts as a Python number ---------------------------------
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if not ctx.loops or not isinstance(node.func, ast.Name):
            return
        j = _jitted(node.func, ctx)
        parent = ctx.parent
        if j is None or not isinstance(parent, ast.Assign) or parent.value is not node:
            return
        targets = {n.id for t in parent.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        info = ctx.analysis.resolve(node.func, ctx.function)
        for pos, kw, pname, value in call_args(node, j):
            if j.is_static(pos, kw) or not isinstance(value, ast.Name) or value.id not in targets:
                continue
            init = self._initial(value.id, ctx)
            if init is None:
                continue
            index = _output_index(parent, value.id)
            # the function hands the parameter back having only added numbers that are not
            # visibly arrays to it (`step += args.num_envs`): the output stays weak, one compile,
            # unless those numbers are arrays after all
            weak = info is not None and index is not False and _hands_back_weak(info.node, pname, index, ctx.tree)
            self.report(
                ctx,
                value,
                f"`{value.id}` starts as {_weak(init, ctx)} `{ctx.text(init)}` (line {init.lineno}) and is then fed back as `{j.name}`'s output, an array; "
                f"`{j.name}` is traced and compiled twice (weak-typed scalar, then strong array)",
                help=f"start it as a typed array: `{value.id} = jnp.asarray({ctx.text(init)}, dtype=jnp.float32)` (or the dtype it carries)",
                detail=f"{j.name}:{pname}",
                evidence={"initial": ctx.text(init), "initial_line": init.lineno},
                confidence="guess" if weak else "proven",
            )

    def _initial(self, name: str, ctx: FileContext) -> ast.expr | None:
        """The weak Python-number value `name` holds when the outermost loop starts, if any."""
        loop = ctx.loops[0]
        scope: ast.AST = ctx.function.node if ctx.function is not None else ctx.tree
        best: ast.Assign | None = None
        loop_line = getattr(loop, "lineno", 0)
        for n in _own(scope):
            if isinstance(n, ast.Assign) and n.lineno < loop_line and any(isinstance(t, ast.Name) and t.id == name for t in n.targets):
                if best is None or n.lineno > best.lineno:
                    best = n
        if best is None or not _is_weak_scalar(best.value, ctx):
            return None
        return best.value

    # -- call sites that disagree ------------------------------------------------------------
    def visit_Module(self, node: ast.Module, ctx: FileContext) -> None:
        jitted = jitted_functions(ctx.analysis)
        if not jitted:
            return
        sites: dict[tuple[str, str], list[tuple[str, ast.expr]]] = defaultdict(list)
        calls = sorted((c for _, c in ctx.analysis.calls), key=lambda c: (c.lineno, c.col_offset))
        for call in calls:
            j = jitted.get(call.func.id) if isinstance(call.func, ast.Name) else None
            if j is None:
                continue
            for pos, kw, pname, value in call_args(call, j):
                if not j.is_static(pos, kw):
                    sites[(j.name, pname)].append((_kind(value, ctx), value))
        for (fname, pname), seen in sites.items():
            first_kind, first = seen[0]
            for kind, value in seen[1:]:
                if not _retraces(first_kind, kind):
                    continue
                self.report(
                    ctx,
                    value,
                    f"`{fname}` gets {_KIND_TEXT[kind]} for `{pname}` here and {_KIND_TEXT[first_kind]} at line {first.lineno}; "
                    f"each is a new input signature, so `{fname}` is traced and compiled again",
                    help="pass the same kind of value at every call: an array of one dtype (`jnp.asarray(v, dtype=...)`), or mark the argument static",
                    detail=f"{fname}:{pname}",
                    evidence={"kinds": [first_kind, kind], "first_line": first.lineno},
                )
                break


def _jitted(func: ast.Name, ctx: FileContext) -> Jitted | None:
    j = jitted_functions(ctx.analysis).get(func.id)
    if j is None:
        return None
    info = ctx.analysis.resolve(func, ctx.function)
    if info is not None and not any(t.qualname == j.transform.qualname for t in info.transforms):
        return None  # shadowed by an unrelated local function
    return j


def _own(scope: ast.AST):  # type: ignore[no-untyped-def]
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(n))


def _output_index(assign: ast.Assign, name: str) -> int | None | typing.Literal[False]:
    """Where `name` takes the call's output: None (the whole output), a tuple position, or False."""
    for t in assign.targets:
        if isinstance(t, ast.Name) and t.id == name:
            return None
        if isinstance(t, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in t.elts):
            for i, e in enumerate(t.elts):
                if isinstance(e, ast.Name) and e.id == name:
                    return i
    return False


def _hands_back_weak(fn: ast.AST, pname: str, index: int | None, module: ast.Module) -> bool:
    """Does every `return` of `fn` hand back its parameter `pname` (at `index` of a returned
    tuple), changed only by arithmetic with numbers that are not visibly arrays: literals, names
    that are not its parameters and that the module binds to numbers if at all (`num_envs`),
    attributes of such names (`args.num_envs`)? Weak stays weak then."""
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    a = fn.args
    params = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)} - {pname}
    returns = [n for n in _own(fn) if isinstance(n, ast.Return)]
    if not returns:
        return False
    for r in returns:
        v = r.value
        if index is not None:
            v = v.elts[index] if isinstance(v, ast.Tuple) and len(v.elts) > index else None
        if not (isinstance(v, ast.Name) and v.id == pname):
            return False

    local = {m.id for n in _own(fn) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)) for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) for m in ast.walk(t) if isinstance(m, ast.Name)}

    def plain(e: ast.AST) -> bool:
        if _number(e) is not None or (isinstance(e, ast.Name) and e.id == pname):
            return True
        if isinstance(e, ast.Name):  # a global or closure number (`num_envs`), not one computed here
            return e.id not in params and e.id not in local and all(_number(v) is not None for v in _module_values(module, e.id))
        if isinstance(e, ast.BinOp) and isinstance(e.op, (ast.Add, ast.Sub, ast.Mult)):
            return plain(e.left) and plain(e.right)
        base = e
        while isinstance(base, ast.Attribute):
            base = base.value
        return base is not e and isinstance(base, ast.Name) and base.id not in params and base.id != pname

    for n in _own(fn):
        if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name) and n.target.id == pname:
            if not isinstance(n.op, (ast.Add, ast.Sub, ast.Mult)) or not plain(n.value):
                return False
        elif isinstance(n, (ast.Assign, ast.AnnAssign)) and any(isinstance(m, ast.Name) and m.id == pname for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) for m in ast.walk(t)):
            if not (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) and n.value is not None and plain(n.value)):
                return False
        elif isinstance(n, (ast.For, ast.AsyncFor, ast.NamedExpr)) and any(isinstance(m, ast.Name) and m.id == pname for m in ast.walk(n.target)):
            return False  # bound some other way
    return True


def _module_values(module: ast.Module, name: str) -> list[ast.expr]:
    """The values the module's top level assigns to `name`."""
    return [st.value for st in module.body if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in st.targets)]


def _number(e: ast.AST) -> int | float | None:
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, (ast.USub, ast.UAdd)):
        e = e.operand
    if isinstance(e, ast.Constant) and isinstance(e.value, (int, float)) and not isinstance(e.value, bool):
        return e.value
    return None


def _is_weak_scalar(e: ast.AST, ctx: FileContext) -> bool:
    if _number(e) is not None:
        return True
    if isinstance(e, ast.Call) and ctx.qualname(e.func) in _WEAK_MAKERS and len(e.args) == 1 and not e.keywords:
        return _number(e.args[0]) is not None
    return False


def _weak(e: ast.AST, ctx: FileContext) -> str:
    n = _number(e)
    if n is None:
        return "the weakly typed"
    return "the Python int" if isinstance(n, int) else "the Python float"


def _kind(e: ast.AST, ctx: FileContext) -> str:
    if isinstance(e, ast.Constant) and e.value is None:
        return "none"
    n = _number(e)
    if n is not None:
        return "int" if isinstance(n, int) else "float"
    if isinstance(e, ast.Call):
        q = ctx.qualname(e.func) or ""
        if q.startswith(("jax.numpy.", "numpy.")) and q.rsplit(".", 1)[1] in _ARRAY_MAKERS and not _is_weak_scalar(e, ctx):
            return "array"
    return "other"


def _retraces(a: str, b: str) -> bool:
    """Do two argument kinds certainly give different abstract signatures?"""
    if a == b:
        return False
    if "none" in (a, b):
        return True
    return "other" not in (a, b)
