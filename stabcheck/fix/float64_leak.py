"""STB301 float64-leak: ask for an explicit 32-bit float, or the data's dtype.

    x.astype(float)                     -> x.astype(jnp.float32)
    jnp.arange(n, dtype=jnp.float64)    -> jnp.arange(n, dtype=jnp.float32)
    jnp.zeros(n, dtype="float64")       -> jnp.zeros(n, dtype=jnp.float32)
    MASK64 * x                          -> MASK64.astype(x.dtype) * x     (x a name or attribute)

With `jax_enable_x64` off (JAX's default) `float` already means float32 inside JAX, so the
explicit spelling changes nothing there; with it on, the computation stays in 32 bits, which
is what the rule asks for.
"""

from __future__ import annotations

import libcst as cst

from stabcheck.finding import Finding
from stabcheck.fix._rewrite import Located, Rewrite, cst_qualname, jnp_name, locate, module_aliases, replace, with_import

_WIDE_NAMES = {"float", "builtins.float", "numpy.float64", "numpy.double", "jax.numpy.float64", "jax.numpy.double", "numpy.float_"}
_WIDE_STRINGS = {"float", "float64", "double", "f8"}


def _qualname(node: cst.BaseExpression, aliases: dict[str, str]) -> str | None:
    """`cst_qualname`, and the builtin `float` (a dtype spelling here) when no import shadows it."""
    if isinstance(node, cst.Name) and node.value == "float" and "float" not in aliases:
        return "float"
    return cst_qualname(node, aliases)


def _wide(e: cst.BaseExpression, aliases: dict[str, str]) -> bool:
    if isinstance(e, cst.SimpleString):
        return str(e.evaluated_value) in _WIDE_STRINGS
    if isinstance(e, cst.Call) and len(e.args) == 1 and _qualname(e.func, aliases) in ("jax.numpy.dtype", "numpy.dtype"):
        return _wide(e.args[0].value, aliases)
    return _qualname(e, aliases) in _WIDE_NAMES


def fix(source: str, finding: Finding) -> Rewrite | None:
    loc = locate(source, finding, (cst.Call, cst.BinaryOperation))
    if loc is None:
        return None
    aliases = module_aliases(source)
    node = loc.node
    if isinstance(node, cst.Call):
        target = _explicit_dtype(node, aliases)
        if target is not None:
            return _to_float32(loc, source, target)
        return _combined_call(loc, node, aliases)
    if isinstance(node, cst.BinaryOperation):
        return _combined_binop(loc, node, aliases)
    return None


def _explicit_dtype(call: cst.Call, aliases: dict[str, str]) -> cst.BaseExpression | None:
    """The float64 dtype expression of `x.astype(float)`, `f(..., dtype=float)`, `jnp.float64(x)`."""
    if isinstance(call.func, cst.Attribute) and call.func.attr.value == "astype" and call.args and not call.args[0].keyword:
        return call.args[0].value if _wide(call.args[0].value, aliases) else None
    for a in call.args:
        if a.keyword is not None and a.keyword.value == "dtype" and _wide(a.value, aliases):
            return a.value
    if _qualname(call.func, aliases) in ("jax.numpy.float64", "jax.numpy.double"):
        return call.func
    return None


def _to_float32(loc: Located, source: str, target: cst.BaseExpression) -> Rewrite:
    jnp, imp = jnp_name(source)
    module = replace(loc, target, cst.parse_expression(f"{jnp}.float32"))
    if imp is not None:
        module = with_import(module, imp)
    return Rewrite(module.code, description=f"`{loc.code(target)}` -> `{jnp}.float32`")


def _simple(e: cst.BaseExpression) -> bool:
    """A name or attribute chain: cheap and side-effect free to repeat as `e.dtype`."""
    while isinstance(e, cst.Attribute):
        e = e.value
    return isinstance(e, cst.Name)


def _cast(loc: Located, const: cst.BaseExpression, data: cst.BaseExpression) -> Rewrite:
    c = loc.code(const)
    needs_parens = not isinstance(const, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) or bool(getattr(const, "lpar", ()))
    inner = c if not needs_parens or c.startswith("(") else f"({c})"
    new = cst.parse_expression(f"{inner}.astype({loc.code(data)}.dtype)")
    return Rewrite(replace(loc, const, new).code, description=f"cast `{c}` to `{loc.code(data)}.dtype`")


def _combined_binop(loc: Located, node: cst.BinaryOperation, aliases: dict[str, str]) -> Rewrite | None:
    """`CONST * x`: cast the NumPy float64 side to the data's dtype (the data side is the simple one)."""
    left, right = node.left, node.right
    for const, data in ((left, right), (right, left)):
        if _simple(data) and not _is_number(const) and _looks_numpy(const, aliases, loc):
            return _cast(loc, const, data)
    return None


def _combined_call(loc: Located, call: cst.Call, aliases: dict[str, str]) -> Rewrite | None:
    """`jnp.multiply(CONST, x)` and friends: the same cast on the constant argument."""
    values = [a.value for a in call.args]
    data = next((v for v in values if _simple(v) and not _looks_numpy(v, aliases, loc)), None)
    const = next((v for v in values if v is not data and _looks_numpy(v, aliases, loc)), None)
    if data is None or const is None:
        return None
    return _cast(loc, const, data)


def _is_number(e: cst.BaseExpression) -> bool:
    return isinstance(e, (cst.Integer, cst.Float))


def _looks_numpy(e: cst.BaseExpression, aliases: dict[str, str], loc: Located) -> bool:
    """Mentions NumPy or a module-level UPPER_CASE / numpy-bound name: the constant side."""
    found = False

    class V(cst.CSTVisitor):
        def visit_Name(self, n: cst.Name) -> None:
            nonlocal found
            q = aliases.get(n.value, "")
            if q == "numpy" or q.startswith("numpy.") or _bound_to_numpy(n.value, loc.module, aliases):
                found = True

    e.visit(V())
    return found


def _bound_to_numpy(name: str, module: cst.Module, aliases: dict[str, str]) -> bool:
    """`name = np....` anywhere in the module (a constant or a local bound to a NumPy value)."""
    hit = False

    class V(cst.CSTVisitor):
        def visit_Assign(self, n: cst.Assign) -> None:
            nonlocal hit
            if any(isinstance(t.target, cst.Name) and t.target.value == name for t in n.targets):
                v = n.value
                while isinstance(v, (cst.Subscript, cst.Attribute)) or (isinstance(v, cst.Call) and isinstance(v.func, cst.Attribute) and v.func.attr.value == "astype"):
                    v = v.value if not isinstance(v, cst.Call) else v.func.value  # type: ignore[union-attr, attr-defined]
                if isinstance(v, cst.Call):
                    head = v.func
                    while isinstance(head, cst.Attribute):
                        head = head.value
                    if isinstance(head, cst.Name) and (aliases.get(head.value, "") == "numpy" or aliases.get(head.value, "").startswith("numpy.")):
                        hit = True

    module.visit(V())
    return hit
