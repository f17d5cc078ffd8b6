"""What an exception raised under a transform means: its STB code and the user line it came from.

One table serves the traced stage (`make_jaxpr` on abstract inputs) and the confirm stage (real
runs). No JAX import: exceptions are recognised by class name and JAX's own message text, which
the tests pin against the installed JAX (tests/test_errors.py raises each one for real). JAX has
reworded several messages over its versions; both wordings are kept where they differ.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from stabcheck.finding import Chain
from stabcheck.traced.source import Site, chain, dataclass_site, exception_site, named_return_site, transformed_site

# (class name or "", text in the message, code, short reason); first match wins
TABLE: tuple[tuple[str, str, str, str], ...] = (
    ("TracerBoolConversionError", "", "STB101", "Python `if`/`while` on a traced value"),
    ("UnexpectedTracerError", "", "STB104", "a traced value kept by a side effect escaped its transform"),
    ("NonConcreteBooleanIndexError", "", "STB103", "data-dependent shape"),
    ("ConcretizationTypeError", "", "STB102", "a traced value was made concrete"),
    ("TracerIntegerConversionError", "", "STB102", "`int()`/index of a traced value"),
    ("TracerArrayConversionError", "", "STB102", "NumPy conversion of a traced value"),
    ("", "Shapes must be 1D sequences of concrete values", "STB102", "a shape computed from a traced value"),
    ("", "Slice entries must be static integers", "STB102", "slice bounds from a traced value"),
    ("", "Array slice indices must have static start/stop/step", "STB102", "slice bounds from a traced value"),
    ("", "Non-hashable static arguments are not supported", "STB502", "a traced or unhashable value given for a static argument"),
    ("OverflowError", "while parsing an argument to a jitted computation", "STB503", "a Python int too large for the argument's dtype"),
    ("RuntimeError", "can only be traced", "STB504", "traced more often than `eqx.debug.assert_max_traces` allows"),
    ("", "grad requires real- or complex-valued inputs", "STB402", "grad of a bool/int leaf"),
    ("", "Gradient only defined for scalar-output functions", "STB409", "grad of a non-scalar output"),
    ("", "can't apply forward-mode autodiff (jvp) to a custom_vjp function", "STB403", "forward mode through custom_vjp"),
    ("", "Reverse-mode differentiation does not work for lax.while_loop", "STB404", "reverse mode through while_loop"),
    ("", "Custom VJP bwd rule", "STB405", "custom_vjp bwd rule output mismatch"),
    ("", "Custom VJP fwd rule", "STB405", "custom_vjp fwd rule does not return (output, residuals)"),
    ("", "Custom JVP rule", "STB405", "custom_jvp rule output mismatch"),
    ("", "custom_jvp rule", "STB405", "custom_jvp rule mismatch"),
    ("", "callbacks do not support JVP", "STB407", "callback under AD"),
    ("", "callbacks do not support transpose", "STB407", "callback transposed by reverse-mode AD"),
    ("", "pure_callback", "STB407", "callback under AD"),
    ("", "branches must have equal output types", "STB203", "branches of different types"),
    ("", "branches must have equal types", "STB203", "branches of different types"),
    ("", "must have identical types", "STB203", "branches of different types"),
    ("", "branch outputs must have same type structure", "STB203", "branches of different structure"),
    ("", "branch outputs must have the same pytree structure", "STB203", "branches of different structure"),
    ("", "must have same type structure", "STB203", "branches of different structure"),
    ("", "carry input and carry output must have equal types", "STB204", "loop carry changes type"),
    ("", "carry output and input must have identical types", "STB204", "loop carry changes type"),
    ("", "carry input and carry output must have the same pytree structure", "STB204", "loop carry changes structure"),
    ("", "carry", "STB204", "loop carry changes type"),
    ("", "pytree structure error", "STB206", "pytrees of different structure combined"),
    ("", "Custom node type mismatch", "STB206", "pytrees of different structure combined"),
    ("", "Dict key mismatch", "STB206", "pytrees of different structure combined"),
    ("", "Tuple arity mismatch", "STB206", "pytrees of different structure combined"),
    ("", "vmap in_axes must be an int, None, or a tuple", "STB206", "vmap in_axes not one entry per positional argument"),
    ("", "in_axes specification must be a tree prefix", "STB206", "vmap in_axes not a prefix of the arguments' structure"),
    ("", "as an abstract array", "STB505", "a non-array value passed as a traced argument"),
    ("", "is not a valid JAX type", "STB505", "a non-array value passed as a traced argument"),
)


# slugs of the catalogue in DESIGN.md, for codes whose rule module is not installed
SLUGS = {
    "STB101": "branch-on-tracer", "STB102": "concretize-tracer", "STB103": "data-dependent-shape", "STB104": "side-effect-in-transform",
    "STB203": "branch-type-mismatch", "STB204": "carry-type-drift", "STB206": "pytree-structure-mismatch",
    "STB402": "non-differentiable-leaf", "STB403": "forward-mode-custom-vjp", "STB404": "reverse-mode-while-loop",
    "STB405": "custom-rule-mismatch", "STB406": "gradient-dtype-mismatch", "STB407": "callback-in-ad",
    "STB408": "nan-in-gradient", "STB409": "non-scalar-gradient", "STB502": "unhashable-static-arg",
    "STB503": "python-scalar-arg", "STB504": "retrace", "STB505": "non-array-argument", "STB902": "analysis-error",
}


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    reason: str
    kind: str  # exception class name
    message: str  # the first line of the exception text
    path: str | None = None  # the user frame that raised, when one is found
    line: int | None = None
    chains: tuple[Chain, ...] = ()  # the user frames from the entry down to it (paths as Python has them)


def code_of(exc: BaseException) -> tuple[str, str]:
    """(code, short reason) for an exception; STB902 when the table does not know it."""
    kind, text = type(exc).__name__, str(exc)
    for cls, needle, code, reason in TABLE:
        if (not cls or cls == kind) and needle in text:
            return code, reason
    if kind == "TypeError" and _tree_for_leaf(text):
        return "STB206", "a pytree where a leaf was expected: trees of different structure combined"
    return "STB902", kind


# `unsupported operand type(s) for *: 'float' and 'dict'`: a function mapped over two trees got a
# subtree of one where the other has a leaf (optax's update given gradients of another structure
# than its state, optax#808, equinox#458)
_OPERANDS = re.compile(r"unsupported operand type\(s\) for [^:]+: '(\w+)' and '(\w+)'")
_TREE_TYPES = frozenset({"dict", "list", "tuple", "FrozenDict", "OrderedDict", "defaultdict"})
_LEAF_TYPES = frozenset({"int", "float", "complex", "bool", "str", "bytes", "NoneType", "ndarray", "ArrayImpl", "Array", "generic"})
_NUMERIC = frozenset({"int", "float", "complex", "ArrayImpl", "ndarray", "Array"})


def _tree_for_leaf(text: str) -> bool:
    m = _OPERANDS.search(text)
    if m is None:
        return False
    kinds = {m.group(1), m.group(2)}
    if kinds & _TREE_TYPES:
        return True
    # a number or an array against a class that is neither (an `eqx.Module` such as `Linear`)
    numeric = any(k in _NUMERIC or k.endswith("Tracer") for k in kinds)
    odd = any(k not in _LEAF_TYPES and not k.endswith("Tracer") and k[:1].isupper() for k in kinds)
    return numeric and odd


def fix_site(exc: BaseException, code: str, within: tuple[str, ...] = ()) -> Site | None:
    """The user line to change for an exception classified as `code`: where it was raised, or
    - STB404: the loop a reverse-mode transform reached, which JAX chains as the cause;
    - STB502: the `@dataclass` of an unhashable static argument's class, in the user's file;
    - STB104: where a leaked tracer was made, as the message names it;
    - STB405: the return of the custom_vjp fwd rule the message names;
    - STB102: the jnp op that made a tracer of constants, as the message lists it."""
    text = str(exc)
    site = exception_site(exc, within=within)
    if code in _AT_TRANSFORMED:
        site = transformed_site(exc, within=within) or site  # the loop, not the `grad` that reached it
    # in the user's file (or the entry's, when JAX raised at the call boundary with no user frame)
    files = [site.file] if site is not None else list(within)
    hashed = _HASHED.search(text) if code == "STB502" else None
    if hashed is not None:  # a mutable dataclass: its definition
        site = next((d for f in files if (d := dataclass_site(f, hashed.group(1))) is not None), site)
    made = _CREATED.search(text) if code == "STB104" else None
    if made is not None and site is not None and os.path.realpath(made.group(1)) == os.path.realpath(site.file):
        site = dataclasses.replace(site, line=int(made.group(2)), col=1, outer=())  # in the user's file: the line that kept it
    fwd = _FWD_RULE.search(text) if code == "STB405" else None
    if fwd is not None:
        site = next((r for f in files if (r := named_return_site(f, fwd.group(1))) is not None), site)  # the fwd rule's return
    born = _born_of_constants(text) if code == "STB102" else None
    if born is not None and site is not None and os.path.realpath(born[0]) == os.path.realpath(site.file):
        site = dataclasses.replace(site, line=born[1], col=born[2], outer=())  # `jnp.add(x.size, 1)`: the op to replace
    return site


def _born_of_constants(text: str) -> tuple[str, int, int] | None:
    """Where a tracer that only jit made of constants was born: JAX lists "the JAX operations"
    that made the value; when the first takes literals only (`add 3:i32[] 1:i32[]`), the value
    was static until a jnp op staged it out (`jnp.add(arr.size, 1)`, jax-ml/jax#4449), and that
    op's line is the one to change."""
    first = _OPERATION.search(text)
    if first is None:
        return None
    operands = first.group(1).split()
    if not operands or not all(_LITERAL.fullmatch(o) for o in operands):
        return None
    return first.group(2), int(first.group(3)), int(first.group(4)) + 1


# errors raised while a transform rewrites one operation: the finding goes where that operation
# was written, the line to change (a `while_loop` under reverse mode)
_AT_TRANSFORMED = frozenset({"STB404"})

# "This value became a tracer due to JAX operations on these lines:", then each operation
_OPERATION = re.compile(r"operation \S+ = \w+((?: \S+)*)\n\s+from line (.+?):(\d+):(\d+)")
_LITERAL = re.compile(r"-?[\d.]+(?:e[-+]?\d+)?:\w+\[\]|True:bool\[\]|False:bool\[\]")

# a custom_vjp fwd rule that does not return (output, residuals) is named in the message
_FWD_RULE = re.compile(r"Custom VJP fwd rule (\w+) for function")

# a static argument JAX could not hash names its class: `of type <class 'model.Config'>`
_HASHED = re.compile(r"hash an object of type <class '(?:[^']*\.)?(\w+)'>")

# UnexpectedTracerError names where the leaked value was made: the side effect that kept it
_CREATED = re.compile(r"was created on line (.+?):(\d+)(?::\d+)? \(")


def classify(exc: BaseException, within: tuple[str, ...] = ()) -> Failure:
    code, reason = code_of(exc)
    kind = type(exc).__name__
    site = fix_site(exc, code, within)
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    short = lines[0][:300] if lines else kind
    return Failure(code, reason, kind, short, site.file if site else None, site.line if site else None, chain(site, str))
