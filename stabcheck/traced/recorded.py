"""Signatures recorded by `pytest --stabcheck-record`, replayed by `stabcheck check --trace/--confirm`.

    .stabcheck/recorded.json
    {"format": "stabcheck-recorded", "version": 2,
     "functions": {"pkg.model:loss": {"file": "src/pkg/model.py", "signatures": [
         {"transform": "jit", "options": {"static_argnums": [1]},
          "args": ["f32[8,2]", {"$tuple": ["f32?[]", 3]}], "kwargs": {},
          "site": "tests/test_model.py:42"}]}},
     "skipped": {"tests.test_x:<locals>.f": {"transform": "jit", "reason": "...", "site": "..."}}}

A value's spec (`describe`) extends `traced.specs`: a string is an array spec (`f32[8,2]`, `f32?[]`
weak), a number, bool or null is that Python literal, a list is a list, an object a dict; tagged
objects hold the rest: `{"$str": s}`, `{"$tuple": [...]}`, `{"$dict": {...}}` (a dict whose keys
start with `$`), `{"$type": "mod:Qual", "fields": {...}}` (a NamedTuple, a registered dataclass
pytree, an `eqx.Module`), `{"$ref": "mod:qual"}` (an importable function, a static field),
`{"$object": "mod:Qual", "fields": {...}}` (an instance of a plain class of the user's, no
pytree: rebuilt without `__init__`), `{"$jit": "mod:qual"}` (a `jax.jit` object of an importable function: rebuilt as a new
`jax.jit` object each time), `{"$opaque": "mod:Qual"}` (a static argument of `jit` that cannot
be rebuilt, such as an optax optimizer made of closures: only its type and how many unequal ones
the tests passed are kept; the replay passes stand-ins that JAX hashes and compares as unequal,
and shows the retraces of that recorded pattern, nothing else). A signature seen with more than one set of `jax.jit` objects (a
`jax.jit(fk)` built per Module) says how many in `"objects"`; the replay calls it with that many.
An older stabcheck refuses a newer version with a message (record again, or upgrade); this one
reads every version up to its own. No pickle and no eval: `rebuild` imports a type by its name and fills its fields, so it runs user
code and is called only in the worker. Describing, merging, reading and writing import no JAX.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from stabcheck.traced import specs
from stabcheck.traced.checks import shown_path

FORMAT = "stabcheck-recorded"
VERSION = 2  # 2: `$object`, `$jit`, `$opaque`, "objects" and `call` signatures; a version 1 file is read as it is
MAX_PER_FUNCTION = 4  # signatures kept per function (the first in a stable order)
COMPILING = frozenset({"jit", "filter_jit", "nnx.jit"})  # transforms whose signatures are compilations
MAX_COMPILED = 17  # compiled signatures kept per function and transform at most: a max-traces up to 16 can be shown exceeded
MAX_FUNCTIONS = 500
MAX_SKIPPED = 200
MAX_DEPTH = 12
MAX_LEAVES = 256
DEFAULT_PATH = os.path.join(".stabcheck", "recorded.json")
OPTION_KEYS = ("static_argnums", "static_argnames", "argnums", "in_axes", "has_aux")


class RecordedError(ValueError):
    """A recorded file that cannot be used; the message names the file and what is wrong."""


class Unrebuildable(ValueError):
    """A value `describe` cannot turn into a spec that `rebuild` can make again; says why."""


# -- describing real values (in the pytest process) -----------------------------------------------
def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type)


def _array_spec(value: Any) -> str:
    name = str(getattr(value.dtype, "name", value.dtype))
    if name not in specs.SHORT:
        raise Unrebuildable(f"an array of dtype {value.dtype} has no spec")
    aval = getattr(value, "aval", None)
    weak = bool(getattr(value, "weak_type", getattr(aval, "weak_type", False)))
    shape = tuple(int(d) for d in value.shape)
    return str(specs.Spec(name, shape, weak and not shape))  # only scalars are written weak


def importable_name(obj: Any) -> str | None:
    """`module:qualname` when OBJ can be found again by that name, else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    return f"{module}:{qualname}"


def _plain_object(value: Any) -> bool:
    """An instance of a class of the user's own (not an installed package's), importable by name,
    with plain attributes, that JAX does not treat as a pytree."""
    from stabcheck.traced.source import is_internal, is_library

    cls = type(value)
    if isinstance(value, type) or not hasattr(value, "__dict__") or hasattr(cls, "__slots__") or importable_name(cls) is None:
        return False
    try:
        file = inspect.getsourcefile(cls) or ""
    except TypeError:
        return False
    if not file or is_library(file) or is_internal(file):
        return False
    import jax  # JAX: the recorder and the worker run with it

    leaves = jax.tree_util.tree_leaves(value)
    return len(leaves) == 1 and leaves[0] is value


def is_jit_object(value: Any) -> bool:
    """A callable `jax.jit` made (its own compile cache, hashed by identity)."""
    return callable(value) and not isinstance(value, type) and hasattr(value, "lower") and hasattr(value, "_cache_size") and hasattr(value, "__wrapped__")


class Opaque:
    """A static argument the recording cannot rebuild, kept as its type (`{"$opaque": ...}`)."""

    def __init__(self, value: Any) -> None:
        self.value = value


class StandIn:
    """What the replay passes for an `{"$opaque": type}` static argument: hashed by identity and
    equal only to itself, as the unequal objects the tests passed were to JAX's cache. It has no
    other behaviour: an entry holding one only replays its call pattern (`stand_ins`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<a stand-in for a `{self.kind.partition(':')[2] or self.kind}` the tests passed>"


def opaque_statics(fn: Any, options: Mapping[str, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with each static one (`static_argnums`/`static_argnames`) that cannot be
    described but is hashable wrapped in `Opaque`: the call pattern is kept, not the value."""

    def wrap(v: Any) -> Any:
        try:
            describe(v)
            return v
        except Unrebuildable:
            pass
        try:
            hash(v)
        except TypeError:
            return v
        return Opaque(v)

    nums, names = set(_ints(options.get("static_argnums"))), options.get("static_argnames") or ()
    names = {names} if isinstance(names, str) else set(names)
    if not nums and not names:
        return tuple(args), dict(kwargs)
    try:
        pos = [p.name for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
        pos = []
    out = tuple(wrap(a) if i in nums or (i < len(pos) and pos[i] in names) else a for i, a in enumerate(args))
    return out, {k: wrap(v) if k in names else v for k, v in kwargs.items()}


def opaque_values(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(a.value for a in (*args, *kwargs.values()) if isinstance(a, Opaque))


def jit_objects(tree: Any) -> tuple[Any, ...]:
    """The `jax.jit` objects among the leaves of `tree` (a Module's field, a static argument)."""
    import jax  # JAX: the recorder and the worker run with it

    return tuple(x for x in jax.tree_util.tree_leaves(tree) if is_jit_object(x))


def describe(value: Any, _depth: int = 0, _count: list[int] | None = None) -> Any:
    """A real argument (array, Python scalar, pytree of them) -> its JSON spec; raises Unrebuildable."""
    count = _count if _count is not None else [0]
    if _depth > MAX_DEPTH:
        raise Unrebuildable(f"a pytree deeper than {MAX_DEPTH} levels")
    count[0] += 1
    if count[0] > MAX_LEAVES:
        raise Unrebuildable(f"a pytree with more than {MAX_LEAVES} nodes")
    if value is None or isinstance(value, (bool, int)) and not isinstance(value, type):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise Unrebuildable("a non-finite Python float")
        return value
    if isinstance(value, str):
        return {"$str": value}
    if _is_array(value):
        return _array_spec(value)
    sub = lambda v: describe(v, _depth + 1, count)  # noqa: E731
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        name = importable_name(type(value))
        if name is None:
            raise Unrebuildable(f"NamedTuple `{type(value).__qualname__}` is not importable by name")
        return {"$type": name, "fields": {f: sub(getattr(value, f)) for f in value._fields}}
    if isinstance(value, tuple):
        return {"$tuple": [sub(v) for v in value]}
    if isinstance(value, list):
        return [sub(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise Unrebuildable("a dict with non-string keys")
        body = {k: sub(value[k]) for k in sorted(value)}
        return {"$dict": body} if any(k.startswith("$") for k in value) else body
    if dataclasses.is_dataclass(value):
        name = importable_name(type(value))
        if name is None:
            raise Unrebuildable(f"`{type(value).__qualname__}` is not importable by name")
        return {"$type": name, "fields": {f.name: sub(getattr(value, f.name)) for f in dataclasses.fields(value) if hasattr(value, f.name)}}
    if isinstance(value, Opaque):
        kind = type(value.value)
        return {"$opaque": importable_name(kind) or f"{kind.__module__}:{kind.__qualname__}"}
    if _plain_object(value):
        # an instance of one of the user's plain classes (no pytree, no dataclass): its type and
        # its attributes, rebuilt without `__init__` (`jax.jit(apply)(model, x)` with a model object)
        return {"$object": importable_name(type(value)), "fields": {k: sub(v) for k, v in sorted(vars(value).items())}}
    if is_jit_object(value):
        name = importable_name(inspect.unwrap(value))
        if name is None:
            raise Unrebuildable(f"a `jax.jit` of `{getattr(value, '__qualname__', value)!s}`, not importable by name")
        return {"$jit": name}
    if callable(value):
        name = importable_name(value)
        if name is None:
            raise Unrebuildable(f"the function `{getattr(value, '__qualname__', value)!s}` is not importable by name")
        return {"$ref": name}
    raise Unrebuildable(f"a value of type `{type(value).__qualname__}` (not an array, Python scalar, container or dataclass pytree)")


def describe_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in OPTION_KEYS:
        if k in options and options[k] is not None:
            v = options[k]
            out[k] = list(v) if isinstance(v, (tuple, list)) else v
    try:
        json.dumps(out)
    except (TypeError, ValueError):
        raise Unrebuildable("transform options that are not JSON literals") from None
    return out


def signature(fn: Any, transform: str, options: Mapping[str, Any], args: Iterable[Any], kwargs: Mapping[str, Any], site: str) -> tuple[str, dict[str, Any]]:
    """(`module:qualname`, the signature record) for one transformed call; raises Unrebuildable."""
    owner = getattr(fn, "__self__", None)
    if inspect.ismethod(fn) and not isinstance(owner, type):
        raise Unrebuildable(f"`{fn.__qualname__}` is a method bound to a `{type(owner).__qualname__}` object (`jax.jit(self.{fn.__name__})`); the recording does not hold the object")
    name = importable_name(fn)
    if name is None:
        where = getattr(fn, "__qualname__", repr(fn))
        raise Unrebuildable(f"`{where}` is defined inside a function or in `__main__`; the worker cannot import it by name")
    return name, {
        "transform": transform,
        "options": describe_options(options),
        "args": [describe(a) for a in args],
        "kwargs": {k: describe(kwargs[k]) for k in sorted(kwargs)},
        "site": site,
    }


# -- the file ------------------------------------------------------------------------------------
def empty() -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "functions": {}, "skipped": {}}


def signature_key(sig: Mapping[str, Any]) -> str:
    """What makes two recorded signatures the same (the site and the object count do not)."""
    return _key(sig)


def _key(sig: Mapping[str, Any]) -> str:
    return json.dumps({k: sig[k] for k in ("transform", "options", "args", "kwargs")}, sort_keys=True)


def add(data: dict[str, Any], name: str, file: str, sig: dict[str, Any]) -> None:
    """Add one signature (a new site for a known one replaces it: the latest run wins)."""
    fn = data["functions"].setdefault(name, {"file": file, "signatures": []})
    fn["file"] = file or fn.get("file", "")
    key = _key(sig)
    fn["signatures"] = [s for s in fn["signatures"] if _key(s) != key] + [sig]


def skip(data: dict[str, Any], name: str, transform: str, reason: str, site: str) -> None:
    data["skipped"][name] = {"transform": transform, "reason": reason, "site": site}


def compiled_limit(max_traces: int) -> int:
    """Compiled signatures kept per function and transform: one more than `max-traces`, so the
    replay can show a retrace storm (STB504), at least MAX_PER_FUNCTION, at most MAX_COMPILED."""
    return max(MAX_PER_FUNCTION, min(max_traces + 1, MAX_COMPILED))


def merge(old: Mapping[str, Any], new: Mapping[str, Any], compiled: int = MAX_PER_FUNCTION) -> dict[str, Any]:
    """OLD's signatures with NEW's added (NEW's site wins for the same signature), then bounded
    (COMPILED signatures per compiling transform: `compiled_limit`)."""
    out = empty()
    for data in (old, new):
        for name, fn in data.get("functions", {}).items():
            for sig in fn.get("signatures", []):
                add(out, name, fn.get("file", ""), sig)
        for name, s in data.get("skipped", {}).items():
            out["skipped"][name] = s
    for name in out["functions"]:
        out["skipped"].pop(name, None)
    return bounded(out, compiled)


def bounded(data: dict[str, Any], compiled: int = MAX_PER_FUNCTION) -> dict[str, Any]:
    """Stable order (functions by name, signatures by content) and at most the bounds: per
    function MAX_PER_FUNCTION signatures of the other transforms, and COMPILED of each compiling one."""
    compiled = max(MAX_PER_FUNCTION, min(compiled, MAX_COMPILED))
    functions = {}
    for name in sorted(data["functions"])[:MAX_FUNCTIONS]:
        fn = data["functions"][name]
        sigs = sorted(fn["signatures"], key=_key)
        kept = [s for s in sigs if s.get("transform") not in COMPILING][:MAX_PER_FUNCTION]
        for t in sorted({str(s.get("transform")) for s in sigs} & COMPILING):
            kept += [s for s in sigs if s.get("transform") == t][:compiled]
        functions[name] = {"file": fn.get("file", ""), "signatures": sorted(kept, key=_key)}
    skipped = {k: data["skipped"][k] for k in sorted(data["skipped"])[:MAX_SKIPPED]}
    return {"format": FORMAT, "version": VERSION, "functions": functions, "skipped": skipped}


def dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, indent=1) + "\n"


def loads(text: str, path: str) -> dict[str, Any]:
    """Parse and validate a recorded file; RecordedError names PATH and the problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordedError(f"`{path}` is not valid JSON ({e.msg} at line {e.lineno}); delete it and record again with `pytest --stabcheck-record`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordedError(f"`{path}` is not a stabcheck recorded-signatures file (no \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise RecordedError(f"`{path}` has version {version!r}; this stabcheck reads version {VERSION} or older: upgrade stabcheck or record again")
    functions, skipped = data.get("functions"), data.get("skipped", {})
    if not isinstance(functions, dict) or not isinstance(skipped, dict):
        raise RecordedError(f"`{path}`: \"functions\" and \"skipped\" must be objects")
    for name, fn in functions.items():
        sigs = fn.get("signatures") if isinstance(fn, dict) else None
        if ":" not in name or not isinstance(sigs, list) or not all(isinstance(s, dict) and isinstance(s.get("transform"), str) and isinstance(s.get("args", []), list) and isinstance(s.get("kwargs", {}), dict) and isinstance(s.get("options", {}), dict) for s in sigs):
            raise RecordedError(f"`{path}`: the record of `{name}` is malformed; delete the file and record again")
        for s in sigs:
            s.setdefault("args", [])
            s.setdefault("kwargs", {})
            s.setdefault("options", {})
            s.setdefault("site", "")
    return {"format": FORMAT, "version": VERSION, "functions": functions, "skipped": skipped}


def read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(64 * 1024 * 1024)
    except OSError as e:
        raise RecordedError(f"cannot read `{path}`: {e.strerror or e}") from None
    return loads(text, path)


def find(roots: Iterable[str]) -> str | None:
    """`.stabcheck/recorded.json` in the first of ROOTS (or a parent of one) that has it."""
    for root in roots:
        here = os.path.abspath(root)
        if os.path.isfile(here):
            here = os.path.dirname(here)
        while True:
            candidate = os.path.join(here, DEFAULT_PATH)
            if os.path.isfile(candidate):
                return candidate
            parent = os.path.dirname(here)
            if parent == here or os.path.exists(os.path.join(here, "pyproject.toml")):
                break
            here = parent
    return None


# -- rebuilding (in the worker only: it imports user modules) -------------------------------------
def resolve(name: str) -> Any:
    """`module:qualname` -> the object; ImportError/AttributeError name what is missing."""
    module, sep, qualname = name.partition(":")
    if not sep or not module or not qualname:
        raise AttributeError(f"`{name}` is not of the form module:qualname")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def rebuild(spec: Any) -> Any:
    """A spec -> the value with `jax.ShapeDtypeStruct` leaves (the confirm stage draws concrete
    data from them). Imports JAX and the named types: call in the worker."""
    if isinstance(spec, str):
        return specs.to_abstract(specs.parse(spec))
    if spec is None or isinstance(spec, (bool, int, float)):
        return spec
    if isinstance(spec, list):
        return [rebuild(v) for v in spec]
    if not isinstance(spec, dict):
        raise Unrebuildable(f"a spec of type {type(spec).__name__}")
    if "$str" in spec:
        return str(spec["$str"])
    if "$tuple" in spec:
        return tuple(rebuild(v) for v in spec["$tuple"])
    if "$dict" in spec:
        return {k: rebuild(v) for k, v in spec["$dict"].items()}
    if "$ref" in spec:
        return resolve(spec["$ref"])
    if "$opaque" in spec:
        return StandIn(str(spec["$opaque"]))
    if "$jit" in spec:
        import jax  # JAX: this runs in the worker

        return jax.jit(resolve(spec["$jit"]))  # a new object, as each one the tests built
    if "$object" in spec:
        obj = object.__new__(resolve(spec["$object"]))  # not __init__: the attributes as recorded
        for k, v in spec.get("fields", {}).items():
            object.__setattr__(obj, k, rebuild(v))
        return obj
    if "$type" in spec:
        cls = resolve(spec["$type"])
        fields = {k: rebuild(v) for k, v in spec.get("fields", {}).items()}
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            return cls(**fields)
        if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
            raise Unrebuildable(f"`{spec['$type']}` is no longer a dataclass or NamedTuple")
        obj = object.__new__(cls)  # not __init__: it may compute fields from other arguments
        for k, v in fields.items():
            object.__setattr__(obj, k, v)
        return obj
    return {k: rebuild(v) for k, v in spec.items()}


def has_array(spec: Any) -> bool:
    if isinstance(spec, str):
        return True
    if isinstance(spec, list):
        return any(has_array(v) for v in spec)
    if isinstance(spec, dict):
        if "$str" in spec or "$ref" in spec or "$jit" in spec or "$opaque" in spec:
            return False
        inner = spec.get("$tuple", spec.get("$dict", spec.get("fields", spec)))
        return has_array(list(inner.values()) if isinstance(inner, dict) else inner)
    return False


_AD = {"grad": "grad", "value_and_grad": "grad", "filter_grad": "grad", "filter_value_and_grad": "grad", "nnx.grad": "grad", "jacfwd": "jacfwd", "jacrev": "jacrev", "hessian": "hessian", "jvp": "jvp", "vjp": "grad"}


def _ints(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


def _unbatch(spec: Any, axis: Any) -> Any:
    """A vmapped call's argument without its batch axis (the traced stage adds one back)."""
    if axis is None:
        return spec
    if isinstance(spec, str):
        s = specs.parse(spec)
        shape = list(s.shape)
        if shape:
            del shape[int(axis)]
        return str(specs.Spec(s.dtype, tuple(shape), False))
    if isinstance(spec, list):
        return [_unbatch(v, axis) for v in spec]
    if isinstance(spec, dict):
        for tag in ("$tuple",):
            if tag in spec:
                return {tag: [_unbatch(v, axis) for v in spec[tag]]}
        if "$type" in spec:
            return {**spec, "fields": {k: _unbatch(v, axis) for k, v in spec["fields"].items()}}
        if "$dict" in spec:
            return {"$dict": {k: _unbatch(v, axis) for k, v in spec["$dict"].items()}}
        if "$str" in spec or "$ref" in spec or "$jit" in spec or "$opaque" in spec:
            return spec
        return {k: _unbatch(v, axis) for k, v in spec.items()}
    return spec


def entry_parts(fn: Any, sig: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of an `Entry` for one recorded signature: keyword arguments bound to
    their positions, static positions (static_argnums/names, and for eqx/nnx every argument with
    no array), what `grad` differentiates, `in_axes`, and the transforms the test ran plus the AD
    ones it did not (added by `more_transforms` once the output is known)."""
    import inspect

    transform, options = sig["transform"], sig.get("options", {})
    arg_specs = list(sig.get("args", []))
    kw_specs = dict(sig.get("kwargs", {}))
    axes: list[Any] = []
    if transform == "vmap":  # JAX maps positional arguments by in_axes, keyword ones over axis 0
        given = options.get("in_axes", 0)
        axes = list(given) if isinstance(given, list) else [given] * len(arg_specs)
        arg_specs = [_unbatch(s, a) for s, a in zip(arg_specs, axes)]
        kw_specs = {k: _unbatch(v, 0) for k, v in kw_specs.items()}
    static = set(_ints(options.get("static_argnums")))
    names = options.get("static_argnames") or ()
    names = [names] if isinstance(names, str) else list(names)
    try:
        params = [p for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
        params = []
    for i, p in enumerate(params):
        if i < len(arg_specs) or p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        if p.name in kw_specs:
            arg_specs.append(kw_specs.pop(p.name))
            axes.append(0 if has_array(arg_specs[-1]) else None)
            if p.name in names:
                static.add(i)
        elif p.default is not p.empty and any(q.name in kw_specs for q in params[i + 1 :]):
            arg_specs.append(describe(p.default))
            axes.append(None)
            static.add(i)
        else:
            break
    for i, p in enumerate(params[: len(arg_specs)]):
        if p.name in names:
            static.add(i)
    if transform in ("filter_jit", "nnx.jit", "filter_grad", "filter_value_and_grad", "nnx.grad", "call"):
        # eqx/nnx: no array, no trace; a called function gets its Python values as they were
        static |= {i for i, s in enumerate(arg_specs) if not has_array(s)}
    in_axes: Any = tuple(a for i, a in enumerate(axes) if i not in static) if transform == "vmap" else 0
    argnums: Any = options.get("argnums", 0)
    argnums = tuple(argnums) if isinstance(argnums, list) else argnums
    ad = _AD.get(transform)
    if ad and (transform.startswith("filter_") or transform == "nnx.grad") and not _all_float([arg_specs[i] for i in (_ints(argnums) or (0,)) if i < len(arg_specs)]):
        ad = None  # eqx differentiates the float leaves only; the traced stage's `grad` takes them all
    # "call": a function that applies its own transform, recorded as the test called it
    transforms = ("call",) if transform == "call" else ("jit", "vmap") if transform == "vmap" else ("jit", ad) if ad else ("jit",)
    return {
        "args": tuple(rebuild(s) for s in arg_specs),
        "kwargs": {k: rebuild(v) for k, v in kw_specs.items()},
        "static_argnums": tuple(sorted(i for i in static if i < len(arg_specs))),
        "argnums": argnums,
        "in_axes": in_axes,
        "transforms": transforms,
    }


def replayed_function(fn: Any, sig: Mapping[str, Any]) -> Any:
    """The function an entry replays: FN, or for a transform recorded with `has_aux` its first
    output only (what JAX differentiates; the aux is still computed, its lines still traced).
    `__wrapped__` is FN, so findings and imports still name FN."""
    if not sig.get("options", {}).get("has_aux"):
        return fn
    import functools

    @functools.wraps(fn)
    def loss_only(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)[0]

    return loss_only


def _of_dynamic(fn: Any, parts: Mapping[str, Any]) -> tuple[Any, list[int]]:
    """`fn` as a function of an entry's dynamic positional arguments (its static ones and its
    keywords held at their values), and the positions of those arguments."""
    args, static, kwargs = parts["args"], set(parts["static_argnums"]), parts["kwargs"]
    dyn = [i for i in range(len(args)) if i not in static]

    def call(*d: Any) -> Any:
        full = list(args)
        for i, v in zip(dyn, d):
            full[i] = v
        return fn(*full, **kwargs)

    return call, dyn


def more_transforms(fn: Any, parts: Mapping[str, Any]) -> tuple[str, ...]:
    """The AD transforms the test did not run but the entry supports: `grad` (and `hessian` when
    the differentiated inputs are small) of a function with a float scalar output."""
    import jax  # JAX: this runs in the worker

    transforms = tuple(parts["transforms"])
    if "call" in transforms or "vmap" in transforms or "jacfwd" in transforms or "jacrev" in transforms:
        return transforms
    args, static = parts["args"], set(parts["static_argnums"])
    call, dyn = _of_dynamic(fn, parts)
    try:
        out = jax.eval_shape(call, *[args[i] for i in dyn])
    except Exception:  # noqa: BLE001 - user code: the tracer reports it
        return transforms
    leaves = jax.tree_util.tree_leaves(out)
    if len(leaves) == 0 or not all(hasattr(x, "dtype") for x in leaves):
        return transforms
    first = leaves[0]
    diff = [args[i] for i in (_ints(parts["argnums"]) or (0,)) if i < len(args) and i not in static]
    if not diff or not all(hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.inexact) for x in jax.tree_util.tree_leaves(diff)):
        return transforms
    if len(leaves) == 1 and first.shape == () and jax.numpy.issubdtype(first.dtype, jax.numpy.floating):
        size = sum(int(x.size) for x in jax.tree_util.tree_leaves(diff))
        extra = ("grad", "hessian") if size <= 64 else ("grad",)
        return tuple(dict.fromkeys((*transforms, *extra)))
    return transforms


def fed_back_state(fn: Any, parts: Mapping[str, Any], others: Iterable[Mapping[str, Any]]) -> tuple[int, ...]:
    """The state arguments of a step the tests fed its own output back into: the positions `p`
    (in order, matched with the outputs `0, 1, ...`: `Entry.state_argnums`) where output `k` has
    argument `p`'s tree structure and shapes, when one of the `others` (the entry parts of the
    same function's other recorded signatures) was called with output `k` exactly, leaf types
    included, where this signature had another type. That other call is the evidence that the
    test passed the returned state back (`state = step(params, state)`); without it, an output
    shaped like an argument is no state. () when there is none."""
    import jax  # JAX: this runs in the worker

    args = parts["args"]
    call, dyn = _of_dynamic(fn, parts)

    def types(tree: Any) -> tuple[Any, tuple[tuple[str, tuple[int, ...], bool], ...]] | None:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if not all(hasattr(x, "dtype") and hasattr(x, "shape") for x in leaves):
            return None
        return treedef, tuple((str(jax.numpy.dtype(x.dtype)), tuple(x.shape), bool(getattr(x, "weak_type", False))) for x in leaves)

    try:
        out = jax.eval_shape(call, *[args[i] for i in dyn])
    except Exception:  # noqa: BLE001 - user code: the tracer reports it
        return ()
    outs = out if isinstance(out, tuple) else (out,)
    pairs: list[tuple[int, int]] = []  # (output k, argument p)
    start = 0
    for k, o in enumerate(outs):
        got = types(o)
        p = next((p for p in dyn if p >= start and got is not None and (t := types(args[p])) is not None and t[0] == got[0] and [x[1] for x in t[1]] == [x[1] for x in got[1]]), None)
        if p is None:
            break
        pairs.append((k, p))
        start = p + 1
    fed = any(
        len(other["args"]) == len(args)
        and (now := types(other["args"][p])) is not None
        and now == types(outs[k])
        and now != types(args[p])
        for other in others
        for k, p in pairs
    )
    return tuple(p for _, p in pairs) if fed else ()


def entry_name(qualname: str, sig: Mapping[str, Any]) -> str:
    return f"{qualname} [{sig['transform']} from {sig.get('site') or '?'}]"


def origin(sig: Mapping[str, Any], ran: Iterable[str]) -> str:
    """What a finding of a recorded entry says about it: `recorded from tests/t.py:42 (jit; grad added)`."""
    told = {sig["transform"], "jit"} | ({_AD[sig["transform"]]} if sig["transform"] in _AD else set())
    added = [t for t in ran if t not in told and t != "call"]
    return f"recorded from {sig.get('site') or '?'} ({sig['transform']}{'; ' + ', '.join(added) + ' added' if added else ''})"


def _all_float(spec: Any) -> bool:
    """Every array of SPEC is a float or complex one (and there is one)."""
    out: list[bool] = []

    def walk(x: Any) -> None:
        if isinstance(x, str):
            out.append(specs.parse(x).dtype.startswith(("float", "bfloat", "complex")))
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, dict) and "$str" not in x and "$ref" not in x and "$jit" not in x and "$opaque" not in x:
            inner = x.get("$tuple", x.get("$dict", x.get("fields", x)))
            walk(list(inner.values()) if isinstance(inner, dict) else inner)

    walk(spec)
    return bool(out) and all(out)


def site_of(sig: Mapping[str, Any], root: str) -> tuple[str, int] | None:
    """The recorded call's (absolute file, line)."""
    file, _, line = str(sig.get("site") or "").rpartition(":")
    if not file or not line.isdigit():
        return None
    return (file if os.path.isabs(file) else os.path.join(root, file), int(line))


def stamp(finding: dict[str, Any], origin: str, site: tuple[str, int] | None, made: Mapping[str, tuple[str, int] | None] | None = None) -> None:
    """A recorded entry's finding (as a dict) says where the entry came from; a non-differentiable
    leaf (STB402) is the test's call's doing: it points where the recording saw the test's code
    make the leaf (`made`, leaf -> file and line), else at the test's call, as `pytest
    --stabcheck` does."""
    finding["evidence"] = {**(finding.get("evidence") or {}), "entry": origin}
    leaves = (finding.get("evidence") or {}).get("leaves") or []
    at = (made or {}).get(leaves[0]) if leaves and finding.get("code") == "STB402" else None
    if at is not None:
        finding.update(path=shown_path(at[0]), line=at[1], col=1, end_line=None, end_col=None, snippet="", fix=None)
        finding["message"] = f"the leaf `{leaves[0]}` is made here (the recording saw the test's code make it): {finding.get('message', '')}"
    elif site is not None and finding.get("code") == "STB402":
        finding.update(path=shown_path(site[0]), line=site[1], col=1, end_line=None, end_col=None, snippet="", fix=None)
