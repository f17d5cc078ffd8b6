"""STB401 nan-gradient-where: rewrite to the double-`where` form.

    jnp.where(sq > 0, jnp.sqrt(sq), 0.0)
 -> jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)

The hazardous op's input is guarded by the same condition, with a value where the op's derivative
is finite (1.0). Where the condition selects the op, its input is unchanged, so the forward values
are the same: a safe fix.

The fix is offered only where it provably removes the hazard: the condition must compare the op's
input itself with a number (`sq > 0`, `count != 0`, `r <= 0.0` for the other branch), and the
values it selects for the op must exclude the op's singular points (0 for a division or
`reciprocal`; everything up to 0 for `sqrt`, `log` and fractional powers; -1 for `log1p`).
`where(x >= 0, sqrt(x), 0)` selects `sqrt` at 0 itself, where the gradient stays infinite
whatever the inner `where`: no fix. `arcsin`/`arccos`/`arctanh` need a two-sided condition: no fix.
"""

from __future__ import annotations

import libcst as cst

from stabcheck.finding import Finding
from stabcheck.fix._rewrite import Located, Rewrite, cst_qualname, jnp_name, locate, module_aliases, replace, with_import

_SELECTS = {"jax.numpy.where": "where", "jax.lax.select": "select"}
# What the selected values must avoid: "pos" (only values > 0), "nonzero", "gt-1" (only > -1),
# "unit" (only inside (-1, 1): never proven from a one-sided comparison, so never fixed)
Need = str
# hazardous functions -> index of the argument to guard (-1: last), the safe value, the need
_UNSAFE: dict[str, tuple[int, str, Need]] = {
    **{f"jax.numpy.{n}": (0, "1.0", "pos") for n in ("sqrt", "log", "log2", "log10")},
    "jax.numpy.log1p": (0, "1.0", "gt-1"),
    "jax.numpy.reciprocal": (0, "1.0", "nonzero"),
    **{f"jax.numpy.{n}": (0, "0.0", "unit") for n in ("arcsin", "arccos", "arctanh")},
    **{f"jax.lax.{n}": (0, "1.0", "pos") for n in ("sqrt", "rsqrt", "log")},
    "jax.lax.log1p": (0, "1.0", "gt-1"),
    **{f"jax.lax.{n}": (0, "0.0", "unit") for n in ("asin", "acos", "atanh")},
    "jax.lax.div": (-1, "1.0", "nonzero"),
}
_FLIP = {"<": ">=", ">=": "<", ">": "<=", "<=": ">", "==": "!=", "!=": "=="}
_MIRROR = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}
_OPS = {cst.LessThan: "<", cst.GreaterThan: ">", cst.LessThanEqual: "<=", cst.GreaterThanEqual: ">=", cst.Equal: "==", cst.NotEqual: "!="}


def _names(node: cst.CSTNode) -> set[str]:
    """Names read by an expression, ignoring callees and `.shape`-like attributes (as the rule does)."""
    out: set[str] = set()

    class V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> bool:
            for a in n.args:
                a.value.visit(self)
            if isinstance(n.func, cst.Attribute):
                n.func.value.visit(self)
            return False

        def visit_Attribute(self, n: cst.Attribute) -> bool:
            if n.attr.value in ("shape", "ndim", "dtype", "size"):
                return False
            n.value.visit(self)
            return False

        def visit_Name(self, n: cst.Name) -> None:
            out.add(n.value)

    node.visit(V())
    return out


def _fractional(e: cst.BaseExpression) -> bool:
    if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.Minus) and isinstance(e.expression, (cst.Integer, cst.Float)):
        return True
    if isinstance(e, cst.Float):
        v = float(e.evaluated_value)
        return v != int(v) or v < 0
    if isinstance(e, cst.Integer):
        return int(e.evaluated_value) < 0
    return False


def _number(e: cst.BaseExpression) -> float | None:
    if isinstance(e, (cst.Integer, cst.Float)):
        return float(e.evaluated_value)
    if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.Minus) and isinstance(e.expression, (cst.Integer, cst.Float)):
        return -float(e.expression.evaluated_value)
    return None


def _selected(cond: cst.BaseExpression, module: cst.Module, arg: cst.BaseExpression, when_true: bool) -> tuple[str, float] | None:
    """The values of `arg` for which the branch is selected, as `(op, c)` meaning `arg op c`, when
    `cond` compares `arg` itself with a number; else None (nothing can be proven)."""
    if not isinstance(cond, cst.Comparison) or len(cond.comparisons) != 1:
        return None
    op = _OPS.get(type(cond.comparisons[0].operator))
    if op is None:
        return None

    def text(e: cst.CSTNode) -> str:
        return "".join(module.code_for_node(e).split()).strip("()")

    want = text(arg)
    left, right = cond.left, cond.comparisons[0].comparator
    c = _number(right)
    if c is None or text(left) != want:
        c = _number(left)
        if c is None or text(right) != want:
            return None
        op = _MIRROR[op]
    return (op if when_true else _FLIP[op]), c


def _avoids(region: tuple[str, float], need: Need) -> bool:
    """Whether every value with `arg op c` keeps the op away from its singular points."""
    op, c = region
    if need == "pos":  # only values > 0
        return (op == ">" and c >= 0) or (op in (">=", "==") and c > 0)
    if need == "gt-1":
        return (op == ">" and c >= -1) or (op in (">=", "==") and c > -1)
    if need == "nonzero":
        return {">": c >= 0, ">=": c > 0, "<": c <= 0, "<=": c < 0, "!=": c == 0, "==": c != 0}[op]
    return False


def _hazard(branch: cst.BaseExpression, cond_names: set[str], aliases: dict[str, str]) -> tuple[cst.BaseExpression, str, Need] | None:
    """The first input to an unsafe op in `branch` that the condition tests: (input, safe value, need)."""
    stack: list[cst.CSTNode] = [branch]
    while stack:
        n = stack.pop()
        arg: cst.BaseExpression | None = None
        safe, need = "1.0", "nonzero"
        if isinstance(n, cst.Call):
            q = cst_qualname(n.func, aliases)
            if q in _SELECTS:
                continue
            if q in _UNSAFE and n.args:
                idx, safe, need = _UNSAFE[q]
                arg = n.args[idx].value
        elif isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Divide):
            arg = n.right
        elif isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Power) and _fractional(n.right):
            arg, need = n.left, "pos"
        if arg is not None and not isinstance(arg, (cst.Integer, cst.Float)) and _names(arg) & cond_names:
            return arg, safe, need
        if isinstance(n, (cst.Lambda, cst.FunctionDef)):
            continue
        stack.extend(reversed(list(n.children)))
    return None


def fix(source: str, finding: Finding) -> Rewrite | None:
    loc = locate(source, finding, (cst.Call,))
    if loc is None:
        return None
    call = loc.node
    assert isinstance(call, cst.Call)
    aliases = module_aliases(source)
    kind = _SELECTS.get(cst_qualname(call.func, aliases) or "")
    if kind is None or len(call.args) != 3 or any(a.keyword or a.star for a in call.args):
        return None
    cond = call.args[0].value
    cond_names = _names(cond)
    for i in (1, 2):
        hit = _hazard(call.args[i].value, cond_names, aliases)
        if hit is None:
            continue
        arg, safe, need = hit
        region = _selected(cond, loc.module, arg, when_true=(i == 1))
        if region is None or not _avoids(region, need):
            continue  # the inner `where` would not make the gradient finite: no fix
        return _guard(loc, source, call, cond, arg, safe, selected_when_true=(i == 1), kind=kind)
    return None


def _guard(loc: Located, source: str, call: cst.Call, cond: cst.BaseExpression, arg: cst.BaseExpression, safe: str, *, selected_when_true: bool, kind: str) -> Rewrite:
    c, a = loc.code(cond), loc.code(arg)
    jnp, imp = jnp_name(source)
    if kind == "select":  # lax.select needs both sides of one shape and dtype
        fill = f"{jnp}.{'ones_like' if safe == '1.0' else 'zeros_like'}({a})"
        func = loc.code(call.func)
    else:
        fill, func, imp = safe, loc.code(call.func), None
    inner = f"{func}({c}, {a}, {fill})" if selected_when_true else f"{func}({c}, {fill}, {a})"
    new_arg = cst.parse_expression(inner)
    module = replace(loc, arg, new_arg)
    if imp is not None:
        module = with_import(module, imp)
    return Rewrite(module.code, description=f"guard `{a}` with an inner `where` (double where)")
