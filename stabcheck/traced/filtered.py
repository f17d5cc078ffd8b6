"""Entries whose arguments hold values JAX cannot trace, traced the way their users run them.

An `eqx.Module` with a callable field (`act=jax.nn.relu`), an `int` depth or a string name is
jitted with `eqx.filter_jit`: arrays are traced, everything else is static. Handing such an
argument to `jax.make_jaxpr` whole makes the stages report what the user never runs: a callable
"is not a valid JAX type" (STB505), `range(self.depth)` on a traced int (STB102). `filter_entry`
splits each such argument into a `Filtered` pytree: its array leaves are children (traced,
differentiated, batched), the rest and the tree structure are aux data, so they stay Python values
and are part of the compile key, as with `eqx.filter_jit` (a changed static field retraces).

Arguments of plain arrays, numbers and containers of them are left alone: `jax.jit` traces a
Python number, and the stages report on that. An argument is filtered when it contains an
equinox Module or a leaf that no JAX transform can trace (a function, a string, an object).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

from stabcheck.traced.entries import Entry

_NUMBERS = (bool, int, float, complex)
_REGISTERED = False


class Filtered:
    """The array leaves of one argument (children) and its other leaves and structure (aux)."""

    __slots__ = ("arrays", "static", "treedef")

    def __init__(self, arrays: list[Any], static: tuple[Any, ...], treedef: Any) -> None:
        self.arrays = arrays
        self.static = static  # (position, value) of each non-array leaf
        self.treedef = treedef

    def rebuild(self) -> Any:
        import jax

        leaves: list[Any] = [None] * self.treedef.num_leaves
        it = iter(self.arrays)
        fixed = dict(self.static)
        for i in range(len(leaves)):
            leaves[i] = fixed[i] if i in fixed else next(it)
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def __repr__(self) -> str:
        return f"Filtered({self.treedef}, {len(self.arrays)} arrays)"


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    import jax

    jax.tree_util.register_pytree_node(
        Filtered,
        lambda f: (f.arrays, (_Aux(f.static), f.treedef)),
        lambda aux, arrays: Filtered(list(arrays), aux[0].items, aux[1]),
    )
    _REGISTERED = True


class _Aux:
    """The static leaves as aux data: compared by value where they can be (ints, strings),
    by identity otherwise (a function, an object), as `eqx.filter_jit` hashes them."""

    __slots__ = ("items",)

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.items = items

    def _key(self) -> tuple[Any, ...]:
        out = []
        for i, v in self.items:
            try:
                hash(v)
                out.append((i, type(v), v))
            except TypeError:
                out.append((i, type(v), id(v)))
        return tuple(out)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Aux) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _is_array(x: Any) -> bool:
    import jax
    import numpy as np

    return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def needs_filter(arg: Any) -> bool:
    """`arg` holds an equinox Module or a leaf no JAX transform can trace."""
    import jax

    eqx = sys.modules.get("equinox")
    module = getattr(eqx, "Module", None) if eqx is not None else None
    found = False

    def visit(x: Any) -> bool:
        nonlocal found
        if module is not None and isinstance(x, module):
            found = True
        return False

    leaves = jax.tree_util.tree_leaves(arg, is_leaf=visit)
    if found:
        return True
    return any(not (_is_array(v) or isinstance(v, _NUMBERS)) for v in leaves)


def split(arg: Any) -> Filtered:
    import jax

    _register()
    leaves, treedef = jax.tree_util.tree_flatten(arg)
    arrays = [v for v in leaves if _is_array(v)]
    static = tuple((i, v) for i, v in enumerate(leaves) if not _is_array(v))
    return Filtered(arrays, static, treedef)


def filter_entry(entry: Entry) -> Entry:
    """`entry` with each argument that needs it (`needs_filter`) split into a `Filtered`, and a
    function that rebuilds them (its returned states, and returned values that need it, split the
    same way); else `entry` itself. The
    entry's own function stays reachable (`unfiltered`)."""
    positions = [i for i, a in enumerate(entry.args) if i not in entry.static_argnums and needs_filter(a)]
    if not positions:
        return entry
    fn = entry.fn
    states = [k for k, p in enumerate(entry.state_argnums) if p in positions]

    @functools.wraps(fn)
    def rebuilt(*args: Any, **kwargs: Any) -> Any:
        out = fn(*[a.rebuild() if isinstance(a, Filtered) else a for a in args], **kwargs)
        # returned states, and any returned Module or object holding functions (`model, opt_state`
        # of an `eqx.filter_jit` step, whose model keeps `jax.nn.relu`): split the same way, as
        # `eqx.filter_jit` returns non-arrays as Python values
        if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
            out = type(out)(split(o) if k in states or needs_filter(o) else o for k, o in enumerate(out))
        elif needs_filter(out):
            out = split(out)
        return out

    def apply(args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(split(a) if i in positions else a for i, a in enumerate(args))

    rebuilt.stabcheck_unfiltered = fn  # type: ignore[attr-defined]
    calls = tuple(apply(tuple(c)) for c in entry.calls) if entry.calls is not None else None
    return dataclasses.replace(entry, fn=rebuilt, args=apply(entry.args), calls=calls)


def unfiltered(fn: Any) -> Any:
    """The entry's own function under the wrapper `filter_entry` made (a `jax.jit` or
    `eqx.filter_jit` function keeps its compile cache, which the confirm stage counts)."""
    return getattr(fn, "stabcheck_unfiltered", fn)
