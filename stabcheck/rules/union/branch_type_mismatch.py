from __future__ import annotations

import ast
from dataclasses import dataclass

from stabcheck.rule import Rule, only
from stabcheck.rules.union._kinds import Kinds, dtype_class, evident_class, explicit_dtype, exits, kind_text, kinds_differ, kinds_for, literal_class
from stabcheck.static.analysis import FunctionInfo
from stabcheck.static.context import FileContext

_BRANCHING = ("jax.lax.cond", "jax.lax.switch", "jax.lax.select", "jax.lax.select_n")


@dataclass(frozen=True, slots=True)
class Mismatch:
    node: ast.AST  # where to report: the odd branch's value
    what: str
    guess: bool = False  # the other side's dtype is not known: it may already be the cast's


class BranchTypeMismatch(Rule):
    """## What it does
    Flags `lax.cond`, `lax.switch` and `lax.select` whose branches visibly produce different
    types: a different structure (a tuple of other length, `None` against a value, other dict
    keys, the operand returned bare by one branch and inside a tuple or dict by another, which
    no operand can make equal), different explicit dtypes (`astype(...)`, `dtype=`), or a
    Python number of one kind against an array of another (`0` against a float mean). An
    explicit cast on one side only, of a value computed from what the other side returns
    uncast (`gelu(v).astype(jnp.bfloat16)` against `relu(v)`), is a guess (`--preview`): the
    other side may already have that dtype (a defensive `zeros_like(x).astype(jnp.float32)`
    against a float32 `x`), which the traced stage sees.
    Branch functions are followed whether they are lambdas or `def`s of the same module. For
    `lax.select`, whose operands are often variables of a known dtype, a cast on one side only
    is flagged when the other side is visibly of another kind (a float op against an int cast).

    ## Why is this bad?
    `lax.cond` and `lax.switch` compile every branch and require one output type;
    `lax.select` requires its operands to have identical dtypes. JAX raises `TypeError`
    ("branches must have equal output types", "must have the same pytree structure") when the
    function is traced, often deep inside a training step, or silently depends on the
    precision setting when the cast happens to match.

    ## Example
    ```python
    loss = lax.cond(step > warmup, lambda: jnp.mean(err**2), lambda: 0)
    ```

    ## Use instead
    Make every branch return the same structure and dtype, casting to the other branch's dtype
    rather than to a literal one:
    ```python
    loss = lax.cond(step > warmup, lambda: jnp.mean(err**2), lambda: 0.0)
    ```
    A float literal against a float array is fine: JAX promotes the weakly typed literal.
    """

    code = "STB203"
    name = "branch-type-mismatch"
    stages = ("static", "traced")
    INVALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.jit
        def warmup_loss(step, err):
            return lax.cond(step > 100, lambda: jnp.mean(err**2), lambda: 0)  # expect: STB203
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def keep(x):
            return x, jnp.zeros_like(x)

        def drop(x):
            return jnp.zeros_like(x)  # expect: STB203

        @jax.jit
        def maybe_drop(flag, x):
            return lax.cond(flag, keep, drop, x)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def activation(i, x):
            return lax.switch(
                i,
                [
                    lambda v: jax.nn.relu(v).astype(jnp.float32),
                    lambda v: jax.nn.gelu(v).astype(jnp.bfloat16),  # expect: STB203
                ],
                x,
            )
        """,
        """
        import jax
        from jax import lax

        @jax.jit
        def pick(i, x):
            return lax.switch(i, [lambda v: (v, v), lambda v: v], x)  # expect: STB203
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.jit
        def clamp(x):
            return lax.select(x > 0, jnp.sqrt(x), 0)  # expect: STB203
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def pick_index(mask, x, i):
            return lax.select(mask, jnp.argmax(x), jnp.float32(i))  # expect: STB203
        """,
    )
    VALID = (
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def weighted(w, loss):
            # a guess (--preview): `x` may be float32 already, and then the cast changes nothing
            return lax.cond(w.sum() == 0, lambda x: jnp.zeros_like(x).astype(jnp.float32), lambda x: x, (w * loss).sum())
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.jit
        def warmup_loss(step, err):
            return lax.cond(step > 100, lambda: jnp.mean(err**2), lambda: 0.0)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def keep(x):
            return x, jnp.zeros_like(x)

        def drop(x):
            return jnp.zeros_like(x), x

        @jax.jit
        def maybe_swap(flag, x):
            return lax.cond(flag, keep, drop, x)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        def activation(i, x):
            return lax.switch(i, [lambda v: jax.nn.relu(v), lambda v: jax.nn.gelu(v).astype(v.dtype)], x)
        """,
        """
        import jax
        from jax import lax

        @jax.jit
        def pick(i, x):
            return lax.switch(i, [lambda v: (v, v[0]), lambda v: (v, v[1])], x)
        """,
        """
        import jax
        import jax.numpy as jnp
        from jax import lax

        @jax.jit
        def clamp(x):
            return lax.select(x > 0, jnp.sqrt(x), jnp.zeros_like(x))
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def store(mask, acc, out):
            acc32 = acc.astype(jnp.float32)
            return lax.select(mask, acc32, out.astype(jnp.float32))
        """,
        """
        import jax.numpy as jnp
        from jax import lax

        def bf16_or_f32(flag, x):
            return lax.cond(flag, lambda v: v.astype(jnp.bfloat16), lambda v: (v * 2).astype(jnp.bfloat16), x)
        """,
    )

    @only(callees=_BRANCHING)
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        q = ctx.qualname(node.func)
        kinds = kinds_for(ctx.analysis)
        if q in ("jax.lax.select", "jax.lax.select_n"):
            vals = node.args[1:3] if q == "jax.lax.select" else node.args[1:]
            branches: list[tuple[ast.expr | None, FunctionInfo | None]] = [(v, ctx.function) for v in vals]
        else:
            fns = self._branch_fns(node, q)
            branches = []
            for fn in fns:
                info = ctx.analysis.resolve(fn, ctx.function)
                value = self._single_value(info, kinds) if info is not None else None
                branches.append((value, info) if value is not None else (None, None))
        if len(branches) < 2 or branches[0][0] is None:
            return
        first, first_scope = branches[0]
        for value, scope in branches[1:]:
            if value is None or first is None:
                continue
            # every branch gets the same operands, except in the old five-argument `cond` form
            shared = q == "jax.lax.switch" or (q == "jax.lax.cond" and len(node.args) != 5)
            m = _compare(first, first_scope, value, scope, kinds, ctx, q.startswith("jax.lax.select"), shared)
            if m is None:
                continue
            prim = q.rsplit(".", 1)[1]
            self.report(
                ctx,
                m.node,
                message=(
                    f"the branches of `lax.{prim}` differ: {m.what}; "
                    f"`{prim}` needs one output type, so tracing raises TypeError"
                ),
                help="make every branch return the same structure and dtype (cast to the other branch's `.dtype`, use `0.0` for a float zero)",
                detail=f"lax.{prim}:{m.what}",
                confidence="guess" if m.guess else "proven",
            )
            return

    @staticmethod
    def _branch_fns(node: ast.Call, q: str) -> list[ast.expr]:
        if q == "jax.lax.cond":
            kw = {k.arg: k.value for k in node.keywords}
            fns = node.args[1:3] if len(node.args) >= 3 else []
            if len(node.args) == 5:  # the old (pred, true_operand, true_fun, false_operand, false_fun) form
                fns = [node.args[2], node.args[4]]
            if not fns and "true_fun" in kw and "false_fun" in kw:
                fns = [kw["true_fun"], kw["false_fun"]]
            return list(fns)
        arg = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "branches"), None)
        return list(arg.elts) if isinstance(arg, (ast.List, ast.Tuple)) else []

    @staticmethod
    def _single_value(info: FunctionInfo, kinds: Kinds) -> ast.expr | None:
        """The value a branch function returns, when all its returns have one kind."""
        found = exits(info.node)
        if not found:
            return None
        ks = {kinds.of(e.value, info) for e in found}
        if len(ks) > 1 and "none" not in ks:
            ks.discard("some")
        if len(ks) != 1:
            return None
        v = found[0].value
        if v is not None:
            return v
        at = found[0].node
        return ast.Constant(None, lineno=getattr(at, "lineno", 1), col_offset=getattr(at, "col_offset", 0))


def _compare(
    a: ast.expr, sa: FunctionInfo | None, b: ast.expr, sb: FunctionInfo | None, kinds: Kinds, ctx: FileContext, values: bool, shared_operands: bool = False
) -> Mismatch | None:
    ka, kb = kinds.of(a, sa), kinds.of(b, sb)
    if kinds_differ(ka, kb):
        return Mismatch(b, f"one returns {kind_text(ka)}, another {kind_text(kb)}")
    if shared_operands and (_operand_inside_itself(a, sa, b, sb, ctx) or _operand_inside_itself(b, sb, a, sa, ctx)):
        bare, holder = (a, b) if _operand_index(a, sa) is not None else (b, a)
        return Mismatch(
            b,
            f"one returns the operand `{ctx.text(bare)}`, another `{ctx.text(holder)}`, which holds "
            "that operand as a part: their pytree structures can never match",
        )
    if isinstance(a, (ast.Tuple, ast.List)) and isinstance(b, (ast.Tuple, ast.List)) and len(a.elts) == len(b.elts):
        for ea, eb in zip(a.elts, b.elts):
            m = _compare(ea, sa, eb, sb, kinds, ctx, values, shared_operands)
            if m is not None:
                return m
        return None
    if isinstance(a, ast.Dict) and isinstance(b, ast.Dict):
        da = {k.value: v for k, v in zip(a.keys, a.values) if isinstance(k, ast.Constant)}
        for k, vb in zip(b.keys, b.values):
            if isinstance(k, ast.Constant) and k.value in da:
                m = _compare(da[k.value], sa, vb, sb, kinds, ctx, values, shared_operands)
                if m is not None:
                    return m
        return None
    ca, cb = _dict_call(a, ctx), _dict_call(b, ctx)
    if shared_operands and ca is not None and cb is not None:  # `dict(a=v)` against `dict(a=(v, v))`
        for key in ca.keys() & cb.keys():
            m = _compare(ca[key], sa, cb[key], sb, kinds, ctx, values, shared_operands)
            if m is not None:
                return m
        return None
    return _dtype_mismatch(a, b, ctx, values)


def _operand_index(e: ast.expr, info: FunctionInfo | None) -> int | None:
    """The position of the branch parameter that `e` names unchanged, if any. `cond`/`switch`
    pass the same operands to every branch, so equal positions are equal values."""
    if info is None or not isinstance(e, ast.Name) or e.id in info.assigned:
        return None
    positional = [a.arg for a in (*info.node.args.posonlyargs, *info.node.args.args)]
    return positional.index(e.id) if e.id in positional else None


def _dict_call(e: ast.expr, ctx: FileContext) -> dict[str, ast.expr] | None:
    """The items of a `dict(key=value, ...)` call made only of keywords, else None."""
    if not (isinstance(e, ast.Call) and not e.args and ctx.qualname(e.func) == "builtins.dict"):
        return None
    if any(k.arg is None for k in e.keywords):  # `dict(**v)`
        return None
    return {k.arg: k.value for k in e.keywords if k.arg is not None}


def _operand_inside_itself(whole: ast.expr, sw: FunctionInfo | None, outer: ast.expr, so: FunctionInfo | None, ctx: FileContext) -> bool:
    """`outer` is a tuple/list/dict display that holds, as one of its parts, the very operand
    that `whole` returns bare (`lambda v: (v, v)` against `lambda v: v`): a pytree never has
    the same structure as a proper part of itself, whatever the operand is."""
    i = _operand_index(whole, sw)
    if i is None or not (isinstance(outer, (ast.Tuple, ast.List, ast.Dict)) or _dict_call(outer, ctx) is not None):
        return False
    stack: list[ast.expr] = [outer]
    while stack:
        e = stack.pop()
        if isinstance(e, (ast.Tuple, ast.List)):
            if any(isinstance(x, ast.Starred) for x in e.elts):
                return False
            stack.extend(e.elts)
        elif isinstance(e, ast.Dict):
            if any(k is None for k in e.keys):  # `{**v}` spreads the operand
                return False
            stack.extend(e.values)
        elif (items := _dict_call(e, ctx)) is not None:
            stack.extend(items.values())
        elif e is not outer and _operand_index(e, so) == i:
            return True
    return False


def _casts_same_value(cast: ast.expr, other: ast.expr, names: object) -> bool:
    """One side casts a value computed from the same inputs that the other side returns uncast
    (`relu(v)` vs `gelu(v).astype(bf16)`): the cast visibly changes the type of one path only."""
    if not (isinstance(cast, ast.Call) and isinstance(cast.func, ast.Attribute) and cast.func.attr == "astype"):
        return False
    aliases = getattr(names, "aliases", {})

    def inputs(e: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(e) if isinstance(n, ast.Name) and n.id not in aliases}

    return bool(inputs(cast.func.value) & inputs(other))


def _dtype_mismatch(a: ast.expr, b: ast.expr, ctx: FileContext, values: bool) -> Mismatch | None:
    names = ctx.names
    da, db = explicit_dtype(a, names), explicit_dtype(b, names)
    la, lb = literal_class(a), literal_class(b)
    if da is not None and db is not None:
        return Mismatch(b, f"`{ctx.text(a)}` is {da} but `{ctx.text(b)}` is {db}") if da != db else None
    if (da is None) != (db is None):
        cast, other = (a, b) if da is not None else (b, a)
        dtype = da or db
        lit = literal_class(other)
        if lit is not None:
            if lit == dtype_class(dtype):
                return None
            return Mismatch(other, f"`{ctx.text(other)}` is a Python {lit} but `{ctx.text(cast)}` is {dtype}")
        cls = evident_class(other, names)
        if cls is not None and cls != dtype_class(dtype):
            return Mismatch(cast, f"`{ctx.text(cast)}` is {dtype} but `{ctx.text(other)}` is a {cls} array")
        if values or not _casts_same_value(cast, other, names):
            # `lax.select(m, acc, y.astype(jnp.float32))`, `cond(p, scan_branch, zeros_f32)`: the
            # other side's dtype is unknown here and is often already that dtype
            return None
        # `lambda x: jnp.zeros_like(x).astype(jnp.float32)` against `lambda x: x`: the other side's
        # dtype is not written; it is often the cast's already (a defensive cast), so a guess
        return Mismatch(cast, f"only `{ctx.text(cast)}` casts explicitly (to {dtype}); `{ctx.text(other)}` keeps its own dtype", guess=True)
    if la is not None or lb is not None:
        if la is not None and lb is not None:
            return Mismatch(b, f"`{ctx.text(a)}` is a Python {la} but `{ctx.text(b)}` a Python {lb}") if la != lb else None
        lit_node, lit, other = (a, la, b) if la is not None else (b, lb, a)
        cls = evident_class(other, names)
        if cls is not None and cls != lit:
            return Mismatch(lit_node, f"`{ctx.text(lit_node)}` is a Python {lit} but `{ctx.text(other)}` is a {cls} array")
    return None
