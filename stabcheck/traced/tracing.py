"""The in-worker "trace" task: trace one entry under each transform, abstractly (no FLOPs).

For each requested transform it builds the program with `jax.make_jaxpr` on abstract inputs,
walks it with `check_jaxpr`, and turns what JAX raises into findings at the user's line:

    TracerBoolConversionError -> STB101   ConcretizationTypeError -> STB102
    NonConcreteBooleanIndexError -> STB103   cond branches differ -> STB203
    loop carry differs -> STB204   grad of bool/int leaves -> STB402 (naming the leaves)
    forward mode over custom_vjp -> STB403   reverse mode through while_loop -> STB404
    custom rule output mismatch -> STB405   callbacks under grad/jvp -> STB407
    trees of other structures combined -> STB206   grad of a non-scalar output -> STB409
    traced/unhashable static argument -> STB502   Python int overflowing its dtype -> STB503
    a non-array (a Module, an object) passed as a traced argument -> STB505
    a dtype asked for explicitly that JAX narrows (float64 with x64 off; JAX's warning) -> STB301
    anything else -> STB902 (stabcheck's own failure, or an error no rule knows; see traced.errors)

Entries with `state_argnums` are stepped abstractly init -> step -> step and every state leaf's
dtype/shape/weak_type is compared (STB204); entries with static arguments and `calls` are traced
per static value and their output types compared (STB205).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import linecache
import os
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from stabcheck import registry
from stabcheck.finding import Finding, Span
from stabcheck.traced.checks import ZERO_GRADIENT_HELP, check_jaxpr, custom_rule_def, custom_rule_defs, depends, in_custom_rule, iter_eqns, rule_return_site, shown_path, site_span, source_line, sub_jaxprs, truncated_dtype_text, zero_gradient_cut, zero_gradient_message
from stabcheck.traced.entries import Entry
from stabcheck.traced.errors import code_of, fix_site
from stabcheck.traced.source import Site, chain, eqn_site, function_site, is_internal, leaf_origin, literal_return_site, with_via

FORWARD = frozenset({"jvp", "jacfwd", "hessian", "hvp"})
REVERSE = frozenset({"grad", "jacrev", "hessian", "hvp"})
BATCH = 2
# JAX's warning when a dtype it cannot give (float64/int64 with x64 off) is asked for explicitly
_TRUNCATED = re.compile(r"Explicitly requested dtype (.+?)(?: requested in (\w+))? is not available, and will be truncated to dtype (\w+)")

# JAX's error said at the user's line, for codes whose message needs nothing but the error:
# code -> (message, help); {where} "under `grad`" / "when traced", {what} JAX's first line,
# {by} the transform that differentiates ("this `grad`" when the entry calls it itself)
_RAISED: dict[str, tuple[str, str]] = {
    "STB203": (
        "the branches of this conditional return different types {where}; JAX raises `{what}`",
        "make every branch return the same pytree of the same dtypes and shapes (cast with `.astype`, pad, or return zeros)",
    ),
    "STB204": (
        "a loop carry changes type between iterations here {where}; JAX raises `{what}`",
        "initialise the carry with the dtype and shape the body returns (e.g. `jnp.zeros((), x.dtype)` instead of `0`)",
    ),
    "STB206": (
        "two pytrees of different structure are combined here {where} (a `None` for a frozen part, other dict keys, a tuple against a list); JAX raises `{what}`",
        "give both trees the same structure (zeros instead of `None`, the same keys), or map over the one that has every leaf (`jax.tree.map(f, a, b, is_leaf=lambda x: x is None)`)",
    ),
    "STB407": (
        "a host callback is reached by autodiff ({transform}) here; JAX raises `{what}`",
        "wrap the callback in `jax.custom_jvp`/`custom_vjp` with a JAX derivative, or replace it with `jnp` code",
    ),
    "STB409": (
        "{by} differentiates a function whose output is not a scalar; JAX raises `{what}`",
        "reduce the output to a scalar (`.sum()`, `[0]` for shape (1,)), return `(loss, aux)` with `has_aux=True`, or use `jax.jacrev`/`jax.vjp` for a non-scalar output",
    ),
    "STB502": (
        "a traced or unhashable value reaches a parameter declared static {where} (`vmap` over it, or a list/array given for it); JAX raises `{what}`",
        "pass a hashable Python value (a tuple, an int) for the static parameter and keep it out of `in_axes` (`in_axes=None` for it), or make it a traced argument",
    ),
    "STB503": (
        "a Python int given as a traced argument does not fit the argument's dtype {where} (int32 unless x64 is on); JAX raises `{what}`",
        "pass large integers (seeds, timestamps) as `np.int64`/`np.uint32` arrays reduced to the range you need, or as static arguments; do not rely on JAX truncating them",
    ),
    "STB504": (
        "a function is traced again {where}, more often than the code's own `eqx.debug.assert_max_traces` allows; JAX raises `{what}`",
        "keep the arguments that change the trace fixed (hashable static values built once, arrays for what varies), or build the jitted function once",
    ),
    "STB505": (
        "an argument that is neither an array nor a pytree of arrays (a Module, a plain object) is passed as a traced argument {where}; JAX raises `{what}`",
        "mark it static (`static_argnums`/`static_argnames`, `eqx.filter_jit`), register its class as a pytree, or pass its arrays (`model.init(...)` params) instead of the object",
    ),
}


def weak_value(jax: Any, value: Any) -> bool:
    """Whether JAX sees a value as weakly typed (a Python scalar, or an array made from one)."""
    if hasattr(value, "weak_type"):  # ShapeDtypeStruct, avals
        return bool(value.weak_type)
    typeof = getattr(jax, "typeof", None) or jax.core.get_aval  # jax.typeof: JAX 0.6 and newer
    try:
        return bool(getattr(typeof(value), "weak_type", False))
    except TypeError:
        return False


def strongly_typed(jax: Any, tree: Any) -> Any:
    """`tree` with every array and scalar leaf as an abstract value of the same shape and dtype,
    strongly typed (`2.0` -> `float32[]`, a weak array -> its strong twin)."""

    def strong(a: Any) -> Any:
        if not (hasattr(a, "shape") and hasattr(a, "dtype")) and not isinstance(a, (bool, int, float, complex)):
            return a
        return jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.dtypes.canonicalize_dtype(jax.numpy.result_type(a)))

    return jax.tree_util.tree_map(strong, tree)


def code_weak_outputs(jax: Any, fn: Callable[..., Any], dyn: tuple[Any, ...], out_paths: list[str] | tuple[str, ...], literal_site: Callable[[], Site | None] | None = None) -> set[str] | None:
    """STB302's one test of whose weak output it is, shared by the entries, `pytest --stabcheck`
    and the replay: the output leaves (named as in `out_paths`) that stay weakly typed when
    `fn(*dyn)` is traced again with every input strongly typed. Those are made weak by a Python
    scalar in the code; a weak output inherited from a weak argument (a Python float the entry
    or the test passed) is how JAX treats that argument, not a hazard of the function:
    `f(jnp.float32(2.0))` is strong. None when that cannot be told (no input is weak, the
    function only traces with the weak value, another output structure): keep every STB302."""
    if not any(weak_value(jax, a) for a in jax.tree_util.tree_leaves(dyn)):
        return None
    try:
        jaxpr = jax.make_jaxpr(fn)(*strongly_typed(jax, dyn))
    except Exception:  # noqa: BLE001 - user code that only runs on the weak value
        return None
    if len(jaxpr.out_avals) != len(out_paths):
        return None
    return {f.detail for f in check_jaxpr(jaxpr, out_paths=list(out_paths), codes=("STB302",), literal_site=literal_site)}


def first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


@contextlib.contextmanager
def jax_flags(flags: Any) -> Iterator[None]:
    """Set JAX flags (`Entry.jax_config`) for the duration of one entry, then restore them."""
    # JAX: imported when this runs, never on import
    import jax

    old: dict[str, Any] = {}
    try:
        for k, v in dict(flags or {}).items():
            old[k] = getattr(jax.config, k)
            jax.config.update(k, v)
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)


def trace_entry(name: str, entry: Entry, payload: dict[str, Any]) -> Tracer:
    """Trace one entry under the payload's "transforms" (else its own); call inside `jax_flags`."""
    t = Tracer(name, entry)
    t.run(tuple(payload.get("transforms") or entry.transforms))
    return t


def trace_task(name: str, entry: Entry, payload: dict[str, Any]) -> dict[str, Any]:
    """The worker task "trace": findings (as dicts) for one entry."""
    if getattr(entry, "stand_ins", 0):  # a recorded call pattern: replayed by the confirm stage only
        return {"findings": [], "transforms": {}, "notes": []}
    with jax_flags(entry.jax_config):
        t = trace_entry(name, entry, payload)
        return {"findings": [f.to_dict() for f in t.findings()], "transforms": t.status, "notes": t.notes}


class Tracer:
    def __init__(self, name: str, entry: Entry) -> None:
        # JAX: imported when this runs, never on import
        import jax

        self.jax = jax
        self.name = name
        self.entry = entry
        self.via = f"stabcheck entry `{name}`"  # the outermost step of the findings' chains
        self.static = set(entry.static_argnums)
        self.dyn_pos = [i for i in range(len(entry.args)) if i not in self.static]
        self.dyn = tuple(entry.args[i] for i in self.dyn_pos)
        self.found: dict[tuple[str, str, int], Finding] = {}
        self.status: dict[str, str] = {}
        self.notes: list[str] = []
        self.primal: Any = None
        self.params = _param_names(entry.fn, len(entry.args))

    # -- building the programs --------------------------------------------------------------
    def call(self, *dyn: Any) -> Any:
        full = list(self.entry.args)
        for pos, v in zip(self.dyn_pos, dyn):
            full[pos] = v
        return self.entry.fn(*full, **dict(self.entry.kwargs))

    def diff_argnums(self) -> tuple[int, ...]:
        a = self.entry.argnums
        wanted = (a,) if isinstance(a, int) else tuple(a)
        return tuple(self.dyn_pos.index(i) for i in wanted if i in self.dyn_pos)

    def scalar(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        jnp = self.jax.numpy

        def f(*a: Any) -> Any:
            out = fn(*a)
            leaves = [x for x in self.jax.tree_util.tree_leaves(out) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
            if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
                return leaves[0]
            return sum((jnp.sum(x) for x in leaves), jnp.zeros((), jnp.result_type(*leaves) if leaves else jnp.float32))

        return f

    def program(self, transform: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        jax = self.jax
        argnums = self.diff_argnums() or (0,)
        if transform in ("call", "jit", "primal"):
            return (jax.jit(self.call) if transform == "jit" else self.call), self.dyn
        if transform == "grad":
            return jax.grad(self.scalar(self.call), argnums=argnums), self.dyn
        if transform == "jacrev":
            return jax.jacrev(self.call, argnums=argnums), self.dyn
        if transform == "jacfwd":
            return jax.jacfwd(self.call, argnums=argnums), self.dyn
        if transform == "hessian":
            return jax.hessian(self.scalar(self.call), argnums=argnums), self.dyn
        if transform in ("jvp", "hvp"):
            inner = self.call if transform == "jvp" else jax.grad(self.scalar(self.call), argnums=argnums)

            def run(*dyn: Any) -> Any:
                def g(*p: Any) -> Any:
                    full = list(dyn)
                    for i, v in zip(argnums, p):
                        full[i] = v
                    return inner(*full)

                primals = tuple(dyn[i] for i in argnums)
                return jax.jvp(g, primals, tuple(_tangent(jax, p) for p in primals))

            return run, self.dyn
        if transform == "vmap":
            axes = self.entry.in_axes
            per_arg = axes if isinstance(axes, (tuple, list)) else (axes,) * len(self.dyn)
            batched = tuple(_batched(jax, a, ax) for a, ax in zip(self.dyn, per_arg))
            return jax.vmap(self.call, in_axes=tuple(per_arg)), batched
        raise ValueError(f"unknown transform {transform!r}")

    # -- running -----------------------------------------------------------------------------
    def run(self, transforms: tuple[str, ...]) -> None:
        jax = self.jax
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.primal, shape = jax.make_jaxpr(self.call, return_shape=True)(*self.dyn)
        except Exception as e:  # noqa: BLE001 - user code
            self.exception(e, "call")
            self.status["call"] = code_of(e)[0]
            return
        self.truncated_dtypes(caught)
        out_paths = [jax.tree_util.keystr(p) or "output" for p, _ in jax.tree_util.tree_flatten_with_path(shape)[0]]
        self.status["call"] = "ok"
        found = check_jaxpr(self.primal, function="", out_paths=out_paths, literal_site=self.literal_site)
        if any(f.code == "STB302" for f in found):
            own = self.code_weak_leaves(out_paths)
            found = [f for f in found if f.code != "STB302" or f.detail in own]
        for f in found:
            self.add(f.refine(evidence={**f.evidence, "transform": "call", "entry": self.name}, chains=with_via(f.chains, self.via)))
        for t in transforms:
            if t in ("call", "jit"):
                continue
            try:
                fn, args = self.program(t)
                jaxpr = jax.make_jaxpr(fn)(*args)
            except Exception as e:  # noqa: BLE001
                self.exception(e, t)
                self.status[t] = code_of(e)[0]
                continue
            self.status[t] = "ok"
            if t in FORWARD:
                self.custom_lin(jaxpr, t)
            if t == "grad":
                self.zero_gradients(jaxpr)
        if self.entry.state_argnums:
            self.state_drift()
        if self.static and self.entry.calls:
            self.static_union()

    def zero_gradients(self, grad_jaxpr: Any) -> None:
        """STB410: a differentiated leaf that reaches the output (the primal depends on it) only
        through primitives without a derivative: its gradient is the constant zero. Reported at
        the first such primitive, a comparison or a rounding, that its value flows into."""
        jax = self.jax
        argnums = self.diff_argnums() or (0,)
        sizes = [len(jax.tree_util.tree_leaves(a)) for a in self.dyn]
        primal = self.primal.jaxpr
        outs = iter(grad_jaxpr.jaxpr.outvars)
        for pos in argnums:
            start = sum(sizes[:pos])
            for k, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(self.dyn[pos])[0]):
                out = next(outs, None)
                if out is None or not jax.numpy.issubdtype(jax.numpy.result_type(leaf), jax.numpy.inexact):
                    continue
                chain = zero_gradient_cut(primal, grad_jaxpr.jaxpr, out, primal.invars[start + k])
                site = next((st for st in map(eqn_site, reversed(chain)) if st is not None), None)
                if site is None:
                    continue
                cut = chain[-1]
                name = f"{self.params[self.dyn_pos[pos]] if self.dyn_pos[pos] < len(self.params) else f'argument {pos}'}{jax.tree_util.keystr(path)}"
                self.report(
                    "STB410",
                    site,
                    zero_gradient_message(name, cut),
                    help=ZERO_GRADIENT_HELP,
                    detail=name,
                    evidence={"transform": "grad", "leaf": name, "primitive": cut.primitive.name},
                )

    def code_weak_leaves(self, out_paths: list[str]) -> set[str]:
        """Output leaves that stay weakly typed when every input is strongly typed
        (`code_weak_outputs`), for a recorded signature too: a weak Python float the test passed
        is how JAX treats that argument, as it is for a hand-written entry's example."""
        own = code_weak_outputs(self.jax, self.call, self.dyn, out_paths, self.literal_site)
        return set(out_paths) if own is None else own

    def truncated_dtypes(self, caught: list[warnings.WarningMessage]) -> None:
        """STB301 where the user asked for a dtype JAX silently narrows (JAX's warning names the line)."""
        for w in caught:
            m = _TRUNCATED.search(str(w.message))
            if m is None or is_internal(w.filename):
                continue
            asked = m.group(1).removeprefix("<class '").removesuffix("'>").rsplit(".", 1)[-1]
            message, help = truncated_dtype_text(asked, m.group(3), m.group(2) or "")
            self.report(
                "STB301",
                Site(w.filename, w.lineno),
                message,
                help=help,
                detail=asked,
                evidence={"transform": "call", "warning": str(w.message).splitlines()[0][:200]},
            )

    def literal_site(self) -> Site | None:
        site = function_site(self.entry.fn)
        return literal_return_site(site.file, site.line, site.function) if site is not None else None

    def add(self, f: Finding) -> None:
        if f.key not in self.found:
            self.found[f.key] = f

    def findings(self) -> list[Finding]:
        found = sorted(self.found.values(), key=lambda f: f.sort_key)
        if self.primal is not None and any("equation" not in f.evidence for f in found):
            at = self.equations_by_line()
            found = [f if "equation" in f.evidence or (f.path, f.line) not in at else f.refine(evidence={**f.evidence, "equations": at[(f.path, f.line)]}) for f in found]
        return found

    def equations_by_line(self, per_line: int = 3) -> dict[tuple[str, int], list[str]]:
        """The primal jaxpr's equations at each user line (the first `per_line`, one line each),
        the evidence `explain-finding` shows next to a traced finding."""
        out: dict[tuple[str, int], list[str]] = {}
        for eqn in iter_eqns(self.primal.jaxpr):
            site = eqn_site(eqn)
            if site is None:
                continue
            texts = out.setdefault((shown_path(site.file), site.line), [])
            if len(texts) < per_line:
                text = str(eqn).strip().splitlines()
                texts.append(text[0][:200] if text else "")
        return out

    def report(self, code: str, site: Site | None, message: str, *, help: str = "", detail: str = "", evidence: dict[str, Any] | None = None) -> None:
        rule = registry.get(code)
        if rule is None:
            self.notes.append(f"{code} found in entry `{self.name}` but no rule file defines it in this build")
            return
        site = site or function_site(self.entry.fn)
        if site is None:
            return
        self.add(
            rule.finding(
                path=shown_path(site.file),
                span=site_span(site),
                message=message,
                help=help,
                function=site.function,
                detail=detail,
                evidence={**(evidence or {}), "entry": self.name},
                stage="traced",
                snippet=source_line(site),
                chains=chain(site, shown_path, self.via),
            )
        )

    # -- exceptions -> findings --------------------------------------------------------------
    def exception(self, e: BaseException, transform: str) -> None:
        code, reason = code_of(e)
        jax_msg = "\n".join(str(e).strip().splitlines()[:6])[:1200]
        ev = {"transform": transform, "error": first_line(e), "jax_message": jax_msg}
        where = f"under `{transform}`" if transform != "call" else "when traced"
        site = fix_site(e, code) or self.recorded_call()
        if code == "STB402":
            self.non_diff_leaf(e, transform, site, ev)
        elif code == "STB403":
            site = self.primitive_site("custom_vjp_call") or site
            self.report(code, site, f"forward-mode autodiff reaches a `jax.custom_vjp` function here {where}; JAX raises `can't apply forward-mode autodiff (jvp) to a custom_vjp function`", help="define the rule with `jax.custom_jvp` (works in both modes), or use reverse mode only (`grad`, `jacrev`)", detail=transform, evidence=ev)
        elif code == "STB404":
            site = self.primitive_site("while") or site  # the loop (fix_site: also under the user's own `grad`)
            self.report(code, site, f"reverse-mode autodiff ({transform}) reaches this `lax.while_loop`; JAX cannot differentiate a loop whose trip count is only known at run time", help="use `lax.scan` or `lax.fori_loop` with static bounds, or `jax.checkpoint`-ed scan; forward mode (`jvp`, `jacfwd`) works", detail=transform, evidence=ev)
        elif code == "STB405":
            site = self.rule_site() or site
            self.report(code, site, f"a custom derivative rule returns outputs whose structure, shape or dtype differ from the primal's {where}; JAX rejects it: {first_line(e)[:160]}", help="return one cotangent per primal input (None or zeros for non-differentiable ones), each with its input's shape and dtype", detail=transform, evidence=ev)
        elif code in ("STB101", "STB102", "STB103"):
            text = _source_line(site)
            culprit = f"`{text}`" if text else "this line"
            concrete = "a concrete shape" if "shape" in reason else "static slice bounds" if "slice" in reason else "a concrete value from a traced one"
            what = {
                "STB101": f"{culprit} branches in Python on a traced value {where}",
                "STB102": f"{culprit} needs {concrete} {where}" + (" (`int`/`float`/`bool`/`.item()`/NumPy)" if concrete.startswith("a concrete value") else ""),
                "STB103": f"{culprit} makes an array whose shape depends on traced data {where}",
            }[code]
            helps = {
                "STB101": "select with `jnp.where`/`lax.select`/`lax.cond`, or make the argument static (`static_argnums`)",
                "STB102": "compute sizes and bounds with Python ints from static shapes (`x.shape[0] + 1`, not `jnp.add(x.size, 1)`), use `lax.dynamic_slice` with a static size, or make the argument static" if concrete != "a concrete value from a traced one" else "keep the value as an array (`jnp` operations), or make the argument static",
                "STB103": "give a static size (`jnp.nonzero(x, size=n)`, `jnp.where(m, x, 0)`) instead of boolean indexing",
            }
            self.report(code, site, f"{what}; JAX raises `{type(e).__name__}`, so the function cannot be jitted or differentiated under `jit`", help=helps[code], detail=text or transform, evidence=ev)
        elif code in _RAISED:
            if code == "STB407" and self.primal is not None:
                site = in_custom_rule(site, custom_rule_defs(self.primal)) or site  # the rule's line, not its helper's
            message, help = _RAISED[code]
            by = "this `grad`" if transform == "call" else f"`{transform}`"
            self.report(code, site, message.format(where=where, what=first_line(e)[:160], by=by, transform=transform), help=help, detail=transform, evidence=ev)
        else:
            self.report("STB902", site, f"tracing entry `{self.name}` {where} raised `{first_line(e)[:200]}`; its remaining checks under `{transform}` did not run", help="run the entry by hand to reproduce the error; fix it or the entry's example arguments", detail=f"{self.name}:{transform}", evidence=ev)

    def recorded_call(self) -> Site | None:
        """The user's line that applied the transform, for a recorded entry whose error has no
        frame of the user's (`vmap` of a jitted function rejecting a batched static argument):
        where `pytest --stabcheck` puts it. None for a hand-written entry, or a deleted file."""
        at = getattr(self.entry, "recorded_site", None)
        return Site(at[0], at[1]) if at is not None and os.path.isfile(at[0]) else None

    def non_diff_leaf(self, e: BaseException, transform: str, site: Site | None, ev: dict[str, Any]) -> None:
        jax = self.jax
        text = str(e)
        got = text.rsplit("but got", 1)[-1].split()[0].strip(".,;") if "but got" in text else ""
        if transform == "call":
            positions = list(range(len(self.dyn)))
        else:
            positions = list(self.diff_argnums() or (0,))
        leaves: list[str] = []
        dtypes: list[str] = []
        for pos in positions:
            flat = jax.tree_util.tree_flatten_with_path(self.dyn[pos])[0]
            for path, leaf in flat:
                dt = str(getattr(leaf, "dtype", type(leaf).__name__))
                if got and dt != got and not dt.startswith(got.rstrip("0123456789")):
                    continue
                if not got and jax.numpy.issubdtype(dt, jax.numpy.inexact):
                    continue
                leaves.append(f"{self.params[self.dyn_pos[pos]]}{jax.tree_util.keystr(path)}")
                dtypes.append(dt)
            if leaves and transform == "call":
                break  # the step differentiates its first argument with such leaves (params before state)
        names = ", ".join(f"`{n}`" for n in leaves[:4]) or "a bool/int leaf"
        factory = getattr(self.entry, "factory", None)
        code = getattr(factory, "__code__", None)
        made = leaf_origin(leaves[0], dtypes[0], code.co_filename, code.co_firstlineno, factory.__globals__) if leaves and code is not None else None
        what = f"`grad` is asked to differentiate {names} ({got or 'non-float'})"
        if made is not None:  # where the entry's factory makes the leaf: the line to fix
            site, what = made, f"the {got or 'non-float'} leaf {names} is made here and `grad` is asked to differentiate it"
        self.report(
            "STB402",
            site,
            f"{what}; JAX raises `grad requires real- or complex-valued inputs` and the whole step fails",
            help="keep masks and counters out of the differentiated tree (close over them, pass them as another argument, or use `eqx.filter_grad`)",
            detail=",".join(leaves) or "leaf",
            evidence={**ev, "leaves": leaves, "dtype": got},
        )

    def primitive_site(self, *names: str) -> Site | None:
        if self.primal is None:
            return None
        for eqn in iter_eqns(self.primal.jaxpr):
            if eqn.primitive.name in names:
                site = eqn_site(eqn)
                if site is not None:
                    return site
        return None

    def rule_site(self) -> Site | None:
        """The `return` line of the custom rule (bwd of custom_vjp, jvp of custom_jvp) in the primal."""
        if self.primal is None:
            return None
        for eqn in iter_eqns(self.primal.jaxpr):
            if eqn.primitive.name in ("custom_vjp_call", "custom_jvp_call"):
                rule = custom_rule_def(eqn)
                return (rule_return_site(rule) if rule is not None else None) or eqn_site(eqn)
        return None

    def custom_lin(self, jaxpr: Any, transform: str) -> None:
        """jvp of a custom_vjp function traces (as `custom_lin`) but fails when lowered."""
        for eqn in iter_eqns(jaxpr.jaxpr):
            if eqn.primitive.name == "custom_lin":
                site = self.primitive_site("custom_vjp_call") or eqn_site(eqn)
                self.report(
                    "STB403",
                    site,
                    f"forward-mode autodiff (`{transform}`) reaches a `jax.custom_vjp` function here; it traces, but compiling or running it raises `can't apply forward-mode autodiff (jvp) to a custom_vjp function`",
                    help="define the rule with `jax.custom_jvp` (works in both modes), or use reverse mode only (`grad`, `jacrev`)",
                    detail=transform,
                    evidence={"transform": transform, "primitive": "custom_lin"},
                )
                return

    # -- state across steps (STB204) -------------------------------------------------------------
    def state_drift(self) -> None:
        jax = self.jax
        e = self.entry
        state = [p for p in e.state_argnums if p in self.dyn_pos]
        if not state:
            return
        try:
            init = jax.eval_shape(lambda *a: a, *self.dyn)
            steps = [init]
            args = init
            for _ in range(2):
                out = jax.eval_shape(self.call, *args)
                outs = out if isinstance(out, (tuple, list)) else (out,)
                nxt = list(args)
                for k, p in enumerate(state):
                    nxt[self.dyn_pos.index(p)] = outs[k]
                args = tuple(nxt)
                steps.append(args)
        except Exception as ex:  # noqa: BLE001 - a drift that breaks the step itself
            self.exception(ex, "state")
            return
        for k, p in enumerate(state):
            i = self.dyn_pos.index(p)
            before = steps[0][i]
            for step_no, cur in enumerate(steps[1:], start=1):
                if self._diff_state(p, k, before, cur[i], step_no):
                    break
                before = cur[i]

    def _diff_state(self, pos: int, k: int, before: Any, after: Any, step_no: int) -> bool:
        jax = self.jax
        name = self.params[pos]
        fa, ta = jax.tree_util.tree_flatten_with_path(before)
        fb, tb = jax.tree_util.tree_flatten_with_path(after)
        if ta != tb:
            self.report("STB204", self.output_site(k, None), f"state `{name}` changes structure after step {step_no} (`{ta}` -> `{tb}`); the next call retraces, and a `scan` over steps fails", help="return the state with the structure it was created with", detail=name, evidence={"before": str(ta), "after": str(tb), "step": step_no})
            return True
        changed = False
        for (path, a), (_, b) in zip(fa, fb):
            ka = (str(a.dtype), tuple(a.shape), bool(getattr(a, "weak_type", False)))
            kb = (str(b.dtype), tuple(b.shape), bool(getattr(b, "weak_type", False)))
            if ka == kb:
                continue
            leaf = f"{name}{jax.tree_util.keystr(path)}"
            what = "dtype" if ka[0] != kb[0] else "shape" if ka[1] != kb[1] else "weak_type"
            show = lambda t: f"{'~' if t[2] else ''}{t[0]}{list(t[1])}"  # noqa: E731
            self.report(
                "STB204",
                self.output_site(k, path),
                f"state leaf `{leaf}` changes {what} after step {step_no} (`{show(ka)}` -> `{show(kb)}`); every call with the new state retraces and recompiles, and a `scan` over steps rejects the carry",
                help="create the leaf with its final dtype (`jnp.asarray(v, jnp.float32)`, `jnp.zeros((), jnp.int32)`), not from a Python scalar",
                detail=leaf,
                evidence={"leaf": leaf, "before": show(ka), "after": show(kb), "step": step_no, "changed": what},
            )
            changed = True
        return changed

    def output_site(self, k: int, path: Any) -> Site | None:
        """The user line that computes state output `k` (leaf `path`) in the step's program."""
        jax = self.jax
        if self.primal is None:
            return None
        out_tree = jax.eval_shape(self.call, *self.dyn)
        flat = jax.tree_util.tree_flatten_with_path(out_tree)[0]
        for idx, (p, _) in enumerate(flat):
            if not p or getattr(p[0], "idx", None) != k:
                continue
            if path is not None and tuple(p[1:]) != tuple(path):
                continue
            return producer_site(self.primal.jaxpr, idx)
        return None

    # -- static values (STB205) ---------------------------------------------------------------
    def static_union(self) -> None:
        jax = self.jax
        e = self.entry
        seen: list[tuple[Any, Any, tuple[Any, ...]]] = []
        for call in e.calls or ():
            call = tuple(call)
            try:
                out = jax.eval_shape(lambda *d, _c=call: e.fn(*[_c[i] if i in self.static else d[self.dyn_pos.index(i)] for i in range(len(_c))], **dict(e.kwargs)), *[call[i] for i in self.dyn_pos])
            except Exception as ex:  # noqa: BLE001
                self.exception(ex, "call")
                continue
            leaves, tree = jax.tree_util.tree_flatten(out)
            sig = tuple((str(x.dtype), tuple(x.shape), bool(getattr(x, "weak_type", False))) for x in leaves)
            statics = tuple(call[i] for i in sorted(self.static))
            seen.append((statics, tree, sig))
        for (s0, t0, g0), (s1, t1, g1) in zip(seen, seen[1:]):
            if t0 == t1 and g0 == g1:
                continue
            names = ", ".join(self.params[i] for i in sorted(self.static))
            what = f"structure `{t0}` vs `{t1}`" if t0 != t1 else f"leaf types {list(g0)} vs {list(g1)}"
            self.report(
                "STB205",
                return_site(self.entry.fn) or function_site(self.entry.fn),
                f"the output of `{getattr(self.entry.fn, '__name__', self.name)}` changes with static argument `{names}` ({s0!r} vs {s1!r}: {what}); callers get a different type per configuration value",
                help="return one structure and dtype for every static value (fill the missing parts with zeros)",
                detail=names,
                evidence={"static_values": [repr(s0), repr(s1)], "before": str(t0), "after": str(t1)},
            )
            return


# -- helpers -------------------------------------------------------------------------------------
def _tangent(jax: Any, tree: Any) -> Any:
    # NumPy: imported when this runs
    import numpy as np

    def one(x: Any) -> Any:
        dt = jax.numpy.result_type(x)
        if jax.numpy.issubdtype(dt, jax.numpy.inexact):
            return jax.numpy.ones_like(x)
        return np.zeros(jax.numpy.shape(x), dtype=jax.dtypes.float0)

    return jax.tree_util.tree_map(one, tree)


def _batched(jax: Any, tree: Any, axis: Any) -> Any:
    if axis is None:
        return tree

    def one(x: Any) -> Any:
        shape = list(jax.numpy.shape(x))
        shape.insert(axis if axis >= 0 else len(shape) + 1 + axis, BATCH)
        return jax.ShapeDtypeStruct(tuple(shape), jax.numpy.result_type(x))

    return jax.tree_util.tree_map(one, tree)


def _param_names(fn: Any, n: int) -> list[str]:
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return [names[i] if i < len(names) else f"args[{i}]" for i in range(n)]


def _source_line(site: Site | None) -> str:
    if site is None:
        return ""
    text = linecache.getline(site.file, site.line).split("  #", 1)[0].strip()
    return text if len(text) <= 100 else text[:97] + "..."


def return_site(fn: Any) -> Site | None:
    """The first `return` line of a Python function (the line that fixes a rule's output)."""
    fn = inspect.unwrap(fn) if callable(fn) else fn
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    try:
        lines, start = inspect.getsourcelines(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return None
    returns = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Return)), key=lambda n: (n.lineno, n.col_offset))
    if returns:
        node = returns[0]
        return Site(code.co_filename, start + node.lineno - 1, node.col_offset + 1, fn.__qualname__)
    lam = next((n for n in ast.walk(tree) if isinstance(n, ast.Lambda)), None)
    if lam is not None:
        return Site(code.co_filename, start + lam.body.lineno - 1, lam.body.col_offset + 1, fn.__qualname__)
    return None


def producer_site(jaxpr: Any, idx: int) -> Site | None:
    """The user line of the equation computing output `idx`, looking through call primitives."""
    v = jaxpr.outvars[idx]
    for _ in range(16):
        eqn = next((e for e in jaxpr.eqns if any(o is v for o in e.outvars)), None)
        if eqn is None:
            return None
        if eqn.primitive.name in ("pjit", "jit", "closed_call", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call"):
            sub = next(sub_jaxprs(eqn), None)
            k = [i for i, o in enumerate(eqn.outvars) if o is v][0]
            if sub is not None and k < len(sub.outvars) and type(sub.outvars[k]).__name__ == "Var":
                jaxpr, v = sub, sub.outvars[k]
                continue
        return eqn_site(eqn)
    return None
