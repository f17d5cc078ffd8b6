"""Where a NaN or Inf began: evaluate a jaxpr equation by equation, nested calls included.

`nan_origin(fn, args)` traces `fn` (any composition of jit/grad/jvp/...) to a jaxpr and runs it
one primitive at a time on the concrete `args`. The first equation whose inputs are all finite
but whose output is not is the origin; its user line comes from the equation's source info, and
its name stack tells the backward pass (`transpose(...)`) from the forward one. Runs in the
worker (imports JAX).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stabcheck.traced.source import chain, eqn_site

# primitives whose inner jaxpr takes exactly the equation's inputs: step into them
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call", "custom_lin"})
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

    @property
    def describe(self) -> str:
        """`div` (the derivative of `sqrt`), or just `sqrt`."""
        src = [p for p in self.inputs_from if p != self.primitive]
        if self.primitive in ("div", "mul", "integer_pow", "pow", "rsqrt") and src:
            return f"`{self.primitive}` (in the derivative of `{src[0]}`)"
        return f"`{self.primitive}`"


def nonfinite(tree: Any) -> str | None:
    """'NaN' or 'Inf' when any float leaf of `tree` has one, else None."""
    # JAX: imported when this runs, never on import
    import jax

    kind = None
    for leaf in jax.tree_util.tree_leaves(tree):
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
    except _Stop:
        pass
    return found[0] if found else None


class _Stop(Exception):
    pass


def _eval(jaxpr: Any, consts: list[Any], args: list[Any], found: list[Origin], labels: list[str], stack: str = "") -> list[Any]:
    # JAX: imported when this runs, never on import
    from jax._src import core

    env: dict[Any, Any] = {}
    made_by: dict[Any, str] = {}  # var -> the primitive (or named call) that produced it

    def read(v: Any) -> Any:
        return v.val if isinstance(v, core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x, lab in zip(jaxpr.invars, args, labels):
        env[v] = x
        made_by[v] = lab
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        from_ = [made_by.get(v, "") for v in eqn.invars if not isinstance(v, core.Literal)]
        label = str(eqn.params.get("name", name)) if name in _CALLS else name
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if name in _CALLS and sub is not None:
            inner, inner_consts = (sub.jaxpr, list(sub.consts)) if hasattr(sub, "consts") else (sub, [])
            if len(inner.invars) == len(invals):
                outs = _eval(inner, inner_consts, invals, found, from_, stack)
                for v, x in zip(eqn.outvars, outs):
                    env[v] = x
                    made_by[v] = label
                continue
        with eqn.ctx.manager:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        outs = list(outs) if eqn.primitive.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
            made_by[v] = label
        bad = nonfinite(outs)
        if bad and not nonfinite(invals):
            if name in _LOOPS:
                try:
                    _control_flow(eqn, invals, found, from_, stack)  # raises _Stop at the body's line
                except _Stop:
                    raise
                except Exception:  # a body stabcheck cannot replay: the loop's own line, as before
                    del found[:]
            found.append(_origin(eqn, bad, tuple(f for f in from_ if f), stack))
            raise _Stop
    return [read(v) for v in jaxpr.outvars]


def _control_flow(eqn: Any, invals: list[Any], found: list[Origin], labels: list[str], stack: str) -> None:
    """Replay a scan, while_loop or cond that made a NaN/Inf from finite inputs, its body one
    primitive at a time, iteration by iteration: `_eval` raises _Stop at the first equation
    inside that made it. Returns when none did (or the loop is too long to step through)."""
    name, p = eqn.primitive.name, eqn.params
    inner = f"{stack}/{eqn.source_info.name_stack}".strip("/")  # a body's name stack is relative to its equation
    labels = list(labels) + [""] * (len(invals) - len(labels))

    def run(closed: Any, args: list[Any], labs: list[str]) -> list[Any]:
        return _eval(closed.jaxpr, list(closed.consts), args, found, labs, inner)

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


def _origin(eqn: Any, kind: str, inputs_from: tuple[str, ...], outer: str = "") -> Origin:
    site = eqn_site(eqn)
    stack = f"{outer}/{eqn.source_info.name_stack}".strip("/")
    text = str(eqn).strip().splitlines()[0][:200]
    phase = "backward" if "transpose" in stack else "forward"
    return Origin(eqn.primitive.name, site.file if site else None, site.line if site else None, phase, kind, text, stack, inputs_from, site.col if site else 1, chain(site, str))
