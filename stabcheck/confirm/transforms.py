"""Build each transform of an entry as one function of array inputs, ready to lower and compile.

`prepare(entry, name)` splits the entry's arguments into the float leaves of `argnums` (what is
differentiated), the other array leaves (passed as arguments, so XLA cannot constant-fold them)
and the static rest (closed over), and returns `Prepared(fun, inputs)` with `fun(*inputs)` the
transform. Outputs that are not scalars are summed over their float leaves for `grad`,
`hessian`, `hvp` and `jacrev(jacrev)`. Runs in the worker (imports JAX).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stabcheck.traced.entries import Entry

MATRIX = ("jit", "grad", "jvp", "jacfwd", "vmap", "hessian", "jacrev(jacrev)", "jacrev(jacfwd)")
BATCH = 4  # the new leading axis that `vmap` maps over


def concrete(entry: Entry, seed: int = 0) -> Entry:
    """The entry with every `jax.ShapeDtypeStruct` argument (from --arg specs or a recording; those
    of its retrace `calls` too) made concrete by a seeded generator: standard normal floats, integers in [0, 4), random bools
    (a weakly typed scalar spec stays weakly typed)."""
    # JAX: imported when this runs, never on import
    import jax
    import jax.numpy as jnp  # JAX: only where user code runs

    key = [jax.random.key(seed)]

    def make(leaf: Any) -> Any:
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        key[0], k = jax.random.split(key[0])
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.split(k, leaf.shape) if leaf.shape else k  # typed PRNG keys
        dt = np.dtype(leaf.dtype)
        if np.issubdtype(dt, np.inexact):
            x = jax.random.normal(k, leaf.shape, dt)
        elif dt == np.bool_:
            x = jax.random.bernoulli(k, 0.5, leaf.shape)
        else:
            x = jax.random.randint(k, leaf.shape, 0, 4).astype(dt)
        if getattr(leaf, "weak_type", False) and leaf.shape == ():
            # a weakly typed scalar spec (`f32?[]`: a Python number the test passed, a state leaf
            # made by `jnp.asarray(0.0)`) stays weak, as JAX keys and promotes it
            return jnp.asarray(x.item())
        return jnp.asarray(x)

    def made(args: Any) -> tuple[Any, ...]:
        return tuple(jax.tree_util.tree_map(make, tuple(args), is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)))

    calls = tuple(entry.calls or ())
    leaves = jax.tree_util.tree_leaves((entry.args, calls), is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    if not any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        return entry
    return dataclasses.replace(entry, args=made(entry.args), calls=tuple(made(c) for c in calls) if entry.calls is not None else None)


@dataclass(frozen=True, slots=True)
class Prepared:
    name: str
    fun: Callable[..., Any]
    inputs: tuple[Any, ...]
    params: tuple[Any, ...] = ()  # the differentiated leaves, for dtype checks
    paths: tuple[str, ...] = ()  # their pytree paths, e.g. "params['w']"
    primal: Callable[..., Any] | None = None  # the scalar function differentiated, on the same inputs (grad)


def is_array(x: Any) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape") or isinstance(x, (bool, int, float, complex))


def is_float(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (float, complex)):
        return True
    if not hasattr(x, "dtype"):
        return False
    try:
        return bool(np.issubdtype(np.dtype(x.dtype), np.inexact))
    except TypeError:  # an extended dtype NumPy does not know (a typed PRNG key, `key<fry>`)
        return False


def _argnums(entry: Entry) -> tuple[int, ...]:
    a = entry.argnums
    return (a,) if isinstance(a, int) else tuple(a)


@dataclass(frozen=True, slots=True)
class Split:
    """args = static rest + `diff` leaves (float leaves of argnums) + `rest` leaves (other arrays)."""

    entry: Entry
    flat: tuple[tuple[Any, ...], ...]  # per argument: its leaves
    trees: tuple[Any, ...]
    diff_slots: tuple[tuple[int, int], ...]
    rest_slots: tuple[tuple[int, int], ...]
    diff_paths: tuple[str, ...]

    @classmethod
    def of(cls, entry: Entry) -> Split:
        # JAX: imported when this runs, never on import
        import jax

        flat, trees, diff, rest, paths = [], [], [], [], []
        argnums = set(_argnums(entry))
        names = param_names(entry.fn, len(entry.args))
        for i, a in enumerate(entry.args):
            with_path, tree = jax.tree_util.tree_flatten_with_path(a)
            flat.append(tuple(leaf for _, leaf in with_path))
            trees.append(tree)
            if i in entry.static_argnums:
                continue
            for j, (kp, leaf) in enumerate(with_path):
                if i in argnums and is_float(leaf):
                    diff.append((i, j))
                    paths.append(names[i] + jax.tree_util.keystr(kp))
                elif is_array(leaf):
                    rest.append((i, j))
        return cls(entry, tuple(flat), tuple(trees), tuple(diff), tuple(rest), tuple(paths))

    def leaves(self, slots: tuple[tuple[int, int], ...]) -> tuple[Any, ...]:
        # JAX: imported when this runs, never on import
        import jax.numpy as jnp

        return tuple(jnp.asarray(self.flat[i][j]) for i, j in slots)

    def call(self, diff: tuple[Any, ...], rest: tuple[Any, ...]) -> Any:
        # JAX: imported when this runs, never on import
        import jax

        leaves = [list(f) for f in self.flat]
        for (i, j), v in zip(self.diff_slots, diff):
            leaves[i][j] = v
        for (i, j), v in zip(self.rest_slots, rest):
            leaves[i][j] = v
        args = [jax.tree_util.tree_unflatten(t, ls) for t, ls in zip(self.trees, leaves)]
        return self.entry.fn(*args, **dict(self.entry.kwargs))


def param_names(fn: Any, n: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"args[{i}]" for i in range(n)]


def scalar(out: Any) -> Any:
    """`out` itself when it is a float scalar, else the sum of its float leaves."""
    # JAX: imported when this runs, never on import
    import jax
    import jax.numpy as jnp  # JAX: only where user code runs

    if hasattr(out, "shape") and out.shape == () and is_float(out):
        return out
    leaves = [jnp.sum(x) for x in jax.tree_util.tree_leaves(out) if is_float(x)]
    if not leaves:
        raise TypeError("the function has no floating-point output to differentiate")
    return sum(leaves[1:], leaves[0])


def prepare(entry: Entry, name: str, split: Split | None = None) -> Prepared:
    # JAX: imported when this runs, never on import
    import jax
    import jax.numpy as jnp  # JAX: only where user code runs

    s = split or Split.of(entry)
    diff, rest = s.leaves(s.diff_slots), s.leaves(s.rest_slots)
    f = s.call

    def sf(d: Any, r: Any) -> Any:
        return scalar(f(d, r))

    funs: dict[str, Callable[[], tuple[Callable[..., Any], tuple[Any, ...]]]] = {
        "jit": lambda: (f, (diff, rest)),
        "grad": lambda: (jax.grad(sf), (diff, rest)),
        "jvp": lambda: (lambda d, r, t: jax.jvp(lambda dd: f(dd, r), (d,), (t,)), (diff, rest, _ones(diff))),
        "jacfwd": lambda: (jax.jacfwd(f), (diff, rest)),
        "jacrev": lambda: (jax.jacrev(f), (diff, rest)),
        "hessian": lambda: (jax.hessian(sf), (diff, rest)),
        "jacrev(jacrev)": lambda: (jax.jacrev(jax.jacrev(sf)), (diff, rest)),
        "jacrev(jacfwd)": lambda: (jax.jacrev(jax.jacfwd(sf)), (diff, rest)),
        "hvp": lambda: (lambda d, r, v: jax.jvp(lambda dd: jax.grad(sf)(dd, r), (d,), (v,))[1], (diff, rest, _ones(diff))),
    }
    if name == "vmap":
        allslots = tuple(sorted(s.diff_slots + s.rest_slots))
        batched = tuple(jnp.broadcast_to(x, (BATCH, *jnp.shape(x))) for x in s.leaves(allslots))
        vs = Split(s.entry, s.flat, s.trees, allslots, (), ())
        return Prepared(name, jax.vmap(lambda b: vs.call(b, ())), (batched,))
    if name not in funs:
        raise ValueError(f"unknown transform {name!r}")
    fun, inputs = funs[name]()
    return Prepared(name, fun, inputs, diff, s.diff_paths, sf if name == "grad" else None)


def _ones(tree: Any) -> Any:
    # JAX: imported when this runs, never on import
    import jax
    import jax.numpy as jnp  # JAX: only where user code runs

    return jax.tree_util.tree_map(jnp.ones_like, tree)
