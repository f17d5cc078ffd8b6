"""@stabcheck.stable: modes, wrapping, signature cache, retraces, and the traced checks at runtime."""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import stabcheck
from stabcheck.runtime import StabilityError, StabilityWarning

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parents[1] / "fixtures" / "scenarios"
FIXTURES = ROOT / "fixtures" / "runtime"

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _caught(fn: Any, *calls: tuple[Any, ...]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for args in calls:
            fn(*args)
    return [x for x in w if issubclass(x.category, StabilityWarning)]


@pytest.fixture(autouse=True)
def _clean_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("STABCHECK_MODE", raising=False)
    from stabcheck.runtime import _modes

    saved = _modes._global_mode
    _modes._global_mode = None
    yield
    _modes._global_mode = saved


# -- wrapping -------------------------------------------------------------------------------


def double(x: Any, scale: float = 2.0) -> Any:
    """Doubles x."""
    return x * scale


def test_import_does_not_import_jax() -> None:
    code = "import sys, stabcheck, stabcheck.runtime, stabcheck.pytest_plugin; stabcheck.stable; stabcheck.StabilityWarning; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mode_off_returns_the_function_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stabcheck.stable(mode="off")(double) is double
    jitted = jax.jit(double)
    assert stabcheck.stable(mode="off")(jitted) is jitted
    monkeypatch.setenv("STABCHECK_MODE", "off")
    assert stabcheck.stable(double) is double
    assert stabcheck.stable(mode="warn")(double) is not double  # the explicit argument wins over the env var


def test_wrapper_preserves_metadata_and_results() -> None:
    for target in (double, jax.jit(double)):
        wrapped = stabcheck.stable(target)
        assert wrapped.__wrapped__ is target
        assert wrapped.__name__ == "double" and wrapped.__doc__ == "Doubles x."
        assert inspect.signature(wrapped) == inspect.signature(double)
        x = jnp.arange(3.0)
        assert (wrapped(x) == target(x)).all() and wrapped(x).dtype == target(x).dtype


def test_bad_options_are_one_line_value_errors() -> None:
    with pytest.raises(ValueError, match=r"invalid value for `mode`: 'loud'; expected one of 'warn', 'error', 'off'"):
        stabcheck.stable(mode="loud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`max_traces`: 0"):
        stabcheck.stable(max_traces=0)
    with pytest.raises(ValueError, match="`select`: 'STBX'"):
        stabcheck.stable(select=["STBX"])
    with pytest.raises(ValueError, match="`mode`"):
        stabcheck.set_mode("loud")  # type: ignore[arg-type]


def test_env_var_with_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STABCHECK_MODE", "loud")
    with pytest.raises(ValueError, match="`STABCHECK_MODE`: 'loud'"):
        stabcheck.stable(double)


def test_user_exception_is_reraised_unchanged() -> None:
    boom = KeyError("mine")

    def fails(x: Any) -> Any:
        raise boom

    for target in (fails, jax.jit(fails)):
        with pytest.raises(KeyError) as info:
            stabcheck.stable(target)(jnp.ones(2))
        assert info.value is boom


# -- signatures and retraces ------------------------------------------------------------------


@pytest.mark.slow
def test_weak_state_leaf_warns_stb504_at_the_second_step_naming_the_leaf() -> None:
    t = _load(FIXTURES / "train_state.py", "rt_train_state_weak")
    step = stabcheck.stable(t.train_step)
    params, state = t.init_weak()
    found = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for i in range(3):
            params, state, _ = step(params, state, t.batch())
            found.append([x for x in w if issubclass(x.category, StabilityWarning)])
    assert [len(f) for f in found] == [0, 1, 1]  # nothing at step 1, one warning at step 2, cached after
    warning = found[1][0]
    assert warning.message.code == "STB504"
    assert warning.message.finding.detail == "opt_state[1]"
    assert "`opt_state[1]` was weak float32[], now float32[]" in str(warning.message)
    assert Path(warning.filename).resolve() == Path(__file__).resolve() and "step(params, state" in Path(__file__).read_text().splitlines()[warning.lineno - 1]
    assert t.train_step._cache_size() == 2  # JAX really traced twice


@pytest.mark.slow
def test_strong_state_leaf_is_one_signature_and_silent() -> None:
    t = _load(FIXTURES / "train_state.py", "rt_train_state_strong")
    step = stabcheck.stable(t.train_step)
    params, state = t.init_strong()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            params, state, _ = step(params, state, t.batch())
    assert [x for x in w if issubclass(x.category, StabilityWarning)] == []
    assert t.train_step._cache_size() == 1
    assert len(step.__stabcheck_monitor__.records) == 1


def test_known_signature_is_a_cache_hit() -> None:
    calls = []

    def f(x: Any) -> Any:
        calls.append(1)
        return x + 1

    wrapped = stabcheck.stable(f)
    monitor = wrapped.__stabcheck_monitor__
    for _ in range(5):
        wrapped(jnp.ones(3))
    assert len(monitor.records) == 1 and len(calls) == 5 + 1  # five real calls, one abstract trace
    assert [x.message.code for x in _caught(wrapped, (jnp.ones(4),))] == ["STB504"]
    assert len(monitor.records) == 2 and len(calls) == 6 + 2


def test_python_scalar_then_array_names_the_argument() -> None:
    @stabcheck.stable
    @jax.jit
    def sgd(w: Any, lr: Any) -> Any:
        return w - lr * w

    w = _caught(sgd, (jnp.ones(2), 0.1), (jnp.ones(2), jnp.float32(0.1)))
    assert len(w) == 1 and w[0].message.code == "STB504"
    assert "`lr` was weak float32[] (Python float), now float32[]" in str(w[0].message)


def test_max_traces_allows_that_many_signatures() -> None:
    f = stabcheck.stable(max_traces=3)(jax.jit(lambda x: x * 2))
    assert _caught(f, (jnp.ones(1),), (jnp.ones(2),), (jnp.ones(3),)) == []
    w = _caught(f, (jnp.ones(4),))
    assert len(w) == 1 and "`x` was float32[3], now float32[4]" in str(w[0].message)


def test_static_argument_change_is_described() -> None:
    f = stabcheck.stable(jax.jit(double, static_argnums=1))
    w = _caught(f, (jnp.ones(2), 2.0), (jnp.ones(2), 3.0))
    assert len(w) == 1 and "static `scale` was 2.0, now 3.0" in str(w[0].message)


def test_static_arg_union_stb205() -> None:
    def cast(x: Any, kind: str) -> Any:
        return x.astype(jnp.int32) if kind == "int" else x

    f = stabcheck.stable(max_traces=4)(jax.jit(cast, static_argnames="kind"))
    w = _caught(f, (jnp.ones(2), "float"), (jnp.ones(2), "int"))
    assert [x.message.code for x in w] == ["STB205"]
    assert "when static `kind` is 'float'" in str(w[0].message) and "int32[2]" in str(w[0].message)


# -- orders and kinds of functions ------------------------------------------------------------


def test_jit_over_stable_checks_at_trace_time_only() -> None:
    inner = stabcheck.stable(lambda x, lr: x * lr)
    f = jax.jit(inner)
    monitor = inner.__stabcheck_monitor__
    w = _caught(f, (jnp.ones(2), 0.5), (jnp.ones(2), 0.5), (jnp.ones(2), jnp.float32(0.5)))
    assert len(monitor.records) == 2  # two traces; the repeated call never reached Python
    assert [x.message.code for x in w] == ["STB504"]


def test_method_and_plain_function() -> None:
    class Model:
        def __init__(self) -> None:
            self.scale = jnp.float32(3.0)

        @stabcheck.stable
        def apply(self, x: Any) -> Any:
            return x * self.scale

    m = Model()
    assert Model.apply.__name__ == "apply"
    assert _caught(m.apply, (jnp.ones(2),), (jnp.ones(2),)) == []
    assert m.apply(jnp.ones(2)).tolist() == [3.0, 3.0]
    class Ops:
        @stabcheck.stable
        @staticmethod
        def twice(x: Any) -> Any:
            return x * 2

        @stabcheck.stable
        @classmethod
        def thrice(cls, x: Any) -> Any:
            return x * 3

    assert Ops().twice(jnp.ones(1)).tolist() == [2.0] and Ops.thrice(jnp.ones(1)).tolist() == [3.0]
    w = _caught(m.apply, (jnp.ones(3),))
    assert [x.message.code for x in w] == ["STB504"] and "`x` was float32[2], now float32[3]" in str(w[0].message)


def test_weak_output_of_a_plain_function_is_stb302_at_its_line() -> None:
    src = FIXTURES / "weak_output.py"
    mod = _load(src, "rt_weak_output")
    assert mod.learning_rate(jnp.ones(3)).weak_type and not mod.learning_rate_strong(jnp.ones(3)).weak_type
    assert (mod.learning_rate(jnp.ones(3)) * jnp.ones(1, jnp.bfloat16)).dtype == jnp.bfloat16  # it follows its partner
    w = _caught(stabcheck.stable(mod.learning_rate), (jnp.ones(3),))
    assert [x.message.code for x in w] == ["STB302"]
    line = Path(w[0].filename).read_text().splitlines()[w[0].lineno - 1]
    assert "0.5 * step" in line
    assert _caught(stabcheck.stable(mod.learning_rate_strong), (jnp.ones(3),)) == []


# -- modes --------------------------------------------------------------------------------------


def test_error_mode_raises_stability_error() -> None:
    f = stabcheck.stable(mode="error")(jax.jit(lambda x: x * 2))
    f(jnp.ones(1))
    with pytest.raises(StabilityError) as info:
        f(jnp.ones(2))
    assert info.value.code == "STB504" and info.value.finding.code == "STB504"


def test_precedence_context_over_argument_over_set_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STABCHECK_MODE", "error")
    stabcheck.set_mode("warn")  # set_mode beats the environment variable
    f = stabcheck.stable(jax.jit(lambda x: x + 1))
    f(jnp.ones(1))
    assert len(_caught(f, (jnp.ones(2),))) == 1
    with stabcheck.mode("error"), pytest.raises(StabilityError):
        f(jnp.ones(3))  # the context manager beats everything
    g = stabcheck.stable(mode="warn")(jax.jit(lambda x: x + 1))
    g(jnp.ones(1))
    stabcheck.set_mode("error")
    assert len(_caught(g, (jnp.ones(2),))) == 1  # the decorator's own mode beats set_mode
    with stabcheck.mode("off"):
        assert _caught(g, (jnp.ones(3),)) == []


def test_select_and_ignore() -> None:
    f = stabcheck.stable(ignore=["retrace"])(jax.jit(lambda x: x + 1))
    assert _caught(f, (jnp.ones(1),), (jnp.ones(2),)) == []
    g = stabcheck.stable(select=["STB3"])(jax.jit(lambda x: x + 1))
    assert _caught(g, (jnp.ones(1),), (jnp.ones(2),)) == []


def test_warning_filter_error_from_the_command_line(tmp_path: Path) -> None:
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent(
            """
            import jax, jax.numpy as jnp, stabcheck
            f = stabcheck.stable(jax.jit(lambda x: x + 1))
            f(jnp.ones(1))
            try:
                f(jnp.ones(2))
            except stabcheck.StabilityWarning as e:
                print("raised", e.code)
            """
        )
    )
    # `python -W` resolves the category at start-up, before site-packages: the package must be on PYTHONPATH
    env = {**{k: v for k, v in os.environ.items() if k != "STABCHECK_MODE"}, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-W", "error::stabcheck.StabilityWarning", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.strip() == "raised STB504", out.stderr


# -- AD checks and the masking scenario ---------------------------------------------------------


@pytest.mark.slow
def test_masking_f64_variant_warns_stb301_at_the_mask_line() -> None:
    sys.path.insert(0, str(SCENARIOS))
    try:
        m = _load(SCENARIOS / "masking_flow.py", "rt_masking_flow")
    finally:
        sys.path.remove(str(SCENARIOS))
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        w = _caught(stabcheck.stable(m.train_step_f64_mask), m.example_inputs())
        ok = _caught(stabcheck.stable(m.train_step_ok), m.example_inputs())
        out = m.train_step_f64_mask(*m.example_inputs())
        assert out[2].dtype == jnp.float64  # the leak is real: the loss is float64 under x64
    finally:
        jax.config.update("jax_enable_x64", prev)
    lines = (SCENARIOS / "masking_flow.py").read_text().splitlines()
    f64 = [x for x in w if x.message.code == "STB301"]
    assert f64 and all("MASK64 * x" in lines[x.lineno - 1] for x in f64)
    assert Path(f64[0].filename).resolve() == (SCENARIOS / "masking_flow.py").resolve()
    assert [x.message.code for x in ok] == []


@pytest.mark.slow
def test_masking_bool_leaf_in_params_is_stb402_and_the_user_error_is_unchanged() -> None:
    sys.path.insert(0, str(SCENARIOS))
    try:
        m = _load(SCENARIOS / "masking_flow.py", "rt_masking_flow2")
    finally:
        sys.path.remove(str(SCENARIOS))
    params, _, x = m.example_inputs(with_mask=True)
    w = _caught(stabcheck.stable(check_grad=True)(m.loss_mask_in_params), (params, x))
    assert [(y.message.code, y.message.finding.detail) for y in w] == [("STB402", "params['mask']")]
    with pytest.raises(TypeError, match="grad requires real- or complex-valued inputs"):
        stabcheck.stable(m.train_step_mask_in_params)(*m.example_inputs(with_mask=True))
    clean = _caught(stabcheck.stable(check_grad=True)(m.loss_ok), m.example_inputs()[::2])
    assert clean == []


def test_equinox_filter_jit_python_numbers_are_static() -> None:
    eqx = pytest.importorskip("equinox")
    traces = []

    class Linear(eqx.Module):
        w: Any

        def __call__(self, x: Any) -> Any:
            return self.w @ x

    @stabcheck.stable
    @eqx.filter_jit
    def loss(model: Any, x: Any, scale: Any) -> Any:
        traces.append(1)  # runs only when equinox traces
        return jnp.sum(model(x)) * scale

    m = Linear(jnp.ones((2, 3)))
    assert loss.__wrapped__.__class__.__name__ == "_JitWrapper" and loss.__name__ == "loss"
    w = _caught(loss, (m, jnp.ones(3), 2.0), (m, jnp.ones(3), 2.0), (m, jnp.ones(3), 3.0))
    assert len(traces) == 2  # equinox really retraced for 3.0; the check reuses JAX's trace cache
    assert [x.message.code for x in w] == ["STB504"]
    assert "static `scale` was 2.0, now 3.0" in str(w[0].message)
    assert float(loss(m, jnp.ones(3), 3.0)) == 18.0


def test_check_grad_gradient_dtype_mismatch_stb406() -> None:
    c = _load(FIXTURES / "custom_grad.py", "rt_custom_grad")
    w, x = jnp.ones(3), jnp.ones(3)
    assert jax.grad(c.loss)(w, x).dtype == jnp.bfloat16  # JAX accepts the bfloat16 cotangent silently
    found = _caught(stabcheck.stable(check_grad=True)(c.loss), (w, x))
    assert [(y.message.code, y.message.finding.detail) for y in found] == [("STB406", "w")]
    assert "the gradient of `w` is `bfloat16` although the leaf is `float32`" in str(found[0].message)
    assert jax.grad(c.loss_ok)(w, x).dtype == jnp.float32
    assert _caught(stabcheck.stable(check_grad=True)(c.loss_ok), (w, x)) == []
    assert _caught(stabcheck.stable(c.loss), (w, x)) == []  # without check_grad, no AD checks


@pytest.mark.slow
def test_results_are_unchanged_for_any_shape_and_dtype() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    def body(x: Any, y: Any) -> Any:
        return jnp.tanh(x) * y + 1

    plain = jax.jit(body)
    wrapped = stabcheck.stable(max_traces=1000, ignore=["ALL"])(jax.jit(body))
    generic = stabcheck.stable(max_traces=1000, ignore=["ALL"])(body)

    @hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
    @hypothesis.given(n=st.integers(1, 4), dtype=st.sampled_from(["float32", "bfloat16", "float16"]), y=st.floats(-3, 3))
    def check(n: int, dtype: str, y: float) -> None:
        x = jnp.linspace(-1, 1, n).astype(dtype)
        for fn, reference in ((wrapped, plain), (generic, body)):  # eager and jitted results may round differently
            expected, got = reference(x, y), fn(x, y)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert jnp.array_equal(got, expected)

    check()


def test_warning_and_error_carry_the_finding_and_pickle() -> None:
    import pickle

    f = stabcheck.stable(mode="error")(jax.jit(lambda x: x * 2))
    f(jnp.ones(1))
    with pytest.raises(StabilityError) as info:
        f(jnp.ones(2))
    again = pickle.loads(pickle.dumps(info.value))
    assert again.code == "STB504" and again.findings == info.value.findings and str(again) == str(info.value)
    w = StabilityWarning(info.value.finding)
    assert issubclass(StabilityWarning, UserWarning) and w.code == "STB504" and str(w).startswith("STB504 `test_warning_and_error_carry_the_finding_and_pickle.<locals>.<lambda>` was traced")
    assert pickle.loads(pickle.dumps(w)).finding == w.finding
    assert StabilityWarning("plain text").code == ""  # `warnings.warn("...", StabilityWarning)` still works


def test_an_optional_argument_none_then_an_array_is_named_as_such() -> None:
    @jax.jit
    def shift(x: Any, bias: Any = None) -> Any:
        return x if bias is None else x + bias

    step = stabcheck.stable(shift)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        step(jnp.ones(3))
        step(jnp.ones(3), jnp.ones(3))
    found = [x.message for x in w if issubclass(x.category, StabilityWarning)]
    assert [m.code for m in found] == ["STB504"]
    assert "`bias` was None (or empty), now float32[3]" in str(found[0])
    assert shift._cache_size() == 2  # JAX really traced twice


def test_a_new_key_in_an_existing_dict_argument_is_a_new_leaf_not_a_none() -> None:
    @jax.jit
    def total(p: Any) -> Any:
        return sum(p.values())

    step = stabcheck.stable(total)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        step({"a": jnp.ones(2)})
        step({"a": jnp.ones(2), "b": jnp.ones(2)})
    found = [str(x.message) for x in w if issubclass(x.category, StabilityWarning)]
    assert len(found) == 1 and "new leaves" in found[0] and "None" not in found[0], found
