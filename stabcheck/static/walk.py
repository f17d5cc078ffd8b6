"""The one way the static stage steps from an `ast` node to its children.

`ast.iter_child_nodes` is a generator over `ast.iter_fields`, another generator: two Python
frames per node, and a visit to every `Load`/`Store`/`Del` context marker and every operator
(`Add`, `Eq`, ...) singleton. The walks here read each class's fields through a small function
compiled once per node class, in reverse order so that a stack pops them in source order. They
leave out the `ctx`, `op` and `ops` fields (read `node.op` instead of visiting it) and the fields
that never hold a node (names, levels, string kinds). The result: one full walk of the benchmark
corpus in about a third of a second, against three quarters for `iter_child_nodes`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Container

# fields that are never visited: context markers and operator singletons
SKIPPED_FIELDS = frozenset({"ctx", "op", "ops"})
# fields that never hold a node in any class (identifiers, ints, strings)
_NEVER_NODES = frozenset({"name", "id", "attr", "arg", "asname", "module", "level", "type_comment", "kind", "conversion", "is_async", "simple", "tag", "rest", "lineno"})
# list fields whose items may be None or str rather than nodes
_MIXED_LISTS = frozenset({(ast.Dict, "keys"), (ast.arguments, "kw_defaults"), (ast.Global, "names"), (ast.Nonlocal, "names"), (ast.MatchClass, "kwd_attrs")})

Children = Callable[[ast.AST], list[ast.AST]]
REVERSED_CHILDREN: dict[type, Children | None] = {}


def compile_children(cls: type) -> Children | None:
    fields = [
        f
        for f in cls._fields  # type: ignore[attr-defined]
        if f not in SKIPPED_FIELDS and f not in _NEVER_NODES and not (f == "value" and cls in (ast.Constant, ast.MatchSingleton))
    ]
    if not fields:
        return None
    lines = ["def reversed_children(n, AST=ast.AST):", "    out = []"]
    for f in reversed(fields):
        lines.append(f"    v = n.{f}")
        lines.append("    if v.__class__ is list:")
        if (cls, f) in _MIXED_LISTS:
            lines.append("        out.extend([x for x in reversed(v) if isinstance(x, AST)])")
        else:
            lines.append("        out.extend(reversed(v))")
        lines.append("    elif v is not None:")
        lines.append("        out.append(v)")
    lines.append("    return out")
    ns: dict[str, object] = {"ast": ast}
    exec("\n".join(lines), ns)  # our own generated code: field names of `ast` classes only
    return ns["reversed_children"]  # type: ignore[return-value]


def reversed_children(node: ast.AST) -> list[ast.AST]:
    """The node's children, last first (push them on a stack to pop them in source order)."""
    cls = node.__class__
    try:
        get = REVERSED_CHILDREN[cls]
    except KeyError:
        get = REVERSED_CHILDREN[cls] = compile_children(cls)
    return get(node) if get is not None else []


def children(node: ast.AST) -> list[ast.AST]:
    """`ast.iter_child_nodes(node)` as a list, without context markers and operators."""
    out = reversed_children(node)
    out.reverse()
    return out


def walk(node: ast.AST | list[ast.AST] | list[ast.stmt], *, stop: Container[type] = ()) -> list[ast.AST]:
    """Every node under `node` (itself included; or under each node of a list), depth first in
    source order. A node whose type is in `stop` is listed but not entered, except for its
    decorators and default values, which run in the enclosing scope (`stop=` the scope types: a
    function's own nodes)."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = [node] if isinstance(node, ast.AST) else list(reversed(node))
    pop, push, extend = stack.pop, out.append, stack.extend
    table = REVERSED_CHILDREN
    while stack:
        n = pop()
        push(n)
        cls = n.__class__
        if cls in stop:
            args = getattr(n, "args", None)
            if args is not None and args.__class__ is ast.arguments:
                extend(reversed([d for d in (*args.defaults, *args.kw_defaults) if d is not None]))
            decorators = getattr(n, "decorator_list", None)
            if decorators:
                extend(reversed(decorators))
            continue
        try:
            get = table[cls]
        except KeyError:
            get = table[cls] = compile_children(cls)
        if get is not None:
            extend(get(n))
    return out
