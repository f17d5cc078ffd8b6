from __future__ import annotations

import ast

from stabcheck.finding import Finding
from stabcheck.rule import Rule
from stabcheck.rules.union import _typed
from stabcheck.static.context import FileContext
from stabcheck.static.analysis import Analysis, FunctionInfo
from stabcheck.static.names import Names
from stabcheck.static.typed import FileTypes

_OPTIONAL = frozenset({"typing.Optional", "typing_extensions.Optional"})
_UNION = frozenset({"typing.Union", "typing_extensions.Union"})
_ANY = frozenset({"typing.Any", "typing_extensions.Any"})
# Annotations of array leaves: a union of these alone still compiles to one array output.
_LEAF_WORDS = ("Array", "ndarray", "Float", "Int", "Bool", "Num", "Shaped", "Real", "Complex", "Key", "UInt", "Inexact", "Scalar", "Numeric")
_LEAF_NAMES = frozenset({"float", "int", "bool", "complex"})
_ANY_WHY = "which admits any value"
_OPAQUE = ("Callable", "Type", "type")  # a union inside Callable[...] or type[...] is not the return's


class UnionAnnotation(Rule):
    """## What it does
    Flags a function that a transform is applied to directly (`@jax.jit`, `jax.vmap(f)`,
    `eqx.filter_jit`, a `lax.scan`/`cond` body, ...) whose declared return type is a union that
    changes the output's structure: `Optional[X]`, `X | None`, `Union[X, Y]` of non-array
    types, or `Any` (a function whose parameters are also `Any`/`PyTree` maps pytrees to
    pytrees, and is not flagged for `Any`). Helpers and Module methods are left alone: their
    unions are usually chosen by static configuration (`use_bias`, `return_carry`).

    ## Why is this bad?
    A transform compiles one program with one output structure. Declaring that the output may
    be `None`, or one of several structures, says the function is not type-stable: callers
    must branch on the result, which a traced caller cannot do, and a type checker cannot help
    them. It is the declared form of STB201 (union-return).

    A union that a static fact chooses (a `static_argnames` flag, an argument's None-ness, a
    static field of the method's `self`) is one structure per compiled call: the declaration
    alone does not prove a hazard there, and the finding is only a guess (`--preview`).

    ## Example
    ```python
    @jax.jit
    def masked_mean(x, mask) -> Optional[jax.Array]:
        ...
    ```

    ## Use instead
    Return one structure always (an empty array or zeros instead of `None`), or split the
    function in two with precise return types:
    ```python
    @jax.jit
    def forward(params, x) -> jax.Array:
        ...
    ```
    A union of array types only (`jax.Array | np.ndarray`, `ArrayLike`) is not flagged.
    """

    code = "STB202"
    name = "union-annotation"
    severity = "warning"
    INVALID = (
        """
        from typing import Optional
        import jax
        import jax.numpy as jnp

        @jax.jit
        def masked_mean(x, mask) -> Optional[jax.Array]:  # expect: STB202
            return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1)
        """,
        """
        from typing import Union
        import jax
        import jax.numpy as jnp

        def pick(x) -> "Union[jax.Array, None]":  # expect: STB202
            return jnp.where(x > 0, x, 0.0)

        batched = jax.vmap(pick)
        """,
    )
    VALID = (
        """
        from typing import Any, Optional
        import equinox as eqx
        import jax

        class MLP(eqx.Module):
            layers: list

            def __call__(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x

        # `Any`, or an Optional inside a tuple, says little about the structure of one call:
        # guesses, shown with --preview
        @eqx.filter_jit
        def predict(model: MLP, x) -> Any:
            return model(x)

        @jax.jit
        def step(state, key) -> tuple[jax.Array, Optional[dict]]:
            return state + 1, None
        """,
        """
        from functools import partial
        import jax
        import jax.numpy as jnp

        # the static flag chooses the structure: one structure per compiled call
        @partial(jax.jit, static_argnames="with_aux")
        def forward(w, x, with_aux=False) -> jax.Array | tuple[jax.Array, jax.Array]:
            h = jnp.tanh(x @ w)
            return (h, jnp.mean(h)) if with_aux else h
        """,
        """
        from typing import Optional
        import jax
        import jax.numpy as jnp
        import numpy as np

        @jax.jit
        def masked_mean(x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array | np.ndarray:
            if mask is None:
                return jnp.mean(x)
            return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1)
        """,
        """
        from typing import Optional
        import jax.numpy as jnp

        def find_checkpoint(path: str) -> Optional[str]:
            return None if not path else path
        """,
        """
        from typing import Any, Callable
        import jax
        import jax.numpy as jnp

        @jax.jit
        def tree_scale(tree: Any, s: float) -> Any:
            return jax.tree.map(lambda x: x * s, tree)

        def helper(x) -> Any:
            return jnp.tanh(x)

        @jax.jit
        def apply(x):
            return helper(x) + tree_scale({"a": x}, 2.0)["a"]

        def make_step(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
            @jax.jit
            def step(params, x) -> dict[str, Any]:
                return jax.grad(loss_fn)(params, x)
            return step
        """,
        """
        from typing import Optional
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        def combine_masks(*masks: Optional[jax.Array]) -> Optional[jax.Array]:
            masks_list = [m for m in masks if m is not None]
            if not masks_list:
                return None
            return jnp.logical_and.reduce(jnp.stack(masks_list))

        class DenseParams(nn.Module):
            features: int
            use_bias: bool = True

            @nn.compact
            def __call__(self, x) -> tuple[jax.Array, Optional[jax.Array]]:
                k = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
                b = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
                return k, b

        @jax.jit
        def attend(q, k, mask_a, mask_b):
            return jnp.where(combine_masks(mask_a, mask_b), q @ k.T, -1e9)
        """,
    )

    @classmethod
    def typed_check(cls, tree: ast.Module, source: bytes, path: str, types: FileTypes) -> list[Finding]:
        return _typed.declared_optional(cls, tree, source, path, types, statically_chosen)

    def visit_FunctionDef(self, node: ast.FunctionDef, ctx: FileContext) -> None:
        self._check(node, ctx)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef, ctx: FileContext) -> None:
        self._check(node, ctx)

    def _check(self, node: ast.FunctionDef | ast.AsyncFunctionDef, ctx: FileContext) -> None:
        info = ctx.analysis.functions.get(node)
        if info is None or not info.transforms or node.returns is None:
            return  # only functions a transform is applied to: helpers' unions are often static-driven
        ann = node.returns
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                ann = ast.parse(ann.value, mode="eval").body
            except SyntaxError:
                return
        why = _why(ann, ctx.names, top=True)
        if why is None:
            return
        if why == _ANY_WHY and _pytree_polymorphic(node, ctx.names):
            return  # `tree: Any -> Any` is the usual spelling of "a pytree in, a pytree out"
        text = ctx.text(node.returns)
        chosen = statically_chosen(node, info, ctx.analysis, ctx.names, why)
        self.report(
            ctx,
            node.returns,
            message=(
                f"`{info.qualname}` is transformed but declares the return type `{text}`, {why}; "
                "a compiled function has one output structure, and callers that branch on this one cannot be traced"
            ),
            help="return one structure on every call (zeros instead of `None`), or split the function and annotate each precisely",
            function=info.qualname,
            detail=f"{info.qualname}->{text}",
            confidence="guess" if chosen else "proven",
        )


def statically_chosen(node: ast.FunctionDef | ast.AsyncFunctionDef, info: FunctionInfo, analysis: Analysis, names: Names, why: str) -> bool:
    """May a static fact choose which member of the declared union one compiled call returns?
    Then the declaration alone proves no hazard (a guess). Also used by the typed tier."""
    # a static input (flag, None-default, the method's `self`, a pytree-typed argument)
    if info.static_params or info.is_method or _pytree_typed(node, names):
        return True
    if any(isinstance(d, ast.Constant) and d.value is None for d in (*node.args.defaults, *node.args.kw_defaults)):
        return True
    # `Any`, or a union inside a container (`tuple[State, Optional[dict]]`), says little about
    # the structure one call returns
    if why == _ANY_WHY or why.endswith("inside it"):
        return True
    # a branch on anything not proven traced (a closure flag, `isinstance`, a shape test)
    return any(isinstance(n, (ast.If, ast.IfExp)) and not analysis.proves_traced(n.test, info) for n in analysis.own_nodes(info))


def _why(ann: ast.expr, names: Names, *, top: bool) -> str | None:
    """Why `ann` declares an unstable return, or None."""
    q = names.qualname(ann)
    if q in _ANY or (q is None and isinstance(ann, ast.Name) and ann.id == "Any"):
        return _ANY_WHY if top else None
    members = _union_members(ann, names)
    if members is not None:
        if any(_is_none(m) for m in members):
            return "which admits `None`"
        if not all(_is_leaf(m, names) for m in members):
            return "a union of different structures"
        return None
    if isinstance(ann, ast.Subscript):
        base = names.qualname(ann.value) or (ann.value.id if isinstance(ann.value, ast.Name) else "")
        if base.rsplit(".", 1)[-1] in _OPAQUE:
            return None
        inner = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        for e in inner:
            if _union_members(e, names) is not None:
                why = _why(e, names, top=False)
                if why is not None:
                    return why + " inside it"
    return None


def _union_members(ann: ast.expr, names: Names) -> list[ast.expr] | None:
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        left = _union_members(ann.left, names) or [ann.left]
        right = _union_members(ann.right, names) or [ann.right]
        return left + right
    if isinstance(ann, ast.Subscript):
        q = names.qualname(ann.value) or (ann.value.id if isinstance(ann.value, ast.Name) else "")
        elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if q in _OPTIONAL or q == "Optional":
            return [*elts, ast.Constant(None)]
        if (q in _UNION or q == "Union") and len(elts) > 1:
            return list(elts)
    return None


def _is_none(e: ast.expr) -> bool:
    return isinstance(e, ast.Constant) and e.value is None


def _is_leaf(e: ast.expr, names: Names) -> bool:
    base = e.value if isinstance(e, ast.Subscript) else e
    q = names.qualname(base) or ""
    leaf = q.removeprefix("builtins.").rsplit(".", 1)[-1] if q else (base.id if isinstance(base, ast.Name) else "")
    if isinstance(base, ast.Attribute) and not q:
        leaf = base.attr
    return leaf in _LEAF_NAMES or any(w in leaf for w in _LEAF_WORDS)


def _pytree_typed(node: ast.FunctionDef | ast.AsyncFunctionDef, names: Names) -> bool:
    """A parameter annotated with a non-array type (`a: QSM`): the argument's pytree type, a
    static fact, may choose the structure returned (`construct(...)` of `DiagQSM` or None)."""
    args = node.args
    for a in (*args.posonlyargs, *args.args, *args.kwonlyargs):
        ann = a.annotation
        if ann is not None and not _is_leaf(ann, names) and not (isinstance(ann, ast.Name) and ann.id == "Any"):
            return True
    return False


def _pytree_polymorphic(node: ast.FunctionDef | ast.AsyncFunctionDef, names: Names) -> bool:
    """Some parameter (`*args` included) is annotated `Any` or `PyTree`: the function maps
    pytrees to pytrees."""
    args = node.args
    for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, *(v for v in (args.vararg, args.kwarg) if v is not None)):
        ann = a.annotation
        if ann is None:
            continue
        q = names.qualname(ann) or (ann.id if isinstance(ann, ast.Name) else "")
        if q in _ANY or q == "Any" or "PyTree" in ast.unparse(ann):
            return True
    return False
