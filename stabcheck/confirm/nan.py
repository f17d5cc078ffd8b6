"""Where a NaN or Inf began: evaluate a jaxpr equation by equation, nested calls included.

`nan_origin(fn, args)` traces `fn` (any composition of jit/grad/jvp/...) to a jaxpr and runs it
one primitive at a time on the concrete `args`. The origin is the first equation that makes a
NaN from inputs without one (`0 * inf`, `0 / 0`) or an Inf from finite inputs (`log(0)`); its
user line comes from the equation's source info (or, inside a library's jitted function such
as `jnp.linalg.norm`, from the user's call of it), and its name stack tells the backward pass
(`transpose(...)`) from the forward one. A `scan`, `while_loop` or `cond` that made the NaN is
replayed body by body, so the origin is the line inside it. When a `where` selects around the unsafe operation
(it masks the value, not its derivative), `Origin.masked_by` names that `where`'s line. Runs in
the worker (imports JAX).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stabcheck.traced.source import chain, eqn_site

# primitives whose inner jaxpr takes exactly the equation's inputs: step into them
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call", "custom_lin"})
# primitives whose derivative is infinite or undefined somewhere their value is finite: a `div`
# or `mul` that makes the first Inf at the same line is their derivative, not the user's arithmetic
_SINGULAR = frozenset({"sqrt", "rsqrt", "cbrt", "log", "log1p", "pow", "atan2", "asin", "acos", "atanh", "acosh", "tan", "erf_inv", "lgamma", "digamma"})
_ARITH = frozenset({"div", "mul", "integer_pow", "pow", "rsqrt", "neg", "add", "sub", "add_any"})
# what `jnp.where` and `lax.select` become: the predicate first, then the cases
_SELECTS = frozenset({"select_n", "_where", "where"})
# control flow whose bodies run many times or one of several: run whole, stepped into only when
# it made the NaN/Inf, so the origin is the line inside the body (`_control_flow`)
_LOOPS = frozenset({"scan", "while", "cond"})
_MAX_STEPS = 10_000  # loop iterations replayed one primitive at a time at most; past that, the loop's line


@dataclass(frozen=True, slots=True)
class Origin:
    primitive: str
    path: str | None
    line: int | None
    phase: str  # 'forward' (primal and linearization) | 'backward' (the transpose)
    kind: str  # "NaN" | "Inf"
    equation: str
    name_stack: str
    inputs_from: tuple[str, ...] = ()  # what produced the equation's inputs (e.g. "sqrt")
    col: int = 1
    chains: tuple[Any, ...] = ()  # the user frames from the entry down to it (`traced.source.chain`)
    derivative_of: str = ""  # the primitive whose derivative this equation computes ("sqrt")
    masked_by: Any = None  # the `where` (a `traced.source.Site`) that selects around the unsafe value
    # "Inf" when the equation's operands held an Inf already (a NaN made from it: `0 * inf`,
    # `inf - inf`). Every Inf made from finite values is an origin itself, so such an Inf is a
    # constant of the program (`-jnp.inf` in the code), not a value the inputs produced
    operands: str | None = None

    @property
    def describe(self) -> str:
        """`div` (the derivative of `sqrt`), or just `sqrt`."""
        if self.derivative_of:
            return f"`{self.primitive}` (in the derivative of `{self.derivative_of}`)"
        return f"`{self.primitive}`"


def nonfinite(tree: Any) -> str | None:
    """'NaN' or 'Inf' when any float leaf of `tree` has one, else None."""
    # JAX: imported when this runs, never on import
    import jax

    kind = None
    for leaf in jax.tree_util.tree_leaves(tree):
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended):
            continue  # a typed PRNG key: no float to check, and NumPy cannot read it
        a = np.asarray(leaf) if hasattr(leaf, "dtype") or isinstance(leaf, (float, complex)) else None
        if a is None or not np.issubdtype(a.dtype, np.inexact):
            continue
        if np.isnan(a).any():
            return "NaN"
        if np.isinf(a).any():
            kind = "Inf"
    return kind


def nan_origin(fn: Callable[..., Any], args: tuple[Any, ...], static_argnums: tuple[int, ...] = ()) -> Origin | None:
    # JAX: imported when this runs, never on import
    import jax

    closed = jax.make_jaxpr(fn, static_argnums=static_argnums)(*args)
    flat = jax.tree_util.tree_leaves([a for i, a in enumerate(args) if i not in static_argnums])
    found: list[Origin] = []
    try:
        _eval(closed.jaxpr, list(closed.consts), flat, found, [""] * len(flat))
    except _Stop as stop:
        if found and stop.levels:
            where = _masking_where(stop.levels, stop.start)
            return replace(found[0], masked_by=where) if where is not None else found[0]
    return found[0] if found else None


class _Stop(Exception):
    """The origin is found: `levels` holds (jaxpr, equation index) from the origin's jaxpr out
    to the top one, `start` the vars of the unsafe value in the innermost jaxpr."""

    def __init__(self, levels: list[tuple[Any, int]], start: set[Any]) -> None:
        super().__init__()
        self.levels = levels
        self.start = start


def _eval(jaxpr: Any, consts: list[Any], args: list[Any], found: list[Origin], labels: list[str], outer: Any = None, stack: str = "") -> list[Any]:
    """Evaluate one jaxpr; `outer` is the user site of the call that holds it (for equations
    of a library's jitted function, which have no user line of their own), `stack` the name
    stack of the loop body it is (a body's own name stacks are relative to its equation)."""
    # JAX: imported when this runs, never on import
    from jax._src import core

    env: dict[Any, Any] = {}
    made_by: dict[Any, str] = {}  # var -> the primitive (or named call) that produced it
    producer: dict[Any, Any] = {}  # var -> the equation that produced it

    def read(v: Any) -> Any:
        return v.val if isinstance(v, core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x, lab in zip(jaxpr.invars, args, labels):
        env[v] = x
        made_by[v] = lab
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        from_ = [made_by.get(v, "") for v in eqn.invars if not isinstance(v, core.Literal)]
        label = str(eqn.params.get("name", name)) if name in _CALLS else name
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if name in _CALLS and sub is not None:
            inner, inner_consts = (sub.jaxpr, list(sub.consts)) if hasattr(sub, "consts") else (sub, [])
            if len(inner.invars) == len(invals):
                try:
                    outs = _eval(inner, inner_consts, invals, found, from_, eqn_site(eqn) or outer, stack)
                except _Stop as stop:
                    stop.levels.append((jaxpr, i))
                    raise
                for v, x in zip(eqn.outvars, outs):
                    env[v] = x
                    made_by[v] = label
                    producer[v] = eqn
                continue
        with eqn.ctx.manager:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        outs = list(outs) if eqn.primitive.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
            made_by[v] = label
            producer[v] = eqn
        bad = nonfinite(outs)
        had = nonfinite(invals)
        if bad and (had is None or (bad == "NaN" and had == "Inf")):
            if name in _LOOPS:
                try:
                    _control_flow(eqn, invals, found, from_, outer, stack)  # raises _Stop at the body's line
                except _Stop as stop:
                    stop.levels.append((jaxpr, i))
                    raise
                except Exception:  # a body stabcheck cannot replay: the loop's own line, as before
                    del found[:]
            og, unsafe = _origin(jaxpr.eqns[:i], eqn, bad, tuple(f for f in from_ if f), producer, outer, stack)
            found.append(replace(og, operands=had))
            raise _Stop([(jaxpr, next(j for j, e in enumerate(jaxpr.eqns) if e is unsafe))], set(unsafe.outvars))
    return [read(v) for v in jaxpr.outvars]


def _control_flow(eqn: Any, invals: list[Any], found: list[Origin], labels: list[str], outer: Any, stack: str) -> None:
    """Replay a scan, while_loop or cond that made a NaN/Inf from finite inputs, its body one
    primitive at a time, iteration by iteration: `_eval` raises _Stop at the first equation
    inside that made it. Returns when none did (or the loop is too long to step through)."""
    name, p = eqn.primitive.name, eqn.params
    inner = f"{stack}/{eqn.source_info.name_stack}".strip("/")  # a body's name stack is relative to its equation
    labels = list(labels) + [""] * (len(invals) - len(labels))
    at = eqn_site(eqn) or outer

    def run(closed: Any, args: list[Any], labs: list[str]) -> list[Any]:
        return _eval(closed.jaxpr, list(closed.consts), args, found, labs, at, inner)

    if name == "cond":
        branches = p["branches"]
        index = int(np.clip(int(np.asarray(invals[0])), 0, len(branches) - 1))
        run(branches[index], invals[1:], labels[1:])
    elif name == "scan":
        nc, nk, n = p["num_consts"], p["num_carry"], int(p["length"])
        if n > _MAX_STEPS:
            return
        consts, carry, xs = invals[:nc], invals[nc : nc + nk], invals[nc + nk :]
        for i in reversed(range(n)) if p["reverse"] else range(n):
            outs = run(p["jaxpr"], [*consts, *carry, *(x[i] for x in xs)], labels)
            carry = outs[:nk]
    elif name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, carry = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
        for _ in range(_MAX_STEPS):
            if not bool(np.asarray(run(p["cond_jaxpr"], [*cconsts, *carry], labels[:cn] + labels[cn + bn :])[0])):
                return
            carry = run(p["body_jaxpr"], [*bconsts, *carry], labels[cn:])


def _origin(before: list[Any], eqn: Any, kind: str, inputs_from: tuple[str, ...], producer: dict[Any, Any], outer: Any, prefix: str = "") -> tuple[Origin, Any]:
    """The Origin of `eqn`, and the unsafe equation a `where` may mask: the primitive whose
    derivative `eqn` computes (`sqrt` for the `div` of its derivative), else `eqn` itself."""
    site = eqn_site(eqn) or outer
    stack = f"{prefix}/{eqn.source_info.name_stack}".strip("/")
    text = str(eqn).strip().splitlines()[0][:200]
    phase = "backward" if "transpose" in stack else "forward"
    unsafe = eqn
    if eqn.primitive.name in _ARITH:
        # the singular primitive that feeds it, else one at the same user line (`atan2`'s derivative
        # divides by `x*x + y*y`, made by an `add`)
        feeds = [producer[v] for v in eqn.invars if not hasattr(v, "val") and v in producer]
        here = [e for e in reversed(before) if eqn_site(e) == eqn_site(eqn)] if eqn_site(eqn) is not None else []
        unsafe = next((e for e in feeds + here if e.primitive.name in _SINGULAR), eqn)
    of = unsafe.primitive.name if unsafe is not eqn else ""
    og = Origin(eqn.primitive.name, site.file if site else None, site.line if site else None, phase, kind, text, stack, inputs_from, site.col if site else 1, chain(site, str), of)
    return og, unsafe


def _masking_where(levels: list[tuple[Any, int]], start: set[Any]) -> Any:
    """The user site of the first `where`/`select` after the unsafe equation that takes a value
    made from it as a case (not as the predicate), following the value out of nested calls."""
    dep = set(start)
    outer_site = None
    for k, (jaxpr, at) in enumerate(levels):
        for eqn in jaxpr.eqns[at + 1 :]:
            hit = [j for j, v in enumerate(eqn.invars) if not hasattr(v, "val") and v in dep]
            if not hit:
                continue
            name = str(eqn.params.get("name", eqn.primitive.name))
            if (name in _SELECTS or eqn.primitive.name == "select_n") and any(j > 0 for j in hit):
                return eqn_site(eqn) or outer_site
            dep.update(eqn.outvars)
        if k + 1 < len(levels):
            up, idx = levels[k + 1]
            call = up.eqns[idx]
            dep = {o for o, v in zip(call.outvars, jaxpr.outvars) if not hasattr(v, "val") and v in dep}
            outer_site = eqn_site(call)
    return None
