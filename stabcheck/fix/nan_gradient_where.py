"""STB401 nan-gradient-where: rewrite to the double-`where` form.

    jnp.where(sq > 0, jnp.sqrt(sq), 0.0)
 -> jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)

The hazardous op's input is guarded by the same condition, with a value where the op's derivative
is finite (1.0; 0.0 for arcsin/arccos/arctanh). Where the condition selects the op, its input is
unchanged, so the forward values are the same: a safe fix.
"""

from __future__ import annotations

import libcst as cst

from stabcheck.finding import Finding
from stabcheck.fix._rewrite import Located, Rewrite, cst_qualname, jnp_name, locate, module_aliases, replace, with_import

_SELECTS = {"jax.numpy.where": "where", "jax.lax.select": "select"}
# hazardous functions -> index of the argument to guard (-1: last), and the safe value
_UNSAFE: dict[str, tuple[int, str]] = {
    **{f"jax.numpy.{n}": (0, "1.0") for n in ("sqrt", "log", "log1p", "log2", "log10", "reciprocal")},
    **{f"jax.numpy.{n}": (0, "0.0") for n in ("arcsin", "arccos", "arctanh")},
    **{f"jax.lax.{n}": (0, "1.0") for n in ("sqrt", "rsqrt", "log", "log1p")},
    **{f"jax.lax.{n}": (0, "0.0") for n in ("asin", "acos", "atanh")},
    "jax.lax.div": (-1, "1.0"),
}


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


def _hazard(branch: cst.BaseExpression, cond_names: set[str], aliases: dict[str, str]) -> tuple[cst.BaseExpression, str] | None:
    """The first input to an unsafe op in `branch` that the condition tests: (input, safe value)."""
    stack: list[cst.CSTNode] = [branch]
    while stack:
        n = stack.pop()
        arg: cst.BaseExpression | None = None
        safe = "1.0"
        if isinstance(n, cst.Call):
            q = cst_qualname(n.func, aliases)
            if q in _SELECTS:
                continue
            if q in _UNSAFE and n.args:
                idx, safe = _UNSAFE[q]
                arg = n.args[idx].value
        elif isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Divide):
            arg = n.right
        elif isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Power) and _fractional(n.right):
            arg = n.left
        if arg is not None and not isinstance(arg, (cst.Integer, cst.Float)) and _names(arg) & cond_names:
            return arg, safe
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
        arg, safe = hit
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
