"""check_jaxpr in-process, and proof under JAX that the traced fixtures really fail (and the near
misses do not)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import requires_jax

pytestmark = [pytest.mark.slow, requires_jax]

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "traced"


def _load(path: Path, name: str | None = None) -> ModuleType:
    name = name or f"_traced_fixture_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def jax():
    import jax

    return jax


@pytest.fixture(scope="module")
def hazards():
    return _load(FIX / "more_hazards.py")


def _codes(findings) -> set[tuple[str, int]]:
    return {(f.code, f.line) for f in findings}


def _line(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


SRC = '''
import jax.numpy as jnp

def promo(w, x):
    return w * x

def promo_ok(w, x):
    return w.astype(x.dtype) * x

def int_promo(i, x):
    return i * x

def mask_ok(m, x):
    return m * x

def weak(n):
    return n * 2.0

def scalar_ok(x):
    return x * 2.0 + jnp.float32(1)

def ratio_ok(step, x):
    return step / 10 * x
'''


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    p = tmp_path_factory.mktemp("traced") / "small_mod.py"
    p.write_text(textwrap.dedent(SRC))
    return _load(p), p


def test_promotions_reported_at_the_user_line_and_near_misses_silent(jax, small) -> None:
    from stabcheck.traced.checks import check_jaxpr

    mod, path = small
    jnp = jax.numpy
    w, x, i, m = jnp.ones(3, jnp.bfloat16), jnp.ones(3), jnp.ones(3, jnp.int32), jnp.ones(3, bool)
    got = check_jaxpr(jax.make_jaxpr(mod.promo)(w, x), function="promo")
    assert _codes(got) == {("STB303", 5)}
    f = got[0]
    assert f.stage == "traced" and f.path.endswith("small_mod.py") and f.evidence["from"] == "bfloat16" and f.evidence["to"] == "float32"
    assert "`bfloat16`" in f.message and f.help
    assert _codes(check_jaxpr(jax.make_jaxpr(mod.int_promo)(i, x))) == {("STB303", 11)}
    # true division of integers gives a float in Python, NumPy and JAX alike (held-out set C's
    # flax#1903 schedule, `cycle_step / top`): not a promotion by mixing
    for fn, args in ((mod.promo_ok, (w, x)), (mod.mask_ok, (m, x)), (mod.scalar_ok, (x,)), (mod.ratio_ok, (jnp.int32(3), x))):
        assert check_jaxpr(jax.make_jaxpr(fn)(*args)) == [], fn.__name__
    # the promotion is real: the result is float32 although `w` is bfloat16
    assert mod.promo(w, x).dtype == jnp.float32 and mod.promo_ok(w, x).dtype == jnp.float32


def test_weak_output(jax, small) -> None:
    from stabcheck.traced.checks import check_jaxpr

    mod, _ = small
    weak_in = jax.ShapeDtypeStruct((), jax.numpy.float32, weak_type=True)
    out = jax.eval_shape(mod.weak, weak_in)
    assert out.weak_type  # JAX keeps the output weak
    got = check_jaxpr(jax.make_jaxpr(mod.weak)(weak_in), out_paths=["output"])
    assert _codes(got) == {("STB302", 17)}
    assert check_jaxpr(jax.make_jaxpr(mod.weak)(jax.ShapeDtypeStruct((), jax.numpy.float32))) == []


def test_a_weak_output_of_a_weak_argument_is_told_from_one_the_code_makes(jax) -> None:
    """`code_weak_outputs`, the one test the entries, `pytest --stabcheck` and the replay share:
    traced again with strong inputs, an output weak only through a weak argument is strong."""
    from stabcheck.traced.tracing import code_weak_outputs

    jnp = jax.numpy

    def f(lr, step):
        return lr * 2.0, step * 0.1, jax.lax.fori_loop(0, 3, lambda i, c: c * lr, 1.0)

    weak = (2.0, jnp.int32(3))
    outs = jax.eval_shape(f, *weak)
    assert [o.weak_type for o in outs] == [True, True, True]  # JAX: every output weak for this call
    assert [o.weak_type for o in jax.eval_shape(f, jnp.float32(2.0), jnp.int32(3))] == [False, True, False]
    assert code_weak_outputs(jax, f, weak, ["a", "b", "c"]) == {"b"}
    assert code_weak_outputs(jax, f, (jnp.float32(2.0), jnp.int32(3)), ["a", "b", "c"]) is None  # no weak input: keep all
    assert code_weak_outputs(jax, f, weak, ["a"]) is None  # another output structure: keep all


def test_codes_filter(jax, small) -> None:
    from stabcheck.traced.checks import check_jaxpr

    mod, _ = small
    jnp = jax.numpy
    assert check_jaxpr(jax.make_jaxpr(mod.promo)(jnp.ones(3, jnp.bfloat16), jnp.ones(3)), codes=["STB301"]) == []


def test_nested_promotion_scan_in_cond_in_jit(jax) -> None:
    from stabcheck.traced.checks import check_jaxpr, iter_eqns

    nested = _load(FIX / "nested.py")
    args = nested.example()
    cj = jax.make_jaxpr(nested.nested)(*args)
    # really nested: the convert sits in a scan inside a cond inside the jit
    prims = [e.primitive.name for e in cj.jaxpr.eqns]
    assert prims in (["pjit"], ["jit"])
    assert "cond" in {e.primitive.name for e in iter_eqns(cj.jaxpr)} and "scan" in {e.primitive.name for e in iter_eqns(cj.jaxpr)}
    assert _codes(check_jaxpr(cj)) == {("STB303", _line(FIX / "nested.py", "y = xi * w  #"))}
    assert check_jaxpr(jax.make_jaxpr(nested.nested_ok)(*args)) == []
    xs, w, _ = args
    assert (xs[0] * w).dtype == jax.numpy.float32  # the promotion happens


def test_rank_promotion_matches_jax_rank_promotion_raise(jax, hazards) -> None:
    from stabcheck.traced.checks import check_jaxpr

    args = (hazards.X, hazards.W1, hazards.Y)
    assert _codes(check_jaxpr(jax.make_jaxpr(hazards.residual)(*args))) == {("STB305", _line(FIX / "more_hazards.py", "return x @ w - y  #"))}
    assert check_jaxpr(jax.make_jaxpr(hazards.residual_ok)(*args)) == []
    # the ordinary bias add is rank promotion too, but lines up as intended: silent
    assert check_jaxpr(jax.make_jaxpr(hazards.dense)(hazards.X, hazards.W, hazards.B)) == []
    assert hazards.residual(*args).shape == (4, 4)  # the silent outer product really happens
    assert hazards.residual_ok(*args).shape == (4,)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    try:
        with pytest.raises(ValueError, match="jax_numpy_rank_promotion=.raise."):
            hazards.residual(*args)
        hazards.residual_ok(*args)
    finally:
        jax.config.update("jax_numpy_rank_promotion", "allow")


def test_float64_leak_and_mask_promotion_under_x64(jax, hazards) -> None:
    from stabcheck.traced.checks import check_jaxpr

    line = _line(FIX / "more_hazards.py", "mask.astype(jnp.float64) * x")
    jax.config.update("jax_enable_x64", True)
    try:
        v, m = hazards.V, hazards.M
        assert hazards.masked_f64(v, m).dtype == jax.numpy.float64  # float32 data computed in float64
        assert hazards.masked_ok(v, m).dtype == jax.numpy.float32
        assert _codes(check_jaxpr(jax.make_jaxpr(hazards.masked_f64)(v, m))) == {("STB301", line), ("STB304", line)}
        assert check_jaxpr(jax.make_jaxpr(hazards.masked_ok)(v, m)) == []
    finally:
        jax.config.update("jax_enable_x64", False)


def test_hazard_fixtures_fail_under_jax_and_near_misses_run(jax, hazards) -> None:
    """What the traced findings claim, observed by running the code for real."""
    jnp = jax.numpy
    v = hazards.V
    with pytest.raises(ValueError, match="callbacks do not support JVP"):
        jax.grad(hazards.sinh_loss)(v)
    assert jnp.allclose(jax.grad(hazards.sinh_loss_ok)(v), jnp.cosh(v))
    with pytest.raises(TypeError, match="branches must have equal output types"):
        jax.jit(hazards.pick)(True, v)
    jax.jit(hazards.pick_ok)(True, v)
    with pytest.raises(TypeError, match="carry input and carry output must have equal types"):
        jax.jit(hazards.counter)(v)
    jax.jit(hazards.counter_ok)(v)
    assert isinstance(hazards.head(v, True), tuple) and not isinstance(hazards.head(v, False), tuple)
    a, b = hazards.head_ok(v, True), hazards.head_ok(v, False)
    assert jax.tree.structure(a) == jax.tree.structure(b) and a[1].dtype == b[1].dtype
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(hazards.branch)(v)


def test_weak_state_drift_retraces_and_the_fixed_state_does_not(jax) -> None:
    drift = _load(FIX / "state_drift.py")
    for step, weak, traces in ((drift.step, True, 2), (drift.step_ok, False, 1)):
        params, state, g = drift.example(weak)
        for _ in range(3):
            params, state = step(params, state, g)
        assert step._cache_size() == traces, step


TRACE_SRC = '''
import jax.numpy as jnp

def concretize(x):
    return jnp.zeros(int(x[0]))

def bool_index(x):
    return x[x > 0]

def bool_index_ok(x):
    return jnp.where(x > 0, x, 0.0)

def batched(x, w):
    return x @ w
'''


def test_trace_task_maps_exceptions_to_codes_at_the_user_line(jax, tmp_path) -> None:
    from stabcheck import Entry
    from stabcheck.traced.tracing import trace_task

    p = tmp_path / "trace_mod.py"
    p.write_text(textwrap.dedent(TRACE_SRC))
    mod = _load(p)
    x = jax.numpy.ones(3)

    def run(fn, *args, **kw):
        out = trace_task(fn.__name__, Entry(fn, args, **kw), {})
        return {(d["code"], d["line"]) for d in out["findings"]}, out

    got, out = run(mod.concretize, x)
    assert got == {("STB102", 5)} and out["transforms"]["call"] == "STB102"
    got, _ = run(mod.bool_index, x)
    assert got == {("STB103", 8)}
    got, out = run(mod.bool_index_ok, x, transforms=("jit", "grad", "jvp", "vmap", "jacfwd", "jacrev", "hessian", "hvp"))
    assert got == set() and set(out["transforms"].values()) == {"ok"}
    got, out = run(mod.batched, x, jax.numpy.ones((3, 2)), in_axes=(0, None), transforms=("vmap",))
    assert got == set() and out["transforms"]["vmap"] == "ok"
    for fn in (mod.concretize, mod.bool_index):  # JAX really raises
        with pytest.raises((jax.errors.ConcretizationTypeError, jax.errors.NonConcreteBooleanIndexError)):
            jax.jit(fn)(x)


def test_float64_leak_through_a_matrix_product_under_x64(jax) -> None:
    """equinox#1154: `W64 @ x32` has no convert in the jaxpr, only a float64 dot_general; inside a
    library layer, the finding is at the user's call of it."""
    from stabcheck.traced.checks import check_jaxpr

    path = FIX / "mixed_matmul.py"
    mm = _load(path)
    jax.config.update("jax_enable_x64", True)
    try:
        assert mm.project(mm.X).dtype == jax.numpy.float64 and mm.embed(mm.KEY, mm.X).dtype == jax.numpy.float64
        assert mm.project_ok(mm.X).dtype == jax.numpy.float32 and mm.embed_ok(mm.KEY, mm.X).dtype == jax.numpy.float32
        assert _codes(check_jaxpr(jax.make_jaxpr(mm.project)(mm.X))) == {("STB301", _line(path, "return W @ x"))}
        assert _codes(check_jaxpr(jax.make_jaxpr(mm.embed)(mm.KEY, mm.X))) == {("STB301", _line(path, "return layer(x)  #"))}
        assert check_jaxpr(jax.make_jaxpr(mm.project_ok)(mm.X)) == []
        assert check_jaxpr(jax.make_jaxpr(mm.embed_ok)(mm.KEY, mm.X)) == []
    finally:
        jax.config.update("jax_enable_x64", False)
