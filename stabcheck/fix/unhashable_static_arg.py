"""STB502 unhashable-static-arg: pass a hashable container for a static argument.

    mlp(params, x, features=[64, 64, 10])   -> mlp(params, x, features=(64, 64, 10))
    f(x, [n for n in sizes])                -> f(x, tuple(n for n in sizes))
    f(x, list(sizes))                       -> f(x, tuple(sizes))
    f(x, window)   # window = [1, 2, 2, 1]  -> f(x, tuple(window))
    f(x, {1, 2})                            -> f(x, frozenset({1, 2}))
    f(x, np.array([1, 2, 2, 1]))            -> f(x, (1, 2, 2, 1))       (unsafe: no longer an array)
    f(x, Cfg(3))   # @dataclass class Cfg  -> @dataclass(frozen=True)  (unsafe: fields can no longer be assigned)

A tuple iterates, indexes and unpacks like the list it replaces, but it does not concatenate with
a list (`features + [10]` raises), compare equal to one, append or slice into a list. So the fix
is "safe" only when the called function is found in the file and reads the parameter in ways a
tuple (a frozenset) serves identically: iterated, indexed, measured with `len`, tested with `in`,
unpacked, starred, or handed to `zip`/`sorted`/`tuple`/... or to a JAX function (which takes any
sequence). Otherwise the same rewrite is offered as unsafe. Dicts are left alone: the function
indexes them by key, and no hashable built-in does that.
"""

from __future__ import annotations

import ast

import libcst as cst

from stabcheck.finding import Finding, byte_col
from stabcheck.fix._rewrite import Rewrite, cst_qualname, locate, module_aliases, replace

# built-ins that read a sequence (or set) argument the same whatever its container type
_READERS = {"len", "tuple", "list", "sorted", "set", "frozenset", "sum", "min", "max", "enumerate", "zip", "reversed", "any", "all", "iter", "map", "filter", "range"}


def fix(source: str, finding: Finding) -> Rewrite | None:
    if "dataclass" in str(finding.evidence.get("kind", "")):
        return _freeze(source, finding)
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
    if applicability is None and not _read_only(source, finding):
        applicability = "unsafe"  # the function may concatenate, compare or mutate it
    module = replace(loc, node, cst.parse_expression(new))
    return Rewrite(module.code, applicability=applicability, description=f"`{text}` -> `{new}`")  # type: ignore[arg-type]


def _freeze(source: str, finding: Finding) -> Rewrite | None:
    """`@dataclass` -> `@dataclass(frozen=True)` at the class of an instance passed for a static
    argument: hashable by value. Unsafe: code that assigns to a field of an instance then raises
    FrozenInstanceError."""
    loc = locate(source, finding, (cst.Call, cst.Attribute, cst.Name))
    if loc is None:
        return None
    node = loc.node
    frozen = cst.Arg(keyword=cst.Name("frozen"), value=cst.Name("True"), equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")))
    if isinstance(node, cst.Call):
        if any(a.keyword is not None and a.keyword.value == "frozen" for a in node.args):
            return None
        args = list(node.args)
        if args:
            args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        new: cst.BaseExpression = node.with_changes(args=[*args, frozen])
    elif isinstance(node, cst.BaseExpression):
        new = cst.Call(func=node, args=[frozen])
    else:
        return None
    module = replace(loc, node, new)
    return Rewrite(module.code, applicability="unsafe", description=f"`@{loc.code(node)}` -> `@{cst.Module([]).code_for_node(new)}`")


def _read_only(source: str, finding: Finding) -> bool:
    """Whether the parameter that receives the argument at `finding` is only read, in the called
    function, in ways a tuple or frozenset serves like the list or set it replaces."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    lines = source.splitlines()
    s = finding.span
    if not 0 < s.line <= len(lines):
        return False
    col = byte_col(lines[s.line - 1], s.col) - 1
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    aliases = module_aliases(source)
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        param = None
        for i, a in enumerate(call.args):
            if (a.lineno, a.col_offset) == (s.line, col):
                param = i
        for k in call.keywords:
            if k.arg and (k.value.lineno, k.value.col_offset) == (s.line, col):
                param = k.arg
        if param is None:
            continue
        fn = _callee(call.func, defs, assigned)
        if fn is None or fn.args.vararg is not None:
            return False
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
        if isinstance(param, int):
            if param >= len(params):
                return False
            name = params[param]
        else:
            name = param
            if name not in params and name not in [a.arg for a in fn.args.kwonlyargs]:
                return False
        return _only_read(fn, name, aliases)
    return False


def _callee(func: ast.expr, defs: dict[str, ast.AST], assigned: dict[str, ast.expr], depth: int = 0) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The module-level function a call reaches: `mlp(...)`, `step(...)` with `step = jax.jit(f)`,
    `jax.jit(f, ...)(...)`, `partial(jax.jit, ...)(f)(...)`."""
    if depth > 4:
        return None
    if isinstance(func, ast.Name):
        if func.id in defs:
            return defs[func.id]  # type: ignore[return-value]
        if func.id in assigned:
            return _callee(assigned[func.id], defs, assigned, depth + 1)
        return None
    if isinstance(func, ast.Call):  # a transform applied to a function: its first plain argument
        for a in func.args:
            if isinstance(a, ast.Name) and a.id in defs:
                return defs[a.id]  # type: ignore[return-value]
        return _callee(func.func, defs, assigned, depth + 1) if isinstance(func.func, ast.Call) else None
    return None


def _qual(node: ast.expr, aliases: dict[str, str]) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _only_read(fn: ast.AST, name: str, aliases: dict[str, str]) -> bool:
    parents: dict[ast.AST, ast.AST] = {}
    for n in ast.walk(fn):
        for ch in ast.iter_child_nodes(n):
            parents[ch] = n
    for n in ast.walk(fn):
        if isinstance(n, ast.Name) and n.id == name:
            if not isinstance(n.ctx, ast.Load) or not _reads(n, parents, aliases):
                return False
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and n is not fn:
            args = n.args
            if name in [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]:
                return False  # shadowed: too clever to follow
        elif isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names:
            return False
    return True


def _reads(n: ast.Name, parents: dict[ast.AST, ast.AST], aliases: dict[str, str]) -> bool:
    up = parents.get(n)
    if isinstance(up, (ast.For, ast.AsyncFor, ast.comprehension)) and up.iter is n:
        return True
    if isinstance(up, ast.Subscript) and up.value is n:
        return not isinstance(up.slice, ast.Slice)  # a slice of a tuple is a tuple
    if isinstance(up, ast.Compare) and n in up.comparators and all(isinstance(op, (ast.In, ast.NotIn)) for op in up.ops):
        return True
    if isinstance(up, ast.Starred) and isinstance(parents.get(up), ast.Call):
        return True
    if isinstance(up, ast.Assign) and up.value is n and all(isinstance(t, (ast.Tuple, ast.List)) for t in up.targets):
        return True
    if isinstance(up, ast.Call) and n in up.args:
        q = _qual(up.func, aliases)
        return q in _READERS or q.split(".")[0] == "jax"
    if isinstance(up, ast.keyword) and isinstance(parents.get(up), ast.Call):
        return _qual(parents[up].func, aliases).split(".")[0] == "jax"  # type: ignore[attr-defined]
    return False
