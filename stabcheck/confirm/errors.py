"""What an exception raised under a transform means: its STB code and the user line it came from.

No JAX import: exceptions are recognised by class name and JAX's own message text, which the
tests pin against the installed JAX.
"""

from __future__ import annotations

from dataclasses import dataclass

from stabcheck.traced.source import exception_site

# (class name or None, text in the message, code, short reason); first match wins
_TABLE: tuple[tuple[str | None, str, str, str], ...] = (
    ("TracerBoolConversionError", "", "STB101", "Python `if`/`while` on a traced value"),
    ("NonConcreteBooleanIndexError", "", "STB103", "data-dependent shape"),
    ("ConcretizationTypeError", "", "STB102", "a traced value was made concrete"),
    ("TracerIntegerConversionError", "", "STB102", "`int()`/index of a traced value"),
    ("TracerArrayConversionError", "", "STB102", "NumPy conversion of a traced value"),
    (None, "grad requires real- or complex-valued inputs", "STB402", "grad of a bool/int leaf"),
    (None, "can't apply forward-mode autodiff (jvp) to a custom_vjp function", "STB403", "forward mode through custom_vjp"),
    (None, "Reverse-mode differentiation does not work for lax.while_loop", "STB404", "reverse mode through while_loop"),
    (None, "Custom VJP bwd rule", "STB405", "custom_vjp bwd rule output mismatch"),
    (None, "Custom JVP rule", "STB405", "custom_jvp rule output mismatch"),
    (None, "custom_jvp", "STB405", "custom_jvp rule mismatch"),
    (None, "must have identical types", "STB203", "branches of different types"),
    (None, "must have same type structure", "STB203", "branches of different structure"),
    (None, "callbacks do not support JVP", "STB407", "callback under AD"),
    (None, "pure_callback", "STB407", "callback under AD"),
    (None, "carry", "STB204", "loop carry changes type"),
)


# slugs of the catalogue in DESIGN.md, for codes whose rule module is not installed
SLUGS = {
    "STB101": "branch-on-tracer", "STB102": "concretize-tracer", "STB103": "data-dependent-shape",
    "STB203": "branch-type-mismatch", "STB204": "carry-type-drift", "STB402": "non-differentiable-leaf",
    "STB403": "forward-mode-custom-vjp", "STB404": "reverse-mode-while-loop", "STB405": "custom-rule-mismatch",
    "STB406": "gradient-dtype-mismatch", "STB407": "callback-in-ad", "STB408": "nan-in-gradient",
    "STB504": "retrace", "STB902": "analysis-error",
}


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    reason: str
    kind: str  # exception class name
    message: str  # the first line of the exception text
    path: str | None = None  # the user frame that raised, when one is found
    line: int | None = None


def classify(exc: BaseException, within: tuple[str, ...] = ()) -> Failure:
    kind = type(exc).__name__
    text = str(exc)
    code, reason = "STB902", f"{kind}"
    for cls, needle, c, r in _TABLE:
        if (cls is None or cls == kind) and needle in text and (cls is not None or needle):
            code, reason = c, r
            break
    site = exception_site(exc, within=within)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    short = lines[0][:300] if lines else kind
    return Failure(code, reason, kind, short, site.file if site else None, site.line if site else None)


