"""What the pytest plugin saw a test call through a JAX transform: one `TransformedCall` per new
(function, transform, abstract signature), handed to every listener.

The plugin's interception (`runtime._hook`) emits them; the traced checks and the recorder
(`pytest --stabcheck-record`, `traced.recorded`) listen. This module imports no JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TRANSFORM_NAMES = (
    "jit", "grad", "value_and_grad", "vmap", "jacfwd", "jacrev", "hessian", "jvp", "vjp",
    "filter_jit", "filter_grad", "filter_value_and_grad", "nnx.jit",
)  # fmt: skip
# the transforms that differentiate the arguments `argnums` names (default 0)
GRAD_FAMILY = ("grad", "value_and_grad", "jacfwd", "jacrev", "hessian")


@dataclass(frozen=True, slots=True)
class TransformedCall:
    """A user function called through a transform, with the arguments the test really passed.

    fn: the user's function (unwrapped: not the transformed callable). transform: one of
    TRANSFORM_NAMES. options: the transform's options as the user gave them (static_argnums,
    static_argnames, argnums, in_axes, out_axes, has_aux, ...), only those that were given.
    args/kwargs: the real arguments, before the transform. site: (absolute file, line) of the
    user's call (the test line).

    `fn` is the callable the user gave the transform: their function, a `functools.partial` of
    it, or, where they nested transforms (`jit(grad(f))`, `jacfwd(grad(f))`), the inner
    transformed callable, so `transform(fn, **options)(*args, **kwargs)` is the call again. A
    call made inside another transform's trace (`jax.grad(loss)` in a jitted step) has tracers
    for args; its outer call carries the real values.
    """

    fn: Callable[..., Any]
    transform: str
    options: Mapping[str, Any] = field(default_factory=dict)
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    site: tuple[str, int] = ("", 0)


Listener = Callable[[TransformedCall], None]


@dataclass(slots=True)
class Listeners:
    """Callbacks told of each new transformed call; one that raises is recorded, never re-raised."""

    callbacks: list[Listener] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, callback: Listener) -> None:
        self.callbacks.append(callback)

    def emit(self, call: TransformedCall) -> None:
        for callback in self.callbacks:
            try:
                callback(call)
            except Exception as e:  # a listener never breaks the user's test
                self.errors.append(f"{type(e).__name__}: {e}")


__all__ = ["TRANSFORM_NAMES", "Listener", "Listeners", "TransformedCall"]
