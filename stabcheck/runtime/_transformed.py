"""The checks `pytest --stabcheck` runs on a transformed call other than `jit` (a listener of
`runtime._intercept`): the traced stage's jaxpr checks and, for the differentiated transforms,
the value checks of the confirm stage on the arguments the test really passed.

For each new (function, transform, abstract signature) `TransformChecker.check` traces the
function as the transform sees it and runs every jaxpr check (`Monitor`, shared with
`@stabcheck.stable` and the jit hook) at the function's lines: the primal function for the
differentiated transforms (`grad`, `value_and_grad`, `jacfwd`, `jacrev`, `hessian`, `jvp`, `vjp`,
`eqx.filter_grad`...), the batched one for `vmap`, the jitted one for `eqx.filter_jit` and
`nnx.jit`. Arguments the transform does not trace (the non-differentiated arguments of `grad`,
equinox's non-array leaves, `vmap`'s Python numbers) are closed over with their real values,
as the transform does. Differentiated calls also get STB402 (a non-float leaf in a
differentiated argument) and STB406 (a gradient dtype other than its parameter's), and `grad`/
`value_and_grad` STB410 (a leaf whose gradient is the constant zero: the test shared with the
entries, `traced.checks.zero_gradient_cut`). A trace that raises is classified by the traced
stage's error table (STB101 at the `if`...); so is a `jit` trace that raises (`jit_failed`,
told by the jit hook), even when the test expects the error.

`TransformChecker.after` sees the call's result: when a differentiated call returned a NaN or
Inf from finite arguments, `confirm.nan.nan_origin` replays it one primitive at a time and
STB408 names the primitive that made the first one. Every finding carries `entry` (the test
line of the call) and `transform` in its evidence.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stabcheck.confirm.nan import nan_origin, nonfinite
from stabcheck.confirm.retrace import call_signature
from stabcheck.finding import Finding
from stabcheck.runtime._calls import GRAD_FAMILY, TransformedCall
from stabcheck.runtime._intercept import fn_key, is_transformed, user_function, user_site
from stabcheck.runtime._monitor import HELP_402, Monitor, Program, Selector, Site, busy, leaf_base, make_finding
from stabcheck.runtime._signature import Signature, short_repr, type_str
from stabcheck.traced.checks import ZERO_GRADIENT_HELP, custom_rule_def, custom_rule_defs, eqn_site, in_custom_rule, iter_eqns, rule_return_site, shown_path, source_line, zero_gradient_cut, zero_gradient_message
from stabcheck.traced.errors import classify
from stabcheck.traced.source import Site as SourceSite, def_line, exception_site, leaf_origin, module_namespace

FILTER_GRAD = ("filter_grad", "filter_value_and_grad", "nnx.grad")  # the float leaves of the differentiated arguments
DIFFERENTIATED = (*GRAD_FAMILY, *FILTER_GRAD, "jvp", "vjp")
JIT_LIKE = ("filter_jit", "nnx.jit")
_NEVER = 10**9  # `grad` traces on every call by design: retraces are STB504 only for jit-likes
_HELP_408 = "keep the unsafe primitive away from the inputs where it or its derivative blows up: guard its input too (the double where), or clip it"


@dataclass(frozen=True, slots=True)
class Plan:
    """How the transform sees one call: the traced leaves and the function of them."""

    fun: Callable[..., Any]  # fun(*traced leaves) -> the function as traced (primal, or vmapped)
    rebuild: Callable[[list[Any]], tuple[tuple[Any, ...], dict[str, Any]]]  # traced leaves -> (args, kwargs)
    abstract: tuple[Any, ...]  # ShapeDtypeStructs of the traced leaves
    concrete: tuple[Any, ...] | None  # their real values; None when a leaf is a tracer
    in_paths: tuple[str, ...]
    grad_params: tuple[str, ...]
    signature: Signature


def _argnums(options: Mapping[str, Any], n: int) -> set[int]:
    raw = options.get("argnums", 0)
    nums = (raw,) if isinstance(raw, int) else tuple(raw)
    return {i % n if n else i for i in nums}


def plan(call: TransformedCall, names: list[str]) -> Plan:
    # JAX: imported when this runs, never on import
    import jax

    t = call.transform
    args, kwargs = tuple(call.args), dict(call.kwargs)
    flat, tree = jax.tree_util.tree_flatten_with_path((args, kwargs))
    diff = _argnums(call.options, len(args)) if t in (*GRAD_FAMILY, "nnx.grad") else set(range(len(args))) if t in ("jvp", "vjp") else {0} if t in FILTER_GRAD else set()
    traced: list[int] = []
    paths: list[str] = []
    leaves: list[tuple[str, str]] = []
    statics: list[tuple[str, str]] = []
    for k, (path, leaf) in enumerate(flat):
        where, index = path[0].idx, path[1]  # (args, kwargs)[where][index]
        name = (names[index.idx] if index.idx < len(names) else f"args[{index.idx}]") if where == 0 else str(index.key)
        text = name + jax.tree_util.keystr(tuple(path[2:]))
        tracer = isinstance(leaf, jax.core.Tracer)
        array = tracer or isinstance(leaf, jax.Array) or (hasattr(leaf, "dtype") and hasattr(leaf, "shape"))
        number = isinstance(leaf, (bool, int, float, complex))
        position = index.idx if where == 0 else -1
        if t in GRAD_FAMILY or t in ("jvp", "vjp"):
            take = position in diff or tracer
        elif t in FILTER_GRAD:
            take = tracer or (position in diff and array and jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact))
        else:  # vmap, filter_jit, nnx.jit: arrays are traced, Python numbers stay Python numbers
            take = array
        if take and not (array or number):
            take = False
        if take:
            traced.append(k)
            paths.append(text)
        if number and t in JIT_LIKE:  # static to equinox and nnx: a new value is a new trace
            statics.append((text, short_repr(leaf)))
        elif array or number:
            a = jax.typeof(leaf)
            leaves.append((text, type_str(a.dtype, a.shape, bool(getattr(a, "weak_type", False)))))
        else:
            statics.append((text, short_repr(leaf)))
    values = [leaf for _, leaf in flat]

    def rebuild(xs: list[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        full = list(values)
        for k, x in zip(traced, xs):
            full[k] = x
        a, kw = jax.tree_util.tree_unflatten(tree, full)
        return tuple(a), dict(kw)

    target = call.fn

    def fun(*xs: Any) -> Any:
        a, kw = rebuild(list(xs))
        if t == "vmap":
            return jax.vmap(target, **dict(call.options))(*a, **kw)
        return target(*a, **kw)

    abstract = []
    for k in traced:
        a = jax.typeof(values[k])
        abstract.append(jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=bool(getattr(a, "weak_type", False))))
    tracers = any(isinstance(x, jax.core.Tracer) for x in values)
    grad_params: tuple[str, ...] = ()
    if (t in GRAD_FAMILY and not call.options.get("allow_int", False) and not call.options.get("holomorphic", False)) or t in FILTER_GRAD:
        grad_params = tuple(names[i] for i in sorted(diff) if i < len(names))
    return Plan(fun, rebuild, tuple(abstract), None if tracers else tuple(values[k] for k in traced), tuple(paths), grad_params, Signature(tuple(leaves), tuple(statics)))


def _names(fn: Any, n: int) -> list[str]:
    user = user_function(fn)
    try:
        params = [p for p in inspect.signature(user if user is not None else fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i].name if i < len(params) else f"args[{i}]" for i in range(n)]


def _describe(fn: Any) -> tuple[str, Site | None]:
    user = user_function(fn)
    name = getattr(user, "__qualname__", None) or getattr(user, "__name__", None) or repr(fn)
    code = getattr(user, "__code__", None)
    defined = Site(shown_path(code.co_filename), def_line(code.co_filename, code.co_firstlineno)) if code is not None else None
    return name, defined


@dataclass(slots=True)
class TransformChecker:
    """Listens for transformed calls; findings go to `findings`."""

    max_traces: int
    selector: Selector = field(default_factory=Selector)
    originals: Mapping[str, Any] = field(default_factory=dict)  # transform name -> JAX's own function
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checked: int = 0
    monitors: dict[Any, tuple[Any, Monitor]] = field(default_factory=dict)
    _plans: dict[int, tuple[TransformedCall, Plan]] = field(default_factory=dict)  # until `after`
    waiting: tuple[TransformedCall, Plan] | None = None  # a filter_jit call whose trace JAX is about to make

    def check(self, call: TransformedCall) -> None:
        if call.transform == "jit":  # the jit hook checks jit traces on the jaxpr JAX compiles
            return
        name, defined = _describe(call.fn)
        site = Site(shown_path(call.site[0]), call.site[1]) if call.site[0] else defined
        entry = f"{site.path}:{site.line}" if site is not None else ""
        p = plan(call, _names(call.fn, len(call.args)))
        self._plans[id(call)] = (call, p)
        self.checked += 1
        key = (fn_key(call.fn), call.transform)
        held = self.monitors.get(key)
        if held is None:
            held = (call.fn, Monitor(name, max_traces=self.max_traces if call.transform in JIT_LIKE else _NEVER, selector=self.selector, grad_params=p.grad_params, defined=defined, retrace_at_def=call.transform in JIT_LIKE))
            self.monitors[key] = held
        monitor = held[1]
        monitor.grad_params = p.grad_params
        if call.transform == "filter_jit":  # checked on the jaxpr equinox's own jit traces (`traced`)
            self.waiting = (call, p)
            return
        if call.transform == "nnx.jit":  # the jit hook checks nnx's JitFn as the user's function
            return
        # JAX: imported when this runs, never on import
        import jax

        token = busy.set(True)
        try:
            closed = jax.make_jaxpr(p.fun)(*p.abstract)
        except Exception as e:
            found = self._failure(e, call, name, site)
        else:
            raised = self._transform_raises(call, p, name, site, _rules_program(call, p, closed)) if call.transform in DIFFERENTIATED else []
            if raised:  # the transform itself raises: that is the finding, not its symptoms
                monitor.grad_params = ()
            jdbg = getattr(closed.jaxpr, "debug_info", None)
            out_paths = tuple(getattr(jdbg, "result_paths", None) or ())
            program = Program(closed, p.in_paths, out_paths, p.fun, p.abstract)
            found = raised + monitor.observe(p.signature, lambda: program, site)
            if not raised and call.transform in ("grad", "value_and_grad") and not call.options.get("has_aux") and self.selector("STB410"):
                found += self._zero_gradients(closed, p, name)
        finally:
            busy.reset(token)
        self.findings.extend(f.refine(evidence={**f.evidence, "entry": entry, "transform": call.transform}) for f in found)

    def traced(self, closed: Any, in_paths: tuple[str, ...], out_paths: tuple[str, ...]) -> bool:
        """JAX traced a library function for jit while a `filter_jit` call was waiting: that
        trace is the call's, checked as the jit hook checks a plain `jit` (no second trace)."""
        if self.waiting is None:
            return False
        call, p = self.waiting
        self.waiting = None
        name, defined = _describe(call.fn)
        site = Site(shown_path(call.site[0]), call.site[1]) if call.site[0] else defined
        # equinox returns `(marker, dynamic_out, Static(static_out))`: the user's arrays are result[1]
        out_paths = tuple("result" + o[len("result[1]"):] if o.startswith("result[1]") else o for o in out_paths)
        monitor = self.monitors[(fn_key(call.fn), call.transform)][1]
        found = monitor.observe(p.signature, lambda: Program(closed, in_paths, out_paths), site, lambda: call_signature(tuple(call.args), _names(call.fn, len(call.args)), kwargs=dict(call.kwargs), numbers_static=True))
        entry = f"{site.path}:{site.line}" if site is not None else ""
        self.findings.extend(f.refine(evidence={**f.evidence, "entry": entry, "transform": call.transform}) for f in found)
        return True

    def after(self, call: TransformedCall, out: Any) -> None:
        """The call's result: where a differentiated call's first NaN or Inf came from."""
        if self.waiting is not None and self.waiting[0] is call:
            self.waiting = None  # equinox's cache held the trace already
        held = self._plans.pop(id(call), None)
        p = held[1] if held is not None and held[0] is call else None
        if p is None or call.transform not in DIFFERENTIATED or p.concrete is None or not self.selector("STB408"):
            return
        result = out[0] if call.transform == "vjp" and isinstance(out, tuple) else out  # vjp: the primal output
        # JAX: imported when this runs, never on import
        import jax

        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(result)):
            return  # called inside an outer trace (`jit(grad(f))`): no values yet
        kind = nonfinite(result)
        if not kind or nonfinite(p.concrete):
            return
        run = self._runner(call, p)
        token = busy.set(True)
        try:
            origin = nan_origin(run, p.concrete)
        finally:
            busy.reset(token)
        name, defined = _describe(call.fn)
        site = Site(shown_path(call.site[0]), call.site[1]) if call.site[0] else defined or Site("<unknown>", 1)
        entry = f"{site.path}:{site.line}"
        what = "outputs" if call.transform == "vjp" else "gradients"
        if origin is not None and origin.path and origin.line:
            at = Site(shown_path(origin.path), origin.line, origin.col)
            message = f"{origin.describe} made the first {origin.kind} here when `{call.transform}` ran on `{name}` with the arguments the test passed ({origin.phase} pass); it reaches the {what} and poisons every update that uses them"
            evidence = {"first_nonfinite": origin.describe.replace("`", ""), "equation": origin.equation, "transform": call.transform, "entry": entry}
            chains = tuple(tuple(replace(fr, path=shown_path(fr.path)) for fr in c) for c in origin.chains)
            detail = origin.primitive
        else:
            at = site
            message = f"`{call.transform}` of `{name}` returned {kind} for the arguments the test passed (all finite); every update that uses it is poisoned"
            evidence, chains, detail = {"transform": call.transform, "entry": entry}, (), name
        f = make_finding("STB408", site=at, message=message, help=_HELP_408, function=name, detail=detail, evidence=evidence)
        self.findings.append(f.refine(chains=chains, snippet=source_line(SourceSite(_absolute(at.path, origin), at.line)) if origin is not None and origin.path else f.snippet))

    def _runner(self, call: TransformedCall, p: Plan) -> Callable[..., Any]:
        t = call.transform
        original = self.originals.get(t)
        options = dict(call.options)
        if t == "jvp":
            tangents = options.pop("tangents", None)

            def run_jvp(*xs: Any) -> Any:
                a, _ = p.rebuild(list(xs))
                return original(call.fn, a, tangents, **options)  # type: ignore[misc]

            return run_jvp
        if t == "vjp":

            def run_vjp(*xs: Any) -> Any:
                a, _ = p.rebuild(list(xs))
                return original(call.fn, *a, **options)[0]  # type: ignore[misc]

            return run_vjp

        def run(*xs: Any) -> Any:
            a, kw = p.rebuild(list(xs))
            return original(call.fn, **options)(*a, **kw)  # type: ignore[misc]

        return run

    def _zero_gradients(self, closed: Any, p: Plan, name: str) -> list[Finding]:
        """STB410: a differentiated float leaf that the output uses only through primitives with
        no derivative (a comparison, rounding): its gradient is the constant zero, silently.
        Reported at the primitive that cuts it, as the traced stage does for an entry."""
        # JAX: imported when this runs, never on import
        import jax
        import jax.extend.core  # JAX: only where user code runs
        import jax.numpy as jnp  # JAX: only where user code runs

        floats = [k for k, (path, a) in enumerate(zip(p.in_paths, p.abstract)) if leaf_base(path) in p.grad_params and jnp.issubdtype(a.dtype, jnp.inexact)]
        if not floats:
            return []
        fun = jax.extend.core.jaxpr_as_fun(closed)

        def gradients(*xs: Any) -> Any:
            def f(*d: Any) -> Any:
                full = list(xs)
                for k, v in zip(floats, d):
                    full[k] = v
                outs = [o for o in fun(*full) if jnp.issubdtype(o.dtype, jnp.inexact)]
                return sum((jnp.sum(o) for o in outs), jnp.zeros((), outs[0].dtype if outs else jnp.float32))

            return jax.vjp(f, *[xs[k] for k in floats])[1](jnp.ones((), jnp.result_type(f(*[xs[k] for k in floats]))))

        try:
            grad = jax.make_jaxpr(gradients)(*p.abstract).jaxpr
        except Exception:  # the transform's own run reports what raises
            return []
        out: list[Finding] = []
        primal = closed.jaxpr
        for g, k in zip(grad.outvars, floats):
            chain = zero_gradient_cut(primal, grad, g, primal.invars[k])
            at = next((st for st in map(eqn_site, reversed(chain)) if st is not None), None)
            if at is None:
                continue
            f = make_finding("STB410", site=Site(shown_path(at.file), at.line, at.col), message=zero_gradient_message(p.in_paths[k], chain[-1]), help=ZERO_GRADIENT_HELP, function=name, detail=p.in_paths[k], evidence={"leaf": p.in_paths[k], "primitive": chain[-1].primitive.name})
            out.append(f.refine(snippet=source_line(SourceSite(at.file, at.line))))
        return out

    def _transform_raises(self, call: TransformedCall, p: Plan, name: str, site: Site | None, primal: Any = None) -> list[Finding]:
        """The transform traced abstractly, as the test's call will run it: a hazard JAX raises
        on under the transform only (a callback without a JVP rule...) at the user's line."""
        # JAX: imported when this runs, never on import
        import jax

        if self.originals.get(call.transform) is None:
            return []
        try:
            jax.eval_shape(self._runner(call, p), *p.abstract)
        except Exception as e:
            failure = classify(e)
            if failure.code == "STB402" and self.selector("STB402"):
                made = self._leaf_made(call, p, name, failure.kind)
                if made is not None:
                    return [made]
            if failure.code != "STB902" and failure.path is not None:
                return self._failure(e, call, name, site, primal)
        return []

    def _leaf_made(self, call: TransformedCall, p: Plan, name: str, kind: str) -> Finding | None:
        """`grad` rejected a bool/int leaf of the differentiated arguments: STB402 where the
        user's code makes that leaf (`{"d": 1}` in the helper the test called), found from the
        test's line (`traced.source.leaf_origin`); None where no one place makes it."""
        # JAX: imported when this runs, never on import
        import jax.numpy as jnp

        for path, a in zip(p.in_paths, p.abstract):
            if leaf_base(path) not in p.grad_params or jnp.issubdtype(a.dtype, jnp.inexact):
                continue
            made = leaf_origin(path, str(a.dtype), call.site[0], call.site[1], module_namespace(call.site[0])) if call.site[0] else None
            if made is None:
                return None
            return make_finding(
                "STB402",
                site=Site(shown_path(made.file), made.line, made.col),
                message=f"the {a.dtype} leaf `{path}` is made here and the test's `{call.transform}` of `{name}` differentiates it; JAX raises `{kind}` (grad requires real- or complex-valued inputs)",
                help=HELP_402,
                function=made.function,
                detail=path,
                evidence={"dtype": str(a.dtype), "leaf": path},
            ).refine(severity="error")
        return None

    def jit_failed(self, e: Exception, fn: Any) -> None:
        """JAX raised while tracing the user's function for `jit` (the jit hook): the hazard at the
        user's line, even when the test expects the error (`pytest.raises`). An error the table
        does not know gives nothing here (it is the user's own, or the test's failure report)."""
        failure = classify(e)
        if failure.code == "STB902" or failure.path is None:
            return
        name, defined = _describe(fn)
        call = TransformedCall(fn=fn, transform="jit", options={}, args=(), kwargs={}, site=user_site())
        site = Site(shown_path(call.site[0]), call.site[1]) if call.site[0] else defined
        entry = f"{site.path}:{site.line}" if site is not None else ""
        for f in self._failure(e, call, name, site):  # an inner jit's error reaches every outer jit's trace: once
            if not any(g.code == f.code and g.path == f.path and g.span.line == f.span.line for g in self.findings):
                self.findings.append(f.refine(evidence={**f.evidence, "entry": entry, "transform": "jit"}))

    def _failure(self, e: Exception, call: TransformedCall, name: str, site: Site | None, primal: Any = None) -> list[Finding]:
        """The trace raised: the hazard JAX raises on (STB101...), at the user's line; where no
        frame of the user's is in the traceback (`vmap` of a jitted function that rejects a
        batched static argument), at the user's line that applied the transform. With the
        function's `primal` program, a custom rule's mistake is placed as the traced stage places
        it: STB405 at the rule's `return`, STB407 at the rule's line that reaches the callback."""
        failure = classify(e)
        if primal is not None and failure.code in ("STB405", "STB407"):
            failure = _in_rule(failure, e, primal)
        at = site or Site("<unknown>", 1)
        if failure.code == "STB902" or (failure.path is None and site is None) or (failure.path is not None and failure.line is None):
            return [self._analysis_error(e, name, at)] if self.selector("STB902") else []
        if not self.selector(failure.code):
            return []
        where = Site(shown_path(failure.path), failure.line) if failure.path is not None and failure.line is not None else at
        f = make_finding(
            failure.code,
            site=where,
            message=f"JAX raises `{failure.kind}` here when the test calls `{call.transform}` of `{name}` ({failure.reason}): {failure.message[:200]}",
            help=f"`stabcheck explain {failure.code}` shows the pattern and its fix",
            function=name,
            detail=f"{failure.kind}:{failure.reason}",
            evidence={"error": f"{failure.kind}: {failure.message[:300]}"},
        )
        chains = tuple(tuple(replace(fr, path=shown_path(fr.path)) for fr in c) for c in failure.chains)
        return [f.refine(severity="error", chains=chains, snippet=source_line(SourceSite(failure.path or call.site[0], failure.line or call.site[1])))]

    def _analysis_error(self, e: Exception, name: str, site: Site) -> Finding:
        text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return make_finding(
            "STB902",
            site=site,
            message=f"stabcheck could not trace `{name}` for its checks ({text}); this signature was not checked",
            help="make the function traceable with abstract inputs of the same shapes and dtypes",
            function=name,
            detail=type(e).__name__,
            evidence={"error": text},
        )


def nnx_output_path(path: str) -> str:
    """A result path of the function `nnx.jit` traces, named after the user function's own: flax
    returns `(args_out, kwargs_out, out)` (the graph states written back, then the output), so
    `result[2][1]` is the user's `result[1]` and `result[0][0]...` the first argument's state."""
    for prefix, name in (("result[2]", "result"), ("result[0]", "args"), ("result[1]", "kwargs")):
        if path.startswith(prefix):
            return name + path[len(prefix):]
    return path


def _rules_program(call: TransformedCall, p: Plan, closed: Any) -> Any:
    """The program whose custom rules a failure is placed in: the traced function's own, or, for
    a transform of a transformed function (`jvp(grad(f))`, whose program has the rules applied
    already), the user function's under it."""
    if not is_transformed(call.fn) or custom_rule_defs(closed):
        return closed
    # JAX: imported when this runs, never on import
    import jax

    try:
        return jax.make_jaxpr(user_function(call.fn))(*p.abstract)
    except Exception:  # the failure then stays at the frame that raised
        return closed


def _in_rule(failure: Any, e: Exception, primal: Any) -> Any:
    """`failure` moved into the custom rule the primal program calls (see `_failure`)."""
    if failure.code == "STB405":
        rule = next((r for r in map(custom_rule_def, iter_eqns(primal.jaxpr)) if r is not None), None)
        at = rule_return_site(rule) if rule is not None else None
    else:
        at = in_custom_rule(exception_site(e), custom_rule_defs(primal))
    return replace(failure, path=at.file, line=at.line) if at is not None else failure


def _absolute(shown: str, origin: Any) -> str:
    return origin.path if origin is not None and origin.path else shown


__all__ = ["DIFFERENTIATED", "JIT_LIKE", "Plan", "TransformChecker", "nnx_output_path", "plan"]
