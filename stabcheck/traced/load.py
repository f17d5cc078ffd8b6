"""Load the entries a target names (runs in the worker: it imports user code, and JAX).

    path/to/file.py:NAME   an @entry factory, a module-level (fn, args), Entry or dict of them,
                           or a plain function completed by --arg/--static specs or by its
                           jaxtyping annotations (--dim)
    path/to/file.py        every @stabcheck.entry factory in the file
    pkg.module:NAME        the same, by module name

A module is imported with its own directory on sys.path, so an entries file can import its
siblings. Failures become STB902 findings (`load_error`) at the line that raised.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from types import ModuleType
from typing import Any

from stabcheck import registry
from stabcheck.finding import Finding, Span
from stabcheck.traced import recorded, specs
from stabcheck.traced.checks import shown_path
from stabcheck.traced.filtered import filter_entry
from stabcheck.traced.entries import ENTRY_MARK, Entry, normalize
from stabcheck.traced.source import exception_site, function_site


class TargetError(Exception):
    """A target that names nothing traceable; the message says what is wrong, `site` where."""

    def __init__(self, message: str, site: Any = None) -> None:
        super().__init__(message)
        self.site = site


def _call_factory(factory: Any, name: str) -> dict[str, Entry]:
    try:
        value = factory()
    except Exception as e:  # noqa: BLE001 - user code
        raise TargetError(f"entry factory `{name}` raised {_describe(e)}") from e
    try:
        made = normalize(value, name)
    except (TypeError, ValueError) as e:
        raise TargetError(str(e), function_site(factory)) from None
    for e in made.values():
        object.__setattr__(e, "factory", factory)  # where its arguments are made (STB402's line)
    return made


def split_target(target: str) -> tuple[str, str | None]:
    """'a/b.py:NAME' -> ('a/b.py', 'NAME'); a Windows drive letter is not a separator."""
    head, sep, tail = target.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail or (len(head) == 1 and head.isalpha()):
        return target, None
    return head, tail or None


def is_file_target(where: str) -> bool:
    return where.endswith((".py", ".pyi")) or os.sep in where or "/" in where


def import_module(where: str) -> ModuleType:
    if is_file_target(where):
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise TargetError(f"`{where}` is not a file")
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        stem = os.path.splitext(os.path.basename(path))[0]
        loaded = sys.modules.get(stem)
        if loaded is not None and os.path.realpath(getattr(loaded, "__file__", "") or "") == os.path.realpath(path):
            return loaded
        name = stem if stem.isidentifier() and stem not in sys.modules else f"_stabcheck_target_{abs(hash(path))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise TargetError(f"`{where}` cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(where)


def module_file(spec: dict[str, Any]) -> str:
    where, _ = split_target(spec["target"])
    if is_file_target(where):
        return os.path.abspath(where)
    found = importlib.util.find_spec(where) if where else None
    return os.path.abspath(found.origin) if found is not None and found.origin else where


HANDWRITTEN: set[str] = set()  # `module:qualname` of the functions hand-written entries check
NOTES: list[str] = []  # notes of the last load (a recorded function that is gone), taken by the worker


def load_target(spec: dict[str, Any]) -> dict[str, Entry]:
    """Named entries for one target spec {"target", "args", "static", "dims"}, or {"target",
    "recorded", "paths"} for the signatures `pytest --stabcheck-record` saw."""
    if "recorded" in spec:
        return {n: _same_origin(e, filter_entry(e)) for n, e in recorded_entries(spec).items()}
    found = _load_target(spec)
    for e in found.values():
        HANDWRITTEN.add(_identity(e.fn))
    return {n: _same_origin(e, filter_entry(e)) for n, e in found.items()}


def _same_origin(entry: Entry, made: Entry) -> Entry:
    """`made` (the entry with its Modules split for tracing) still says where `entry` came from."""
    for attr in ("origin", "recorded_site", "made_sites", "factory"):
        if hasattr(entry, attr) and not hasattr(made, attr):
            object.__setattr__(made, attr, getattr(entry, attr))
    return made


def _identity(fn: Any) -> str:
    """A function's source file and qualified name: the same function whichever name its module
    was imported under (an entries file imports `model`, the recording names `pkg.model`)."""
    fn = inspect.unwrap(fn) if callable(fn) else fn
    try:
        file = inspect.getsourcefile(fn) or ""
    except TypeError:
        file = ""
    return f"{os.path.realpath(file) if file else getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"


def recorded_entries(spec: dict[str, Any]) -> dict[str, Entry]:
    """One entry per recorded signature of one function; none where a hand-written entry checks
    it (that one wins), and a note instead of an error where the function is gone."""
    name = spec["target"]
    for folder in reversed(spec.get("paths") or []):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        given = _resolve_recorded(name, spec)
        fn = inspect.unwrap(given)
    except (ImportError, AttributeError) as e:
        NOTES.append(f"recorded function `{name}` cannot be found ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); record again with `pytest --stabcheck-record`")
        return {}
    if not callable(fn):
        NOTES.append(f"recorded function `{name}` is no longer a function; record again with `pytest --stabcheck-record`")
        return {}
    if _identity(fn) in HANDWRITTEN:
        return {}
    out: dict[str, Entry] = {}
    qualname = name.partition(":")[2]
    built: list[tuple[str, dict[str, Any], dict[str, Any], Any]] = []
    for sig in spec["recorded"].get("signatures", []):
        label = recorded.entry_name(qualname, sig)
        # a jitted function the test mapped or differentiated is replayed jitted (its static
        # arguments are part of the call: `vmap` over one raises); a jit trace is of the function
        base = given if sig["transform"] not in recorded.COMPILING and given is not fn and hasattr(given, "lower") else fn
        target = recorded.replayed_function(base, sig)  # has_aux: the loss only
        try:
            parts = recorded.entry_parts(base, sig)
            parts["transforms"] = recorded.more_transforms(target, parts)
        except (recorded.Unrebuildable, specs.SpecError, ImportError, AttributeError, TypeError) as e:
            NOTES.append(f"recorded signature `{label}` cannot be rebuilt: {e}")
            continue
        built.append((label, sig, parts, target))
    # the signatures the tests compiled one function for, in one program shape, are replayed as
    # calls of the first: the confirm stage counts JAX's compilations over them (STB504)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (_, sig, parts, _target) in enumerate(built):
        if sig["transform"] in recorded.COMPILING:
            groups.setdefault((sig["transform"], parts["static_argnums"], len(parts["args"]), tuple(sorted(parts["kwargs"]))), []).append(i)
    for members in groups.values():
        # a signature the tests called with several `jax.jit` objects (`"objects"`) is called
        # again with as many, each rebuilt as a new `jax.jit` object
        calls = [a for k, i in enumerate(members) for a in ([built[i][2]["args"]] if k else []) + [recorded.entry_parts(built[i][3], built[i][1])["args"] for _ in range(int(built[i][1].get("objects", 1)) - 1)]]
        if calls and not built[members[0]][2]["kwargs"]:
            built[members[0]][2]["calls"] = tuple(calls)
        # a step whose returned state another recorded call was given back: replayed as a step
        # (init -> step -> step, every state leaf's type compared: STB204 where it drifts)
        for i in members if len(members) > 1 else ():
            label, sig, parts, target = built[i]
            state = recorded.fed_back_state(target, parts, [built[j][2] for j in members if j != i])
            if state:
                parts["state_argnums"] = state
    for n, (label, sig, parts, target) in enumerate(built):
        if label in out:  # signatures recorded at one test line (a loop): one entry each
            label = f"{label} #{n + 1}"
        entry = Entry(target, **parts)
        object.__setattr__(entry, "origin", recorded.origin(sig, parts["transforms"]))
        root = (spec.get("paths") or [os.getcwd()])[0]
        object.__setattr__(entry, "recorded_site", recorded.site_of(sig, root))
        object.__setattr__(entry, "made_sites", {leaf: recorded.site_of({"site": at}, root) for leaf, at in (sig.get("made") or {}).items()})
        if '"$opaque"' in recorded.dumps(sig["args"]) + recorded.dumps(sig["kwargs"]):
            # a static argument held as its type only: the entry replays the call pattern alone
            object.__setattr__(entry, "stand_ins", recorded.dumps(sig["args"]).count('"$opaque"') + recorded.dumps(sig["kwargs"]).count('"$opaque"'))
        out[label] = entry
    return out


def pytest_module_name(file: str) -> tuple[str, str]:
    """(the folder pytest puts on `sys.path`, the module name) for a test module, as pytest's
    default `prepend` import mode does (its rootdir/conftest insertion): the first folder above
    FILE without an `__init__.py`, and the dotted path from it (`tests/test_model.py` -> `tests`,
    `test_model`; with `tests/__init__.py` -> the root, `tests.test_model`)."""
    folder = os.path.dirname(os.path.abspath(file))
    parts = [os.path.splitext(os.path.basename(file))[0]]
    while os.path.isfile(os.path.join(folder, "__init__.py")) and os.path.dirname(folder) != folder:
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    return folder, ".".join(parts)


def _resolve_recorded(name: str, spec: dict[str, Any]) -> Any:
    """A recorded `module:qualname`, imported from the project root or `src/`; a module pytest
    imported from its test folder (a function defined in a test module) is imported the same way,
    from the recorded file's folder."""
    try:
        return recorded.resolve(name)
    except ImportError:
        file = str((spec.get("recorded") or {}).get("file") or "")
        root = (spec.get("paths") or [os.getcwd()])[0]
        path = file if os.path.isabs(file) else os.path.join(root, file)
        if not file or not os.path.isfile(path):
            raise
        folder, module = pytest_module_name(path)
        if module != name.partition(":")[0]:
            raise
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return recorded.resolve(name)


def _load_target(spec: dict[str, Any]) -> dict[str, Entry]:
    where, attr = split_target(spec["target"])
    module = import_module(where)
    shown = shown_path(where) if is_file_target(where) else where
    if attr is None:
        out: dict[str, Entry] = {}
        for name, obj in vars(module).items():
            if callable(obj) and getattr(obj, ENTRY_MARK, False):
                out.update(_call_factory(obj, name))
        if not out:
            raise TargetError(f"`{shown}` has no @stabcheck.entry factory; name one as `{shown}:NAME`")
        return out
    if not hasattr(module, attr):
        raise TargetError(f"`{shown}` has no attribute `{attr}`")
    obj = getattr(module, attr)
    if callable(obj) and getattr(obj, ENTRY_MARK, False):
        return _call_factory(obj, attr)
    if callable(obj) and not isinstance(obj, Entry):
        return {attr: function_entry(obj, spec)}
    return normalize(obj, "" if isinstance(obj, dict) else attr)


def function_entry(fn: Any, spec: dict[str, Any]) -> Entry:
    """An Entry for a plain function: abstract args from specs, else from jaxtyping annotations."""
    dims = {k: int(v) for k, v in (spec.get("dims") or {}).items()}
    static = {int(k): v for k, v in (spec.get("static") or {}).items()}
    trees = [specs.parse_tree(a, dims) if isinstance(a, str) else specs.spec_tree(a, dims) for a in spec.get("args") or []]
    if not trees:
        trees = _annotated(fn, dims, static)
    args: list[Any] = []
    it = iter(trees)
    for i in range(len(trees) + len(static)):
        if i in static:
            args.append(static[i])
        else:
            args.append(specs.to_abstract(next(it)))
    transforms = tuple(spec.get("transforms") or ("jit", "grad"))
    return Entry(fn, tuple(args), static_argnums=tuple(sorted(static)), transforms=transforms)


def _annotated(fn: Any, dims: dict[str, int], static: dict[int, Any]) -> list[Any]:
    target = getattr(fn, "__wrapped__", fn)
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    hints = getattr(target, "__annotations__", {}) or {}
    out: list[Any] = []
    for i, p in enumerate(params):
        if i in static or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        s = specs.from_jaxtyping(hints.get(p.name), dims)
        if s is None:
            if p.default is not p.empty:
                break
            raise TargetError(f"parameter `{p.name}` of `{getattr(target, '__qualname__', target)}` has no jaxtyping annotation; give every argument with --arg specs")
        out.append(s)
    if not out:
        raise TargetError(f"`{getattr(target, '__qualname__', target)}` is a function; give its arguments with --arg specs (e.g. --arg 'f32[8,2]') or write an @stabcheck.entry factory")
    return out


def _analysis_error() -> Any:
    return registry.get("STB902")


def load_error(spec: dict[str, Any], exc: BaseException) -> Finding:
    """STB902 for a target whose module raised, exited or named nothing traceable."""
    file = module_file(spec)
    site = getattr(exc, "site", None) or exception_site(exc, within=(os.path.realpath(file),))
    path = shown_path(site.file if site else file)
    line = site.line if site else 1
    what = _describe(exc)
    if isinstance(exc, (TargetError, specs.SpecError)):
        message = f"target `{_shown_target(spec['target'])}` cannot be traced: {exc}; its entries were not analysed"
    else:
        message = f"importing `{_shown_target(spec['target'])}` failed with {what}; its entries were not traced"
    return _analysis_error().finding(
        path=path,
        span=Span(line, site.col if site else 1),
        message=message,
        help="make the module importable without side effects (guard scripts with `if __name__ == \"__main__\":`)",
        detail=spec["target"],
        evidence={"error": what, "target": spec["target"]},
        stage="traced",
    )


def crash_finding(spec: dict[str, Any], name: str, entry: Entry, exc: BaseException) -> Finding:
    """STB902 for an entry whose analysis itself raised (not a hazard stabcheck recognises)."""
    site = exception_site(exc) or function_site(entry.fn)
    file = site.file if site else module_file(spec)
    what = _describe(exc)
    return _analysis_error().finding(
        path=shown_path(file),
        span=Span(site.line if site else 1, site.col if site else 1),
        message=f"entry `{name}` could not be traced: {what}; its checks did not run",
        help="run the entry's function once by hand to see the error, or raise --timeout",
        function=name,
        detail=name,
        evidence={"error": what, "target": spec["target"]},
        stage="traced",
    )


def _shown_target(target: str) -> str:
    where, attr = split_target(target)
    shown = shown_path(where) if is_file_target(where) else where
    return f"{shown}:{attr}" if attr else shown


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
