"""`@stabcheck.stable` reports a retrace (STB504) exactly when JAX made one (issue 16).

JAX's own traces are counted by a Python side effect inside the traced function (it runs once per
trace, never on a compile-cache hit); stabcheck's reports are the STB504 warnings (mode "warn")
or StabilityErrors (mode "error"). With `max_traces=1` every trace after the first must be
reported once, and nothing else: over sequences of Python int/float/bool, weak and strong 0-d
arrays of each dtype, NumPy scalars and arrays, shape changes, None, tuples, dicts and lists,
passed positionally, by keyword, beside a static argument, and with `jit` outside `stable`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stabcheck
from stabcheck.runtime import StabilityError, StabilityWarning

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
np = pytest.importorskip("numpy")

KINDS: dict[str, Callable[[], Any]] = {
    "int": lambda: 3,
    "float": lambda: 0.5,
    "bool": lambda: True,
    "weak f32[]": lambda: jnp.asarray(0.5),
    "weak i32[]": lambda: jnp.asarray(2),
    "f32[]": lambda: jnp.float32(0.5),
    "f16[]": lambda: jnp.ones((), jnp.float16),
    "bf16[]": lambda: jnp.ones((), jnp.bfloat16),
    "c64[]": lambda: jnp.ones((), jnp.complex64),
    "i32[]": lambda: jnp.int32(2),
    "i8[]": lambda: jnp.ones((), jnp.int8),
    "u8[]": lambda: jnp.ones((), jnp.uint8),
    "bool[]": lambda: jnp.array(True),
    "np.float32": lambda: np.float32(0.5),
    "np.float64": lambda: np.float64(0.5),  # float32[] to jit unless x64: the same trace as f32[]
    "np.int64": lambda: np.int64(1),
    "np f32[3]": lambda: np.ones(3, np.float32),
    "f32[3]": lambda: jnp.ones(3),
    "f32[4]": lambda: jnp.ones(4),
    "f32[2,3]": lambda: jnp.ones((2, 3)),
    "None": lambda: None,
    "tuple": lambda: (jnp.ones(2), 1.0),
    "dict": lambda: {"a": jnp.ones(2), "b": 2},
    "list": lambda: [jnp.ones(2)],
}
WAYS = ("stable(jit(f))", "keyword", "static", "jit(stable(f))")


def traces_and_reports(seq: list[str], mode: str, way: str) -> tuple[int, int]:
    """(JAX's traces, stabcheck's STB504 reports) over the calls `seq`."""
    traces = [0]

    def body(x: Any, y: Any = None) -> Any:
        traces[0] += 1  # runs once per JAX trace
        return x  # `y` may be static: not an output

    call: Callable[[Any], Any]
    if way == "stable(jit(f))":
        call = stabcheck.stable(mode=mode)(jax.jit(body))  # type: ignore[arg-type]
    elif way == "keyword":
        g = stabcheck.stable(mode=mode)(jax.jit(body))  # type: ignore[arg-type]
        call = lambda v: g(jnp.ones(2), y=v)  # noqa: E731
    elif way == "static":
        h = stabcheck.stable(mode=mode)(jax.jit(body, static_argnums=1))  # type: ignore[arg-type]
        call = lambda v: h(jnp.ones(2), v if isinstance(v, (bool, int, float, type(None))) else "array")  # noqa: E731
    else:
        inner = stabcheck.stable(mode=mode)(lambda x, y=None: (x, y))

        def counted(x: Any, y: Any = None) -> Any:
            traces[0] += 1
            return inner(x, y)

        call = jax.jit(counted)
    reports = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in seq:
            try:
                call(KINDS[kind]())
            except StabilityError as e:
                assert e.finding.code == "STB504"
                reports += 1
        reports += sum(1 for w in caught if issubclass(w.category, StabilityWarning) and w.message.code == "STB504")  # type: ignore[union-attr]
    return traces[0], reports


SEQUENCES = [
    ["float", "weak f32[]", "f32[]"],  # Python float -> weak array (one trace) -> strong array
    ["float", "f32[]", "float"],
    ["int", "weak i32[]", "i32[]"],
    ["bool", "bool[]", "bool"],
    ["np.float64", "f32[]", "float", "f32[3]"],  # a NumPy float64 is float32[] to jit
    ["np.float32", "f32[]", "np.float64"],
    ["np f32[3]", "f32[3]", "f32[4]", "f32[2,3]"],
    ["None", "f32[3]", "None"],
    ["tuple", "dict", "list", "tuple"],
    ["f16[]", "bf16[]", "c64[]", "i8[]", "u8[]", "np.int64"],
]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("mode", ["warn", "error"])
def test_every_jax_retrace_is_reported_once_and_nothing_else(way: str, mode: str) -> None:
    if way == "jit(stable(f))" and mode == "error":
        pytest.skip("an error raised inside a trace aborts JAX's trace: the counts are not comparable")
    for seq in SEQUENCES:
        traces, reports = traces_and_reports(seq, mode, way)
        assert reports == traces - 1, (seq, traces, reports)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=6), mode=st.sampled_from(["warn", "error"]), way=st.sampled_from(WAYS))
def test_any_sequence_of_argument_kinds_reports_jaxs_retraces(seq: list[str], mode: str, way: str) -> None:
    if way == "jit(stable(f))" and mode == "error":
        mode = "warn"
    traces, reports = traces_and_reports(seq, mode, way)
    assert reports == traces - 1, (seq, traces, reports)


# -- objects (issue 18, item 3): values JAX keys by hash and equality, not by type ---------------
def _adam() -> Any:
    optax = pytest.importorskip("optax")
    return optax.adam(1e-2)


_SAME: dict[str, Any] = {}


def _same(kind: str, make: Callable[[], Any]) -> Any:
    return _SAME.setdefault(kind, make())


OBJECTS: dict[str, Callable[[], Any]] = {
    "fresh adam": _adam,  # optax#353: a new transformation per call, keyed by identity
    "same adam": lambda: _same("adam", _adam),
    "fresh fn": lambda: (lambda p: p),
    "same fn": lambda: _same("fn", lambda: (lambda p: p)),
    "fresh jit": lambda: jax.jit(jnp.sin),  # equinox#686: a jit built per Module
    "same jit": lambda: _same("jit", lambda: jax.jit(jnp.sin)),
    "int 0": lambda: 0,  # equinox#1062: a Python int under filter_jit is static
    "int 1": lambda: 1,
    "tuple": lambda: ("relu", 3),  # compared by content: a new tuple is the same key
    "tuple'": lambda: ("tanh", 3),
    "i32": lambda: jnp.int32(1),
    "None": lambda: None,
    "f32[3]": lambda: jnp.ones(3),
}
OBJECT_WAYS = ("jit static", "filter_jit field", "static field")


def object_traces_and_reports(seq: list[str], way: str) -> tuple[int, int]:
    """(JAX's traces, stabcheck's STB504 warnings) over the calls `seq`, the value passed as a
    static argument of `jax.jit`, held in an `eqx.Module` field under `eqx.filter_jit`, or in a
    field declared static."""
    eqx = pytest.importorskip("equinox")
    traces = [0]

    class Holder(eqx.Module):
        w: Any
        value: Any

    class StaticHolder(eqx.Module):
        w: Any
        value: Any = eqx.field(static=True)

    def body(x: Any, y: Any = None) -> Any:
        traces[0] += 1
        return x

    def held(m: Any) -> Any:
        traces[0] += 1
        return m.w

    if way == "jit static":
        f = stabcheck.stable(mode="warn")(jax.jit(body, static_argnums=1))  # type: ignore[arg-type]
        call = lambda v: f(jnp.ones(2), v)  # noqa: E731
    else:
        g = stabcheck.stable(mode="warn")(eqx.filter_jit(held))
        cls = Holder if way == "filter_jit field" else StaticHolder
        call = lambda v: g(cls(jnp.ones(2), v))  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in seq:
            call(OBJECTS[kind]())
    reports = sum(1 for w in caught if issubclass(w.category, StabilityWarning) and w.message.code == "STB504")  # type: ignore[union-attr]
    return traces[0], reports


OBJECT_SEQUENCES = [
    ["fresh adam", "fresh adam", "fresh adam"],
    ["same adam", "same adam", "same adam"],
    ["fresh fn", "same fn", "same fn", "fresh fn"],
    ["fresh jit", "fresh jit", "same jit", "same jit"],
    ["int 0", "int 1", "int 0", "int 1"],
    ["tuple", "tuple", "tuple'", "tuple"],
]
FIELD_SEQUENCES = [["int 0", "i32", "int 1", "i32"], ["None", "f32[3]", "None"], ["fresh jit", "i32", "fresh jit"]]


@pytest.mark.parametrize("way", OBJECT_WAYS)
def test_objects_keyed_by_identity_are_reported_once_per_jax_trace(way: str) -> None:
    for seq in OBJECT_SEQUENCES + (FIELD_SEQUENCES if way == "filter_jit field" else []):
        traces, reports = object_traces_and_reports(seq, way)
        assert reports == traces - 1, (way, seq, traces, reports)


def test_a_retrace_names_the_field_or_argument_that_changed() -> None:
    eqx = pytest.importorskip("equinox")

    class Counter(eqx.Module):
        w: Any
        step: int

    f = stabcheck.stable(mode="warn")(eqx.filter_jit(lambda m: m.w * 2))
    g = stabcheck.stable(mode="warn")(jax.jit(lambda x, bias=None: x if bias is None else x + bias))
    h = stabcheck.stable(mode="warn")(jax.jit(lambda x, opt: x, static_argnums=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(Counter(jnp.ones(2), 0)), f(Counter(jnp.ones(2), 1))
        g(jnp.ones(3), None), g(jnp.ones(3), jnp.ones(3, jnp.float32))
        h(jnp.ones(3), _adam()), h(jnp.ones(3), _adam())
    texts = [str(w.message) for w in caught if issubclass(w.category, StabilityWarning)]
    assert any("static `m.step` was 0, now 1" in t for t in texts), texts
    assert any("`bias` was None, now float32[3]" in t for t in texts), texts
    assert any("static `opt` is a new object (GradientTransformation" in t and "by identity" in t for t in texts), texts


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.lists(st.sampled_from(sorted(OBJECTS)), min_size=1, max_size=5), way=st.sampled_from(("jit static", "filter_jit field")))
def test_any_sequence_of_objects_reports_jaxs_retraces(seq: list[str], way: str) -> None:
    if way == "jit static":
        seq = [k for k in seq if k not in ("None", "f32[3]", "i32")] or ["int 0"]  # static arguments must be hashable
    traces, reports = object_traces_and_reports(seq, way)
    assert reports == traces - 1, (seq, traces, reports)
