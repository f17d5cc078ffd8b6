"""STB502 unhashable-static-arg: pass a hashable container for a static argument.

    mlp(params, x, features=[64, 64, 10])   -> mlp(params, x, features=(64, 64, 10))
    f(x, [n for n in sizes])                -> f(x, tuple(n for n in sizes))
    f(x, list(sizes))                       -> f(x, tuple(sizes))
    f(x, window)   # window = [1, 2, 2, 1]  -> f(x, tuple(window))
    f(x, {1, 2})                            -> f(x, frozenset({1, 2}))
    f(x, np.array([1, 2, 2, 1]))            -> f(x, (1, 2, 2, 1))       (unsafe: no longer an array)

A tuple iterates, indexes and unpacks like the list it replaces. Dicts are left alone: the
function indexes them by key, and no hashable built-in does that.
"""

from __future__ import annotations

import libcst as cst

from stabcheck.finding import Finding
from stabcheck.fix._rewrite import Rewrite, cst_qualname, locate, module_aliases, replace


def fix(source: str, finding: Finding) -> Rewrite | None:
    loc = locate(source, finding, (cst.List, cst.ListComp, cst.Set, cst.SetComp, cst.Call, cst.Name))
    if loc is None:
        return None
    node = loc.node
    text = loc.code(node)
    new: str | None = None
    applicability = None
    if isinstance(node, cst.List):
        inner = text.strip()[1:-1]
        new = f"({inner.strip()},)" if len(node.elements) == 1 and not inner.rstrip().endswith(",") else f"({inner})"
    elif isinstance(node, cst.ListComp):
        new = f"tuple({text.strip()[1:-1].strip()})"
    elif isinstance(node, (cst.Set, cst.SetComp)):
        new = f"frozenset({text})"
    elif isinstance(node, cst.Name):
        new = f"tuple({text})"
    elif isinstance(node, cst.Call):
        q = cst_qualname(node.func, module_aliases(source))
        if q == "builtins.list" or (isinstance(node.func, cst.Name) and node.func.value == "list"):
            new = "tuple(" + text[text.index("(") + 1 :]
        elif q in ("builtins.set",) or (isinstance(node.func, cst.Name) and node.func.value == "set"):
            new = "frozenset(" + text[text.index("(") + 1 :]
        elif q is not None and q.split(".")[0] in ("numpy", "jax") and q.rsplit(".", 1)[1] in ("array", "asarray") and len(node.args) == 1:
            arg = node.args[0].value
            if isinstance(arg, (cst.List, cst.Tuple)) and all(isinstance(e.value, (cst.Integer, cst.Float, cst.UnaryOperation)) for e in arg.elements):
                inner = ", ".join(loc.code(e.value) for e in arg.elements)
                new = f"({inner},)" if len(arg.elements) == 1 else f"({inner})"
                applicability = "unsafe"  # the function may use array methods on it
    if new is None:
        return None
    module = replace(loc, node, cst.parse_expression(new))
    return Rewrite(module.code, applicability=applicability, description=f"`{text}` -> `{new}`")  # type: ignore[arg-type]
