"""Per-function bookkeeping: signatures seen, the cached verdict for each, and the checks run on
a new one (the traced jaxpr checks, STB205 across signatures, STB504 retraces, STB402/406 with
`check_grad`). Shared by `@stable` and the pytest plugin. JAX is imported lazily.
"""

from __future__ import annotations

import contextvars
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from stabcheck import registry
from stabcheck.confirm.retrace import CallSig, changed_paths, field_site, site_for
from stabcheck.finding import Finding, Span
from stabcheck.runtime._signature import Signature, changes, type_str
from stabcheck.traced.checks import ALL_CODES, check_jaxpr, first_cast_site, shown_path
from stabcheck.traced.source import is_internal, is_library, literal_return_site, with_via
from stabcheck.traced.tracing import code_weak_outputs, producer_site

_SLUGS = {
    "STB205": "static-arg-union",
    "STB402": "non-differentiable-leaf",
    "STB406": "gradient-dtype-mismatch",
    "STB504": "retrace",
    "STB902": "analysis-error",
}
HELP_402 = "keep masks, counters and flags out of the differentiated tree: close over them, pass them as another argument, or use `eqx.filter_grad`"
RUNTIME_CODES = ("STB205", "STB301", "STB302", "STB303", "STB304", "STB305", "STB402", "STB406", "STB504")
_SELECTOR = re.compile(r"^(ALL|STB\d{0,3})$")

# set while stabcheck itself traces (so the pytest plugin does not count its own traces)
busy: contextvars.ContextVar[bool] = contextvars.ContextVar("stabcheck_busy", default=False)


@dataclass(frozen=True, slots=True)
class Selector:
    """`select`/`ignore` lists of codes, prefixes (`STB3`), slugs, or `ALL`."""

    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()

    @classmethod
    def of(cls, select: Iterable[str] | None, ignore: Iterable[str] | None) -> Selector:
        sel = tuple(_normalize(s, "select") for s in (select if select is not None else ("ALL",)))
        ign = tuple(_normalize(s, "ignore") for s in (ignore or ()))
        return cls(sel, ign)

    def __call__(self, code: str) -> bool:
        def hit(sels: tuple[str, ...]) -> bool:
            return any(s == "ALL" or code.startswith(s) for s in sels)

        return hit(self.select) and not hit(self.ignore)


def _normalize(sel: str, key: str) -> str:
    if not isinstance(sel, str):
        raise ValueError(f"invalid value for `{key}`: {sel!r}; expected rule codes (STB301), prefixes (STB3) or slugs")
    up = sel.strip().upper()
    if _SELECTOR.match(up):
        return up
    slug = sel.strip().lower()

    rule = registry.get(slug)
    if rule is not None:
        return rule.code
    for code, name in _SLUGS.items():
        if name == slug:
            return code
    raise ValueError(f"invalid value for `{key}`: {sel!r}; expected rule codes (STB301), prefixes (STB3) or slugs")


@dataclass(frozen=True, slots=True)
class Site:
    path: str
    line: int
    col: int = 1


@dataclass(frozen=True, slots=True)
class Program:
    """A traced program and names for its flat inputs and outputs."""

    jaxpr: Any  # jax.core.ClosedJaxpr
    in_paths: tuple[str, ...]
    out_paths: tuple[str, ...]
    # the Python function traced and its traced inputs (abstract or real): `fun(*args)` is traced
    # again with strongly typed inputs to tell a weak output of the code from one of a weak argument
    fun: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()


@dataclass(slots=True)
class _Record:
    signature: Signature
    outputs: tuple[tuple[str, str], ...] = ()
    findings: tuple[Finding, ...] = ()
    call: CallSig | None = None  # the call's leaves by path, with the dataclass field of each


def make_finding(code: str, *, site: Site, message: str, help: str, function: str, detail: str = "", evidence: dict[str, Any] | None = None) -> Finding:
    """A runtime-stage finding of `code`, through its rule when the rule is registered."""
    rule = registry.get(code)
    span = Span(site.line, site.col)
    if rule is not None:
        return rule.finding(path=site.path, span=span, message=message, help=help, function=function, detail=detail, evidence=evidence, stage="runtime")
    return Finding(code=code, name=_SLUGS.get(code, code.lower()), message=message, help=help, path=site.path, span=span, severity="warning", stage="runtime", function=function, detail=detail, evidence=dict(evidence or {}))


def caller_site() -> Site | None:
    """The innermost frame of the user's project on the current stack (else a library frame)."""
    frame = sys._getframe(1)
    fallback: Site | None = None
    while frame is not None:
        name = frame.f_code.co_filename
        if not is_internal(name) and "/_pytest/" not in name and "/pluggy/" not in name:
            site = Site(shown_path(name), frame.f_lineno, 1)
            if not is_library(name):
                return site
            fallback = fallback or site
        frame = frame.f_back  # type: ignore[assignment]
    return fallback


class Monitor:
    """What one function has been traced with, and the verdict for each signature."""

    def __init__(
        self,
        function: str,
        *,
        max_traces: int,
        selector: Selector = Selector(),
        grad_params: Sequence[str] = (),
        defined: Site | None = None,
        retrace_at_def: bool = False,
        carry_drift: bool = False,
    ) -> None:
        self.function = function
        self.max_traces = max_traces
        self.selector = selector
        self.grad_params = tuple(grad_params)
        self.defined = defined
        self.retrace_at_def = retrace_at_def  # STB504 at the compiled function's def, not the call (jit hook, filter_jit)
        self.carry_drift = carry_drift  # STB204 where the previous call returned the new signature's state (jit hook)
        self.records: dict[Signature, _Record] = {}
        self.keys: set[Any] = set()  # raw keys already checked (plain-function hot path)
        self.primed = False
        self.again = 0  # traces of a signature already seen (a new jitted object for the same function)
        self.last: Program | None = None  # the latest signature's program (its outputs feed the next call)
        self.static_arrays: set[tuple[type, str]] = set()  # static fields already reported holding an array

    @property
    def signatures(self) -> list[Signature]:
        return list(self.records)

    def observe(self, sig: Signature, program: Callable[[], Program], site: Site | None, call: Callable[[], CallSig] | None = None) -> list[Finding]:
        """Findings for a call with a signature not seen before ([] for a known one). `call`
        describes the call's real arguments (`confirm.retrace.call_signature`): a retrace caused
        by a field of a Module or dataclass is reported where that field is declared or built."""
        self.primed = True
        if sig in self.records:
            return []
        site = site or self.defined or Site("<unknown>", 1)
        previous = next(reversed(self.records.values()), None)
        record = _Record(sig)
        self.records[sig] = record
        found: list[Finding] = []
        if call is not None:
            try:
                record.call = call()
            except Exception:  # the retrace is then reported at the def, as without it
                record.call = None
            found += self._static_arrays(record)
        token = busy.set(True)
        try:
            prog = program()
        except Exception as e:  # the check's own trace failed; the user's call already succeeded
            found.append(self._analysis_error(e, site))
            prog = None
        finally:
            busy.reset(token)
        if prog is not None:
            record.outputs = _outputs(prog)
            if self.carry_drift and previous is not None and self.last is not None:
                found += self._carry_drift(previous, self.last, sig)
            self.last = prog if self.carry_drift else None
            found += self._jaxpr_checks(prog, site)
            found += self._static_union(record, site)
            if self.grad_params:
                found += self._grad_checks(prog, site)
        if previous is not None and len(self.records) > self.max_traces:
            found.append(self._retrace(previous.signature, sig, site, _field_site(previous, record)))
        record.findings = tuple(f for f in found if f.code == "STB902" or self.selector(f.code))
        return list(record.findings)

    def traced_again(self, sig: Signature, site: Site, why: str) -> list[Finding]:
        """JAX traced a signature already seen, for a new jitted object of the same function (a
        bound method jitted per instance): STB504 once the traces pass `max_traces`, at `site`."""
        self.again += 1
        n = len(self.records) + self.again
        if n <= self.max_traces or not self.selector("STB504"):
            return []
        return [
            make_finding(
                "STB504",
                site=site,
                message=f"`{self.function}` was traced again with the same argument types ({sig.describe()}): {why}. Each trace compiles `{self.function}` again ({n} traces so far, max_traces={self.max_traces})",
                help="build the jitted function once (at module level, or jit the unbound function and pass the object's arrays as arguments), not once per object",
                function=self.function,
                detail=self.function,
                evidence={"traces": n, "max_traces": self.max_traces},
            )
        ]

    # -- the checks ----------------------------------------------------------------------
    def _carry_drift(self, previous: _Record, prog: Program, sig: Signature) -> list[Finding]:
        """STB204: the new signature differs from the previous one in the dtype or weak type of a
        state leaf that the previous call returned with the new type (`state.avg_value` in,
        `result[1].avg_value` out): the state drifts after one step, so the step compiles twice
        and a `scan` over steps would reject it. Reported at the line that computes that output."""
        if not self.selector("STB204"):
            return []
        old, new = dict(previous.signature.leaves), dict(sig.leaves)
        outputs = dict(previous.outputs)
        out: list[Finding] = []
        for path, now in new.items():
            before = old.get(path)
            suffix = path[len(leaf_base(path)):]
            if before is None or before == now or not suffix or _shape(before) != _shape(now):
                continue
            k = next((i for i, name in enumerate(prog.out_paths) if name.startswith("result") and name.endswith(suffix) and outputs.get(name) == now), None)
            at = producer_site(prog.jaxpr.jaxpr, k) if k is not None else None
            if at is None or is_internal(at.file) or is_library(at.file):
                continue
            out.append(
                make_finding(
                    "STB204",
                    site=Site(shown_path(at.file), at.line, at.col),
                    message=f"state leaf `{path}` was `{before}` and the call returned it as `{now}` (`{prog.out_paths[k]}`); every call with the new state traces `{self.function}` again, and a `scan` over steps rejects the carry",
                    help="create the leaf with its final dtype (`jnp.asarray(v, jnp.float32)`, `jnp.zeros((), jnp.int32)`), not from a Python scalar",
                    function=self.function,
                    detail=path,
                    evidence={"leaf": path, "before": before, "after": now, "output": prog.out_paths[k]},
                )
            )
        return out

    def _static_arrays(self, record: _Record) -> list[Finding]:
        """STB502: an array in a field declared static (jax-ml/jax#28659). JAX keys a static
        field by hash and `==`; the call that compares it with another array raises, so it is
        reported at the field from the first call, once per field."""
        if record.call is None or not self.selector("STB502"):
            return []
        out = []
        for path, spec in record.call.specs.items():
            own = record.call.owners.get(path)
            value = spec[2] if spec[0] == "static" and len(spec) > 2 else None
            if own is None or not own.static or not (hasattr(value, "shape") and hasattr(value, "dtype")) or (own.cls, own.name) in self.static_arrays:
                continue
            self.static_arrays.add((own.cls, own.name))
            where = field_site(own)
            if where is None:
                continue
            out.append(
                make_finding(
                    "STB502",
                    site=Site(shown_path(where.file), where.line),
                    message=f"`{path}` is a `{type(value).__name__}` in the static field `{own.cls.__qualname__}.{own.name}` of an argument of `{self.function}`: JAX keys static fields by hash and `==`, so the next call with another array raises ValueError",
                    help="make the field a normal (traced) field, or store a hashable value such as a tuple",
                    function=self.function,
                    detail=path,
                    evidence={"field": f"{own.cls.__qualname__}.{own.name}"},
                )
            )
        return out

    def _jaxpr_checks(self, prog: Program, site: Site) -> list[Finding]:
        codes = {c for c in ALL_CODES if self.selector(c)}
        if not codes:
            return []
        token = busy.set(True)
        try:
            found = check_jaxpr(prog.jaxpr, function=self.function, in_paths=prog.in_paths, out_paths=prog.out_paths, codes=codes, literal_site=self._literal_site)
            if prog.fun is not None and any(f.code == "STB302" for f in found):
                # JAX: imported when this runs, never on import
                import jax

                own = code_weak_outputs(jax, prog.fun, prog.args, prog.out_paths, self._literal_site)
                found = [f for f in found if f.code != "STB302" or own is None or f.detail in own]
        except Exception as e:
            return [self._analysis_error(e, site)]
        finally:
            busy.reset(token)
        return [f.refine(stage="runtime", evidence={**f.evidence, "signature": _sig_text(self)}, chains=with_via(f.chains, "@stabcheck.stable")) for f in found]

    def _literal_site(self) -> Any:
        return literal_return_site(self.defined.path, self.defined.line, self.function) if self.defined is not None else None

    def _retrace(self, old: Signature, new: Signature, site: Site, field: Site | None = None) -> Finding:
        n = len(self.records)
        what = changes(old, new)
        if what:
            first = what[0]
            culprit = first.split("`")[1] if "`" in first else ""
        else:
            first, culprit = "the argument types did not change (the compile cache was cleared, or the jitted function was rebuilt)", ""
        weak_flip = any(" was weak " in w and ", now weak" not in w for w in what)
        help = (
            "give the leaf a fixed dtype from the start, e.g. `jnp.asarray(0.0, dtype=jnp.float32)` instead of `jnp.asarray(0.0)`"
            if weak_flip
            else "keep every argument leaf's dtype, shape and weak type fixed across calls: pass varying numbers as arrays of a fixed dtype, pad batches to one shape, and mark true configuration as static"
        )
        return make_finding(
            "STB504",
            site=field or (self.defined if self.retrace_at_def and self.defined is not None else site),
            message=f"`{self.function}` was traced for a new signature: {'; '.join(what) if what else first}. Each new signature traces and compiles `{self.function}` again ({n} signatures so far, max_traces={self.max_traces}){f'; this one came from the call at {site.path}:{site.line}' if self.retrace_at_def and self.defined is not None else ''}",
            help=help,
            function=self.function,
            detail=culprit or self.function,
            evidence={"traces": n, "max_traces": self.max_traces, "changes": what, "signatures": [s.describe() for s in list(self.records)[-2:]]},
        )

    def _static_union(self, record: _Record, site: Site) -> list[Finding]:
        for other in self.records.values():
            if other is record or other.signature.leaves != record.signature.leaves or not other.outputs:
                continue
            if other.outputs == record.outputs or other.signature.statics == record.signature.statics:
                continue
            diff = [(n, v, dict(other.signature.statics).get(n)) for n, v in record.signature.statics if dict(other.signature.statics).get(n) != v]
            name, now, before = diff[0] if diff else ("", "", "")
            return [
                make_finding(
                    "STB205",
                    site=site,
                    message=f"`{self.function}` returns {_out_text(other.outputs)} when static `{name}` is {before} but {_out_text(record.outputs)} when it is {now}; the output type depends on a static value, so callers and carries see a different type per value",
                    help="return the same structure and dtypes for every static value (cast to one dtype, pad to one shape), or split the function in two",
                    function=self.function,
                    detail=name,
                    evidence={"static": name, "values": [before, now], "outputs": [list(other.outputs), list(record.outputs)]},
                )
            ]
        return []

    def _grad_checks(self, prog: Program, site: Site) -> list[Finding]:
        # JAX: imported when this runs, never on import
        import jax
        import jax.extend.core  # JAX: only where user code runs
        import jax.numpy as jnp  # JAX: only where user code runs
        import numpy as np  # NumPy: only where user code runs

        closed = prog.jaxpr
        avals = list(closed.in_avals)
        chosen = [i for i, p in enumerate(prog.in_paths) if leaf_base(p) in self.grad_params]
        out: list[Finding] = []
        for i in chosen:
            a = avals[i]
            if not jnp.issubdtype(a.dtype, jnp.inexact):
                out.append(
                    make_finding(
                        "STB402",
                        site=site,
                        message=f"`{prog.in_paths[i]}` is a `{a.dtype}` leaf of the differentiated argument `{leaf_base(prog.in_paths[i])}`; `jax.grad` raises TypeError on it (only float and complex leaves can be differentiated)",
                        help=HELP_402,
                        function=self.function,
                        detail=prog.in_paths[i],
                        evidence={"dtype": str(a.dtype), "leaf": prog.in_paths[i]},
                    )
                )
        floats = [i for i in chosen if jnp.issubdtype(avals[i].dtype, jnp.inexact)]
        if not floats or out:
            return out
        fun = jax.extend.core.jaxpr_as_fun(closed)

        def run(*args: Any) -> Any:
            def f(*d: Any) -> Any:
                full = list(args)
                for k, v in zip(floats, d):
                    full[k] = v
                return fun(*full)

            outs, vjp = jax.vjp(f, *[args[k] for k in floats])
            cts = [jnp.ones_like(o) if jnp.issubdtype(o.dtype, jnp.inexact) else np.zeros(o.shape, jax.dtypes.float0) for o in outs]
            return vjp(cts)

        token = busy.set(True)
        try:
            traced = jax.make_jaxpr(run)(*[jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals])
        except Exception as e:
            return [self._analysis_error(e, site)]
        finally:
            busy.reset(token)
        grads = traced.out_avals
        for k, g in zip(floats, grads):
            a = avals[k]
            if g.dtype != a.dtype:
                # at the line that makes the gradient's dtype, as the confirm stage places it; else the call
                cast = first_cast_site(traced.jaxpr, str(g.dtype), closed.jaxpr)
                out.append(
                    make_finding(
                        "STB406",
                        site=Site(shown_path(cast.file), cast.line, cast.col) if cast is not None else site,
                        message=f"the gradient of `{prog.in_paths[k]}` is `{g.dtype}` although the leaf is `{a.dtype}`{' (it is made here)' if cast is not None else ''}; optimizer updates then promote or silently cast the parameter",
                        help="compute in the parameter's dtype, and make custom VJP rules return cotangents of the primal's dtype",
                        function=self.function,
                        detail=prog.in_paths[k],
                        evidence={"primal": str(a.dtype), "gradient": str(g.dtype)},
                    )
                )
        return out

    def _analysis_error(self, e: Exception, site: Site) -> Finding:
        text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return make_finding(
            "STB902",
            site=site,
            message=f"stabcheck could not trace `{self.function}` for its checks ({text}); this signature was not checked",
            help="make the function traceable with abstract inputs of the same shapes and dtypes, or mark non-array arguments static",
            function=self.function,
            detail=type(e).__name__,
            evidence={"error": text},
        )


def _field_site(old: _Record, new: _Record) -> Site | None:
    """The line that declares (or, for a `jax.jit` object built per instance, builds) the first
    dataclass field whose value changed between two calls; None when no field changed."""
    if old.call is None or new.call is None:
        return None
    # a field of the same class in both calls (an argument of another type is not the field's doing)
    same_class = [p for p in changed_paths(old.call.specs, new.call.specs) if p in old.call.owners and p in new.call.owners and old.call.owners[p].cls is new.call.owners[p].cls]
    where = site_for(same_class, new.call)
    return Site(shown_path(where.file), where.line) if where is not None else None


def _shape(type_text: str) -> str:
    """`weak float32[3]` -> `[3]`."""
    return type_text[type_text.find("["):]


def leaf_base(path: str) -> str:
    """The argument a leaf path belongs to: `params['w']` -> `params`."""
    return re.split(r"[\[.]", path, maxsplit=1)[0]


def _outputs(prog: Program) -> tuple[tuple[str, str], ...]:
    avals = list(prog.jaxpr.out_avals)
    names = list(prog.out_paths) + [f"result[{i}]" for i in range(len(prog.out_paths), len(avals))]
    return tuple((n, type_str(a.dtype, a.shape, bool(getattr(a, "weak_type", False)))) for n, a in zip(names, avals))


def _out_text(outputs: tuple[tuple[str, str], ...]) -> str:
    if len(outputs) == 1:
        return f"`{outputs[0][1]}`"
    return "(" + ", ".join(f"{t}" for _, t in outputs[:4]) + (", ..." if len(outputs) > 4 else "") + ")"


def _sig_text(m: Monitor) -> str:
    last = next(reversed(m.records), None)
    return last.describe() if last is not None else ""


__all__ = ["Monitor", "Program", "RUNTIME_CODES", "Selector", "Site", "busy", "caller_site", "leaf_base", "make_finding"]
