"""Count compilations of a jitted entry over its `calls` and its state fed back, and name what changed.

`count_retraces(entry)` calls the entry on the example arguments, on every tuple in `calls`,
and (for `state_argnums` step entries) three more times with the returned state fed back. A
plain function is called through `jax.jit`; a function that is already jitted (`jax.jit`,
`eqx.filter_jit`) or a `call` entry (it applies its own `jit`) is called as it is.

Compilations of the entry are counted with JAX's monitoring events (`backend_compile_duration`:
the jit cache size also grows for argument types that share one compiled program, e.g. a NumPy
and a JAX float32 scalar, so it over-counts). For a `call` entry (a training loop calling a
jitted step), every trace JAX makes of a user function while it runs is recorded too (JAX 0.10
traces a jitted function in `jax._src.pjit._trace_for_jit`, once per new signature), per
function, so a step retraced inside the loop is reported at the step.

Each new compilation is explained by the leaf whose shape, dtype or weak type changed, the
argument that was None and now is not, the static value that changed (a field marked static, a
Python number under `eqx.filter_jit`, an object compared by identity such as an optimizer or a
`jax.jit` rebuilt per object), in the words `@stabcheck.stable` uses (`` `lr` was Python int,
now Python float ``). `field_site` finds the line that declares or builds the field, the line a
user fixes. Runs in the worker (imports JAX); `runtime` reuses the value descriptions.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import linecache
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stabcheck.traced.entries import Entry, is_filter_jit, is_jitted
from stabcheck.traced.filtered import Filtered, unfiltered
from stabcheck.traced.source import def_line, is_internal, is_library

FEEDBACK_STEPS = 3
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_COUNT = [0]
_LISTENING = [False]
_PY_SCALARS = (bool, int, float, complex)
NONE = ("none",)


def compilations() -> int:
    """Backend compilations in this process so far (starts counting at the first call)."""
    # JAX: imported when this runs, never on import
    import jax

    if not _LISTENING[0]:

        def listen(event: str, duration_secs: float, **kwargs: str | int) -> None:
            if event == _COMPILE_EVENT:
                _COUNT[0] += 1

        jax.monitoring.register_event_duration_secs_listener(listen)
        _LISTENING[0] = True
    return _COUNT[0]


# -- signatures --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Owner:
    """The dataclass field (an `eqx.Module`'s, a flax struct's) a leaf path lies in."""

    cls: type
    name: str
    static: bool  # declared static (`eqx.field(static=True)`, `pytree_node=False`)


def is_static_field(f: dataclasses.Field[Any]) -> bool:
    meta: Mapping[str, Any] = f.metadata or {}
    return bool(meta.get("static", False)) or meta.get("pytree_node", True) is False


def _is_node(x: Any) -> bool:
    """A dataclass instance registered as a pytree node (an `eqx.Module`, a flax struct)."""
    # JAX: imported when this runs, never on import
    import jax

    if not dataclasses.is_dataclass(x) or isinstance(x, type):
        return False
    try:
        return not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x))
    except Exception:  # a pytree that fails to flatten is the call's problem, not ours
        return False


def static_spec(x: Any) -> tuple[Any, ...]:
    """A value JAX keys on by hash and equality: (kind, text, the value itself)."""
    return ("static", short_repr(x), x)


def leaf_spec(x: Any, numbers_static: bool = False) -> tuple[Any, ...]:
    """What `jit` keys one leaf on: an array's shape, dtype and weak type; a Python number's type
    (its value under `eqx.filter_jit`); any other value by hash and equality."""
    if x is None:
        return NONE
    if type(x) in _PY_SCALARS:
        return static_spec(x) if numbers_static else ("python", type(x).__name__)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        aval = getattr(x, "aval", None)
        weak = bool(getattr(aval, "weak_type", False))
        return ("array", tuple(x.shape), str(_canonical(x.dtype)), weak)
    return static_spec(x)


def _canonical(dtype: Any) -> Any:
    # JAX: imported when this runs, never on import
    from jax import dtypes

    try:
        return dtypes.canonicalize_dtype(dtype)
    except (TypeError, ValueError):
        return dtype


def walk(value: Any, path: str, numbers_static: bool = False, owner: Owner | None = None) -> Iterator[tuple[str, tuple[Any, ...], Owner | None]]:
    """(path, spec, owning field) for every leaf of `value`, dataclass fields by name, a static
    field as one static value, None as a leaf of its own (an optional argument left out)."""
    # JAX: imported when this runs, never on import
    import jax

    if value is None:
        yield path, NONE, owner
        return
    if _is_node(value):
        for f in dataclasses.fields(value):
            if not hasattr(value, f.name):
                continue
            here = Owner(type(value), f.name, is_static_field(f))
            sub = getattr(value, f.name)
            if here.static:
                yield f"{path}.{f.name}", static_spec(sub), here
            else:
                yield from walk(sub, f"{path}.{f.name}", numbers_static, here)
        return
    stop = lambda y: y is not value and (y is None or _is_node(y))  # noqa: E731
    for kp, leaf in jax.tree_util.tree_flatten_with_path(value, is_leaf=stop)[0]:
        p = path + jax.tree_util.keystr(kp)
        if leaf is None or _is_node(leaf):
            yield from walk(leaf, p, numbers_static, owner)
        else:
            yield p, leaf_spec(leaf, numbers_static), owner


@dataclass(frozen=True, slots=True)
class CallSig:
    """Every leaf and static value of one call, by path, and the dataclass field of each path."""

    specs: dict[str, tuple[Any, ...]]
    owners: dict[str, Owner]


def call_signature(args: tuple[Any, ...], names: Sequence[str], static: Sequence[int] = (), kwargs: Mapping[str, Any] | None = None, static_names: Sequence[str] = (), numbers_static: bool = False) -> CallSig:
    specs: dict[str, tuple[Any, ...]] = {}
    owners: dict[str, Owner] = {}
    parts = [(names[i] if i < len(names) else f"args[{i}]", a, i in static) for i, a in enumerate(args)]
    parts += [(k, v, k in static_names) for k, v in sorted((kwargs or {}).items())]
    for name, value, is_static in parts:
        if is_static:
            specs[name] = static_spec(value)
            continue
        for p, spec, own in walk(value, name, numbers_static):
            specs[p] = spec
            if own is not None:
                owners[p] = own
    return CallSig(specs, owners)


def leaf_signatures(args: tuple[Any, ...], names: list[str], static: tuple[int, ...]) -> dict[str, Any]:
    return call_signature(args, names, static).specs


def same(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    """Whether `jit` keys the two specs alike (static values: identity, else hash and ==)."""
    if a is None or b is None:
        return a is b
    if a[0] == "static" and b[0] == "static":
        x, y = a[2], b[2]
        if x is y:
            return True
        try:
            return type(x) is type(y) and hash(x) == hash(y) and bool(x == y)
        except Exception:  # unhashable, or an array's elementwise == : JAX cannot reuse it either
            return False
    return a == b


def show(s: tuple[Any, ...]) -> str:
    if s[0] == "array":
        return f"{'weak ' if s[3] else ''}{s[2]}[{','.join(str(d) for d in s[1])}]"
    if s[0] == "python":
        return f"Python {s[1]}"
    if s[0] == "none":
        return "None"
    return str(s[1])


def identity_key(x: Any) -> str | None:
    """For a value that hashes and compares by identity (a function, a `jax.jit` function, a
    bound method, a plain object, a tuple of them such as an optax transformation): the ids JAX's
    cache key depends on; None for a value compared by content."""
    if isinstance(x, tuple):  # compared element by element
        keys = [k for k in map(identity_key, x) if k is not None]
        return ",".join(keys) if keys else None
    if inspect.ismethod(x):
        return f"{id(x.__self__):#x}.{id(x.__func__):#x}" if identity_key(x.__self__) is not None else None
    if inspect.isfunction(x) or is_jitted(x):
        return f"{id(x):#x}"
    t = type(x)
    if t.__hash__ is object.__hash__ and t.__eq__ is object.__eq__ and t.__module__ != "builtins":
        return f"{id(x):#x}"
    return None


def by_identity(x: Any) -> bool:
    """The value hashes and compares by identity: every new object is a new cache key."""
    return identity_key(x) is not None


def renewed(k: str, what: str, text: str) -> str:
    """The phrase for a static value that is a new object JAX keys by identity."""
    return f"static `{k}` is a new {what + ' ' if what else ''}object ({text}), and JAX keys it by identity: every new one compiles again"


def describe_static(k: str, a: tuple[Any, ...], b: tuple[Any, ...]) -> str:
    if a[1] == b[1] or type(a[2]) is type(b[2]) and by_identity(b[2]):
        return renewed(k, "`jax.jit` function" if is_jitted(b[2]) else type(b[2]).__name__, b[1])
    return f"static `{k}` was {a[1]}, now {b[1]}"


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two call signatures, as `@stabcheck.stable` words it."""
    out = []
    keys = list(new) + [k for k in old if k not in new]
    for k in keys:
        a, b = old.get(k), new.get(k)
        if same(a, b):
            continue
        if a is None or b is None:
            # a leaf under an argument that was None (or is now), else a change of structure
            gone = b is None
            key, spec = (k, a if gone else b)
            assert spec is not None
            parent = next((p for p in _prefixes(key) if (new if gone else old).get(p) == NONE), None)
            if parent is not None:
                if gone:
                    out.append(f"`{parent}` was not None (`{key}`: {show(spec)}), now None")
                else:
                    out.append(f"`{parent}` was None, now has `{key}`: {show(spec)}")
            else:
                out.append(f"`{key}` {'disappeared' if gone else 'appeared'} ({show(spec)}): the argument structure changed")
        elif a[0] == "static" and b[0] == "static":
            out.append(describe_static(k, a, b))
        else:
            out.append(f"`{k}` was {show(a)}, now {show(b)}")
    return _dedup(out)


def _prefixes(path: str) -> list[str]:
    out = []
    for i, ch in enumerate(path):
        if ch in ".[" and i:
            out.append(path[:i])
    return out[::-1]


def _dedup(xs: list[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in xs if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


def short_repr(x: Any) -> str:
    try:
        r = repr(x)
    except Exception:
        r = f"<{type(x).__name__}>"
    return r if len(r) <= 60 else r[:57] + "..."


# -- where a user fixes it ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Where:
    file: str
    line: int
    function: str = ""


def _class_node(cls: type) -> tuple[str, ast.ClassDef] | None:
    try:
        file = inspect.getsourcefile(cls)
        _, start = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None
    if not file:
        return None
    try:
        tree = ast.parse("".join(linecache.getlines(file)))
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__ and min([node.lineno, *(d.lineno for d in node.decorator_list)]) <= start <= node.lineno:
            return file, node
    return None


def field_site(owner: Owner, built: bool = False) -> Where | None:
    """The line that declares `owner`'s field in its class; with `built`, the `self.<field> = ...`
    assignment in the class body (an `__init__`) when there is one: where a per-object value
    (a `jax.jit` built in `__init__`) comes from."""
    for cls in owner.cls.__mro__:
        found = _class_node(cls)
        if found is None:
            continue
        file, node = found
        if built:
            for n in ast.walk(node):
                if isinstance(n, (ast.Assign, ast.AnnAssign)):
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    if any(isinstance(t, ast.Attribute) and t.attr == owner.name and isinstance(t.value, ast.Name) and t.value.id == "self" for t in targets):
                        return Where(file, n.lineno, cls.__qualname__)
        for n in node.body:
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == owner.name:
                return Where(file, n.lineno, cls.__qualname__)
    return None


def jit_build_site(cls: type, method: str) -> Where | None:
    """The `jax.jit(self.<method>)` call in `cls` (a bound method jitted per object)."""
    found = _class_node(cls)
    if found is None:
        return None
    file, node = found
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and any(isinstance(a, ast.Attribute) and a.attr == method and isinstance(a.value, ast.Name) and a.value.id == "self" for a in n.args):
            return Where(file, n.lineno, cls.__qualname__)
    return None


def def_site(fn: Any) -> Where | None:
    """The `def` line of a function (not its first decorator's)."""
    fn = inspect.unwrap(fn) if hasattr(fn, "__wrapped__") else fn
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return Where(code.co_filename, def_line(code.co_filename, code.co_firstlineno), getattr(fn, "__qualname__", ""))


def site_for(changes_at: Sequence[str], sig: CallSig) -> Where | None:
    """The line a user fixes for the first changed path that lies in a dataclass field."""
    for path in changes_at:
        own = sig.owners.get(path)
        if own is None:
            continue
        spec = sig.specs.get(path)
        built = bool(spec and spec[0] == "static" and callable(spec[2]) and by_identity(spec[2]))
        return field_site(own, built) or field_site(own)
    return None


def changed_paths(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [k for k in list(new) + [k for k in old if k not in new] if not same(old.get(k), new.get(k))]


# -- counting ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Inner:
    """A jitted user function that JAX traced more than once while a `call` entry ran."""

    function: str
    where: Where
    traces: int
    changes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retraces:
    calls: int
    compiles: int
    changes: tuple[str, ...] = ()  # one line per compilation after the first
    state_changes: tuple[str, ...] = ()  # the changes seen while feeding the state back
    feedback: bool = False
    notes: tuple[str, ...] = field(default=())
    where: Where | None = None  # the line to fix for the first change, when it is a field's
    inner: tuple[Inner, ...] = ()  # `call` entries: the jitted functions JAX traced again
    counted: bool = True  # `compiles` is the entry's own (False for a `call` entry's loop)
    # an array held in a static field, and the error JAX raised comparing it with a cached key
    static_arrays: tuple[tuple[str, Where | None], ...] = ()
    error: str = ""


def count_retraces(entry: Entry, names: list[str]) -> Retraces:
    # JAX: imported when this runs, never on import
    import jax

    fn = entry.fn
    own = unfiltered(fn)  # the entry's function under the wrapper that rebuilds filtered arguments
    own_jit = "call" in entry.transforms or is_jitted(own) or is_filter_jit(own)
    jitted = fn if own_jit else jax.jit(fn, static_argnums=entry.static_argnums)
    numbers_static = is_filter_jit(own) or any(isinstance(a, Filtered) for a in entry.args)
    counted = is_jitted(own) or is_filter_jit(own) or "call" not in entry.transforms
    kwargs = dict(entry.kwargs)
    static, static_names = tuple(entry.static_argnums), ()
    if is_jitted(own):
        info = getattr(own, "_jit_info", None)
        static = tuple(sorted({*static, *(getattr(info, "static_argnums", ()) or ())}))
        static_names = tuple(getattr(info, "static_argnames", ()) or ())
        pos = positional_names(own)
        static = tuple(sorted({*static, *(i for i, n in enumerate(pos) if n in static_names)}))
    base = compilations()
    seqs: list[tuple[Any, ...]] = [entry.args, *[tuple(c) for c in (entry.calls or ())]]
    changes: list[str] = []
    state_changes: list[str] = []
    seen: list[CallSig] = []
    where: list[Where] = []
    ncalls = 0

    def call(args: tuple[Any, ...], into: list[str]) -> Any:
        nonlocal ncalls
        before = compilations()
        # an argument split as eqx.filter_jit splits it (traced.filtered) is described whole
        shown = tuple(a.rebuild() if isinstance(a, Filtered) else a for a in args)
        sig = call_signature(shown, names, static, kwargs, static_names, numbers_static=numbers_static)
        arrays.update((p, field_site(sig.owners[p])) for p, sp in sig.specs.items() if sp[0] == "static" and p in sig.owners and _is_array(sp[2]))
        out = jax.block_until_ready(jitted(*args, **kwargs))
        ncalls += 1
        if compilations() > before and seen:
            closest = min(reversed(seen), key=lambda s: len(diff(s.specs, sig.specs)))  # the latest of the closest
            into.append("; ".join(diff(closest.specs, sig.specs)) or "an argument of a type stabcheck cannot compare")
            site = site_for(changed_paths(closest.specs, sig.specs), sig)
            if site is not None:
                where.append(site)
        seen.append(sig)
        return out

    arrays: dict[str, Where | None] = {}
    with TraceLog() as log:
        try:
            if entry.state_argnums:
                # the state fed back first: a later call given that state (a recorded one) would
                # otherwise have compiled it already
                args = entry.args
                out = call(args, [])
                for _ in range(FEEDBACK_STEPS):
                    outs = out if isinstance(out, (tuple, list)) else (out,)
                    new = list(args)
                    for k, i in enumerate(entry.state_argnums):
                        new[i] = outs[k]
                    args = tuple(new)
                    out = call(args, state_changes)
            for args in seqs:
                call(args, changes)
        except ValueError as e:  # JAX compared a static array with `==` (jax-ml/jax#28659)
            if not arrays:
                raise
            return Retraces(ncalls, compilations() - base, tuple(changes), static_arrays=tuple(arrays.items()), error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
    compiles = compilations() - base
    inner = log.retraced() if not counted else ()
    if changes and not where and counted:
        at = def_site(own)
        where = [at] if at is not None else []
    return Retraces(ncalls, compiles, tuple(changes), tuple(state_changes), bool(entry.state_argnums), where=where[0] if where else None, inner=inner, counted=counted)


def _is_array(x: Any) -> bool:
    return type(x) not in _PY_SCALARS and hasattr(x, "shape") and hasattr(x, "dtype") and getattr(x, "shape", ()) != ()


def positional_names(fn: Any) -> list[str]:
    try:
        return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []


# -- every trace JAX makes of a user function --------------------------------------------------
@dataclass(slots=True)
class _Trace:
    fun: Any
    sig: CallSig


class TraceLog:
    """While open, records each signature a jitted function defined in the user's files is
    called with outside any trace and missing JAX's compile cache: JAX 0.10 looks such a call
    up in `jax._src.pjit._infer_params` (its trace cache, then a new trace), then compiles it.
    A second miss of the same function object with the same argument types is not recorded
    (a NumPy and a JAX scalar are two C++ cache entries for one program). Where that hook point
    is missing, nothing is recorded."""

    def __init__(self) -> None:
        self.traces: dict[Any, list[_Trace]] = {}
        self._original: Callable[..., Any] | None = None

    def __enter__(self) -> TraceLog:
        try:
            # JAX: imported when this runs, never on import
            from jax._src import core, pjit
        except ImportError:
            return self
        original = getattr(pjit, "_infer_params", None)
        clean = getattr(core, "trace_state_clean", None)
        if original is None or clean is None:
            return self
        self._original = original

        def _infer_params(fun: Any, ji: Any, args: Any, kwargs: Any) -> Any:
            if clean():
                try:
                    self._record(fun, ji, args, kwargs)
                except Exception:  # never break the user's run
                    pass
            return original(fun, ji, args, kwargs)

        setattr(pjit, "_infer_params", _infer_params)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._original is not None:
            # JAX: imported when this runs, never on import
            from jax._src import pjit

            setattr(pjit, "_infer_params", self._original)
            self._original = None

    def _record(self, fun: Any, ji: Any, args: Any, kwargs: Any) -> None:
        target = getattr(fun, "__func__", fun)
        target = inspect.unwrap(target) if hasattr(target, "__wrapped__") else target
        code = getattr(target, "__code__", None)
        if code is None or is_internal(code.co_filename) or is_library(code.co_filename):
            return
        try:
            names = [p for p in inspect.signature(fun).parameters]
        except (TypeError, ValueError):
            names = []
        static = tuple(getattr(ji, "static_argnums", ()) or ())
        static_names = tuple(getattr(ji, "static_argnames", ()) or ())
        sig = call_signature(tuple(args), names, static, dict(kwargs), static_names)
        seen = self.traces.setdefault(code, [])
        if any(_same_fun(t.fun, fun) and not changed_paths(t.sig.specs, sig.specs) for t in seen):
            return
        seen.append(_Trace(fun, sig))

    def retraced(self) -> tuple[Inner, ...]:
        out = []
        for traces in self.traces.values():
            if len(traces) < 2:
                continue
            first = traces[0].fun
            changes: list[str] = []
            for i in range(1, len(traces)):
                now = traces[i].sig.specs
                closest = min(reversed(traces[:i]), key=lambda t: len(diff(t.sig.specs, now)))
                why = diff(closest.sig.specs, now)
                changes.append("; ".join(why) if why else _rebuilt(traces[i].fun))
            where = None
            owner = getattr(first, "__self__", None)
            if owner is not None and all(not diff(t.sig.specs, traces[0].sig.specs) for t in traces):
                where = jit_build_site(type(owner), first.__name__)
            where = where or def_site(first)
            name = getattr(getattr(first, "__func__", first), "__qualname__", "?")
            if where is not None:
                out.append(Inner(name, Where(os.path.realpath(where.file), where.line, name), len(traces), tuple(_dedup(changes))))
        return tuple(out)


def _same_fun(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def _rebuilt(fun: Any) -> str:
    owner = getattr(fun, "__self__", None)
    if owner is not None:
        return f"the same argument types: `{type(owner).__name__}.{fun.__name__}` is a bound method jitted once per `{type(owner).__name__}` object, so each object compiles it again"
    return "the same argument types: the function was jitted again (a new `jax.jit` object, or a new function object, per call)"
