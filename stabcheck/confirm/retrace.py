"""Count compilations of a jitted entry over its `calls` and its state fed back, and name what changed.

`count_retraces(entry)` calls the jitted entry on the example arguments, on every tuple in
`calls`, and (for `state_argnums` step entries) three more times with the returned state fed
back. Compilations are counted with JAX's monitoring events (`backend_compile_duration`: the jit
cache size also grows for argument types that share one compiled program, e.g. a NumPy and a JAX
float32 scalar, so it over-counts); each new one is explained by
the argument or state leaf whose shape, dtype or weak_type changed, or the static argument whose
value changed. Runs in the worker (imports JAX).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stabcheck.traced.entries import Entry

FEEDBACK_STEPS = 3
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_COUNT = [0]
_LISTENING = [False]


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


@dataclass(frozen=True, slots=True)
class Retraces:
    calls: int
    compiles: int
    changes: tuple[str, ...] = ()  # one line per compilation after the first
    state_changes: tuple[str, ...] = ()  # the changes seen while feeding the state back
    feedback: bool = False
    notes: tuple[str, ...] = field(default=())


def _sig(x: Any) -> tuple[Any, ...]:
    # JAX: imported when this runs, never on import
    import jax

    if hasattr(x, "shape") and hasattr(x, "dtype"):
        aval = jax.typeof(x)
        return ("array", tuple(x.shape), str(x.dtype), bool(getattr(aval, "weak_type", False)))
    if isinstance(x, (bool, int, float, complex)):
        return ("python", type(x).__name__, True)
    return ("object", type(x).__name__)


def _describe(old: tuple[Any, ...], new: tuple[Any, ...]) -> str:
    def show(s: tuple[Any, ...]) -> str:
        if s[0] == "array":
            return f"{s[2]}{list(s[1])}" + (" (weak)" if s[3] else "")
        return f"Python {s[1]}" if s[0] == "python" else s[1]

    return f"{show(old)} -> {show(new)}"


def leaf_signatures(args: tuple[Any, ...], names: list[str], static: tuple[int, ...]) -> dict[str, Any]:
    # JAX: imported when this runs, never on import
    import jax

    out: dict[str, Any] = {}
    for i, a in enumerate(args):
        if i in static:
            out[names[i]] = ("static", repr(a)[:80])
            continue
        for kp, leaf in jax.tree_util.tree_flatten_with_path(a)[0]:
            out[names[i] + jax.tree_util.keystr(kp)] = _sig(leaf)
    return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"`{k}` {'appeared' if a is None else 'disappeared'}")
        elif a[0] == "static" or b[0] == "static":
            out.append(f"static `{k}`: {a[1]} -> {b[1]}")
        else:
            out.append(f"`{k}`: {_describe(a, b)}")
    return out


def count_retraces(entry: Entry, names: list[str]) -> Retraces:
    # JAX: imported when this runs, never on import
    import jax

    fn = entry.fn
    jitted = fn if hasattr(fn, "_cache_size") else jax.jit(fn, static_argnums=entry.static_argnums)
    kwargs = dict(entry.kwargs)
    base = compilations()
    seqs: list[tuple[Any, ...]] = [entry.args, *[tuple(c) for c in (entry.calls or ())]]
    changes: list[str] = []
    state_changes: list[str] = []
    seen: list[dict[str, Any]] = []
    ncalls = 0

    def call(args: tuple[Any, ...], into: list[str]) -> Any:
        nonlocal ncalls
        before = compilations()
        sig = leaf_signatures(args, names, entry.static_argnums)
        out = jax.block_until_ready(jitted(*args, **kwargs))
        ncalls += 1
        if compilations() > before and seen:
            closest = min(seen, key=lambda s: len(diff(s, sig)))
            into.append("; ".join(diff(closest, sig)) or "an argument of a type stabcheck cannot compare")
        seen.append(sig)
        return out

    for args in seqs:
        call(args, changes)
    if entry.state_argnums:
        args = entry.args
        out = call(args, [])
        for _ in range(FEEDBACK_STEPS):
            outs = out if isinstance(out, (tuple, list)) else (out,)
            new = list(args)
            for k, i in enumerate(entry.state_argnums):
                new[i] = outs[k]
            args = tuple(new)
            out = call(args, state_changes)
    compiles = compilations() - base
    return Retraces(ncalls, compiles, tuple(changes), tuple(state_changes), bool(entry.state_argnums))
