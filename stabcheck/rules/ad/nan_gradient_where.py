from __future__ import annotations

import ast
import re

from stabcheck.rule import Rule, only
from stabcheck.rules.ad._graph import ADGraph
from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext

_EPS = re.compile(r"(^|[._])(eps|epsilon|tiny)")
_SELECTS = frozenset({"jax.numpy.where", "jax.lax.select"})
# functions whose derivative is inf/NaN somewhere in the input domain
_UNSAFE = frozenset(
    {
        "jax.numpy.sqrt",
        "jax.numpy.log",
        "jax.numpy.log1p",
        "jax.numpy.log2",
        "jax.numpy.log10",
        "jax.numpy.arcsin",
        "jax.numpy.arccos",
        "jax.numpy.arctanh",
        "jax.numpy.reciprocal",
        "jax.numpy.linalg.norm",
        "jax.lax.sqrt",
        "jax.lax.rsqrt",
        "jax.lax.log",
        "jax.lax.log1p",
        "jax.lax.asin",
        "jax.lax.acos",
        "jax.lax.atanh",
        "jax.lax.div",
    }
)
# calls that bound their input: an argument passed through one is guarded
_GUARDS = frozenset({"jax.numpy.where", "jax.lax.select", "jax.numpy.maximum", "jax.numpy.minimum", "jax.numpy.clip", "jax.lax.max", "jax.lax.min", "jax.lax.clamp", "jax.numpy.exp", "jax.nn.softplus"})


class NanGradientWhere(Rule):
    """## What it does
    Flags `jnp.where(cond, f(x), y)` and `lax.select(cond, f(x), y)` where `f` has an infinite
    or undefined derivative outside the region the condition selects (`sqrt`, `log`, `log1p`,
    `arcsin`, `arccos`, `arctanh`, `rsqrt`, `linalg.norm`, division by `x`, `x ** 0.5`), the
    condition tests `x`, and `x` is not itself guarded by an inner `where` (the "double where"),
    in a function a derivative visibly reaches: one this module gives to `grad`,
    `value_and_grad`, `vjp`, `jacrev`, `jvp`, `hessian` (`eqx.filter_grad`, `nnx.grad`...), or
    one such a function calls with traced arguments, maps, scans or defines, or one another
    checked file's derivative reaches, or one a `stabcheck.Entry` declares a derivative for (its
    default transforms, jit and grad, do). Elsewhere the hazard is a guess (`--preview`): another
    module may differentiate the function, or nothing does (an inference path, a sampler, a
    test's expected values), and the traced and confirm stages judge it. Not flagged: an operand no
    gradient reaches (an integer count, an `int` parameter, a constant, a count of thresholded
    booleans `jnp.asarray(a > 0, jnp.float32)`), a condition that tests
    other values than the operand, an operand singular only outside the region the condition
    masks (`where(a > 1e-4, 1 / (1 + sqrt(1 - a)), series)`); and where both branches are formulas of one function (the
    `where` picks the numerically stable one, as in `log1mexp`) the finding is only a guess.
    Code autodiff never enters is not flagged: the body of a `custom_jvp`/`custom_vjp` function
    (its rule gives the derivative), a `custom_vjp` fwd rule, a Pallas kernel (`pallas_call`,
    `emit_pipeline`); a module-level helper that only such code calls is a guess (another module
    may still differentiate it), and so is a `custom_jvp` rule (`@f.defjvp`) or a `custom_vjp`
    bwd rule: autodiff runs them for the first derivative and differentiates them only for a
    second one. An operand whose tested names are all clamped before the `where`
    (`s = jnp.maximum(eps, r2)`, then `z / (2 * sqrt(s) - s)`) is a guess: the clamp may or may
    not keep the formula off its singular point; a divisor (or a slice of one) clamped by a
    positive constant on the way to its use (`n = jnp.maximum(n, 1.0)`, then `s[:k] / n[:k]`) is
    never zero and not flagged. A divisor made only from parameters that the function uses as
    masks or indices (`(s <= t) * b`, `jnp.where(b, ...)`, `x[b]`, then `/ jnp.mean(b)`) is a
    guess: a count of booleans has no gradient, a float weight would. So is an operand that is a
    Python value under the transform that reaches the function (a local lambda called only with
    a static config's floats, `get_mscale(cfg.scaling, cfg.mscale)`; a quotient's numerator must
    be one too), and a `where` whose value ends only as a named entry of a dict
    (`metrics.update({"loss_per_event": ...})`, `scalars[k] = ...`) in a module that
    differentiates with `has_aux`: a metric reported beside the loss, which the loss may never read.

    ## Why is this bad?
    `where` selects outputs, but both branches are computed and differentiated everywhere. In
    the unselected region `f'(x)` is inf or NaN, the incoming cotangent there is 0, and
    `0 * inf = NaN`: the gradient is NaN although the forward value is fine.

    ## Example
    ```python
    def safe_norm(x):
        sq = jnp.sum(x ** 2, axis=-1)
        return jnp.where(sq > 0, jnp.sqrt(sq), 0.0)

    norm_grad = jax.grad(lambda x: safe_norm(x).sum())  # NaN where a row of x is 0
    ```

    ## Use instead
    Guard the input too, so `f` only sees values where its derivative is finite:
    ```python
    def safe_norm(x):
        sq = jnp.sum(x ** 2, axis=-1)
        safe_sq = jnp.where(sq > 0, sq, 1.0)
        return jnp.where(sq > 0, jnp.sqrt(safe_sq), 0.0)
    ```
    """

    code = "STB401"
    name = "nan-gradient-where"
    fixable = "safe"
    stages = ("static", "confirmed")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def row_norms(x):
            x = jnp.sqrt(jnp.sum(x**2, axis=1))  # expect: STB401
            ones = jnp.ones_like(x)
            x = jnp.where(x > 0.5, x, ones)  # `x` here is the assignment just above
            return jnp.sum(x)

        g = jax.grad(row_norms)
        """,
        """
        import jax
        import jax.numpy as jnp

        def safe_norm(x):
            sq = jnp.sum(x ** 2, axis=-1)
            return jnp.where(sq > 0, jnp.sqrt(sq), 0.0)  # expect: STB401

        norm_grad = jax.grad(lambda x: safe_norm(x).sum())
        """,
        """
        import jax
        import jax.numpy as jnp

        def masked_log_loss(probs, labels):
            logp = jnp.where(probs > 0, jnp.log(probs), -1e9)  # expect: STB401
            return -jnp.sum(labels * logp)

        loss_and_grad = jax.value_and_grad(masked_log_loss)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def inverse_mean(total, count):
            return lax.select(count != 0, total / count, jnp.zeros_like(total))  # expect: STB401

        @jax.jit
        def step(total, count):
            # jacrev differentiates with respect to both arguments
            return jax.jacrev(inverse_mean, argnums=(0, 1))(total, count)
        """,
        """
        import jax
        import jax.numpy as jnp

        def soft_radius(r):
            return jnp.where(r <= 0.0, 0.0, r ** 1.5)  # expect: STB401

        def energy(positions):
            return jax.vmap(soft_radius)(positions).sum()

        forces = jax.grad(energy)
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax.experimental import pallas as pl

        # reverse mode uses the bwd rule: the primal's body is never differentiated
        @jax.custom_vjp
        def normalize(l):
            return l * jnp.where(l == 0.0, 0.0, 1.0 / l)

        normalize.defvjp(lambda l: (normalize(l), None), lambda res, g: (g,))

        # a Pallas kernel reads and writes Refs; autodiff never enters it
        def quant_kernel(x_ref, o_ref):
            scale = jnp.max(jnp.abs(x_ref[...]), axis=1, keepdims=True) / 127.0
            o_ref[...] = jnp.round(x_ref[...] * jnp.where(scale == 0, 0, 1 / scale)) * scale

        def quantize(x):
            return pl.pallas_call(quant_kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), interpret=True)(x)
        """,
        """
        import jax.numpy as jnp

        def e2g(a):
            # the masked region (a <= 1e-4) lies inside sqrt(1 - a)'s domain, and 1 + sqrt(...) is
            # never 0: the series branch is only the accurate formula near 0 (JAX-GalSim's Shear)
            return jnp.where(a > 1e-4, 1 / (1 + jnp.sqrt(1 - a)), 0.5 + a / 8)
        """,
        """
        import jax.numpy as jnp

        def project(field):
            k = jnp.fft.rfftfreq(field.shape[-1])  # a mesh built from sizes: no gradient reaches it
            lap = -(2 * jnp.pi * k) ** 2
            inv = jnp.where(lap == 0, 0.0, 1.0 / lap)
            return jnp.fft.irfft(jnp.fft.rfft(field) * inv, n=field.shape[-1])
        """,
        """
        import jax.numpy as jnp

        def safe_norm(x):
            sq = jnp.sum(x ** 2, axis=-1)
            safe_sq = jnp.where(sq > 0, sq, 1.0)
            return jnp.where(sq > 0, jnp.sqrt(safe_sq), 0.0)
        """,
        """
        import jax.numpy as jnp

        def masked_log_loss(probs, labels, valid):
            logp = jnp.log(jnp.where(probs > 0, probs, 1.0))
            return -jnp.sum(jnp.where(probs > 0, labels * logp, 0.0))
        """,
        """
        import jax.numpy as jnp

        def relu_sq(x):
            return jnp.where(x > 0, x ** 2, 0.0)  # integer power: finite derivative
        """,
        """
        import jax.numpy as jnp

        def distances(a, b):
            d2 = jnp.sum((a - b) ** 2, axis=-1)
            return jnp.where(d2 > 1.0, jnp.sqrt(d2 + 1e-12), d2)  # input shifted away from 0
        """,
        """
        import jax.numpy as jnp

        def gated(x, gate):
            return jnp.where(gate, jnp.exp(x), 0.0)
        """,
    )

    @only(callees=_SELECTS)
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if len(node.args) != 3:
            return
        cond, *branches = node.args
        if isinstance(cond, ast.Name):
            cond = ctx.analysis.bound_once(cond.id, ctx.function) or cond  # `small = jnp.abs(x) < 1e-3`, then `where(small, ...)`
        cond_names = _tested_names(cond, ctx) - set(ctx.names.aliases)
        if not cond_names:
            return
        sides = _tested_sides(cond, ctx)
        for i, branch in enumerate(branches):
            hit = self._hazard(branch, cond_names, ctx, cond, i)
            if hit is None:
                continue
            op, arg, region, op_node = hit
            aliases = set(ctx.names.aliases)
            if not any(_names(arg) - aliases == _names(side) - aliases or ctx.text(arg) == ctx.text(side) for side in sides):
                continue  # the condition tests other values than the operand (`a.b > 0` guarding `/ b.b`)
            if _selected_at_singularity(cond, arg, i, ctx):
                continue  # the branch is chosen where its input is singular: no masking, no trap
            # for `a / n` the numerator's derivative `1 / n` is inf too: an `n` that no gradient
            # reaches clears the quotient only where `a` is a constant or an integer as well
            numerator_differentiated = isinstance(op_node, ast.BinOp) and not _constant_or_int(op_node.left, ctx)
            if _no_gradient(arg, ctx) and not numerator_differentiated:
                continue  # an integer count, an `int` parameter, a constant: no gradient reaches it
            graph = ADGraph.of(ctx.analysis)
            opaque = graph.ad_opaque(ctx.function)
            if opaque == "body":
                return  # a custom rule's primal or fwd, a Pallas kernel: autodiff never enters it
            other = branches[1 - i]
            confidence = "proven" if opaque is None else "guess"  # a helper only those call, a derivative rule (differentiated only for a second derivative)
            tested = _names(arg) & cond_names
            if tested and all(_bound_to_guard(n, ctx, node) for n in tested):
                # `s = jnp.maximum(eps, r2)`, then `z / (2 * sqrt(s) - s)`: the names it reads are
                # clamped; whether the formula still meets its singular point there is not known
                confidence = "guess"
            elif _from_mask_parameter(arg, ctx):
                # `prob_b = jnp.mean(b)` where the function uses `b` as a mask (`(s <= t) * b`):
                # a count of booleans, which no gradient reaches, or a float weight; not known
                confidence = "guess"
            elif _python_value(arg, ctx) and not numerator_differentiated:
                # under the transform that reaches it the operand is a Python value (a local
                # lambda called with a config's floats, `get_mscale(cfg.scaling, cfg.mscale)`): no
                # gradient reaches it there; another module may still pass it an array
                confidence = "guess"
            elif _only_metric_entries(node, ctx):
                # `metrics.update({"loss_per_event": where(n > 0, loss / n, 0)})` in a module that
                # differentiates with `has_aux`: a reported metric, which the loss may never read
                confidence = "guess"
            if _same_function(other, arg, ctx) or self._hazard(other, cond_names, ctx, cond, 1 - i) is not None:
                # both branches are formulas of one function (`log1mexp`): the where picks the
                # numerically stable one, and neither need be singular where it is ruled out; or
                # both are singular, and the where masks nothing
                confidence = "guess"
            elif not graph.differentiated(ctx.function):
                # no derivative this module (or a checked caller) takes reaches the function:
                # another module may differentiate it, or nothing does (an inference path, a
                # sampler, a test's expected values); the traced and confirm stages judge it
                confidence = "guess"
            where = ctx.text(node.func)
            at = node if _within(op_node, node) else op_node  # `exact = sin(x) / x` bound before the `where`: the line to fix
            what = (
                f"where `{ctx.text(cond)}` rules it out its derivative is NaN (its input leaves the domain)"
                if region
                else f"its derivative is inf at the singular point of its input, which `{ctx.text(cond)}` rules out"
            )
            self.report(
                ctx,
                at,
                f"`{op}` is computed everywhere and `{where}` only masks its output; {what}, "
                "so the gradient there is NaN (0 * inf)",
                help=f"guard the input too (double where): replace `{ctx.text(arg)}` by `jnp.where({ctx.text(cond)}, {ctx.text(arg)}, <safe value>)` inside `{op.split('(')[0]}`",
                detail=op,
                evidence={"op": op, "guarded_by": ctx.text(cond)},
                confidence=confidence,
            )
            return

    def _hazard(self, branch: ast.AST, cond_names: set[str], ctx: FileContext, cond: ast.AST | None = None, index: int = 0) -> tuple[str, ast.AST, bool, ast.AST] | None:
        """The first unsafe op in `branch` whose input the condition tests, unguarded, and singular
        somewhere in the region the condition masks (`cond`, the branch's position `index`); and
        whether its derivative is NaN over a region (`sqrt` of negatives) rather than inf at a point."""
        stack: list[ast.AST] = [branch]
        followed: set[str] = set()
        while stack:
            n = stack.pop()
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in followed:
                followed.add(n.id)
                value = ctx.analysis.bound_once(n.id, ctx.function) or ctx.reaching_value(n.id, n)
                if value is not None:
                    stack.append(value)  # `exact = jnp.sin(x) / x`, then `where(small, series, exact)`
                continue
            arg: ast.AST | None = None
            region = False
            if isinstance(n, ast.Call):
                q = ctx.qualname(n.func)
                if q in _SELECTS:
                    continue  # an inner select is checked on its own
                if q in _NO_DERIVATIVE:
                    continue  # `jnp.ones_like(x)`: no gradient flows back into `x`
                if q in _UNSAFE and n.args:
                    arg = n.args[-1] if q == "jax.lax.div" else n.args[0]
                    region = q in _REGION
            elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div):
                arg = n.right
            elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) and _fractional(n.right):
                arg = n.left
                region = not isinstance(n.right, ast.UnaryOp)
            if arg is not None and not isinstance(arg, ast.Constant) and _names(arg) & cond_names and not self._guarded(arg, ctx):
                if not (_never_zero(arg, ctx) or (cond is not None and _regular_where_masked(cond, arg, index, ctx))):
                    return ctx.text(n), arg, region, n
            if isinstance(n, (ast.Lambda, ast.FunctionDef)):
                continue
            stack.extend(reversed(list(ast.iter_child_nodes(n))))
        return None

    def _guarded(self, arg: ast.AST, ctx: FileContext) -> bool:
        """`arg` passes through a guard (inner where, maximum, clip, + eps), or names one."""
        if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
            if any(isinstance(s, ast.Constant) and isinstance(s.value, (int, float)) and s.value > 0 for s in (arg.left, arg.right)):
                return True
            if any(isinstance(s, (ast.Name, ast.Attribute)) and _EPS.search(ctx.text(s).lower()) for s in (arg.left, arg.right)):
                return True  # `x + eps`
        for n in ast.walk(arg):
            if isinstance(n, ast.Call) and ctx.qualname(n.func) in _GUARDS:
                return True
        if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name):
            helper = ctx.analysis.resolve(arg.func, ctx.function)  # `_safe_r2(r2)`: a guard of this module
            if helper is not None and not isinstance(helper.node, ast.Lambda):
                rets = [n.value for n in ctx.analysis.own_nodes(helper) if isinstance(n, ast.Return)]
                if rets and all(isinstance(r, ast.Call) and ctx.qualname(r.func) in _GUARDS for r in rets):
                    return True
        return isinstance(arg, ast.Name) and _bound_to_guard(arg.id, ctx)


def _python_value(arg: ast.AST, ctx: FileContext) -> bool:
    """Under the transform that reaches this function, `arg` is a Python value: the analysis finds
    no traced value in it; for a local lambda, every call of its name passes non-traced values
    for the parameters `arg` reads (`get_mscale(cfg.scaling, cfg.mscale)`)."""
    fn = ctx.function
    if fn is None or not fn.transformed:
        return False
    if not isinstance(fn.node, ast.Lambda):
        return not ctx.analysis.is_traced(arg, fn)
    outer = fn.parent
    if outer is None:
        return False
    params = [a.arg for a in fn.node.args.args]
    read = _names(arg) - set(ctx.names.aliases)
    if not read or not read <= set(params):
        return False  # it reads a closed-over value too
    names = {t.id for ts, v in ctx.analysis.bindings(outer) if v is fn.node for t in ts if isinstance(t, ast.Name)}
    if len(names) != 1:
        return False
    (name,) = names
    loads = [n for n in ctx.analysis.own_nodes(outer) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)]
    calls = [c for c in ctx.analysis.own_nodes(outer) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == name]
    if not calls or len(calls) != len(loads):
        return False  # passed on (to vmap, to a scan): what it is given there is not followed
    for c in calls:
        if c.keywords or any(isinstance(a, ast.Starred) for a in c.args):
            return False
        if any(p in read and (i >= len(c.args) or ctx.analysis.is_traced(c.args[i], outer)) for i, p in enumerate(params)):
            return False
    return True


def _only_metric_entries(node: ast.AST, ctx: FileContext) -> bool:
    """Every value computed from `node` ends as a named entry of a dict (`d.update({...})`,
    `d.update(k=...)`, `d[k] = ...`), in a module that differentiates with `has_aux`: metrics
    reported beside a loss (perceiver-ar's per-event losses, simply's router entropy)."""
    fn = ctx.function
    if fn is None or isinstance(fn.node, ast.Lambda) or not _has_aux(ctx):
        return False
    return _ends_in_entries(node, fn, ctx, 0)


def _ends_in_entries(expr: ast.AST, fn: FunctionInfo, ctx: FileContext, depth: int) -> bool:
    e: ast.AST | None = expr
    while depth < 4:
        up = ctx.parent_of(e)
        if isinstance(up, ast.Dict) and any(v is e for v in up.values):
            holder = ctx.parent_of(up)
            return isinstance(holder, ast.Call) and _updates(holder) and any(a is up for a in holder.args)
        if isinstance(up, ast.keyword):
            holder = ctx.parent_of(up)
            if isinstance(holder, ast.Call) and _updates(holder):
                return True  # `d.update(entropy=...)`
            e = holder  # `jnp.mean(x, axis=-1)`: the call computes from it
            continue
        if isinstance(up, ast.Assign) and up.value is e:
            if all(isinstance(t, ast.Subscript) for t in up.targets):
                return True  # `d[k] = ...`
            if len(up.targets) != 1 or not isinstance(up.targets[0], ast.Name):
                return False
            name = up.targets[0].id
            own = ctx.analysis.own_nodes(fn)
            if sum(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store) for n in own) != 1:
                return False  # bound more than once: which value a use reads is not followed
            uses = [n for n in own if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)]
            return bool(uses) and all(_ends_in_entries(u, fn, ctx, depth + 1) for u in uses)
        if isinstance(up, (ast.BinOp, ast.UnaryOp)) or (isinstance(up, ast.Call) and up.func is not e):
            e = up  # arithmetic on it, or a call given it (`jnp.mean(h)`)
            continue
        return False
    return False


def _updates(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr == "update"


def _has_aux(ctx: FileContext) -> bool:
    """The module passes `has_aux` (anything but a literal False) to a call: it differentiates a
    loss returned beside auxiliary values."""
    return ctx.analysis.memo(
        "has_aux",
        lambda: any(
            isinstance(n, ast.keyword) and n.arg == "has_aux" and not (isinstance(n.value, ast.Constant) and n.value.value is False)
            for n in ast.walk(ctx.tree)
        ),
    )


_REGION = frozenset({"jax.numpy.sqrt", "jax.lax.sqrt", "jax.lax.rsqrt", "jax.numpy.arcsin", "jax.numpy.arccos", "jax.lax.asin", "jax.lax.acos"})
_INT_CALLS = frozenset({"builtins.len", "builtins.int", "jax.numpy.count_nonzero", "jax.numpy.size", "jax.numpy.ndim", "numpy.count_nonzero"})
_INT_DTYPES = frozenset({"builtins.int", "jax.numpy.int32", "jax.numpy.int64", "jax.numpy.int8", "jax.numpy.int16", "jax.numpy.uint32", "numpy.int32", "numpy.int64"})


# calls whose result carries no gradient back to their arguments
_NO_DERIVATIVE = frozenset(
    {"jax.numpy.ones_like", "jax.numpy.zeros_like", "jax.numpy.empty_like", "jax.lax.stop_gradient", "jax.numpy.shape", "jax.numpy.size", "jax.numpy.ndim"}
)


def _bound_to_guard(name: str, ctx: FileContext, select: ast.AST | None = None) -> bool:
    """The current function assigns `name` a guard's result (`s = jnp.maximum(eps, r2)`), other
    than the select being checked (`x = jnp.where(x > 0.5, x, ones)` rebinds `x` to itself)."""
    if ctx.function is None:
        return False
    for n in ast.walk(ctx.function.node):
        if isinstance(n, ast.Assign) and n.value is not select and any(isinstance(t, ast.Name) and t.id == name for t in n.targets):
            if isinstance(n.value, ast.Call) and ctx.qualname(n.value.func) in _GUARDS:
                return True
    return False


def _no_gradient(arg: ast.AST, ctx: FileContext) -> bool:
    """Every value `arg` reads is one no gradient can reach: an integer (a count, a length, a
    shape, an `int`-annotated parameter, an integer cast), a mesh built from sizes alone (a
    frequency grid `jnp.fft.rfftfreq(n)`, `jnp.arange(n)`, and arithmetic on them) or a module
    constant."""
    names = _names(arg)
    if not names:
        return False
    fn = ctx.function
    for name in names - set(ctx.names.aliases):  # `jnp` in `jnp.arange(n)` is a module
        if fn is None:
            return False
        owner = _binding_scope(name, ctx)
        if owner is None:
            if not any(isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in st.targets) for st in ctx.tree.body):
                return False
            continue  # a module constant
        if name in owner.params and name not in owner.assigned:
            if not _int_param(owner.node, name):
                return False
            continue
        values = _bound_values(owner, name, ctx)
        if not values or not all(_int_value(v, ctx) for v in values):
            return False
    return True


def _constant_or_int(e: ast.AST, ctx: FileContext) -> bool:
    if isinstance(e, ast.UnaryOp):
        e = e.operand
    return isinstance(e, ast.Constant) or _no_gradient(e, ctx)


def _int_param(fn: ast.AST, name: str) -> bool:
    args = fn.args  # type: ignore[attr-defined]
    for a in (*args.posonlyargs, *args.args, *args.kwonlyargs):
        if a.arg == name and a.annotation is not None:
            return ast.unparse(a.annotation).replace(" ", "") in ("int", "Optional[int]", "int|None", "Int[Array,''],", "Int[Array,'']")
    return False


def _int_value(v: ast.AST, ctx: FileContext) -> bool:
    if isinstance(v, ast.Constant):
        return isinstance(v.value, int) and not isinstance(v.value, bool)
    if isinstance(v, ast.Attribute) and v.attr in ("size", "ndim"):
        return True
    if isinstance(v, ast.Subscript) and isinstance(v.value, ast.Attribute) and v.value.attr == "shape":
        return True
    if isinstance(v, ast.Call):
        q = ctx.qualname(v.func)
        if q in _INT_CALLS:
            return True
        if isinstance(v.func, ast.Attribute) and v.func.attr == "astype" and v.args and ctx.qualname(v.args[0]) in _INT_DTYPES:
            return True
        if q in ("jax.numpy.sum", "jax.numpy.count_nonzero") and v.args and isinstance(v.args[0], ast.Compare):
            return True  # `jnp.sum(mask_expr)`: an integer count
    return _grid_value(v, ctx, 0)


# arrays built from sizes alone: a mesh, a frequency grid, an index range
_GRID_BUILDERS = frozenset(
    {
        "jax.numpy.fft.fftfreq",
        "jax.numpy.fft.rfftfreq",
        "jax.numpy.arange",
        "jax.numpy.linspace",
        "jax.numpy.eye",
        "jax.numpy.ones",
        "jax.numpy.zeros",
        "jax.numpy.meshgrid",
        "numpy.fft.fftfreq",
        "numpy.fft.rfftfreq",
        "numpy.arange",
        "numpy.linspace",
    }
)


def _grid_value(v: ast.AST, ctx: FileContext, depth: int) -> bool:
    """A value computed from sizes, numbers and comparisons alone (`jnp.fft.rfftfreq(x.shape[-1])`,
    then `-(2 * jnp.pi * k) ** 2`; a thresholded mask `jnp.asarray(a > 0, jnp.float32)` and
    its counts): a mesh constant or a boolean, which no gradient reaches."""
    if depth > 6:
        return False
    if isinstance(v, ast.Constant):
        return isinstance(v.value, (int, float)) and not isinstance(v.value, bool)
    if isinstance(v, ast.Attribute):
        if v.attr in ("size", "ndim", "shape"):
            return True
        return isinstance(v.value, ast.Name) and v.value.id in ctx.names.aliases  # `jnp.pi`
    if isinstance(v, ast.Subscript):
        return isinstance(v.value, ast.Attribute) and v.value.attr == "shape"
    if isinstance(v, ast.UnaryOp):
        return _grid_value(v.operand, ctx, depth + 1)
    if isinstance(v, ast.BinOp):
        return _grid_value(v.left, ctx, depth + 1) and _grid_value(v.right, ctx, depth + 1)
    if isinstance(v, (ast.Tuple, ast.List)):
        return all(_grid_value(e, ctx, depth + 1) for e in v.elts)
    if isinstance(v, ast.Compare):
        return True  # a boolean: no gradient flows through a comparison
    if isinstance(v, ast.Call):
        q = ctx.qualname(v.func)
        if q in _INT_CALLS:
            return True
        if isinstance(v.func, ast.Attribute) and v.func.attr == "astype":
            return _grid_value(v.func.value, ctx, depth + 1)
        args = [*v.args, *(k.value for k in v.keywords if k.arg not in ("dtype", "endpoint", "indexing", "axis", "keepdims"))]
        return (q in _GRID_BUILDERS or q in _GRID_KEEPING) and all(_grid_value(a, ctx, depth + 1) for a in args)
    if isinstance(v, ast.Name):
        owner = _binding_scope(v.id, ctx)
        if owner is None or (v.id in owner.params and not _rebound_first(owner, v.id, v)):
            return False
        values = _bound_values(owner, v.id, ctx)
        return bool(values) and all(_grid_value(b, ctx, depth + 1) for b in values)
    return False


# what keeps a value of sizes, numbers and booleans one (a mask's count, its cast)
_GRID_KEEPING = frozenset(
    {"jax.numpy.sum", "jax.numpy.mean", "jax.numpy.prod", "jax.numpy.asarray", "jax.numpy.array", "jax.numpy.logical_and", "jax.numpy.logical_or", "jax.numpy.logical_not", "jax.numpy.cumsum"}
)


def _rebound_first(owner: FunctionInfo, name: str, use: ast.AST) -> bool:
    """Parameter `name` is assigned by a statement of `owner`'s own body (not under an `if` or a
    loop) before `use`: the parameter's value no longer reaches it (`a = jnp.asarray(a > 0)`)."""
    body = getattr(owner.node, "body", [])
    line = getattr(use, "lineno", 0)
    return any(isinstance(st, ast.Assign) and st.lineno < line and any(isinstance(t, ast.Name) and t.id == name for t in st.targets) for st in body)


def _binding_scope(name: str, ctx: FileContext) -> FunctionInfo | None:
    """The function (the current one or one enclosing it) whose parameter or assignment binds
    `name`; None for a module-level name."""
    owner = ctx.function
    while owner is not None:
        if name in owner.params or name in ctx.analysis.assigned(owner):
            return owner
        owner = owner.parent
    return None


def _from_mask_parameter(arg: ast.AST, ctx: FileContext) -> bool:
    """`arg` reads (directly or through the function's own bindings) parameters, and the function
    uses each of them as a boolean mask or an index: a factor or operand of `&`/`|` beside a
    comparison (`(s <= t) * b`), a `where`/`select` condition, or an index (`x[b]`)."""
    info = ctx.function
    if info is None:
        return False
    params: set[str] = set()
    todo, seen = list(_names(arg)), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in info.params:
            params.add(n)
        for v in _bound_values(info, n, ctx):
            todo.extend(_jax_inputs(v, ctx))
    if not params:
        return False
    masks: set[str] = set()
    for n in ast.walk(info.node):
        used: list[ast.AST] = []
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Mult, ast.BitAnd, ast.BitOr)):
            for side, other in ((n.left, n.right), (n.right, n.left)):
                if isinstance(other, ast.Compare):
                    used.append(side)
        elif isinstance(n, ast.Call) and n.args and ctx.qualname(n.func) in ("jax.numpy.where", "jax.lax.select"):
            used.append(n.args[0])
        elif isinstance(n, ast.Subscript):
            used.append(n.slice)
        masks |= {u.id for u in used if isinstance(u, ast.Name)}
    return params <= masks  # every parameter it reads is a mask (a float weight among them: proven)


def _jax_inputs(v: ast.AST, ctx: FileContext) -> set[str]:
    """The names `v` computes from through operators and JAX functions; what a call of another
    function (`self._get_b(values, v)`) returns is its own value, not its arguments'."""
    out: set[str] = set()
    stack = [v]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Call):
            q = ctx.qualname(n.func) or ""
            if not q.startswith("jax."):
                base = n.func.value if isinstance(n.func, ast.Attribute) else None
                if base is not None and not (isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in ctx.names.aliases)):
                    stack.append(base)  # `x.astype(...)`, `(a * b).sum()`: a method of a value
                continue
            stack.extend([*n.args, *(k.value for k in n.keywords)])
        elif isinstance(n, ast.Name):
            out.add(n.id)
        else:
            stack.extend(ast.iter_child_nodes(n))
    return out


def _bound_values(owner: FunctionInfo, name: str, ctx: FileContext) -> list[ast.AST]:
    """Every value `owner` assigns to `name`."""
    return [v for targets, v in ctx.analysis.bindings(owner) if any(isinstance(t, ast.Name) and t.id == name for t in targets)]


_OPS = {ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b, ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}


def _selected_at_singularity(cond: ast.AST, arg: ast.AST, branch: int, ctx: FileContext) -> bool:
    """`where(norm < 0.17, 0.17 / norm, 1.0)`: the condition, a comparison of the operand itself
    with a number, holds at the operand's singular point 0, so the unsafe branch is the one
    selected there (its forward value is inf too); only a branch ruled out there is masked."""
    compared = _compared(cond, ctx)
    if compared is None or compared[0] != ctx.text(arg):
        return False
    _name, op, t = compared
    return _OPS[op](0.0, t) == (branch == 0)


_NONNEG = frozenset({"jax.numpy.sqrt", "jax.numpy.abs", "jax.numpy.exp", "jax.numpy.square", "jax.lax.sqrt", "jax.lax.abs", "jax.lax.exp", "jax.numpy.cosh"})


def _never_zero(arg: ast.AST, ctx: FileContext) -> bool:
    """`1 + jnp.sqrt(1 - a)`, `jnp.exp(x)`: positive by construction, so no division by it is
    singular anywhere (its own inner ops are checked on their own); so is a name (or a slice of
    one) that the function has clamped to a positive constant before it divides by it
    (`n = jnp.maximum(n, 1.0)`, then `s[:k] / n[:k]`)."""
    while isinstance(arg, ast.Subscript):
        arg = arg.value
    if isinstance(arg, ast.Name):
        return _clamped_positive(arg, ctx)
    if isinstance(arg, ast.Call):
        return ctx.qualname(arg.func) in ("jax.numpy.exp", "jax.lax.exp", "jax.numpy.cosh")
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
        for c, other in ((arg.left, arg.right), (arg.right, arg.left)):
            if _number(c) and _value(c) > 0 and _nonneg(other, ctx):
                return True
    return False


def _clamped_positive(name: ast.Name, ctx: FileContext) -> bool:
    """The last statement of the function that binds `name` before its use clamps it from below
    by a positive constant (`jnp.maximum(x, 1.0)`, `jnp.clip(x, 1e-6)`, `jnp.clip(x, min=1)`),
    and stands in a block that holds the use (not in another branch)."""
    if ctx.function is None or not isinstance(ctx.function.node.body, list):
        return False
    last: tuple[int, ast.AST | None] | None = None
    blocks: list[list[ast.stmt]] = [ctx.function.node.body]
    while blocks:
        body = blocks.pop()
        holds_use = body[0].lineno <= name.lineno <= (body[-1].end_lineno or body[-1].lineno)
        for st in body:
            if st.lineno >= name.lineno:
                break
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(st, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    blocks.append(inner)
            for h in getattr(st, "handlers", ()):
                blocks.append(h.body)
            targets = st.targets if isinstance(st, ast.Assign) else [st.target] if isinstance(st, (ast.AnnAssign, ast.AugAssign)) else []
            if any(name.id in _names(t) for t in targets) and (last is None or st.lineno > last[0]):
                last = (st.lineno, st.value if isinstance(st, ast.Assign) and holds_use else None)
    value = last[1] if last is not None else None
    if not isinstance(value, ast.Call):
        return False
    q = ctx.qualname(value.func)
    if q in ("jax.numpy.maximum", "jax.numpy.fmax", "jax.lax.max"):
        bounds = value.args[:2]
    elif q == "jax.numpy.clip":
        bounds = value.args[1:2] + [k.value for k in value.keywords if k.arg in ("min", "a_min")]
    else:
        return False
    return any(_number(b) and _value(b) > 0 for b in bounds)


def _nonneg(e: ast.AST, ctx: FileContext) -> bool:
    if isinstance(e, ast.Call):
        return ctx.qualname(e.func) in _NONNEG
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Pow) and isinstance(e.right, ast.Constant) and e.right.value == 2:
        return True
    return False


def _affine(e: ast.AST, name: str, ctx: FileContext) -> tuple[float, float] | None:
    """(a, b) with `e` = a * name + b, for `name`, `-name`, `name +/- c`, `c +/- name`."""
    if ctx.text(e) == name:
        return 1.0, 0.0
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        inner = _affine(e.operand, name, ctx)
        return (-inner[0], -inner[1]) if inner else None
    if isinstance(e, ast.BinOp) and isinstance(e.op, (ast.Add, ast.Sub)):
        sign = 1.0 if isinstance(e.op, ast.Add) else -1.0
        if _number(e.right):
            inner = _affine(e.left, name, ctx)
            return (inner[0], inner[1] + sign * _value(e.right)) if inner else None
        if _number(e.left):
            inner = _affine(e.right, name, ctx)
            return (sign * inner[0], _value(e.left) + sign * inner[1]) if inner else None
    return None


def _regular_where_masked(cond: ast.AST, arg: ast.AST, branch: int, ctx: FileContext) -> bool:
    """`where(a > 1e-4, 1 / (1 + sqrt(1 - a)), series(a))`: the region the condition masks (a <=
    1e-4) lies inside the domain of `sqrt(1 - a)` (a < 1), so the masked branch is finite and
    differentiable there: nothing to hide. The condition compares one name with a number, and the
    operand is affine in that name."""
    compared = _compared(cond, ctx)
    if compared is None or compared[1] in (ast.Eq, ast.NotEq):
        return False
    name, op, t = compared
    form = _affine(arg, name, ctx)
    if form is None or form[0] == 0:
        return False
    a, b = form
    zero = -b / a  # the operand is 0 (singular) here, and <= 0 (outside sqrt/log's domain) on one side
    # the masked region: where the condition is false for branch 0, true for branch 1
    true_above = op in (ast.Gt, ast.GtE)  # `name > t` holds above t
    masked_above = true_above != (branch == 0)
    # bad values of the name: the operand <= 0, i.e. name >= zero when a < 0, name <= zero when a > 0
    bad_above = a < 0
    if masked_above == bad_above:
        return False  # both regions are unbounded on the same side: they meet
    # masked below t and bad above zero (or the reverse): disjoint when t < zero (resp. t > zero)
    return t < zero if not masked_above else t > zero


_FLIPPED: dict[type, type] = {ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}


def _compared(cond: ast.AST, ctx: FileContext) -> tuple[str, type, float] | None:
    """`x > 0.5` or `0.5 < x`: (the text of `x`, the comparison with `x` on its left, 0.5); None
    for a condition that is not one comparison of an expression with a number."""
    if not (isinstance(cond, ast.Compare) and len(cond.ops) == 1 and type(cond.ops[0]) in _OPS):
        return None
    left, right, op = cond.left, cond.comparators[0], type(cond.ops[0])
    if _number(right):
        return ctx.text(left), op, _value(right)
    if _number(left):
        return ctx.text(right), _FLIPPED[op], _value(left)
    return None


def _value(e: ast.AST) -> float:
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        return -float(e.operand.value)  # type: ignore[attr-defined]
    return float(e.value)  # type: ignore[attr-defined]


def _same_function(other: ast.AST, arg: ast.AST, ctx: FileContext) -> bool:
    """The other branch computes a function of the same inputs (`log1p(-exp(x))` beside
    `log(-expm1(x))`): the two branches are two formulas of one function, and the `where` picks
    the numerically stable one rather than masking a singularity."""
    need = _reads(arg, ctx)
    return bool(need) and any(isinstance(n, ast.Call) for n in ast.walk(other)) and need <= _reads(other, ctx)


def _reads(expr: ast.AST, ctx: FileContext) -> set[str]:
    """The variables and fields `expr` computes with, whole (`self._alpha`, not `self`); not
    callees, and not what only a comparison or a shape reads (an inner `where`'s condition,
    `jnp.ones_like(x)`)."""
    nodes: list[ast.AST] = []
    stack = [expr]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Compare) or (isinstance(n, ast.Call) and ctx.qualname(n.func) in _NO_DERIVATIVE):
            continue
        nodes.append(n)
        stack.extend(ast.iter_child_nodes(n))
    inner = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}
    callees = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
    out = {ctx.text(n) for n in nodes if isinstance(n, (ast.Name, ast.Attribute)) and id(n) not in inner and id(n) not in callees}
    return {r for r in out if r.split(".")[0] not in ctx.names.aliases}


def _tested_sides(cond: ast.AST, ctx: FileContext) -> list[ast.AST]:
    """The expressions the condition compares with a number."""
    out: list[ast.AST] = []
    for n in ast.walk(cond):
        if isinstance(n, ast.Compare):
            sides = [n.left, *n.comparators]
            if any(_number(s) for s in sides):
                out += [s for s in sides if not _number(s)]
    return out


def _tested_names(cond: ast.AST, ctx: FileContext) -> set[str]:
    """Names the condition compares with a number (`sq > 0`, `count != 0`, `jnp.abs(x) < 1`),
    through `&`, `|`, `~`, `and`, `or`, `not` and `jnp.logical_*`. A comparison between two
    variables (`x < c`) or a predicate call (`jnp.isnan(x)`) does not locate a singular point."""
    out: set[str] = set()
    stack: list[ast.AST] = [cond]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Compare):
            sides = [n.left, *n.comparators]
            if any(_number(s) for s in sides):
                for side in sides:
                    if not _number(side):
                        out |= _names(side)
        elif isinstance(n, ast.BinOp) and isinstance(n.op, (ast.BitAnd, ast.BitOr)):
            stack += [n.left, n.right]
        elif isinstance(n, ast.BoolOp):
            stack += n.values
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.Not, ast.Invert)):
            stack.append(n.operand)
        elif isinstance(n, ast.Call) and ctx.qualname(n.func) in ("jax.numpy.logical_and", "jax.numpy.logical_or", "jax.numpy.logical_not"):
            stack += n.args
    return out


def _within(inner: ast.AST, outer: ast.AST) -> bool:
    return any(n is inner for n in ast.walk(outer))


def _number(e: ast.AST) -> bool:
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        e = e.operand
    return isinstance(e, ast.Constant) and isinstance(e.value, (int, float)) and not isinstance(e.value, bool)


def _names(expr: ast.AST) -> set[str]:
    """Names read by `expr`, ignoring static attributes (`x.shape`) and callee names."""
    out: set[str] = set()
    callees = {id(n.func) for n in ast.walk(expr) if isinstance(n, ast.Call)}
    static = {id(n.value) for n in ast.walk(expr) if isinstance(n, ast.Attribute) and n.attr in ("shape", "ndim", "dtype", "size")}
    for n in ast.walk(expr):
        if isinstance(n, ast.Name) and id(n) not in callees and id(n) not in static:
            out.add(n.id)
    return out


def _fractional(exp: ast.AST) -> bool:
    """A constant exponent that is not a non-negative integer (0.5, 1.5, -1)."""
    if isinstance(exp, ast.UnaryOp) and isinstance(exp.op, ast.USub) and isinstance(exp.operand, ast.Constant):
        v = exp.operand.value
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    if isinstance(exp, ast.Constant) and isinstance(exp.value, (int, float)) and not isinstance(exp.value, bool):
        return float(exp.value) != int(exp.value) if isinstance(exp.value, float) else exp.value < 0
    return False
