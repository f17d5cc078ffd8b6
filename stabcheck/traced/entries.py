"""What the traced and confirm stages run: `Entry`, and the `@stabcheck.entry` decorator.

    @stabcheck.entry
    def train_step_entry():
        params, opt_state, x = example_inputs()
        return stabcheck.Entry(train_step, (params, opt_state, x), state_argnums=(0, 1), transforms=("call",))

A factory may return `(fn, args)`, an `Entry`, or a mapping `name -> (fn, args) | Entry`.
This module imports no JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TRANSFORMS = ("call", "jit", "grad", "jvp", "vmap", "jacfwd", "jacrev", "hessian", "hvp")
ENTRY_MARK = "__stabcheck_entry__"


@dataclass(frozen=True)
class Entry:
    """A function and example arguments for the traced and confirm stages.

    fn: the function under test. args/kwargs: example arguments (arrays, pytrees, or
    `jax.ShapeDtypeStruct`s). static_argnums: arguments passed as Python values, not traced.
    argnums: what `grad` differentiates. in_axes: for `vmap`. state_argnums: arguments that a step
    function returns updated, as the first elements of its output tuple in the same order.
    transforms: subset of TRANSFORMS to check ("call": the function applies its own transforms).
    calls: argument tuples for the retrace check. jax_config: JAX flags set before tracing.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    static_argnums: tuple[int, ...] = ()
    argnums: int | tuple[int, ...] = 0
    in_axes: Any = 0
    state_argnums: tuple[int, ...] = ()
    transforms: tuple[str, ...] = ("jit", "grad")
    calls: Sequence[tuple[Any, ...]] | None = None
    jax_config: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"Entry.fn must be callable, got {type(self.fn).__name__}")
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args) if isinstance(self.args, list) else (self.args,))
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if isinstance(self.transforms, str) or bad:
            raise ValueError(f"unknown transform {bad[0] if bad else self.transforms!r}; expected a tuple drawn from {', '.join(TRANSFORMS)}")


def is_jitted(f: Any) -> bool:
    """A `jax.jit` function (it has its own compile cache)."""
    return type(f).__name__ == "PjitFunction" and hasattr(f, "_cache_size") and hasattr(f, "trace")


def is_filter_jit(f: Any) -> bool:
    """An `eqx.filter_jit` function: every non-array leaf, Python numbers included, is static."""
    return type(f).__module__.startswith("equinox") and type(f).__name__ == "_JitWrapper"


def holds_objects(e: Entry) -> bool:
    """The entry's function takes non-array leaves as they are (an `eqx.filter_jit` function, or
    a `call` entry that applies its own transforms): the stages hold them fixed, not traced."""
    return is_filter_jit(e.fn) or tuple(e.transforms) == ("call",)


def entry(factory: Callable[[], Any]) -> Callable[[], Any]:
    """Mark a zero-argument factory returning `(fn, args)`, an `Entry`, or a mapping of them."""
    setattr(factory, ENTRY_MARK, True)
    return factory


def normalize(obj: Any, name: str) -> dict[str, Entry]:
    """Turn what a factory or a module-level target holds into named Entries.

    Raises TypeError with a message naming the target when the shape is wrong.
    """
    if isinstance(obj, Entry):
        return {name: obj}
    if isinstance(obj, tuple) and len(obj) == 2 and callable(obj[0]):
        args = obj[1]
        if not isinstance(args, (tuple, list)):
            args = (args,)
        return {name: Entry(obj[0], tuple(args))}
    if isinstance(obj, Mapping):
        out: dict[str, Entry] = {}
        for k, v in obj.items():
            if isinstance(v, Mapping):
                raise TypeError(f"`{name}[{k!r}]` is a mapping; expected (fn, args) or stabcheck.Entry")
            out.update(normalize(v, f"{name}:{k}" if name else str(k)))
        return out
    raise TypeError(f"`{name}` returned {type(obj).__name__}; expected (fn, args), stabcheck.Entry, or a mapping of them")
