"""Modes (`warn`, `error`, `off`), the warning and error types, and how findings are raised.

Precedence, strongest first:

1. an active `with stabcheck.mode(...)` block (innermost wins);
2. the decorator's own `mode=` argument;
3. `stabcheck.set_mode(...)`;
4. the `STABCHECK_MODE` environment variable;
5. the default, `"warn"`.

`@stable` decides once, when it decorates, whether to wrap at all: if the mode it resolves then
is `"off"` it returns the function itself (zero overhead), and no later setting revives it.
This module imports no JAX.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

from stabcheck.finding import Finding
from stabcheck.reporters._chains import full_lines

Mode = Literal["warn", "error", "off"]
MODES: tuple[Mode, ...] = ("warn", "error", "off")
ENV_VAR = "STABCHECK_MODE"

_global_mode: Mode | None = None
_scoped_mode: contextvars.ContextVar[Mode | None] = contextvars.ContextVar("stabcheck_mode", default=None)


def _text(f: Finding) -> str:
    via = "".join(f"\n  {line}" for line in full_lines(f))  # where the offending line is reached from
    where = f" ({f.path}:{f.line})" if via else ""
    return f"{f.code} {f.message}{where}{via}" + (f"\n  help: {f.help}" if f.help else "")


class StabilityWarning(UserWarning):
    """A type-stability finding from `@stabcheck.stable`: `.code` and `.finding` say which."""

    def __init__(self, finding: Finding | str) -> None:
        super().__init__(_text(finding) if isinstance(finding, Finding) else str(finding))
        self.finding: Finding | None = finding if isinstance(finding, Finding) else None
        self.code = finding.code if isinstance(finding, Finding) else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.finding if self.finding is not None else str(self),))


class StabilityError(Exception):
    """Raised by `@stabcheck.stable` in `mode="error"`; `.finding` is the first of `.findings`."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)
        self.finding = self.findings[0]
        self.code = self.finding.code
        f = self.finding
        more = f" (and {len(self.findings) - 1} more)" if len(self.findings) > 1 else ""
        super().__init__(f"{f.path}:{f.line}: {_text(f)}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.findings,))


def check_mode(value: object, key: str = "mode") -> Mode:
    """`value` as a Mode, or ValueError naming the key, the value and the allowed values."""
    if value not in MODES:
        raise ValueError(f"invalid value for `{key}`: {value!r}; expected one of {', '.join(map(repr, MODES))}")
    return cast(Mode, value)


def set_mode(value: Mode) -> None:
    """Set the process-wide mode (below `with stabcheck.mode(...)` and `@stable(mode=...)`)."""
    global _global_mode
    _global_mode = check_mode(value)


@contextlib.contextmanager
def mode(value: Mode) -> Iterator[None]:
    """Use `value` for every `@stable` call inside the block; it overrides all other settings."""
    token = _scoped_mode.set(check_mode(value))
    try:
        yield
    finally:
        _scoped_mode.reset(token)


def _ambient() -> Mode:
    if _global_mode is not None:
        return _global_mode
    env = os.environ.get(ENV_VAR)
    if env:
        return check_mode(env.strip().lower(), ENV_VAR)
    return "warn"


def resolve(explicit: Mode | None) -> Mode:
    """The mode for one call of a function decorated with `mode=explicit`."""
    scoped = _scoped_mode.get()
    if scoped is not None:
        return scoped
    if explicit is not None:
        return explicit
    return _ambient()


def _module_name(filename: str) -> str | None:
    """The imported module defined in `filename` (so `-W ...:module` filters match), if any."""
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if file and os.path.abspath(file) == filename:
            return name
    return None


def emit(findings: Sequence[Finding], how: Mode) -> None:
    """Warn (at each finding's own file and line) or raise, as `how` says.

    STB902 (stabcheck could not analyse the function) only ever warns: a failure of the checker
    is not a failure of the user's code.
    """
    if how == "off" or not findings:
        return
    errors = [f for f in findings if f.code != "STB902"] if how == "error" else []
    for f in findings:
        if f in errors:
            continue
        filename = os.path.abspath(f.path) if os.path.exists(f.path) else f.path
        module = _module_name(filename)  # passing module=None would silently drop the warning
        if module is None:
            warnings.warn_explicit(StabilityWarning(f), StabilityWarning, filename, f.line)
        else:
            warnings.warn_explicit(StabilityWarning(f), StabilityWarning, filename, f.line, module=module)
    if errors:
        raise StabilityError(errors)
