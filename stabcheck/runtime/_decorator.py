"""`@stabcheck.stable`: check a function once per new abstract signature, at the call.

Two ways to notice a new signature:

* a `jax.jit`-ed function (either `stable(jax.jit(f))` or `@stable` over `@jax.jit`): JAX's own
  compile cache is probed (`_cache_size()`, a C++ counter) before and after the call, so a cache
  hit costs two counter reads and nothing else; a miss is checked on the jaxpr JAX just built
  (`f.trace(...)`, served from JAX's trace cache);
* anything else (a plain function, `jax.jit(stable(f))` at trace time, `eqx.filter_jit`): the
  arguments' abstract key (pytree structure + shape/dtype/weak type per leaf) is looked up in a
  set, and a new one is traced abstractly with `jax.make_jaxpr`.

The user's call always runs first and its result or exception is returned or raised unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

from stabcheck.runtime._modes import Mode, check_mode, emit, resolve
from stabcheck.runtime._monitor import Monitor, Program, Selector, Site, caller_site
from stabcheck.runtime._signature import is_array_leaf, leaf_key, named_leaves, signature_of, static_scalar_key
from stabcheck.traced.checks import shown_path
from stabcheck.traced.entries import is_filter_jit, is_jitted

F = TypeVar("F", bound=Callable[..., Any])
_MONITOR_ATTR = "__stabcheck_monitor__"


@overload
def stable(fn: F, /) -> F: ...
@overload
def stable(
    *,
    mode: Mode | None = None,
    max_traces: int = 1,
    check_grad: bool | int | Sequence[int] = False,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> Callable[[F], F]: ...
def stable(
    fn: Any = None,
    /,
    *,
    mode: Mode | None = None,
    max_traces: int = 1,
    check_grad: bool | int | Sequence[int] = False,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> Any:
    """Check `fn` for type instability once per new abstract signature it is called with.

    mode: "warn" (StabilityWarning), "error" (StabilityError) or "off" (return `fn` itself);
      None follows `with stabcheck.mode(...)`, `stabcheck.set_mode`, `STABCHECK_MODE`, "warn".
    max_traces: more signatures than this is a retrace (STB504), naming the leaf that changed.
    check_grad: also check the arguments `jax.grad` would differentiate (True: argument 0; or
      argnums): bool/int leaves (STB402) and gradients of another dtype (STB406).
    select/ignore: codes, prefixes or slugs, as in the configuration.
    """
    if mode is not None:
        check_mode(mode)
    if not isinstance(max_traces, int) or isinstance(max_traces, bool) or max_traces < 1:
        raise ValueError(f"invalid value for `max_traces`: {max_traces!r}; expected an integer >= 1")
    argnums = _argnums(check_grad)
    selector = Selector.of(select, ignore)

    def decorate(f: Any) -> Any:
        if resolve(mode) == "off":
            return f
        if isinstance(f, (staticmethod, classmethod)):  # keep the descriptor outermost
            return type(f)(decorate(f.__func__))
        if not callable(f):
            raise TypeError(f"@stable expects a function, got {type(f).__name__}")
        monitor = Monitor(_name(f), max_traces=max_traces, selector=selector, grad_params=_grad_params(f, argnums), defined=_defined(f))
        wrapper = _jitted(f, monitor, mode) if is_jitted(f) else _generic(f, monitor, mode)
        return _finish(wrapper, f, monitor)

    return decorate if fn is None else decorate(fn)


def _argnums(check_grad: bool | int | Sequence[int]) -> tuple[int, ...]:
    if check_grad is True:
        return (0,)
    if check_grad is False or check_grad is None:
        return ()
    if isinstance(check_grad, int):
        return (check_grad,)
    if isinstance(check_grad, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in check_grad):
        return tuple(check_grad)
    raise ValueError(f"invalid value for `check_grad`: {check_grad!r}; expected a bool, an argnum or a tuple of argnums")


def _grad_params(f: Callable[..., Any], argnums: tuple[int, ...]) -> tuple[str, ...]:
    if not argnums:
        return ()
    try:
        params = [p.name for p in inspect.signature(f).parameters.values()]
    except (TypeError, ValueError):
        params = []
    return tuple(params[i] if i < len(params) else f"args[{i}]" for i in argnums)


def _name(f: Any) -> str:
    inner = inspect.unwrap(f) if hasattr(f, "__wrapped__") else f
    return str(getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or type(inner).__name__)


def _defined(f: Any) -> Site | None:
    try:
        inner = inspect.unwrap(f)
    except ValueError:
        inner = f
    code = getattr(inner, "__code__", None)
    return Site(shown_path(code.co_filename), code.co_firstlineno) if code is not None else None


def _finish(wrapper: Callable[..., Any], f: Any, monitor: Monitor) -> Callable[..., Any]:
    functools.update_wrapper(wrapper, f, updated=())
    extra = {k: v for k, v in getattr(f, "__dict__", {}).items() if k not in ("_fun", "_jit_info", "__wrapped__")}
    wrapper.__dict__.update(extra)
    wrapper.__wrapped__ = f  # type: ignore[attr-defined]
    setattr(wrapper, _MONITOR_ATTR, monitor)
    return wrapper


def _jitted(f: Any, monitor: Monitor, mode: Mode | None) -> Callable[..., Any]:
    size = f._cache_size
    info = getattr(f, "_jit_info", None)
    static_argnums = tuple(getattr(info, "static_argnums", ()) or ())
    static_argnames = tuple(getattr(info, "static_argnames", ()) or ())
    target = getattr(f, "_fun", None) or inspect.unwrap(f)
    ctx, top = _trace_context()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = size()
        out = f(*args, **kwargs)
        if size() == before and ctx.trace is top and monitor.primed:
            return out
        how = resolve(mode)
        if how == "off":
            return out
        sig = signature_of(target, args, kwargs, static_argnums=static_argnums, static_argnames=static_argnames)

        def program() -> Program:
            closed = f.trace(*args, **kwargs).jaxpr
            dbg = getattr(closed.jaxpr, "debug_info", None)
            in_paths = tuple(getattr(dbg, "arg_names", None) or ())
            out_paths = tuple(getattr(dbg, "result_paths", None) or ())
            return Program(closed, in_paths, out_paths)

        emit(monitor.observe(sig, program, caller_site()), how)
        return out

    return wrapper


def _trace_context() -> tuple[Any, Any]:
    """(ctx, top) such that `ctx.trace is top` means 'not inside a JAX trace', cheaply. Under an
    outer trace a jitted call never touches its compile cache, so the cache probe alone cannot
    see a new signature there."""
    # JAX: imported when this runs, never on import
    from jax._src import core

    ctx, eval_trace = getattr(core, "trace_ctx", None), getattr(core, "eval_trace", None)
    if ctx is not None and eval_trace is not None and hasattr(ctx, "trace"):
        return ctx, eval_trace
    top = object()

    class _Clean:
        @property
        def trace(self) -> Any:
            return top if core.trace_state_clean() else None

    return _Clean(), top


def _generic(f: Any, monitor: Monitor, mode: Mode | None) -> Callable[..., Any]:
    # JAX: imported when this runs, never on import
    import jax

    flatten = jax.tree_util.tree_flatten
    static_scalars = is_filter_jit(f)
    key_of = static_scalar_key if static_scalars else leaf_key

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = f(*args, **kwargs)
        leaves, tree = flatten((args, kwargs))
        try:
            key = (tree, tuple(map(key_of, leaves)))
            if key in monitor.keys:
                return out
        except TypeError:
            key = None
        how = resolve(mode)
        if how == "off":
            return out
        if key is not None:
            monitor.keys.add(key)
        sig = signature_of(f, args, kwargs, static_scalars=static_scalars)
        emit(monitor.observe(sig, lambda: _trace_plain(f, args, kwargs), caller_site()), how)
        return out

    return wrapper


def _trace_plain(f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Program:
    """Trace `f` with its array leaves abstract and everything else (Python scalars included)
    held at the call's values."""
    # JAX: imported when this runs, never on import
    import jax

    leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
    names = [n for n, _ in named_leaves(f, args, kwargs)]
    dyn = [i for i, leaf in enumerate(leaves) if is_array_leaf(leaf)]

    def flat(*values: Any) -> Any:
        full = list(leaves)
        for i, v in zip(dyn, values):
            full[i] = v
        a, k = jax.tree_util.tree_unflatten(tree, full)
        return f(*a, **k)

    specs = [_spec(leaves[i]) for i in dyn]
    closed, shape = jax.make_jaxpr(flat, return_shape=True)(*specs)
    out_paths = tuple("result" + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(shape)[0])
    in_paths = tuple(names[i] if i < len(names) else f"args[{i}]" for i in dyn)
    return Program(closed, in_paths, out_paths, flat, tuple(specs))


def _spec(x: Any) -> Any:
    # JAX: imported when this runs, never on import
    import jax

    aval = getattr(x, "aval", None)
    weak = bool(getattr(aval, "weak_type", False))
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, weak_type=weak)
