"""Observe every trace JAX makes for `jit`, and every other transformed call (`runtime._intercept`),
without editing user code (the pytest plugin).

JAX 0.10 traces a jitted function in `jax._src.pjit._trace_for_jit(fun, jit_info, mesh,
debug_info, avals, args, kwargs)`, once per new signature (cache hits never reach Python); it
returns the `ClosedJaxpr` it built. `Collector.install()` wraps that function, so every
user-defined function traced for `jit` (including inner jits and `.lower()`/`.trace()`) is
checked once per signature, on the very jaxpr JAX compiles. Functions defined in JAX, the
standard library or installed packages are skipped. Where the hook point is missing (another
JAX version) `install()` returns False and nothing is patched. Each new transformed call (`jit`
included) goes to `listeners` as a `TransformedCall`. A trace that raises is told to the
transform checker (its hazard at the user's line), and while a user function is traced for
`jit`, JAX's narrowing of an explicitly requested dtype is STB301 at the user's request.
"""

from __future__ import annotations

import contextvars
import os
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stabcheck.confirm.retrace import CallSig, call_signature, jit_build_site
from stabcheck.finding import Finding
from stabcheck.runtime._calls import Listeners, TransformedCall
from stabcheck.runtime._intercept import Interceptor, given_by_user, outer_call, user_site
from stabcheck.runtime._monitor import Monitor, Program, Selector, Site, busy, caller_site, make_finding
from stabcheck.runtime._signature import Signature, short_repr, type_str
from stabcheck.runtime._transformed import TransformChecker, nnx_output_path
from stabcheck.traced.checks import shown_path, source_line, truncated_dtype_text
from stabcheck.traced.source import Site as SourceSite, def_line, is_internal, is_library


# the user function whose trace for `jit` is running (a dtype narrowed in it is its STB301)
_tracing: contextvars.ContextVar[Any] = contextvars.ContextVar("stabcheck_tracing_jit", default=None)


@dataclass(slots=True)
class Collector:
    """Findings of every jitted user function traced while installed."""

    max_traces: int = 4
    selector: Selector = field(default_factory=Selector)
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    traces: int = 0
    listeners: Listeners = field(default_factory=Listeners)
    transforms: list[str] = field(default_factory=list)  # the transforms wrapped besides jit
    checker: TransformChecker | None = None  # the checks of the transformed calls other than jit
    _interceptor: Interceptor | None = None
    _monitors: dict[int, tuple[Any, Monitor]] = field(default_factory=dict)
    _original: Callable[..., Any] | None = None
    _narrowing: Callable[..., Any] | None = None  # JAX's dtype narrowing, while wrapped
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> bool:
        try:
            # JAX: imported when this runs, never on import
            from jax._src import pjit
        except ImportError:
            return False
        original = getattr(pjit, "_trace_for_jit", None)
        if original is None or self._original is not None:
            return False
        self._original = original

        def _trace_for_jit(fun: Any, ji: Any, ctx_mesh: Any, dbg: Any, avals: Any, args: Any, kwargs: Any) -> Any:
            if busy.get():
                return original(fun, ji, ctx_mesh, dbg, avals, args, kwargs)
            self._jit_call(fun, ji, args, kwargs)
            token = outer_call.set((fun, tuple(args), dict(kwargs)))  # `jit(grad(f))`: grad is told these arguments
            tracing = _tracing.set(fun)
            try:
                p = original(fun, ji, ctx_mesh, dbg, avals, args, kwargs)
            except Exception as e:
                self._failed(fun, e)
                raise
            finally:
                _tracing.reset(tracing)
                outer_call.reset(token)
            if not busy.get():
                try:
                    self.observe(fun, ji, dbg, avals, args, kwargs, p)
                except Exception as e:  # never break the user's test
                    self.errors.append(f"{type(e).__name__}: {e}")
            return p

        _trace_for_jit.__wrapped__ = original  # type: ignore[attr-defined]
        pjit._trace_for_jit = _trace_for_jit
        self._watch_truncation()
        self._interceptor = Interceptor(self.listeners.emit, self.errors)
        self.checker = TransformChecker(self.max_traces, self.selector, self._interceptor.originals, errors=self.errors)
        self.listeners.callbacks.insert(0, self.checker.check)
        self._interceptor.after = self.checker.after
        try:
            self.transforms = self._interceptor.install()
        except Exception as e:  # jit is still observed; the session goes on
            self._interceptor.uninstall()
            self.errors.append(f"{type(e).__name__}: {e}")
        return True

    def uninstall(self) -> None:
        if self._original is None:
            return
        # JAX: imported when this runs, never on import
        from jax._src import pjit

        pjit._trace_for_jit = self._original
        self._original = None
        if self._narrowing is not None:
            from jax._src import dtypes  # JAX: imported when this runs, never on import

            dtypes._maybe_canonicalize_explicit_dtype = self._narrowing
            self._narrowing = None
        if self._interceptor is not None:
            self._interceptor.uninstall()
            self._interceptor = None

    def _jit_call(self, fun: Any, ji: Any, args: Any, kwargs: Any) -> None:
        """Tell the listeners of a user function traced for `jit` (once per signature)."""
        try:
            if self._interceptor is None or not given_by_user(fun):
                return
            self._interceptor.seen(None, fun, "jit", _jit_options(ji), tuple(args), dict(kwargs))
        except Exception as e:  # never break the user's test
            self.errors.append(f"{type(e).__name__}: {e}")

    def _watch_truncation(self) -> None:
        """STB301 where a user function traced for `jit` asks for a dtype JAX silently narrows
        (`jnp.zeros(n, dtype=jnp.float64)` with `jax_enable_x64` off): JAX's
        `dtypes._maybe_canonicalize_explicit_dtype` is wrapped, so the user's warnings are left
        as they are. Where that function is missing (another JAX version) nothing is wrapped."""
        # JAX: imported when this runs, never on import
        from jax._src import dtypes

        original = getattr(dtypes, "_maybe_canonicalize_explicit_dtype", None)
        if original is None:
            return
        self._narrowing = original

        def _maybe_canonicalize_explicit_dtype(dtype: Any, *rest: Any, **kw: Any) -> Any:
            out = original(dtype, *rest, **kw)
            fun = _tracing.get()
            if fun is not None and not busy.get():
                try:
                    if out != dtype:
                        self._truncated(fun, dtype, out, rest[0] if rest else kw.get("fun_name", ""))
                except Exception as e:  # never break the user's test
                    self.errors.append(f"{type(e).__name__}: {e}")
            return out

        _maybe_canonicalize_explicit_dtype.__wrapped__ = original  # type: ignore[attr-defined]
        dtypes._maybe_canonicalize_explicit_dtype = _maybe_canonicalize_explicit_dtype

    def _truncated(self, fun: Any, asked: Any, got: Any, where: str) -> None:
        file, line = user_site()
        if not file:
            return
        asked_name, got_name = getattr(asked, "name", str(asked)), getattr(got, "name", str(got))
        message, help = truncated_dtype_text(asked_name, got_name, where)
        name = getattr(fun, "__qualname__", None) or getattr(fun, "__name__", "") or repr(fun)
        if not self.selector("STB301"):
            return
        f = make_finding("STB301", site=Site(shown_path(file), line), message=message, help=help, function=name, detail=asked_name, evidence={"asked": asked_name, "got": got_name, "transform": "jit"})
        with self._lock:
            self.findings.append(f.refine(snippet=source_line(SourceSite(file, line))))

    def _failed(self, fun: Any, e: Exception) -> None:
        """The trace of a user function for `jit` raised: its hazard, even under `pytest.raises`."""
        if busy.get() or self.checker is None or not given_by_user(fun):
            return
        token = busy.set(True)
        try:
            self.checker.jit_failed(e, fun)
        except Exception as err:  # never break the user's test
            self.errors.append(f"{type(err).__name__}: {err}")
        finally:
            busy.reset(token)

    def observe(self, fun: Any, ji: Any, dbg: Any, avals: Any, args: Any, kwargs: Any, params: Any) -> None:
        name, file, line = _source(getattr(ji, "fun_sourceinfo", "") or "")
        if not file or is_internal(file) or is_library(file):
            # `eqx.filter_jit(f)`'s own trace, not a jnp function jitted inside it (those finish first)
            if self.checker is not None and self.checker.waiting is not None and file.endswith(_EQX_JIT):
                closed = params.params["jaxpr"]
                self.checker.traced(closed, tuple(getattr(dbg, "arg_names", None) or ()), tuple(getattr(getattr(closed.jaxpr, "debug_info", None), "result_paths", None) or ()))
            return
        # a bound method (`jax.jit(self._apply)`) is one function for every object it is bound to
        owner = fun.__self__ if isinstance(fun, types.MethodType) else None
        key = fun.__func__ if owner is not None else fun
        with self._lock:
            self.traces += 1
            entry = self._monitors.get(id(key))
            if entry is None or entry[0] is not key:
                defined = Site(shown_path(file), def_line(file, line))  # the `def`, not its first decorator
                entry = (key, Monitor(getattr(fun, "__qualname__", name) or name, max_traces=self.max_traces, selector=self.selector, defined=defined, retrace_at_def=True, carry_drift=True))
                self._monitors[id(key)] = entry
            monitor = entry[1]
        sig = _signature(ji, dbg, avals, args, kwargs)
        if owner is not None and sig in monitor.records:  # the same types, a new jitted object
            found = monitor.traced_again(sig, _jit_built(owner, key, monitor), _per_object(owner, key))
            with self._lock:
                self.findings.extend(f.refine(evidence={**f.evidence, "transform": "jit"}) for f in found)
            return
        closed = params.params["jaxpr"]
        jdbg = getattr(closed.jaxpr, "debug_info", None)
        in_paths = tuple(getattr(dbg, "arg_names", None) or ())
        out_paths = tuple(getattr(jdbg, "result_paths", None) or ())
        if type(fun).__module__.startswith("flax.nnx"):  # nnx.jit's JitFn: the user's output is result[2]
            out_paths = tuple(map(nnx_output_path, out_paths))
        program = Program(closed, in_paths, out_paths, *_dynamic(fun, ji, args, kwargs))
        site = caller_site()
        found = monitor.observe(sig, lambda: program, site, lambda: _call_signature(ji, args, kwargs))
        entry = f"{site.path}:{site.line}" if site is not None else ""
        with self._lock:
            self.findings.extend(f.refine(evidence={**f.evidence, "entry": entry, "transform": "jit"}) for f in found)

    def all_findings(self) -> list[Finding]:
        """The jit hook's findings and the other transforms', one per (code, place, message)."""
        out: dict[tuple[str, str, int, int, str], Finding] = {}
        for f in [*self.findings, *(self.checker.findings if self.checker is not None else ())]:
            out.setdefault((f.code, f.path, f.span.line, f.span.col, f.message), f)
        return list(out.values())

    def count(self) -> tuple[int, int]:
        """How many findings the jit hook and the other transforms have made so far."""
        return len(self.findings), len(self.checker.findings) if self.checker is not None else 0

    def since(self, count: tuple[int, int]) -> list[Finding]:
        """The findings made after `count()` returned `count`."""
        return [*self.findings[count[0]:], *(self.checker.findings[count[1]:] if self.checker is not None else ())]

    def knows(self, code: str, path: str, line: int) -> bool:
        """A finding of `code` at path:line was already made (a test's JAX error adds nothing new)."""
        return any(f.code == code and f.path == path and f.span.line == line for f in self.all_findings())


_EQX_JIT = os.path.join("equinox", "_jit.py")  # where `eqx.filter_jit` jits the user's function


def _source(info: str) -> tuple[str, str, int]:
    """`'f at /path/mod.py:12'` -> ('f', '/path/mod.py', 12)."""
    name, _, where = info.rpartition(" at ")
    file, _, line = where.rpartition(":")
    if not name or not file or not line.isdigit():
        return "", "", 0
    return name, file, int(line)


_JIT_DEFAULTS = {"static_argnums": (), "static_argnames": (), "donate_argnums": (), "donate_argnames": (), "keep_unused": False, "inline": False, "device": None, "backend": None}


def _jit_options(ji: Any) -> dict[str, Any]:
    """The options of a `jit` (as JAX normalized them: `static_argnames` implies its argnums)."""
    out: dict[str, Any] = {}
    for name, default in _JIT_DEFAULTS.items():
        value = getattr(ji, name, default)
        if value != default and value is not None:
            out[name] = value
    return out


def _jit_built(owner: Any, method: Any, monitor: Monitor) -> Site:
    """The `jax.jit(self.<method>)` call in the object's class, else the method's `def`."""
    where = jit_build_site(type(owner), method.__name__)
    if where is not None:
        return Site(shown_path(where.file), where.line)
    return monitor.defined or Site("<unknown>", 1)


def _per_object(owner: Any, method: Any) -> str:
    cls = type(owner).__qualname__
    return f"`{method.__qualname__}` is a bound method jitted once per `{cls}` object (`jax.jit(self.{method.__name__})`), so every new `{cls}` traces and compiles it again"


def _call_signature(ji: Any, args: Any, kwargs: Any) -> CallSig:
    """The real arguments of a jit trace by path, with the dataclass field each lies in."""
    sig = getattr(ji, "fun_signature", None)
    pos = [p.name for p in sig.parameters.values()] if sig is not None else []
    return call_signature(tuple(args), pos, tuple(getattr(ji, "static_argnums", ()) or ()), dict(kwargs), tuple(getattr(ji, "static_argnames", ()) or ()))


def _dynamic(fun: Any, ji: Any, args: Any, kwargs: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """`fun` as a function of the arguments `jit` traces (the static ones held at their values),
    and those arguments: (call, (dynamic positional args, dynamic keyword args))."""
    static = set(getattr(ji, "static_argnums", ()) or ())
    names = set(getattr(ji, "static_argnames", ()) or ())
    pos = [i for i in range(len(args)) if i not in static]

    def call(dyn_args: tuple[Any, ...], dyn_kwargs: dict[str, Any]) -> Any:
        full = list(args)
        for i, v in zip(pos, dyn_args):
            full[i] = v
        return fun(*full, **{**kwargs, **dyn_kwargs})

    return call, (tuple(args[i] for i in pos), {k: v for k, v in kwargs.items() if k not in names})


def _signature(ji: Any, dbg: Any, avals: Any, args: Any, kwargs: Any) -> Signature:
    names = tuple(getattr(dbg, "arg_names", None) or ())
    leaves = tuple(
        (names[i] if i < len(names) else f"args[{i}]", type_str(a.dtype, a.shape, bool(getattr(a, "weak_type", False))))
        for i, a in enumerate(avals)
    )
    statics: list[tuple[str, str]] = []
    sig = getattr(ji, "fun_signature", None)
    pos = [p.name for p in sig.parameters.values()] if sig is not None else []
    for i in getattr(ji, "static_argnums", ()) or ():
        if i < len(args):
            statics.append((pos[i] if i < len(pos) else f"args[{i}]", short_repr(args[i])))
    for k in getattr(ji, "static_argnames", ()) or ():
        if k in kwargs:
            statics.append((k, short_repr(kwargs[k])))
    return Signature(leaves, tuple(statics))


__all__ = ["Collector"]
