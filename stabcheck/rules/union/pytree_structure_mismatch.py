from __future__ import annotations

import ast
from dataclasses import dataclass

from stabcheck.rule import Rule, only
from stabcheck.static.analysis import FunctionInfo, array_annotated
from stabcheck.static.context import FileContext

_TREE_MAPS = frozenset({"jax.tree.map", "jax.tree_util.tree_map", "jax.tree_map", "jax.tree_util.tree_multimap"})
_WITH_PATH = frozenset({"jax.tree.map_with_path", "jax.tree_util.tree_map_with_path"})
# methods that change a dict or list in place: a literal they are called on no longer shows its tree
_MUTATORS = frozenset({"update", "pop", "popitem", "setdefault", "clear", "append", "extend", "insert", "remove", "sort", "reverse"})
_CONTAINERS = ("dict", "tuple", "list")


@dataclass(frozen=True)
class _Tree:
    """What the source shows of a pytree: `kind` is "none", "dict", "tuple", "list" (with
    `items`, key or index -> subtree, None where the subtree is not visible), "leaf" (a number or
    a string) or "value" (not None, structure not visible)."""

    kind: str
    node: ast.AST
    items: tuple[tuple[object, _Tree | None], ...] = ()


class PytreeStructureMismatch(Rule):
    """## What it does
    Reports two pytrees of different structure combined leaf by leaf: `jax.tree.map(f, a, b)`
    where one tree holds `None` for a part the other has (a frozen or optional sub-tree), dicts
    with other keys, a tuple against a list, or tuples of other lengths. The traced and confirm
    stages report it from JAX's own `pytree structure error`, at the user line that combines them.
    The static stage reports what the source shows: trees spelled as literals (`{"w": w, "b":
    None}`, `(a, b)`, `dict(w=w)`) in the call or bound once to a name in the same function and not
    changed in place. JAX reads the first tree as the structure: `None` there where another tree
    has a value raises `ValueError`; `None` in a later tree where the first has a leaf is passed to
    `f`, which fails when it computes with it (`p - lr * g`: `TypeError`). A call with `is_leaf=`
    is left alone, as is a tree the source does not spell (a parameter, a call's result). It also
    reports `jax.vmap(f, in_axes={...})`: `in_axes` has one entry per positional argument, so a dict
    there (meant for a function of one dict argument) raises TypeError when `vmap` is built.

    ## Why is this bad?
    Tree utilities require identical structures, so the mismatch raises the first time the code
    runs with the odd tree, often only in the configuration that freezes a layer or drops an
    optional state, far from where the `None` was put in.

    ## Example
    ```python
    grads = {"encoder": g_enc, "head": None}          # head frozen
    params = jax.tree.map(lambda g, p: p - lr * g, grads, params)   # ValueError
    ```

    ## Use instead
    Keep the structures equal (zeros for the frozen part), or treat `None` as a leaf on purpose:
    ```python
    params = jax.tree.map(lambda g, p: p if g is None else p - lr * g, grads, params,
                          is_leaf=lambda x: x is None)
    ```
    """

    code = "STB206"
    name = "pytree-structure-mismatch"
    severity = "error"
    stages = ("static", "traced", "confirmed")

    INVALID = (
        """
        import jax
        import jax.numpy as jnp

        def step(w_enc: jax.Array, w_head: jax.Array, g_enc: jax.Array, lr: float):
            params = {"encoder": w_enc, "head": w_head}
            grads = {"encoder": g_enc, "head": None}  # head frozen
            return jax.tree.map(lambda g, p: p - lr * g, grads, params)  # expect: STB206
        """,
        """
        import jax
        import jax.numpy as jnp

        def init_pair():
            params = {"w": jnp.ones(3), "b": jnp.zeros(())}
            grads = {"w": jnp.ones(3), "b": None}
            return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)  # expect: STB206
        """,
        """
        import jax
        import jax.numpy as jnp

        def blend(x, y):
            return jax.tree.map(jnp.add, (x, y), [x, y])  # expect: STB206
        """,
        """
        from jax import tree_util as jtu

        def merge(a, b, c):
            old = {"a": a, "b": b}
            new = {"a": a, "b": b, "c": c}
            return jtu.tree_map(lambda u, v: u + v, old, new)  # expect: STB206
        """,
        """
        import jax

        def batched_first(tree):
            return jax.vmap(lambda t: t["a"], in_axes={"a": 0})(tree)  # expect: STB206
        """,
    )
    VALID = (
        """
        import jax

        def batched_first(tree):
            return jax.vmap(lambda t: t["a"], in_axes=({"a": 0},))(tree)  # one entry per argument
        """,
        """
        import jax

        def step(params, g_enc, lr):
            grads = {"encoder": g_enc, "head": None}
            return jax.tree.map(lambda g, p: p if g is None else p - lr * g, grads, params,
                                is_leaf=lambda x: x is None)
        """,
        """
        import jax
        import jax.numpy as jnp

        def init_pair():
            params = {"w": jnp.ones(3), "b": jnp.zeros(())}
            grads = {"w": jnp.ones(3), "b": None}
            return jax.tree.map(lambda p, g: p if g is None else p - 0.1 * g, params, grads)
        """,
        """
        import jax

        def step(params, grads, lr):
            return jax.tree.map(lambda p, g: p - lr * g, params, grads)  # trees not spelled here
        """,
        """
        import jax
        import jax.numpy as jnp

        def pair(x, y):
            return jax.tree.map(lambda a, b: a + b, (x, (y, y)), (x, y))  # a leaf takes any subtree: prefix
        """,
        """
        import jax

        def fill(x, y):
            grads = {"a": x, "b": None}
            grads["b"] = y  # changed in place: the literal no longer shows the tree
            return jax.tree.map(lambda g: g * 2, grads)
        """,
        """
        import jax
        from typing import Optional

        def step(w: jax.Array, b: Optional[jax.Array], gw: jax.Array):
            params = {"w": w, "b": b}
            return jax.tree.map(lambda g, p: p - g, {"w": gw, "b": None}, params)  # b may be None too
        """,
    )

    @only(callees=_TREE_MAPS | _WITH_PATH | {"jax.vmap"})
    def visit_Call(self, node: ast.Call, ctx: FileContext) -> None:
        if ctx.qualname(node.func) == "jax.vmap":
            self._vmap_in_axes(node, ctx)
            return
        if any(k.arg == "is_leaf" or k.arg is None for k in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            return
        if len(node.args) < 3:
            return
        offset = 1 if ctx.qualname(node.func) in _WITH_PATH else 0
        trees = [_tree(a, ctx, node, 0) for a in node.args[1:]]
        first = trees[0]
        if first is None:
            return
        for i, other in enumerate(trees[1:], 1):
            if other is None:
                continue
            found = _mismatch(first, other, "")
            if found is not None:
                self._report_mismatch(ctx, node, node.args[1], node.args[1 + i], *found)
                return
            nones = _nones_under_leaves(first, other, "")
            if nones and _fails_on_none(node.args[0], offset + i, ctx):
                path, where = nones[0]
                self._report_none(ctx, node, node.args[1], node.args[1 + i], path, where)
                return

    def _vmap_in_axes(self, node: ast.Call, ctx: FileContext) -> None:
        """`jax.vmap(f, in_axes={"a": 0})`: `in_axes` is one entry per positional argument (an int,
        None, or a tuple or list of entries), never a dict itself; `vmap` raises TypeError when it is
        built (jax-ml/jax#18548: a dict for a function of one dict argument)."""
        axes: ast.AST | None = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "in_axes"), None)
        if isinstance(axes, ast.Name):
            axes = ctx.analysis.bound_once(axes.id, ctx.function)
        is_dict = isinstance(axes, (ast.Dict, ast.DictComp)) or (isinstance(axes, ast.Call) and ctx.qualname(axes.func) == "builtins.dict")
        if axes is None or not is_dict:
            return
        self.report(
            ctx,
            node,
            f"`in_axes={ctx.text(axes)}` is a dict, but `in_axes` needs one entry per positional argument (an int, None, or a tuple of them); "
            "`jax.vmap` raises TypeError: vmap in_axes must be an int, None, or a tuple of entries corresponding to the positional arguments",
            help=f"wrap it in a tuple, one entry per argument: `in_axes=({ctx.text(axes)},)` for a function of one dict argument",
            detail="in_axes",
        )

    def _report_mismatch(self, ctx: FileContext, node: ast.Call, a: ast.AST, b: ast.AST, path: str, left: str, right: str) -> None:
        at = f" at `{path}`" if path else ""
        self.report(
            ctx,
            node,
            f"`{ctx.text(node.func)}` combines `{ctx.text(a)}` and `{ctx.text(b)}` leaf by leaf, but their structures differ{at}: "
            f"{left} in the first, {right} in `{ctx.text(b)}`; JAX raises ValueError (pytree structure error) when this runs",
            help="keep the trees' structures equal (zeros for a frozen part), or pass `is_leaf=lambda x: x is None` and handle None in the function",
            detail=path or ctx.text(b),
            evidence={"path": path, "first": left, "other": right},
        )

    def _report_none(self, ctx: FileContext, node: ast.Call, a: ast.AST, b: ast.AST, path: str, where: str) -> None:
        self.report(
            ctx,
            node,
            f"`{ctx.text(b)}` holds None at `{path}` where the first tree `{ctx.text(a)}` has {where}: `{ctx.text(node.func)}` "
            "calls the function with None for that leaf, and the function computes with it (TypeError when this runs)",
            help="give the frozen part zeros, or handle None in the function (`p if g is None else p - lr * g`)",
            detail=path,
            evidence={"path": path, "first": where, "other": "None"},
        )


def _tree(e: ast.AST, ctx: FileContext, call: ast.Call, depth: int) -> _Tree | None:
    """The structure the source spells for `e`, None where it does not show one."""
    if depth > 6:
        return None
    if isinstance(e, ast.Constant):
        if e.value is None:
            return _Tree("none", e)
        return _Tree("leaf", e) if isinstance(e.value, (int, float, complex, str, bytes)) else None
    if isinstance(e, ast.Dict):
        if any(k is None or not (isinstance(k, ast.Constant) and isinstance(k.value, (str, int))) for k in e.keys):
            return None  # `**other` or a computed key
        keys = [k.value for k in e.keys if isinstance(k, ast.Constant)]
        if len(set(keys)) != len(keys):
            return None
        return _Tree("dict", e, tuple((k, _tree(v, ctx, call, depth + 1)) for k, v in zip(keys, e.values)))
    if isinstance(e, (ast.Tuple, ast.List)):
        if any(isinstance(x, ast.Starred) for x in e.elts):
            return None
        kind = "tuple" if isinstance(e, ast.Tuple) else "list"
        return _Tree(kind, e, tuple((i, _tree(x, ctx, call, depth + 1)) for i, x in enumerate(e.elts)))
    if isinstance(e, ast.Call) and ctx.qualname(e.func) == "builtins.dict" and not e.args and all(k.arg is not None for k in e.keywords):
        return _Tree("dict", e, tuple((k.arg, _tree(k.value, ctx, call, depth + 1)) for k in e.keywords))
    if isinstance(e, ast.UnaryOp) or (isinstance(e, ast.BinOp) and not isinstance(e.op, ast.BitOr)):
        return _Tree("value", e)  # arithmetic gives a value (`|` may merge dicts)
    if isinstance(e, ast.Call) and (ctx.qualname(e.func) or "").startswith(("jax.numpy.", "jax.random.", "jax.nn.")):
        return _Tree("value", e)
    if isinstance(e, ast.Name) and ctx.function is not None:
        if e.id in ctx.function.params and (_array_param(ctx.function, e.id) or ctx.proves_traced(e)):
            return _Tree("value", e)  # an array parameter is not None
        value = _bound_once(e, ctx.function, ctx, call)
        return _tree(value, ctx, call, depth + 1) if value is not None else None
    return None


def _array_param(fn: FunctionInfo, name: str) -> bool:
    """A parameter annotated as an array, not as optional (`x: jax.Array`, not `x: Array | None`)."""
    args = fn.node.args
    ann = next((a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg == name), None)
    return ann is not None and array_annotated(fn, name) and not any(w in ast.unparse(ann) for w in ("None", "Optional"))


def _bound_once(name: ast.Name, fn: FunctionInfo, ctx: FileContext, call: ast.Call) -> ast.AST | None:
    """The one value `name` is bound to in `fn` above `call`, when nothing else binds or changes it."""
    value = ctx.analysis.bound_once(name.id, fn)
    if value is None or getattr(value, "lineno", call.lineno) >= call.lineno:
        return None
    for n in ctx.analysis.own_nodes(fn):
        if isinstance(n, (ast.Global, ast.Nonlocal)) and name.id in n.names:
            return None
        if isinstance(n, ast.Subscript) and isinstance(n.ctx, (ast.Store, ast.Del)) and isinstance(n.value, ast.Name) and n.value.id == name.id:
            return None
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _MUTATORS:
            if isinstance(n.func.value, ast.Name) and n.func.value.id == name.id:
                return None
    return value


def _describe(t: _Tree) -> str:
    if t.kind == "none":
        return "None"
    if t.kind == "dict":
        return "a dict with keys " + ", ".join(repr(k) for k, _ in t.items) if t.items else "an empty dict"
    if t.kind in ("tuple", "list"):
        return f"a {t.kind} of {len(t.items)}"
    return f"`{_text(t.node)}`"


def _mismatch(a: _Tree, b: _Tree, path: str) -> tuple[str, str, str] | None:
    """(path, first, other) where the first tree `a` (the structure JAX reads) and `b` differ in a way
    tree.map rejects, None where they agree or the source does not show."""
    if a.kind == "none":
        return (path, "None", _describe(b)) if b.kind != "none" else None
    if a.kind not in _CONTAINERS:
        return None  # a leaf of the first tree takes any subtree of the others (prefix)
    if b.kind == "value":
        return None
    if b.kind != a.kind:
        return (path, _describe(a), _describe(b))
    if a.kind == "dict":
        if {k for k, _ in a.items} != {k for k, _ in b.items}:
            return (path, _describe(a), _describe(b))
        other = dict(b.items)
        pairs = [(f"{path}[{k!r}]", sub, other[k]) for k, sub in a.items]
    else:
        if len(a.items) != len(b.items):
            return (path, _describe(a), _describe(b))
        pairs = [(f"{path}[{i}]", x, y) for (i, x), (_, y) in zip(a.items, b.items)]
    for p, x, y in pairs:
        if x is not None and y is not None and (found := _mismatch(x, y, p)) is not None:
            return found
    return None


def _nones_under_leaves(a: _Tree, b: _Tree, path: str) -> list[tuple[str, str]]:
    """(path, what the first tree has) where `b` holds None under a leaf of the first tree `a`:
    tree.map passes that None to the function."""
    if a.kind in ("leaf", "value"):
        return [(path or "the whole tree", f"`{_text(a.node)}`")] if b.kind == "none" else []
    if a.kind not in _CONTAINERS or a.kind != b.kind or len(a.items) != len(b.items):
        return []
    other = dict(b.items)
    out: list[tuple[str, str]] = []
    for k, x in a.items:
        y = other.get(k)
        if x is not None and y is not None:
            out += _nones_under_leaves(x, y, f"{path}[{k!r}]")
    return out


def _text(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 40 else text[:37] + "..."


def _fails_on_none(f: ast.AST, index: int, ctx: FileContext) -> bool:
    """Does the mapped function, visible in the source, compute with its `index`-th argument
    without looking for None (an operand, `.attr`, `[i]`, an argument of a jnp function)?"""
    fn: ast.AST | None = f if isinstance(f, ast.Lambda) else None
    if fn is None:
        info = ctx.analysis.resolve(f, ctx.function)
        fn = info.node if info is not None else None
    if not isinstance(fn, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    args = fn.args
    if args.vararg is not None or index >= len(args.posonlyargs) + len(args.args):
        return False
    param = (args.posonlyargs + args.args)[index].arg
    body = [fn.body] if isinstance(fn, ast.Lambda) else fn.body
    nodes = [n for b in body for n in ast.walk(b)]
    if any(isinstance(n, ast.Constant) and n.value is None for n in nodes):
        return False  # the function looks for None
    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("isinstance", "callable") for n in nodes):
        return False

    def is_param(e: ast.AST) -> bool:
        return isinstance(e, ast.Name) and e.id == param

    for n in nodes:
        if isinstance(n, ast.BinOp) and (is_param(n.left) or is_param(n.right)):
            return True
        if isinstance(n, ast.UnaryOp) and is_param(n.operand):
            return True
        if isinstance(n, (ast.Attribute, ast.Subscript)) and is_param(n.value):
            return True
        if isinstance(n, ast.Call) and (ctx.qualname(n.func) or "").startswith(("jax.numpy.", "jax.lax.")) and any(is_param(a) for a in n.args):
            return True
    return False
