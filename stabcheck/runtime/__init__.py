"""The runtime stage: `@stabcheck.stable`, `StabilityWarning` / `StabilityError`, and modes.

    @stabcheck.stable
    @jax.jit
    def train_step(params, opt_state, x): ...

Importing this package does not import JAX; the first decorated call does. See docs/runtime.md.
"""

from __future__ import annotations

from stabcheck.runtime._decorator import stable as stable
from stabcheck.runtime._modes import Mode as Mode
from stabcheck.runtime._modes import StabilityError as StabilityError
from stabcheck.runtime._modes import StabilityWarning as StabilityWarning
from stabcheck.runtime._modes import mode as mode
from stabcheck.runtime._modes import set_mode as set_mode

__all__ = ["Mode", "StabilityError", "StabilityWarning", "mode", "set_mode", "stable"]
