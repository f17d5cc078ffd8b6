"""The confirm stage inside the worker: run an entry for real and settle what was suspected.

Contract with the traced stage (`check --confirm` runs the worker task "trace+confirm",
`trace_confirm_task` below, which traces each entry and hands the traced findings to this; JAX is
imported there, user code may run):

    confirm_entry(name, entry, suspected=(), *, transforms=None, memory_limit=None, max_traces=3,
                  path="", function="", line=1, findings=None, payload=None) -> list[Finding]

    name        the entry's name (shown in messages)
    entry       a `stabcheck.Entry`
    suspected   findings already reported for this entry's code (static and traced), any status
    transforms  overrides `entry.transforms`; "call" runs the function as given (a jitted step)
    memory_limit  bytes one compiled transform may use (None: half of RAM)
    max_traces  the STB504 threshold (config `max-traces`)
    path, function, line  where a run-time finding goes when no user line is known (the entry's def)
    findings    an alias of `suspected` (the traced stage passes `findings=`)
    payload     the worker payload; its "transforms", "memory_limit" (bytes) and "max_traces" are
                used when the keyword arguments are not given, and its "suspected" (Finding
                dicts, or {entry name: [dicts]}) are added to `suspected`

Static findings are per file: only those on a line that the entry's forward program runs are
settled (and returned); the others are not this entry's business and are dropped from the result.

Returns every suspected finding refined to status "confirmed" (stage "confirmed") or "refuted",
or left suspected with a note in its evidence when no run could test it, followed by new
findings (stage "confirmed") for what only showed at run time: errors, NaN/Inf (STB408, with the
first primitive that produced it), gradient dtype changes (STB406), retraces (STB504).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stabcheck import registry
from stabcheck._discover import display
from stabcheck.confirm import hlo
from stabcheck.confirm import transforms as T
from stabcheck.confirm.device import default_memory_limit, device_info, format_bytes
from stabcheck.confirm.nan import nan_origin, nonfinite
from stabcheck.confirm.retrace import Inner, TraceLog, count_retraces, def_site
from stabcheck.traced.recorded import StandIn
from stabcheck.finding import Finding, Span
from stabcheck.traced.entries import Entry
from stabcheck.traced.errors import SLUGS, Failure, classify
from stabcheck.traced.checks import first_cast_site
from stabcheck.traced.source import function_site, with_via
from stabcheck.traced.tracing import jax_flags, trace_entry, trace_task, weak_value

ERROR_CODES = frozenset({"STB101", "STB102", "STB103", "STB203", "STB402", "STB403", "STB404", "STB405", "STB407"})
NAN_CODES = frozenset({"STB401", "STB408", "STB411", "STB412"})
DTYPE_CODES = frozenset({"STB301", "STB303", "STB304"})
RETRACE_CODES = frozenset({"STB204", "STB501", "STB503", "STB504"})
# what each suspected code needs run to be settled
NEEDS = {"STB403": ("jvp",), "STB404": ("grad",), "STB402": ("grad",), "STB405": ("grad",), "STB401": ("grad",), "STB408": ("grad",), "STB411": ("grad",), "STB412": ("grad",), "STB406": ("grad",), "STB407": ("grad",)}
_FWD = ("jvp", "jacfwd", "hessian", "hvp", "call")
_REV = ("grad", "jacrev", "hessian", "hvp", "call")
# which clean runs refute a suspected error: those that would have raised it
RELEVANT = {"STB403": _FWD, "STB404": _REV, "STB402": _REV, "STB405": _REV + ("jvp", "jacfwd"), "STB407": _REV + ("jvp", "jacfwd")}
_HELP = {
    "STB408": "keep the unsafe primitive away from the inputs where it or its derivative blows up: guard its input too (the double where), or clip it",
    "STB406": "make the custom rule return each cotangent in its primal input's dtype (`g.astype(x.dtype)`)",
    "STB504": "give every call the same types: cast scalars once (`jnp.float32(lr)`), build the initial state with the dtypes the step returns, keep static arguments to a few values",
}
_FLOATS = {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}


@dataclass(slots=True)
class Observation:
    """What running one transform showed."""

    transform: str
    ok: bool = True
    failure: Failure | None = None
    nonfinite: str | None = None
    origin: Any = None  # nan.Origin
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)  # (leaf, param dtype, grad dtype)
    cast_sites: dict[str, Any] = field(default_factory=dict)  # grad dtype -> the user line that casts to it (a Site)
    skipped: str = ""
    sites: list[Any] = field(default_factory=list)  # hlo.OpSite of the compiled program
    weak_outputs: list[str] = field(default_factory=list)
    input_floats: set[str] = field(default_factory=set)
    inputs: str = "the example arguments"
    retraced: tuple[Inner, ...] = ()  # `call`: jitted user functions JAX traced more than once


def confirm_entry(
    name: str,
    entry: Entry,
    suspected: Sequence[Finding] = (),
    *,
    transforms: Sequence[str] | None = None,
    memory_limit: int | None = None,
    max_traces: int = 3,
    path: str = "",
    function: str = "",
    line: int = 1,
    findings: Sequence[Finding] | None = None,
    payload: dict[str, Any] | None = None,
) -> list[Finding]:
    payload = payload or {}
    given = payload.get("suspected", ())
    given = given.get(name, ()) if isinstance(given, dict) else given
    suspected = list(suspected) + list(findings or ()) + [d if isinstance(d, Finding) else Finding.from_dict(d) for d in given]
    transforms = transforms or payload.get("transforms")
    memory_limit = memory_limit or payload.get("memory_limit")
    max_traces = int(payload.get("max_traces", max_traces))
    if not path:
        path, function, line = _entry_origin(entry, name, payload.get("target") or {})
    with jax_flags(entry.jax_config):
        made = T.concrete(entry)
        label = "the example arguments" if made is entry else "seeded random arguments"
        recorded = getattr(entry, "recorded_site", None) is not None
        return _confirm_entry(name, made, suspected, transforms, memory_limit or default_memory_limit(), max_traces, (path, function or name, line), label, recorded=recorded)


def _confirm_entry(name: str, entry: Entry, suspected: list[Finding], transforms: Sequence[str] | None, limit: int, max_traces: int, where: tuple[str, str, int], label: str, *, recorded: bool = False) -> list[Finding]:
    if any(f.stage == "static" for f in suspected):
        # static findings come per file: settle only those on lines this entry's program runs
        lines = _program_lines(entry)
        suspected = [f for f in suspected if f.stage != "static" or (os.path.realpath(f.path), f.line) in lines]
    codes = {f.code for f in suspected}
    wanted = list(transforms or entry.transforms)
    if "call" not in wanted:
        for c in sorted(codes):
            wanted += [t for t in NEEDS.get(c, ()) if t not in wanted]
        if codes & (DTYPE_CODES | {"STB302", "STB101", "STB102", "STB103", "STB203"}) and "jit" not in wanted:
            wanted.insert(0, "jit")
    names = T.param_names(entry.fn, len(entry.args))
    obs: list[Observation] = []
    retr = None
    if ("call" in wanted or "jit" in wanted) and (entry.calls or entry.state_argnums or codes & RETRACE_CODES):
        try:
            retr = count_retraces(entry, names)
        except Exception as e:  # the failure itself shows again in the call/jit run below
            obs.append(Observation("retrace", ok=False, failure=classify(e, entry_files(entry))))
    split = None
    for t in wanted:
        try:
            split = split or T.Split.of(entry)
        except Exception as e:
            obs.append(Observation(t, ok=False, failure=classify(e, entry_files(entry))))
            break
        # boundary values (zeros, negatives) for the gradient: where a static STB401 suspects a
        # masked singularity (STB411 a squared norm at 0), and for a recorded call, whose drawn data
        # would miss it (only where the function itself is finite there: an input its domain
        # excludes is not one to pass)
        boundary = "suspected" if codes & {"STB401", "STB411"} else "recorded" if recorded else ""
        obs.extend(_run(t, entry, split, limit, boundary=boundary, label=label))
    out = [_settle(f, obs, retr, max_traces) for f in suspected]
    out += _new_findings(name, entry, obs, retr, max_traces, out, where)
    return out


def _program_lines(entry: Entry) -> set[tuple[str, int]]:
    """(file, line) of every operation in the entry's forward program (empty if it fails)."""
    # JAX: imported when this runs, never on import
    import jax

    try:
        if "call" in entry.transforms:
            lowered = jax.jit(lambda *a: entry.fn(*a, **dict(entry.kwargs)), static_argnums=entry.static_argnums).lower(*entry.args)
        else:
            s = T.Split.of(entry)
            lowered = jax.jit(s.call).lower(s.leaves(s.diff_slots), s.leaves(s.rest_slots))
        return {(os.path.realpath(o.file), o.line) for o in _sites(lowered)}
    except Exception:
        return set()


def entry_files(entry: Entry) -> tuple[str, ...]:
    site = function_site(entry.fn)
    return (os.path.realpath(site.file),) if site is not None else ()


# -- running ---------------------------------------------------------------------------------
def _run(t: str, entry: Entry, split: T.Split, limit: int, *, boundary: str, label: str) -> list[Observation]:
    # JAX: imported when this runs, never on import
    import jax

    ob = Observation(t, inputs=label)
    within = entry_files(entry)
    try:
        if t == "call":
            fun, inputs = (lambda *a: entry.fn(*a, **dict(entry.kwargs))), entry.args
            with TraceLog() as log:
                out = jax.block_until_ready(fun(*inputs))
            ob.retraced = log.retraced()
            try:
                ob.sites = _sites(jax.jit(fun, static_argnums=entry.static_argnums).lower(*inputs))
            except Exception:
                pass
        else:
            p = T.prepare(entry, t, split)
            fun, inputs = p.fun, p.inputs
            lowered = jax.jit(fun).lower(*inputs)
            compiled = lowered.compile()
            need = compiled_memory(compiled)
            if need is not None and need > limit:
                ob.skipped = f"`{t}` would need about {format_bytes(need)} (from the compiled program), over the memory limit of {format_bytes(limit)}; not run"
                return [ob]
            if t == "jit":
                ob.sites = _sites(lowered)
            out = jax.block_until_ready(compiled(*inputs))
            if t == "grad":
                ob.mismatches = [(path, str(a.dtype), str(g.dtype)) for path, a, g in zip(p.paths, p.params, out) if str(a.dtype) != str(g.dtype)]
                if ob.mismatches:
                    grads = jax.make_jaxpr(fun)(*inputs).jaxpr
                    primal = jax.make_jaxpr(p.primal)(*inputs).jaxpr if p.primal is not None else None
                    ob.cast_sites = {g: site for g in {g for _, _, g in ob.mismatches} if (site := first_cast_site(grads, g, primal)) is not None}
        ob.input_floats = {_short(str(x.dtype)) for x in jax.tree_util.tree_leaves(inputs) if T.is_float(x) and hasattr(x, "dtype")}
        # a returned Module may hold functions (`jax.nn.relu`, a custom_jvp): not values to type
        ob.weak_outputs = [jax.tree_util.keystr(kp) or "output" for kp, x in jax.tree_util.tree_flatten_with_path(out)[0] if weak_value(jax, x)] if t in ("jit", "call") else []
        ob.nonfinite = _nan(fun, inputs, out, ob, entry.static_argnums if t == "call" else ())
    except Exception as e:
        ob.ok, ob.failure = False, classify(e, within)
        return [ob]
    obs = [ob]
    if boundary and t == "grad" and (ob.nonfinite is None or _from_constant_inf(ob)):
        # the drawn data gave no NaN, or one made only from an Inf the code holds (a mask drawn
        # from normal floats times `-jnp.inf`): the boundary values may make it where it starts
        # JAX: imported when this runs, never on import
        import jax.numpy as jnp

        def ones(xs: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(jnp.ones_like(x) if T.is_float(x) else x for x in xs)

        # zeros and negatives for the differentiated leaves; ones for every float leaf (a mask or
        # a weight all on, as `1 - mask` needs to be exactly 0)
        for label, diff, rest in (
            ("zeros", lambda xs: tuple(jnp.zeros_like(x) for x in xs), lambda xs: xs),
            ("negative values", lambda xs: tuple(-jnp.abs(x) - 1 for x in xs), lambda xs: xs),
            ("ones", ones, ones),
        ):
            p = T.prepare(entry, t, split)
            d, r = diff(p.inputs[0]), rest(p.inputs[1])
            b = Observation(t, inputs=label)
            try:
                if boundary == "recorded" and (p.primal is None or not _takes(p.primal, (d, r))):
                    continue  # the function's own value is not finite there: not an input it takes
                out = jax.block_until_ready(jax.jit(p.fun)(d, r))
                b.nonfinite = _nan(p.fun, (d, r), out, b)
            except Exception as e:
                b.ok, b.failure = False, classify(e, within)
            obs.append(b)
            if b.nonfinite and not _from_constant_inf(b):
                break
    return obs


def _from_constant_inf(ob: Observation) -> bool:
    """The run's first non-finite value is a NaN made from an Inf the program holds as a constant."""
    return ob.nonfinite == "NaN" and ob.origin is not None and ob.origin.operands == "Inf"


def _takes(primal: Any, inputs: tuple[Any, ...]) -> bool:
    """Whether a boundary value is one the function takes: its value is finite there, or its
    first non-finite value is a NaN made from an Inf the program holds as a constant (`0 *
    -jnp.inf` where a mask is exactly 1: the code's own Inf, not a singularity such as `log(0)`,
    which makes an Inf from finite values and marks an input outside the function's domain)."""
    # JAX: imported when this runs, never on import
    import jax

    if not nonfinite(jax.block_until_ready(jax.jit(primal)(*inputs))):
        return True
    try:
        origin = nan_origin(primal, inputs)
    except Exception:
        return False
    return origin is not None and origin.kind == "NaN" and origin.operands == "Inf"


def _nan(fun: Any, inputs: tuple[Any, ...], out: Any, ob: Observation, static: tuple[int, ...] = ()) -> str | None:
    kind = nonfinite(out)
    if kind and not nonfinite(inputs):
        try:
            ob.origin = nan_origin(fun, inputs, static)
        except Exception:
            ob.origin = None
    return kind if kind and not nonfinite(inputs) else None


def compiled_memory(compiled: Any) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    peak = getattr(m, "peak_memory_in_bytes", 0) or 0
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return int(max(peak, total))


def _sites(lowered: Any) -> list[Any]:
    return hlo.sites(lowered.as_text(debug_info=True))


def _short(dtype: str) -> str:
    return {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}.get(dtype, dtype)


# -- settling suspected findings ------------------------------------------------------------------
def _ran(obs: list[Observation], kinds: Sequence[str] | None = None) -> list[Observation]:
    return [o for o in obs if o.ok and not o.skipped and (kinds is None or o.transform in kinds)]


def _confirm(f: Finding, how: str, **evidence: Any) -> Finding:
    # a static guess the run bears out is proven: it is shown without --preview
    return f.refine(stage="confirmed", status="confirmed", confidence="proven", evidence={**f.evidence, "confirmed": how, **evidence})


def _refute(f: Finding, how: str) -> Finding:
    # stage "confirmed": a refutation outranks the static/traced copy of the finding when merged
    return f.refine(stage="confirmed", status="refuted", evidence={**f.evidence, "refuted": how})


def _undecided(f: Finding, why: str) -> Finding:
    return f.refine(evidence={**f.evidence, "confirm": why})


def _names(obs: list[Observation]) -> str:
    return ", ".join(dict.fromkeys(f"`{o.transform}`" for o in obs)) or "nothing"


def _settle(f: Finding, obs: list[Observation], retr: Any, max_traces: int) -> Finding:
    c = f.code
    if c in ERROR_CODES:
        failed = [(o, o.failure) for o in obs if o.failure and o.failure.code == c]
        if failed:
            o, fl = failed[0]
            extra = {} if "jax_message" in f.evidence else {"error": fl.message}
            return _confirm(f, f"`{o.transform}` raised {fl.kind}", **extra)
        if c == "STB402" and f.stage == "traced" and "requires real- or complex-valued inputs" in str(f.evidence.get("error", "")):
            # the runs below differentiate the float leaves only: a clean one says nothing of the int leaf
            return _confirm(f, "`jax.grad` raised TypeError when the entry was traced")
        ran = _ran(obs, RELEVANT.get(c))
        return _refute(f, f"ran clean under {_names(ran)}") if ran else _undecided(f, _why(obs))
    if c in NAN_CODES:
        hit = [o for o in obs if o.nonfinite]
        if hit:
            o = hit[0]
            return _confirm(f, f"`{o.transform}` on {o.inputs} gave {o.nonfinite}", **_origin_evidence(o))
        ran = _ran(obs, ("grad", "call", "hessian", "hvp", "jacrev"))
        return _refute(f, f"outputs and gradients finite under {_names(ran)} on {', '.join(dict.fromkeys(o.inputs for o in ran))}") if ran else _undecided(f, _why(obs))
    if c == "STB406":
        hit = [o for o in obs if o.mismatches]
        if hit:
            leaf, a, g = hit[0].mismatches[0]
            return _confirm(f, f"gradient of `{leaf}` is {g} for a {a} parameter")
        ran = _ran(obs, ("grad",))
        return _refute(f, "every gradient leaf has its parameter's dtype") if ran else _undecided(f, _why(obs))
    if c in DTYPE_CODES:
        ran = [o for o in _ran(obs, ("jit", "call")) if o.sites]
        if not ran:
            return _undecided(f, _why(obs))
        here = [s for o in ran for s in hlo.at(o.sites, f.path, f.line)]
        floats = {s.dtype for s in here if s.dtype in _FLOATS}
        widest_in = max((_FLOATS.get(d, 0) for o in ran for d in o.input_floats), default=0)
        if c == "STB301" and "warning" in f.evidence:  # float64 asked for, truncated (JAX warned when tracing)
            if not here:
                return _undecided(f, "the compiled program has no operation at this line")
            ok = "f64" not in floats
        elif c == "STB301":
            ok = "f64" in floats and widest_in < 64
        elif c == "STB303":
            ok = any(_FLOATS.get(d, 0) > widest_in for d in floats) or any(s.op == "convert" and s.dtype in _FLOATS for s in here)
        else:
            ok = any(s.op == "convert" and s.dtype in _FLOATS for s in here)
        shown = sorted({f"{s.op}->{s.dtype}" for s in here})
        if ok:
            return _confirm(f, f"the compiled program computes {', '.join(shown)} at this line", compiled_ops=", ".join(shown))
        return _refute(f, f"the compiled program computes {', '.join(shown) or 'nothing'} at this line")
    if c == "STB302":
        ran = _ran(obs, ("jit", "call"))
        weak = [w for o in ran for w in o.weak_outputs]
        if weak:
            return _confirm(f, f"output leaf {weak[0]} is weakly typed at run time")
        return _refute(f, "no output is weakly typed at run time") if ran else _undecided(f, _why(obs))
    if c in RETRACE_CODES and retr is not None:
        if c == "STB204":
            if retr.state_changes:
                return _confirm(f, f"feeding the state back recompiled: {retr.state_changes[0]}")
            return _refute(f, f"state fed back {retr.calls - 1} time(s) without recompiling") if retr.feedback else _undecided(f, "no state_argnums to feed back")
        if retr.compiles > max_traces:
            return _confirm(f, f"compiled {retr.compiles} times in {retr.calls} calls", compiles=retr.compiles)
        return _refute(f, f"compiled {retr.compiles} time(s) in {retr.calls} calls (limit {max_traces})")
    return _undecided(f, "not checked at run time" if c not in ERROR_CODES else _why(obs))


def _why(obs: list[Observation]) -> str:
    skipped = [o.skipped for o in obs if o.skipped]
    if skipped:
        return skipped[0]
    failed = [o for o in obs if o.failure]
    if failed:
        return f"`{failed[0].transform}` failed first with {failed[0].failure.kind}"  # type: ignore[union-attr]
    return "no transform that tests it ran"


def _origin_evidence(o: Observation) -> dict[str, Any]:
    og = o.origin
    if og is None:
        return {}
    ev = {"first_nonfinite": f"{og.describe} ({og.phase} pass) made the first {og.kind}", "equation": og.equation}
    if og.line:
        ev["unsafe_at"] = f"{_display(og.path)}:{og.line}" if og.path else str(og.line)
    if og.masked_by is not None:
        ev["masked_by"] = f"{_display(og.masked_by.file)}:{og.masked_by.line}"
    return ev


# -- new findings -------------------------------------------------------------------------------
def _new_findings(name: str, entry: Entry, obs: list[Observation], retr: Any, max_traces: int, settled: list[Finding], where: tuple[str, str, int]) -> list[Finding]:
    path, function, def_line = where
    covered = {f.code for f in settled if f.status == "confirmed"}
    out: list[Finding] = []
    seen: set[tuple[str, str, int]] = set()

    # an error with no frame of the user's: at the line that applied the recorded transform (as
    # `pytest --stabcheck` and the traced stage put it), else at the entry's function
    called = getattr(entry, "recorded_site", None)
    fallback = called if called is not None and os.path.isfile(called[0]) else ((os.path.abspath(path) if path else None), def_line)

    def add(code: str, file: str | None, line: int | None, message: str, col: int = 1, **evidence: Any) -> None:
        if not (file and line):
            file, line = fallback
        shown = _display(file) if file else path
        key = (code, shown, line or 1)
        if key in seen or (code in covered and code != "STB902"):
            return
        seen.add(key)
        detail = evidence.pop("detail", name)
        help_ = evidence.pop("help", "")
        chains = with_via(tuple(tuple(replace(fr, path=_display(fr.path)) for fr in c) for c in evidence.pop("chains", ())), f"stabcheck entry `{name}`")
        rule = registry.get(code)
        if rule is not None:
            out.append(rule.finding(path=shown, span=Span(line or 1, col), message=message, help=help_, function=function, detail=detail, evidence=evidence, stage="confirmed", status="confirmed", snippet=_line(file, line), chains=chains))
        else:
            out.append(Finding(code, SLUGS.get(code, "analysis-error"), message, shown, Span(line or 1, col), help=help_, stage="confirmed", status="confirmed", function=function, detail=detail, evidence=evidence, snippet=_line(file, line), chains=chains))

    for o in obs:
        if o.failure:
            fl = o.failure
            what = "the call" if o.transform in ("call", "retrace") else f"`{o.transform}`"
            add(fl.code, fl.path, fl.line, f"running {what} on entry `{name}` raised `{fl.kind}` here ({fl.reason}); it fails on every call, not only in this check", error=fl.message, transform=o.transform, chains=fl.chains)
        if o.nonfinite:
            og = o.origin
            if og is not None and og.line:
                what = "outputs" if o.transform in ("jit", "call") else "gradients"
                msg = f"{og.describe} made the first {og.kind} here when `{o.transform}` ran on entry `{name}` with {o.inputs} ({og.phase} pass); it reaches the {what} and poisons every update that uses them"
                masked: dict[str, Any] = {}
                if og.masked_by is not None:
                    at = _display(og.masked_by.file)
                    where = f"line {og.masked_by.line}" if og.path and os.path.realpath(og.masked_by.file) == os.path.realpath(og.path) else f"{at}:{og.masked_by.line}"
                    msg += f"; the `where` at {where} selects the other branch there, which hides the value but not its derivative (`0 * inf = NaN`)"
                    masked = {"masked_by": f"{at}:{og.masked_by.line}"}
                add("STB408", og.path, og.line, msg, og.col, first_nonfinite=og.describe.replace("`", ""), equation=og.equation, transform=o.transform, inputs=o.inputs, detail=og.primitive, help=_HELP["STB408"], chains=og.chains, **masked)
            else:
                add("STB408", None, None, f"`{o.transform}` of entry `{name}` returned {o.nonfinite} on {o.inputs}; every update that uses it is poisoned", transform=o.transform, help=_HELP["STB408"])
        for leaf, a, g in o.mismatches:
            cast = o.cast_sites.get(g)  # the user line that makes the gradient's dtype, else the entry's def
            at = f" (`{g}` is made here)" if cast is not None else ""
            add("STB406", cast.file if cast else None, cast.line if cast else None, f"the gradient of `{leaf}` is `{g}` but the parameter is `{a}` in entry `{name}`{at}; JAX accepts it silently, and the update drifts in precision or breaks the optimizer state", cast.col if cast else 1, leaf=leaf, detail=leaf, help=_HELP["STB406"])
    if retr is not None and retr.counted and retr.compiles > max_traces:
        why = "; ".join(list(dict.fromkeys(retr.changes + retr.state_changes))[:3]) or "a change stabcheck cannot name"
        at = retr.where
        add("STB504", at.file if at else None, at.line if at else None, f"entry `{name}` compiled {retr.compiles} times in {retr.calls} calls (limit {max_traces}); every new compilation costs a full trace and XLA compile. What changed: {why}", compiles=retr.compiles, calls=retr.calls, detail=_culprit(why, name), help=_HELP["STB504"])
    if retr is not None and retr.error:
        for path, at in retr.static_arrays[:1]:
            add("STB502", at.file if at else None, at.line if at else None, f"`{path}` is an array in a static field (entry `{name}`): JAX keys static fields by hash and `==`, and comparing it with the array of an earlier call raised `{retr.error}`; it fails on the first call with a new array", detail=path, help="make the field a pytree leaf (not static), or store a hashable value such as a tuple")
    inner = {i.where: i for i in [*(retr.inner if retr is not None else ()), *(i for o in obs for i in o.retraced)]}
    for i in inner.values():
        if i.traces > max_traces:
            why = "; ".join(list(dict.fromkeys(i.changes))[:3])
            add("STB504", i.where.file, i.where.line, f"`{i.function}` was traced and compiled {i.traces} times while entry `{name}` ran (limit {max_traces}). What changed: {why}", traces=i.traces, detail=_culprit(why, i.function), help=_HELP["STB504"])
    notes = [o.skipped for o in obs if o.skipped]
    if notes:
        for f in out:
            f.evidence.setdefault("skipped", "; ".join(notes))
    return out


def _culprit(why: str, default: str) -> str:
    """The leaf or field a retrace explanation names first."""
    return why.split("`")[1] if why.count("`") >= 2 else default


def _display(file: str) -> str:
    return display(Path(file))


def _line(file: str | None, line: int | None) -> str:
    if not file or not line:
        return ""
    try:
        with open(file, encoding="utf-8") as fh:
            for i, text in enumerate(fh, start=1):
                if i == line:
                    return text.rstrip("\n")
    except OSError:
        pass
    return ""


def measure(fun: Any, *args: Any, runs: int = 5, budget: float = 0.5) -> float:
    """Median seconds of `fun(*args)` after one warm-up call, with block_until_ready."""
    # JAX: imported when this runs, never on import
    import jax

    jax.block_until_ready(fun(*args))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < budget / 10 and len(times) < 50):
        t0 = time.perf_counter()
        jax.block_until_ready(fun(*args))
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return statistics.median(times)


# -- worker tasks (registered in stabcheck.worker.TASKS) --------------------------------------------
def confirm_task(name: str, entry: Entry, payload: dict[str, Any]) -> dict[str, Any]:
    """The worker task "confirm" (`stabcheck confirm`). Payload: "suspected" {entry: [Finding
    dicts]} (or "trace": true to trace the entry first here), "transforms", "memory_limit"
    (bytes), "max_traces"."""
    spec = payload.get("target", {})
    path, function, line = _entry_origin(entry, name, spec)
    given = payload.get("suspected", {})
    dicts = given.get(name, []) if isinstance(given, dict) else list(given)
    extra: dict[str, Any] = {}
    if payload.get("trace"):
        extra = trace_task(name, entry, payload)
        dicts = [*dicts, *extra.get("findings", [])]
    suspected = [Finding.from_dict(d) for d in dicts]
    findings = confirm_entry(name, entry, suspected, transforms=payload.get("transforms"), memory_limit=payload.get("memory_limit"), max_traces=payload.get("max_traces", 3), path=path, function=function, line=line)
    return {**extra, "findings": [f.to_dict() for f in findings], "device": device_info()}


def trace_confirm_task(name: str, entry: Entry, payload: dict[str, Any]) -> dict[str, Any]:
    """The worker task "trace+confirm" (`check --confirm`): trace the entry, then run it; the
    traced findings, refined (confirmed / refuted) and followed by the run's own, replace the
    traced ones. Payload: as for "trace", plus "suspected", "memory_limit", "max_traces"."""
    with jax_flags(entry.jax_config):
        if getattr(entry, "stand_ins", 0):
            where = _entry_origin(entry, name, payload.get("target") or {})
            return {"findings": [f.to_dict() for f in replay_pattern(name, entry, int(payload.get("max_traces", 3)), where)], "transforms": {}, "notes": [], "device": device_info()}
        t = trace_entry(name, entry, payload)
        refined = confirm_entry(name, entry, findings=t.findings(), payload=payload)
        return {"findings": [f.to_dict() for f in refined], "transforms": t.status, "notes": t.notes, "device": device_info()}


def replay_pattern(name: str, entry: Entry, max_traces: int, where: tuple[str, str, int]) -> list[Finding]:
    """A recorded entry with stand-ins (`traced.recorded.StandIn`) for static arguments the
    recording could not rebuild (an optax optimizer: closures) replays only the recorded call
    pattern: its calls, each with a new stand-in where the tests passed a new unequal object,
    under `jax.jit`, counting the traces JAX starts (`TraceLog`; the stand-in has none of the
    object's behaviour, so the function body may raise after JAX began tracing it: that says
    nothing about the code and is not reported). More traces than `max_traces` is STB504 at the
    function's `def`, saying that it replays a recorded pattern."""
    # JAX: imported when this runs, never on import
    import jax

    made = T.concrete(entry)
    jitted = jax.jit(made.fn, static_argnums=made.static_argnums)
    calls = [made.args, *(tuple(c) for c in (made.calls or ()))]
    with TraceLog() as log:
        for args in calls:
            try:
                jax.block_until_ready(jitted(*args, **dict(made.kwargs)))
            except Exception:  # noqa: BLE001 - the stand-in's missing behaviour, after the trace began
                pass
    traces = max((len(t) for t in log.traces.values()), default=0)
    if traces <= max_traces:
        return []
    path, function, line = where
    at = def_site(entry.fn)  # the `def`, where every retrace of the function is reported
    if at is not None:
        path, line = _display(at.file), at.line
    names = T.param_names(entry.fn, len(entry.args))
    stood = [names[i] for i, a in enumerate(entry.args) if isinstance(a, StandIn)] + [k for k, v in entry.kwargs.items() if isinstance(v, StandIn)]
    kinds = sorted({a.kind.partition(":")[2] or a.kind for a in (*entry.args, *dict(entry.kwargs).values()) if isinstance(a, StandIn)})
    what = ", ".join(f"`{n}`" for n in stood) or "a static argument"
    message = (
        f"replaying a recorded call pattern: the tests called `{function}` under `jit` {len(calls)} times with a new {what} (a `{'`/`'.join(kinds)}`) unequal to the earlier ones; "
        f"those objects cannot be rebuilt, so stand-ins that JAX hashes and compares as unequal took their place, and JAX traced `{function}` {traces} times (limit {max_traces}). "
        "JAX keys a static argument by hash and `==`: each new object compiles the function again"
    )
    rule = registry.get("STB504")
    assert rule is not None
    return [
        rule.finding(
            path=path,
            span=Span(line, 1),
            message=message,
            help="build the static object once, outside the loop, and pass the same one to every call (or pass its arrays as traced arguments)",
            function=function,
            detail=stood[0] if stood else function,
            evidence={"traces": traces, "calls": len(calls), "max_traces": max_traces, "replayed": "a recorded call pattern (stand-ins for objects the recording cannot rebuild)"},
            stage="confirmed",
            status="confirmed",
            snippet=_line(at.file if at is not None else None, line),
        )
    ]


def _entry_origin(entry: Entry, name: str, spec: dict[str, Any]) -> tuple[str, str, int]:
    """Where run-time findings without a better line go: the entry function's `def`."""
    site = function_site(entry.fn)
    if site is None:
        return spec.get("path", ""), spec.get("function") or name, 1
    return display(Path(site.file)), site.function or name, site.line
