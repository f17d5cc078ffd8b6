"""Abstract signatures of a call: what `jit` keys its compile cache on, in words.

A `Signature` lists every argument leaf by its pytree path (`opt_state[1]['count']`) with its
abstract type (`weak float32[]`), and every static argument by value. `changes(old, new)` says
which leaves differ, for the retrace warning. `raw_key` is the cheap, hashable form used on the
hot path of plain functions. JAX is imported lazily, only to describe Python scalars.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stabcheck.confirm.retrace import identity_key, is_static_field, renewed

_PY_SCALARS = (bool, int, float, complex)


@dataclass(frozen=True, slots=True)
class Signature:
    """Dynamic leaves as (path, type) and static arguments as (name, repr), in call order."""

    leaves: tuple[tuple[str, str], ...]
    statics: tuple[tuple[str, str], ...] = ()
    # where a leaf came from, for messages only (`lr`: "Python float"): JAX keys a Python float
    # exactly as a weak float32[] array, so the origin is not part of the signature
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False, hash=False)

    def describe(self) -> str:
        parts = [f"{p}: {t}" for p, t in self.leaves] + [f"{n}={v}" for n, v in self.statics]
        return ", ".join(parts)


def leaf_key(x: Any) -> Any:
    """Hashable abstract type of one leaf, as `jit` would see it (cheap: no JAX import)."""
    t = type(x)
    if t in _PY_SCALARS:
        return t
    return _array_key(x, t)


def static_scalar_key(x: Any) -> Any:
    """As `leaf_key`, but Python scalars count by value (`eqx.filter_jit` treats them as static)."""
    t = type(x)
    if t in _PY_SCALARS:
        return ("static", t, x)
    return _array_key(x, t)


def _array_key(x: Any, t: type) -> Any:
    aval = getattr(x, "aval", None)
    if aval is not None and hasattr(aval, "shape"):
        return (aval.shape, aval.dtype, getattr(aval, "weak_type", False))
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return (tuple(shape), dtype, False)
    return ("static", t, _hashable(x))


def _hashable(x: Any) -> Any:
    try:
        hash(x)
    except TypeError:
        return id(x)
    return x


def is_array_leaf(x: Any) -> bool:
    """Leaves that `jit` traces: arrays, tracers, NumPy values (Python scalars are kept static here)."""
    if type(x) in _PY_SCALARS:
        return False
    return hasattr(x, "shape") and hasattr(x, "dtype")


def describe_leaf(x: Any) -> str:
    """`float32[3,4]`, `weak float32[]`, or `static 'relu'` for one leaf. A Python scalar is
    described as the abstract value `jit` makes of it (a Python float is `weak float32[]`, like
    a weak 0-d array: JAX traces them once)."""
    if type(x) in _PY_SCALARS:
        # JAX: imported when this runs, never on import
        import jax.numpy as jnp

        aval = jnp.asarray(x).aval  # type: ignore[attr-defined]
        return type_str(aval.dtype, aval.shape, bool(getattr(aval, "weak_type", False)))
    aval = getattr(x, "aval", None)
    if aval is not None and hasattr(aval, "shape"):
        return type_str(aval.dtype, aval.shape, bool(getattr(aval, "weak_type", False)))
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return type_str(_canonical(dtype), tuple(shape), False)
    return f"static {short_repr(x)}"


def _canonical(dtype: Any) -> Any:
    """The dtype `jit` gives a NumPy value: `np.float64(0.5)` is `float32[]` unless
    `jax_enable_x64`, the same signature as `jnp.float32(0.5)` (JAX traces them once)."""
    # JAX: imported when this runs, never on import
    from jax import dtypes

    try:
        return dtypes.canonicalize_dtype(dtype)
    except (TypeError, ValueError):
        return dtype


def type_str(dtype: Any, shape: Sequence[int], weak: bool) -> str:
    return f"{'weak ' if weak else ''}{dtype}[{','.join(str(d) for d in shape)}]"


def short_repr(x: Any) -> str:
    """`repr` cut to 40 characters; for a value JAX keys by identity (a function, a `jax.jit`
    function, an optax transformation, a plain object) with ` #<id>` after it, so two such
    objects with one repr are two signatures, as they are two cache keys to JAX."""
    try:
        r = repr(x)
    except Exception:
        r = f"<{type(x).__name__}>"
    r = r if len(r) <= 40 else r[:37] + "..."
    ident = identity_key(x)
    return r if ident is None else f"{r}{_ID}{ident}"


_ID = " #"


def _shown(text: str) -> str:
    return text.rsplit(_ID, 1)[0]


def named_leaves(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(path, leaf) for every leaf of `(args, kwargs)`, in `tree_flatten((args, kwargs))` order;
    paths start with the parameter's name, as JAX names them (`opt_state[1]['count']`)."""
    return _named(_positional_names(fn), args, kwargs)


def _named(pos_names: Sequence[str], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    # JAX: imported when this runs, never on import
    import jax

    out: list[tuple[str, Any]] = []
    parts = [(pos_names[i] if i < len(pos_names) else f"args[{i}]", a) for i, a in enumerate(args)]
    parts += [(k, kwargs[k]) for k in sorted(kwargs)]
    for name, value in parts:
        for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
            out.append((name + jax.tree_util.keystr(path), leaf))
    return out


def signature_of(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    static_argnums: Sequence[int] = (),
    static_argnames: Sequence[str] = (),
    static_scalars: bool = False,
) -> Signature:
    """The named signature of a call; `static_argnums/argnames` are `jit`'s; `static_scalars`:
    Python numbers are static values (as under `eqx.filter_jit`), not weak-typed leaves."""
    pos_names = _positional_names(fn)
    snames = set(static_argnames) | {pos_names[i] for i in static_argnums if 0 <= i < len(pos_names)}
    snums = set(static_argnums) | {i for i, n in enumerate(pos_names) if n in snames}
    statics: list[tuple[str, str]] = []
    dyn_args = []
    for i, a in enumerate(args):
        if i in snums:
            statics.append((pos_names[i] if i < len(pos_names) else f"args[{i}]", short_repr(a)))
        else:
            dyn_args.append(a)
    dyn_kwargs = {k: v for k, v in kwargs.items() if k not in snames}
    statics += [(k, short_repr(v)) for k, v in sorted(kwargs.items()) if k in snames]
    names = [n for i, n in enumerate(pos_names) if i not in snums]
    leaves: list[tuple[str, str]] = []
    origins: list[tuple[str, str]] = []
    for path, leaf in _named(names, tuple(dyn_args), dyn_kwargs):
        if is_array_leaf(leaf) or (type(leaf) in _PY_SCALARS and not static_scalars):
            leaves.append((path, describe_leaf(leaf)))
            if type(leaf) in _PY_SCALARS:
                origins.append((path, f"Python {type(leaf).__name__}"))
        else:
            statics.append((path, short_repr(leaf)))
    # what the leaves do not show: an argument given as None, a field declared static
    parts = [(names[i] if i < len(names) else f"args[{i}]", a) for i, a in enumerate(dyn_args)] + sorted(dyn_kwargs.items())
    statics += [(n, "None") for n, a in parts if a is None]
    statics += _static_fields(parts)
    return Signature(tuple(leaves), tuple(statics), tuple(origins))


def _static_fields(parts: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(path, value) of every dataclass field declared static (`eqx.field(static=True)`, flax's
    `pytree_node=False`) under the arguments: part of the pytree structure JAX keys on."""
    import dataclasses

    out: list[tuple[str, str]] = []

    def visit(x: Any, path: str, depth: int) -> None:
        if depth > 20:
            return
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                if not hasattr(x, f.name):
                    continue
                v = getattr(x, f.name)
                if is_static_field(f):
                    out.append((f"{path}.{f.name}", short_repr(v)))
                else:
                    visit(v, f"{path}.{f.name}", depth + 1)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                visit(v, f"{path}.{x._fields[i]}" if hasattr(x, "_fields") else f"{path}[{i}]", depth + 1)
        elif isinstance(x, dict):
            for k, v in x.items():
                visit(v, f"{path}[{k!r}]", depth + 1)

    for name, a in parts:
        visit(a, name, 0)
    return out


def _positional_names(fn: Callable[..., Any]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _root(path: str) -> str:
    """The argument a leaf path starts at: `params` for `params['w']` and `state.opt[0]`-like paths."""
    return re.split(r"[\[.]", path, maxsplit=1)[0]


def changes(old: Signature, new: Signature, limit: int = 3) -> list[str]:
    """Human phrases for what differs between two signatures, most specific first."""
    out: list[str] = []
    before, after = dict(old.leaves), dict(new.leaves)
    o_old, o_new = dict(old.origins), dict(new.origins)

    def _o(origins: dict[str, str], path: str) -> str:
        return f" ({origins[path]})" if path in origins else ""

    for path, t in new.leaves:
        if path in before and before[path] != t:
            out.append(f"`{path}` was {before[path]}{_o(o_old, path)}, now {t}{_o(o_new, path)}")
    s_old, s_new = dict(old.statics), dict(new.statics)
    for path, t in new.leaves:
        if path not in before and path in s_old:
            was = "None" if s_old[path] == "None" else f"static {_shown(s_old[path])}"
            out.append(f"`{path}` was {was}, now {t}{_o(o_new, path)}")
    for path, t in old.leaves:
        if path not in after and path in s_new:
            now = "None" if s_new[path] == "None" else f"static {_shown(s_new[path])}"
            out.append(f"`{path}` was {t}{_o(o_old, path)}, now {now}")
    # an argument that had no leaves at all before (an optional argument given as None, an empty container)
    roots = {_root(q) for q in [*before, *s_old] if s_old.get(q) != "None"}
    empty = [(p, t) for p, t in new.leaves if _root(p) not in roots and p not in s_old]
    out.extend(f"`{p}` was {'None' if s_old.get(_root(p)) == 'None' else 'None (or empty)'}, now {t}" for p, t in empty[:limit])
    added = [p for p, _ in new.leaves if p not in before and p not in s_old and p not in dict(empty)]
    removed = [p for p, _ in old.leaves if p not in after and p not in s_new]
    if added or removed:
        bits = []
        if added:
            bits.append("new leaves " + ", ".join(f"`{p}`" for p in added[:limit]))
        if removed:
            bits.append("missing leaves " + ", ".join(f"`{p}`" for p in removed[:limit]))
        out.append("the argument structure changed (" + "; ".join(bits) + ")")
    s_before = dict(old.statics)
    for name, v in new.statics:
        if name in s_before and s_before[name] != v:
            if _shown(s_before[name]) == _shown(v):
                out.append(renewed(name, "", _shown(v)))
            else:
                out.append(f"static `{name}` was {_shown(s_before[name])}, now {_shown(v)}")
    return out[:limit]
