"""See every call a test makes through a JAX transform: one `TransformedCall` per new
(function, transform, options, abstract signature), with the arguments the test really passed.

`jit` is seen where JAX traces it (`runtime._hook` wraps `jax._src.pjit._trace_for_jit`, which
runs once per new signature). The other transforms have no such single choke point in JAX 0.10,
and their arguments are gone by the time anything below them runs, so `Interceptor.install()`
wraps the public functions themselves: `jax.grad`, `jax.value_and_grad`, `jax.vmap`,
`jax.jacfwd`, `jax.jacrev`, `jax.hessian`, `jax.jvp`, `jax.vjp` and, where installed,
`flax.nnx.jit` and `flax.nnx.grad`; equinox's `filter_jit`/`filter_grad`/`filter_value_and_grad` return Modules, so
the `__call__` of their classes is wrapped instead (a filtered function keeps its type, fields
and `.lower`). The plugin
configures before pytest imports the test modules, so `import jax; jax.grad(...)` and
`from jax import grad` in a test module both get the wrapper; names a user module bound before
that (a conftest's `from jax import grad`) are rebound too, and everything is put back by
`uninstall()`. flax and equinox are wrapped when the session imports them (`_AfterImport`, a
post-import hook), never imported by the plugin: a session that does not use them does not pay
for their import.

Only transforms applied from the user's code to a user function are seen: the ones JAX,
equinox or flax apply internally (`filter_grad` calls `jax.grad`) are not, so a nested call is
seen once per layer the user wrote. Where JAX returns a plain function (`jax.grad(f)`) the
wrapper returns a plain function too, with the same name and `__wrapped__` chain. When a call is nested in another transform's trace
(`jax.grad(loss)` inside a jitted step) its arguments are tracers; for `jax.jit(jax.grad(loss))`
the inner call gets the arguments given to the jitted function. Nothing here ever raises into the
user's test: an error of stabcheck's is recorded in `errors`.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.util
import inspect
import os
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stabcheck.runtime._calls import TransformedCall
from stabcheck.runtime._monitor import busy
from stabcheck.traced.source import is_internal, is_library

# (module, attribute, transform name, kind): "returns" gives a callable, "calls" calls at once
_JAX_TARGETS = (
    ("jax", "grad", "grad", "returns"),
    ("jax", "value_and_grad", "value_and_grad", "returns"),
    ("jax", "vmap", "vmap", "returns"),
    ("jax", "jacfwd", "jacfwd", "returns"),
    ("jax", "jacrev", "jacrev", "returns"),
    ("jax", "hessian", "hessian", "returns"),
    ("jax", "jvp", "jvp", "calls"),
    ("jax", "vjp", "vjp", "calls"),
    ("flax.nnx", "jit", "nnx.jit", "returns"),
    ("flax.nnx", "grad", "nnx.grad", "returns"),
)

# the jitted callable whose trace is running, with its real arguments (`jit(grad(f))`)
outer_call: contextvars.ContextVar[tuple[Any, tuple[Any, ...], dict[str, Any]] | None] = contextvars.ContextVar("stabcheck_outer_call", default=None)


@functools.lru_cache(maxsize=4096)
def _is_user_file(filename: str) -> bool:
    """Not JAX's, stabcheck's, the standard library's or an installed package's (cached: asked
    on every transform applied and every equinox call)."""
    return bool(filename) and not is_internal(filename) and not is_library(filename)


def user_function(fun: Any) -> Any:
    """The user's function under partials and `functools.wraps` layers, or None when it is
    defined in JAX, the standard library, an installed package or stabcheck."""
    seen = 0
    while seen < 50:
        seen += 1
        if isinstance(fun, functools.partial):
            fun = fun.func
        elif is_transformed(fun):
            fun = fun.stabcheck_fn
        elif getattr(fun, "__wrapped__", None) is not None:
            fun = fun.__wrapped__
        else:
            break
    if isinstance(fun, types.MethodType):
        fun = fun.__func__
    code = getattr(fun, "__code__", None)
    if code is None:
        call = getattr(type(fun), "__call__", None)
        code = getattr(call, "__code__", None)
    return fun if _is_user_file(getattr(code, "co_filename", "")) else None


def _from_user(depth: int) -> bool:
    """The frame `depth` above the caller is the user's code (not JAX's, a library's, stabcheck's)."""
    return _is_user_file(sys._getframe(depth + 1).f_code.co_filename)


def _leaf_key(x: Any) -> Any:
    aval = getattr(x, "aval", None)
    if hasattr(x, "dtype") and hasattr(x, "shape"):
        weak = getattr(aval, "weak_type", getattr(x, "weak_type", False))
        return ("array", str(x.dtype), tuple(x.shape), bool(weak))
    if isinstance(x, (bool, int, float, complex)):
        return ("python", type(x).__name__)
    try:
        hash(x)
    except TypeError:
        return ("object", type(x).__qualname__, id(x))
    return ("static", type(x).__qualname__, x)


def abstract_key(args: tuple[Any, ...], kwargs: dict[str, Any], numbers_static: bool = False) -> Any:
    """What makes a call's signature: the tree, and per leaf dtype/shape/weak (arrays, tracers),
    the type (Python numbers; their value where the transform keeps them static, as
    `eqx.filter_jit` does) or the value (other hashable leaves)."""
    # JAX: imported when this runs, never on import
    import jax

    leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
    if numbers_static:
        return (tree, tuple(("static", type(x).__name__, x) if isinstance(x, (bool, int, float, complex)) else _leaf_key(x) for x in leaves))
    return (tree, tuple(_leaf_key(x) for x in leaves))


STATIC_NUMBERS = ("filter_jit", "nnx.jit")  # transforms that treat Python numbers as static


def fn_key(fun: Any) -> Any:
    """Identifies the callable given to a transform: a partial by its function and the abstract
    signature of its bound arguments, an inner transformed callable by what it transforms."""
    if isinstance(fun, functools.partial):
        return ("partial", fn_key(fun.func), abstract_key(fun.args, dict(fun.keywords)))
    if is_transformed(fun):
        return ("transformed", fn_key(fun.stabcheck_fn), fun.stabcheck_transform, _options_key(fun.stabcheck_options))
    return id(fun)


def given_by_user(fun: Any) -> bool:
    """`fun` itself (under partials) is the user's: a function of theirs, or one of their
    transforms (not a JAX or library function that merely `functools.wraps` one of theirs)."""
    while isinstance(fun, functools.partial):
        fun = fun.func
    if is_transformed(fun):
        return True
    if isinstance(fun, types.MethodType):
        fun = fun.__func__
    code = getattr(fun, "__code__", None) or getattr(getattr(type(fun), "__call__", None), "__code__", None)
    return _is_user_file(getattr(code, "co_filename", ""))


def user_site() -> tuple[str, int]:
    """(absolute file, line) of the innermost frame of the user's code on the stack."""
    frame: Any = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if _is_user_file(name) and "/_pytest/" not in name and "/pluggy/" not in name:
            return (os.path.abspath(name), frame.f_lineno)
        frame = frame.f_back
    return ("", 0)


def _options_key(options: dict[str, Any]) -> str:
    return repr(sorted(options.items(), key=lambda kv: kv[0]))


def is_transformed(x: Any) -> bool:
    """`x` is a callable that a wrapped transform returned (not a copy of its attributes)."""
    try:
        return getattr(x, "stabcheck_self", None) is x
    except Exception:
        return False


def _call_through(owner: Interceptor, holder: Any, fn: Any, transform: str, options: dict[str, Any], target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Tell `owner` of the call (when new), make it, tell `owner` its result."""
    __tracebackhide__ = True  # pytest shows the user's frames, not this one
    if busy.get():
        return target(*args, **kwargs)
    call = owner.seen(holder, fn, transform, options, args, kwargs)
    if not is_transformed(fn):
        return owner.told(call, target(*args, **kwargs))
    token = outer_call.set((fn, args, kwargs))  # `jacfwd(grad(f))`: grad is told these arguments
    try:
        return owner.told(call, target(*args, **kwargs))
    finally:
        outer_call.reset(token)


def _mark(x: Any, fn: Any, transform: str, options: dict[str, Any]) -> None:
    x.stabcheck_self = x
    x.stabcheck_fn = fn
    x.stabcheck_transform = transform
    x.stabcheck_options = options


def transformed_function(owner: Interceptor, out: Any, fn: Any, transform: str, options: dict[str, Any]) -> Any:
    """A plain function in place of the plain function JAX returned (`jax.grad(f)`): the same
    type, name, docstring and `__wrapped__` chain."""

    @functools.wraps(out)
    def transformed(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # pytest shows the user's frames, not this one
        return _call_through(owner, transformed, fn, transform, options, out, args, kwargs)

    _mark(transformed, fn, transform, options)
    return transformed


class Transformed:
    """In place of a transformed callable that is not a plain function (`nnx.jit`'s): every
    attribute is forwarded to it."""

    def __init__(self, owner: Interceptor, transformed: Any, fn: Any, transform: str, options: dict[str, Any]) -> None:
        functools.update_wrapper(self, transformed, updated=())
        self.__wrapped__ = transformed
        self._owner = owner
        _mark(self, fn, transform, options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # pytest shows the user's frames, not this one
        return _call_through(self._owner, self, self.stabcheck_fn, self.stabcheck_transform, self.stabcheck_options, self.__wrapped__, args, kwargs)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else types.MethodType(self, obj)

    def __getattr__(self, name: str) -> Any:  # `.lower`, `.trace`...
        if name.startswith("stabcheck_") or name in ("_owner", "__wrapped__"):
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


# equinox's transformed callables are Modules: their classes' `__call__` is wrapped instead, so
# that `eqx.filter_jit(f)` keeps its type, fields and `.lower`
_inside_equinox: contextvars.ContextVar[bool] = contextvars.ContextVar("stabcheck_inside_equinox", default=False)


def _equinox_targets() -> list[tuple[Any, str, Callable[[Any], tuple[Any, dict[str, Any]]]]]:
    """(class, transform, self -> (the user's function, the options)) for equinox's wrappers."""
    try:
        # equinox: optional; imported only with --stabcheck, when installed
        from equinox import _ad, _jit
    except Exception:
        return []

    def jit_info(w: Any) -> tuple[Any, dict[str, Any]]:
        donate = "all" if w.donate_first and w.donate_rest else "all-except-first" if w.donate_rest else ""
        return w.__wrapped__, ({"donate": donate} if donate else {})

    def grad_info(w: Any) -> tuple[Any, dict[str, Any]]:
        inner = w._fun_value_and_grad
        return inner._fun, {**({"has_aux": True} if w._has_aux else {}), **inner._gradkwargs}

    def vag_info(w: Any) -> tuple[Any, dict[str, Any]]:
        return w._fun, {**({"has_aux": True} if w._has_aux else {}), **w._gradkwargs}

    found = []
    for owner, name, transform, info in ((_jit, "_JitWrapper", "filter_jit", jit_info), (_ad, "_GradWrapper", "filter_grad", grad_info), (_ad, "_ValueAndGradWrapper", "filter_value_and_grad", vag_info)):
        cls = getattr(owner, name, None)
        if isinstance(cls, type) and isinstance(cls.__dict__.get("__call__"), types.FunctionType):
            found.append((cls, transform, info))
    return found


def _installed(name: str) -> bool:
    """The module can be imported (found without importing it; its parent package is imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then(name)` right after the session imports one of `names` (a post-import hook):
    finds the module's spec with the other finders and runs `then` after its loader executes it."""

    def __init__(self, names: set[str], then: Callable[[str], None]) -> None:
        self.names = set(names)
        self.then = then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.names:
            return None
        self.names.discard(fullname)  # once, and not for the look-up below
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if spec is None or not hasattr(loader, "exec_module"):
            return spec
        run, then = loader.exec_module, self.then

        def exec_module(module: Any) -> None:
            run(module)
            then(fullname)

        loader.exec_module = exec_module
        return spec


@dataclass(slots=True)
class Interceptor:
    """Wraps the public transforms while installed; `emit` is told of each new transformed call."""

    emit: Callable[[TransformedCall], None]
    errors: list[str] = field(default_factory=list)
    after: Callable[[TransformedCall, Any], None] | None = None  # told the result of each emitted call
    originals: dict[str, Any] = field(default_factory=dict)  # transform name -> the function wrapped
    _keys: set[Any] = field(default_factory=set)
    _alive: list[Any] = field(default_factory=list)
    _patched: list[tuple[Any, str, Any]] = field(default_factory=list)
    _finder: _AfterImport | None = None  # wraps flax/equinox when the session imports them
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- seeing calls --------------------------------------------------------------------------
    def seen(self, holder: Any, fn: Any, transform: str, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> TransformedCall | None:
        """Emit the call when (fn, transform, options, abstract signature) is new; the call emitted."""
        try:
            outer = outer_call.get()
            if outer is not None and outer[0] is holder:
                args, kwargs = outer[1], outer[2]  # `jit(grad(f))`: the jitted call's real arguments
            key = (fn_key(fn), transform, _options_key(options), abstract_key(args, dict(kwargs), transform in STATIC_NUMBERS))
            with self._lock:
                if key in self._keys:
                    return None
                self._keys.add(key)
                self._alive.append(fn)  # the ids in _keys stay this function's
            call = TransformedCall(fn=fn, transform=transform, options=dict(options), args=tuple(args), kwargs=dict(kwargs), site=user_site())
        except Exception as e:  # never break the user's test
            self.errors.append(f"{type(e).__name__}: {e}")
            return None
        self.emit(call)
        return call

    def told(self, call: TransformedCall | None, out: Any) -> Any:
        """Tell `after` the result of an emitted call; returns `out` unchanged."""
        if call is not None and self.after is not None:
            try:
                self.after(call, out)
            except Exception as e:  # never break the user's test
                self.errors.append(f"{type(e).__name__}: {e}")
        return out

    # -- wrapping the transforms -------------------------------------------------------------------
    def _returning(self, original: Any, transform: str, names: list[str], fun_missing: Any) -> Any:
        owner = self

        def apply(by_user: bool, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            __tracebackhide__ = True  # pytest shows the user's frames, not this one
            fun = a[0] if a else kw.get("fun", fun_missing)
            if fun is fun_missing:  # a transform used as a decorator factory (`nnx.jit(static_argnums=1)`)
                made = original(*a, **kw)
                if not callable(made):
                    return made
                return lambda f: apply(by_user, (f, *a), kw)
            out = original(*a, **kw)
            try:
                if not by_user or busy.get() or not callable(out) or user_function(fun) is None:
                    return out
                options = dict(zip(names[1:], a[1:]))
                options.update({k: v for k, v in kw.items() if k != "fun"})
                if isinstance(out, types.FunctionType):
                    return transformed_function(owner, out, fun, transform, options)
                return Transformed(owner, out, fun, transform, options)
            except Exception as e:  # never break the user's test
                owner.errors.append(f"{type(e).__name__}: {e}")
                return out

        @functools.wraps(original)
        def wrapper(*a: Any, **kw: Any) -> Any:
            __tracebackhide__ = True  # pytest shows the user's frames, not this one
            return apply(_from_user(1), a, kw)

        wrapper.stabcheck_original = original  # type: ignore[attr-defined]
        return wrapper

    def _calling(self, original: Any, transform: str) -> Any:
        owner = self

        @functools.wraps(original)
        def wrapper(fun: Any, *a: Any, **kw: Any) -> Any:
            __tracebackhide__ = True  # pytest shows the user's frames, not this one
            call = None
            if not busy.get():
                try:
                    if _from_user(1) and user_function(fun) is not None:
                        primals = tuple(a[0]) if transform == "jvp" and a else tuple(a)
                        options = {k: v for k, v in kw.items()}
                        if transform == "jvp" and len(a) > 1:
                            options["tangents"] = a[1]
                        call = owner.seen(None, fun, transform, options, primals, {})
                except Exception as e:  # never break the user's test
                    owner.errors.append(f"{type(e).__name__}: {e}")
            return owner.told(call, original(fun, *a, **kw))

        wrapper.stabcheck_original = original  # type: ignore[attr-defined]
        return wrapper

    def install(self) -> list[str]:
        """Wrap every transform that is installed; the names wrapped. A library the session has
        not imported yet (flax, equinox) is wrapped when it is imported (`_AfterImport`), not
        imported here: a session that never uses it does not pay for its import."""
        done = self._wrap("jax")
        later = set()
        for name in ("equinox", "flax.nnx"):
            if name in sys.modules:
                done += self._wrap(name)
            elif _installed(name.split(".")[0]):  # the top package only: finding `flax.nnx` would import `flax`
                later.add(name)
                done += [t for m, _, t, _ in _JAX_TARGETS if m == name] + (["filter_jit", "filter_grad", "filter_value_and_grad"] if name == "equinox" else [])
        if later:
            self._finder = _AfterImport(later, self._imported)
            sys.meta_path.insert(0, self._finder)
        return done

    def _imported(self, name: str) -> None:
        """`name` was just imported by the session: wrap its transforms (never raises)."""
        try:
            self._wrap(name)
        except Exception as e:  # never break the user's import
            self.errors.append(f"{type(e).__name__}: {e}")

    def _wrap(self, name: str) -> list[str]:
        """Wrap the transforms of the imported module `name` (`jax`, `flax.nnx`, `equinox`)."""
        done: list[str] = []
        replaced: dict[int, Any] = {}
        for module_name, attr, transform, kind in _JAX_TARGETS:
            module = sys.modules.get(module_name)
            if module_name != name or module is None:
                continue
            original = getattr(module, attr, None)
            if original is None:  # an outer session's wrapper (pytester inside `pytest --stabcheck`) is wrapped again
                continue
            if kind == "returns":
                try:
                    params = list(inspect.signature(original).parameters.values())
                except (TypeError, ValueError):
                    params = []
                names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                missing = params[0].default if params and params[0].default is not inspect.Parameter.empty else object()
                wrapped = self._returning(original, transform, names, missing)
            else:
                wrapped = self._calling(original, transform)
            self._patch(module, attr, original, wrapped)
            self.originals[transform] = original
            replaced[id(original)] = wrapped
            done.append(transform)
        if name == "equinox":
            for cls, transform, info in _equinox_targets():
                self._patch(cls, "__call__", cls.__dict__["__call__"], self._equinox_call(cls.__dict__["__call__"], transform, info))
                self.originals[transform] = getattr(sys.modules["equinox"], transform, None)
                done.append(transform)
        self._rebind_user_modules(replaced)
        return done

    def _equinox_call(self, original: Any, transform: str, info: Callable[[Any], tuple[Any, dict[str, Any]]]) -> Any:
        owner = self

        @functools.wraps(original)
        def __call__(wrapper: Any, /, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # pytest shows the user's frames, not this one
            if busy.get() or _inside_equinox.get():  # filter_grad calls its value_and_grad wrapper
                return original(wrapper, *args, **kwargs)
            try:
                fn, options = info(wrapper)
                user = user_function(fn) is not None
            except Exception as e:  # never break the user's test
                owner.errors.append(f"{type(e).__name__}: {e}")
                user = False
            if not user:
                return original(wrapper, *args, **kwargs)
            token = _inside_equinox.set(True)
            try:
                return _call_through(owner, wrapper, fn, transform, options, functools.partial(original, wrapper), args, kwargs)
            finally:
                _inside_equinox.reset(token)

        return __call__

    def _patch(self, owner: Any, attr: str, original: Any, wrapped: Any) -> None:
        setattr(owner, attr, wrapped)
        self._patched.append((owner, attr, original))

    def _rebind_user_modules(self, replaced: dict[int, Any]) -> None:
        """`from jax import grad` in a conftest or a user module imported before the plugin."""
        for module in list(sys.modules.values()):
            if not _is_user_file(getattr(module, "__file__", None) or ""):
                continue
            try:
                items = list(vars(module).items())
            except TypeError:
                continue
            for name, value in items:
                wrapped = replaced.get(id(value))
                if wrapped is not None and getattr(wrapped, "stabcheck_original", None) is value:
                    self._patch(module, name, value, wrapped)

    def uninstall(self) -> None:
        if self._finder is not None:
            if self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
            self._finder = None
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)
        self._patched.clear()
        self.originals.clear()


__all__ = ["Interceptor", "Transformed", "STATIC_NUMBERS", "abstract_key", "fn_key", "given_by_user", "is_transformed", "outer_call", "transformed_function", "user_function", "user_site"]
