"""`pytest --stabcheck-record`: the listener that keeps each transformed call's abstract signature
and writes them, merged with the earlier runs', to `.stabcheck/recorded.json` (`traced.recorded`).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabcheck._files import write_atomic_nofollow
from stabcheck.runtime._calls import GRAD_FAMILY, TransformedCall
from stabcheck.traced import recorded
from stabcheck.traced.source import is_internal, is_library, leaf_origin, module_namespace

_PER_FUNCTION_SEEN = 4 * recorded.MAX_COMPILED  # distinct signatures held per function during a run


def _relative(path: str, root: Path) -> str:
    if not path:
        return ""
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def _no_array(value: Any) -> bool:
    try:
        return not recorded.has_array(recorded.describe(value))
    except recorded.Unrebuildable:
        return True


def _unpartial(fn: Any, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], tuple[Any, ...], dict[str, Any]]:
    """`jit(partial(f, cfg))(x)` as `f(cfg, x)`: the bound values join the arguments, static
    where they hold no array (as they were: constants of the test's program), and the
    transform's argument numbers move past them."""
    while isinstance(fn, functools.partial):
        n, bound = len(fn.args), fn.args
        static = {i + n for i in _ints(options.get("static_argnums"))} | {i for i, v in enumerate(bound) if _no_array(v)}
        if static:
            options["static_argnums"] = sorted(static)
        names = [*_names(options.get("static_argnames")), *(k for k, v in fn.keywords.items() if k not in kwargs and _no_array(v))]
        if names:
            options["static_argnames"] = sorted(set(names))
        if "argnums" in options:
            options["argnums"] = [i + n for i in _ints(options["argnums"])] if not isinstance(options["argnums"], int) else options["argnums"] + n
        if "in_axes" in options:
            axes = options["in_axes"]
            options["in_axes"] = [None] * n + (list(axes) if isinstance(axes, (list, tuple)) else [axes] * len(args))
        args, kwargs, fn = (*bound, *args), {**fn.keywords, **kwargs}, fn.func
    return fn, options, args, kwargs


def _is_test_file(path: str) -> bool:
    base = os.path.basename(path)
    return base.startswith("test_") or base.endswith("_test.py") or base == "conftest.py"


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Two calls' objects are the same cache key to JAX (identical, or equal as it compares them)."""
    if len(a) != len(b):
        return False
    try:
        return all(x is y or bool(x == y) for x, y in zip(a, b))
    except Exception:  # an `==` that raises or is not a bool: not the same key
        return False


def _ints(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _names(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


@dataclass(slots=True)
class Recorder:
    """A `Listeners` callback: one signature per new transformed call, kept in memory until `write`."""

    root: Path
    data: dict[str, Any] = field(default_factory=recorded.empty)
    max_traces: int = 3  # the plugin's: one more compiled signature per function is kept (recorded.compiled_limit)
    # (function, signature) -> the distinct sets of `jax.jit` objects its calls held (kept alive,
    # so that an id is never another object's; at most `compiled_limit` sets)
    objects: dict[tuple[str, str], list[tuple[Any, ...]]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / recorded.DEFAULT_PATH

    def __call__(self, call: TransformedCall) -> None:
        if hasattr(call.fn, "stabcheck_fn"):  # `jit(grad(f))`: the inner transform's call is told too
            return
        site = f"{_relative(call.site[0], self.root)}:{call.site[1]}" if call.site[0] else ""
        fn, options, args, kwargs = _unpartial(call.fn, dict(call.options), tuple(call.args), dict(call.kwargs))
        fn = inspect.unwrap(fn)
        shown = recorded.importable_name(fn) or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        args, kwargs = recorded.opaque_statics(fn, options, args, kwargs) if call.transform == "jit" else (args, kwargs)
        try:
            name, sig = recorded.signature(fn, call.transform, options, args, kwargs, site)
        except recorded.Unrebuildable as e:
            if recorded.importable_name(fn) is None and self._enclosing(call):
                return  # the user's function that applied the transform is recorded as called
            if shown not in self.data["functions"]:
                recorded.skip(self.data, shown, call.transform, str(e), site)
            return
        known = self.data["functions"].get(name, {}).get("signatures", [])
        if len(known) >= _PER_FUNCTION_SEEN:
            return
        try:
            file = _relative(inspect.getsourcefile(fn) or "", self.root)
        except TypeError:
            file = ""
        text = recorded.dumps(sig)
        held_now = (*(recorded.jit_objects((args, kwargs)) if '"$jit"' in text else ()), *recorded.opaque_values(args, kwargs))
        if held_now:
            # a `jax.jit` built per object (a Module's field), a static argument made anew for
            # each call (an optimizer): one signature, as many compiled programs as distinct
            # objects, each a new cache key to JAX; the replay calls it that many times
            held = self.objects.setdefault((name, recorded.signature_key(sig)), [])
            if not any(_same(h, held_now) for h in held) and len(held) < recorded.compiled_limit(self.max_traces):
                held.append(held_now)
            if len(held) > 1:
                sig["objects"] = len(held)
        if call.transform in GRAD_FAMILY:
            made = self._leaf_sites(fn, options, args, call.site)
            if made:
                sig["made"] = made
        recorded.add(self.data, name, file, sig)
        self.data["skipped"].pop(name, None)

    def _leaf_sites(self, fn: Any, options: dict[str, Any], args: tuple[Any, ...], site: tuple[str, int]) -> dict[str, str]:
        """Where the test's code made each bool/int leaf of the differentiated arguments
        (`{"d": 1}` in the helper the test called), as `file:line`: the replay reports STB402
        there, the test itself being gone by then (`traced.source.leaf_origin`)."""
        import jax  # JAX: the recorder runs with it
        import numpy as np  # NumPy: beside JAX

        if not site[0]:
            return {}
        try:
            names = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            return {}
        nums = options.get("argnums", 0)
        namespace = module_namespace(site[0])
        out: dict[str, str] = {}
        for i in (nums,) if isinstance(nums, int) else tuple(nums):
            if not 0 <= i < len(args):
                continue
            for path, leaf in jax.tree_util.tree_flatten_with_path(args[i])[0]:
                dtype = getattr(leaf, "dtype", None)
                if dtype is None:
                    try:
                        dtype = np.result_type(leaf)  # a Python number
                    except TypeError:
                        continue  # not an array or a number
                if np.issubdtype(dtype, np.inexact):
                    continue
                leaf_name = f"{names[i] if i < len(names) else f'args[{i}]'}{jax.tree_util.keystr(path)}"
                made = leaf_origin(leaf_name, str(dtype), site[0], site[1], namespace)
                if made is not None:
                    out[leaf_name] = f"{_relative(made.file, self.root)}:{made.line}"
        return out

    def _enclosing(self, call: TransformedCall) -> bool:
        """A transform applied inside one of the user's functions to something the recording
        cannot name (a lambda or a function defined inside, closing over the arguments:
        `jax.grad(lambda v: mlp(w, v))(x)`): that function, called with its arguments as they
        are when it applies the transform, is recorded as a `call` signature (the replay runs it
        as the test did, its own transform included), at the line that called it. Not a test
        module's function (a test is not replayed), nor a method. True when recorded."""
        frame: Any = sys._getframe(1)
        while frame is not None and not (os.path.abspath(frame.f_code.co_filename) == call.site[0] and frame.f_lineno == call.site[1]):
            frame = frame.f_back
        return self._record_frame(frame)

    def raised(self, exc: BaseException) -> bool:
        """A test failed because JAX raised a known hazard (`runtime._raised`) inside one of the
        user's functions, before any trace the recorder was told of (`jax.jit(apply)(model, x)`
        rejected while JAX reads the arguments, a seed too large for `jax.jit(PRNGKey)`): the
        innermost such function on the traceback is recorded as called, with the arguments its
        frame held. True when recorded."""
        tb = exc.__traceback__
        frame = None
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if not (is_internal(name) or is_library(name) or _is_test_file(name)):
                frame = tb.tb_frame
            tb = tb.tb_next
        return self._record_frame(frame, untraced=True)

    def _record_frame(self, frame: Any, untraced: bool = False) -> bool:
        """The function running in `frame` as a `call` signature (see `_enclosing`); with
        `untraced`, not one JAX was tracing (its arguments are tracers: its transformed call was
        recorded already)."""
        if frame is None or _is_test_file(frame.f_code.co_filename):
            return False
        code = frame.f_code
        module = frame.f_globals.get("__name__", "")
        name = f"{module}:{code.co_qualname}"
        try:
            fn = recorded.resolve(name)
        except (ImportError, AttributeError):
            return False
        if getattr(inspect.unwrap(fn), "__code__", None) is not code:
            return False
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            return False
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in params:
            if p.name not in frame.f_locals:
                return False
            value = frame.f_locals[p.name]
            if p.kind is p.VAR_POSITIONAL:
                args.extend(value)
            elif p.kind is p.VAR_KEYWORD:
                kwargs.update(value)
            elif p.kind is p.KEYWORD_ONLY:
                kwargs[p.name] = value
            else:
                args.append(value)
        if untraced:
            import jax  # JAX: the recorder runs with it

            if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs))):
                return False
        caller = frame.f_back
        while caller is not None and (is_internal(caller.f_code.co_filename) or is_library(caller.f_code.co_filename)):
            caller = caller.f_back
        site = f"{_relative(os.path.abspath(caller.f_code.co_filename), self.root)}:{caller.f_lineno}" if caller is not None else ""
        try:
            name, sig = recorded.signature(fn, "call", {}, tuple(args), kwargs, site)
        except recorded.Unrebuildable:
            return False
        try:
            file = _relative(inspect.getsourcefile(fn) or "", self.root)
        except TypeError:
            file = ""
        recorded.add(self.data, name, file, sig)
        self.data["skipped"].pop(name, None)
        return True

    def write(self) -> str:
        """Merge into the file (the earlier runs' signatures stay, bounded) and say what was written.
        A file that is not ours, or of a newer version, is left alone: RecordedError."""
        old: dict[str, Any] = recorded.empty()
        if self.path.exists():
            old = recorded.read(str(self.path))
        merged = recorded.merge(old, self.data, recorded.compiled_limit(self.max_traces))
        self.path.parent.mkdir(exist_ok=True)
        write_atomic_nofollow(self.path, recorded.dumps(merged), what="--stabcheck-record")
        n = sum(len(f["signatures"]) for f in merged["functions"].values())
        return f"recorded {n} signature{'s' if n != 1 else ''} of {len(merged['functions'])} function{'s' if len(merged['functions']) != 1 else ''} in {_relative(str(self.path), Path.cwd()) or self.path}" + (f" ({len(merged['skipped'])} not kept: see \"skipped\")" if merged["skipped"] else "")
