"""`pytest --stabcheck` sees every transformed call, not only jit traces (issue 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytest.importorskip("jax")


def _loss(p, x):
    return (p * x).sum() ** 2


def test_collector_emits_one_call_per_new_transform_and_signature() -> None:
    import jax
    import jax.numpy as jnp
    from jax._src import pjit

    from stabcheck.runtime._hook import Collector

    originals = (pjit._trace_for_jit, jax.grad, jax.vmap, jax.jvp)
    collector = Collector()
    calls = []
    collector.listeners.add(calls.append)
    assert collector.install()
    try:
        p, x = jnp.ones(3), jnp.ones(3)
        jax.grad(_loss)(p, x)
        jax.grad(_loss)(p + 1, x)  # the same signature: not told again
        jax.grad(_loss, argnums=1)(p, x)  # other options: told
        jax.vmap(_loss, in_axes=(0, None))(jnp.ones((2, 3)), x)
        jax.jvp(lambda q: _loss(q, x), (p,), (p,))
        inner = jax.grad(_loss)
        jax.jit(inner)(p, x)  # jit of grad: the jit layer (grad of this signature was told above)
        jnp.where(p > 0, 1.0, 2.0)  # JAX's own jit: not the user's
    finally:
        collector.uninstall()
    assert (pjit._trace_for_jit, jax.grad, jax.vmap, jax.jvp) == originals
    seen = [(c.transform, dict(c.options)) for c in calls]
    assert seen[:3] == [("grad", {}), ("grad", {"argnums": 1}), ("vmap", {"in_axes": (0, None)})]
    assert calls[3].options["tangents"][0] is p and calls[3].args == (p,)
    assert [c.transform for c in calls] == ["grad", "grad", "vmap", "jvp", "jit"]
    first = calls[0]
    assert first.fn is _loss and first.args[0] is p and first.site == (__file__, first.site[1])
    jit = calls[-1]
    assert jit.fn is inner and isinstance(jit.args[1], jax.Array) and jit.args[0] is p
    assert collector.errors == [] and collector.listeners.errors == []


def test_names_bound_before_install_are_rebound_and_restored() -> None:
    import sys
    import types

    import jax

    from stabcheck.runtime._hook import Collector

    mod = types.ModuleType("zc_user_mod")
    mod.__file__ = __file__  # a user module (the test's own file)
    mod.grad = jax.grad
    sys.modules["zc_user_mod"] = mod
    collector = Collector()
    calls = []
    collector.listeners.add(calls.append)
    try:
        assert collector.install()
        assert mod.grad is not jax._src.api.grad and mod.grad is jax.grad
        import jax.numpy as jnp

        mod.grad(_loss)(jnp.ones(2), jnp.ones(2))
    finally:
        collector.uninstall()
        del sys.modules["zc_user_mod"]
    assert mod.grad is jax._src.api.grad and jax.grad is jax._src.api.grad
    assert [c.transform for c in calls] == ["grad"]


ZEROCONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "zeroconfig"


def _line_of(relpath: str, text: str) -> int:
    return (ZEROCONFIG / relpath).read_text().splitlines().index(text) + 1


@pytest.mark.slow
def test_zeroconfig_project_reports_the_hazards_of_functions_only_its_tests_transform(pytester: pytest.Pytester) -> None:
    shutil.copytree(ZEROCONFIG, pytester.path, dirs_exist_ok=True)
    plain = pytester.runpytest("-p", "no:cacheprovider")
    plain.assert_outcomes(passed=20, failed=2)
    result = pytester.runpytest("-p", "no:cacheprovider", "--stabcheck", "--stabcheck-report=r.json")
    result.assert_outcomes(passed=20, failed=2)  # the plugin changes no test's result
    data = json.loads((pytester.path / "r.json").read_text())
    found = {(d["code"], d["path"], d["line"], d["evidence"]["entry"]) for d in data}
    model, tests = "zcmodel/model.py", "tests/test_model.py"

    def at(text: str) -> str:
        return f"{tests}:{_line_of(tests, text)}"

    assert found == {
        ("STB302", model, _line_of(model, "    return x * 0.5, step * 0.1"), at("    out, lr = jax.jit(schedule)(jnp.int32(3), jnp.ones(3))")),
        ("STB408", model, _line_of(model, "    return jnp.where(x > 0, jnp.sqrt(x), 0.0).sum()"), at("    g = jax.grad(safe_norm)(jnp.array([4.0, 0.0, -1.0]))")),
        # where the test makes the int leaf, not at the `grad`
        ("STB402", tests, _line_of(tests, '    params = {"w": jnp.ones(3), "step": jnp.array(0)}'), at("    grad(loss)(params, jnp.ones(3))")),
        ("STB303", model, _line_of(model, '    return jnp.sum(params["w"] * x) + params["step"]'), at("    grad(loss)(params, jnp.ones(3))")),
        ("STB101", model, _line_of(model, "    if x > 0:"), at("    assert jax.vmap(relu)(jnp.array([1.0, -1.0])).shape == (2,)")),
        ("STB408", model, _line_of(model, "    return jnp.log(x).sum()"), at("    h = jax.hessian(log_prob)(jnp.array([1.0, 0.0]))")),
        ("STB408", model, _line_of(model, "        carry = carry * 0.9 + jnp.sqrt(r)"), at("    v, g = jax.value_and_grad(discounted)(jnp.array([1.0, 0.0, 4.0]))")),
        # the gradient's dtype is made in the custom VJP rule (its bwd), as the confirm stage places it
        ("STB406", model, _line_of(model, "def _clip_bwd(x, g):"), at("    assert jax.grad(clipped_loss)(jnp.ones(3), jnp.ones(3)).dtype == jnp.bfloat16")),
        ("STB408", model, _line_of(model, "    return jnp.where(w > 0, jnp.sqrt(w), 0.0).sum(), w.mean()"), at("    (value, aux), g = jax.value_and_grad(aux_loss, has_aux=True)(jnp.array([4.0, 0.0, -1.0]))")),
        ("STB408", "tests/test_local.py", _line_of("tests/test_local.py", "    return jnp.where(x > 0, jnp.log(x), 0.0).sum()"), f"tests/test_local.py:{_line_of('tests/test_local.py', '    g = jax.grad(log_barrier)(jnp.array([1.0, 0.0]))')}"),
        # a retrace storm at the compiled function's def (the call that made it is the entry)
        ("STB504", model, _line_of(model, "def scale_by(x, lr):"), at("        assert eqx.filter_jit(scale_by)(x, lr).shape == (3,)")),
    }
    by_code = {(d["code"], d["line"]): d for d in data}
    nan = by_code[("STB408", _line_of(model, "    return jnp.where(x > 0, jnp.sqrt(x), 0.0).sum()"))]
    assert nan["stage"] == "runtime" and nan["evidence"]["transform"] == "grad" and "`sqrt` made the first NaN" in nan["message"] and "(forward pass)" in nan["message"]  # sqrt(-1), masked by the where
    assert "static `lr` was 0.3, now 0.4" in next(d["message"] for d in data if d["code"] == "STB504")  # equinox retraced per Python float
    near_misses = {"schedule_fixed", "safe_norm_fixed", "loss_fixed", "relu_fixed", "mlp", "clipped_loss_ok", "scale_by_array", "aux_loss_fixed", "log_barrier_fixed"}
    assert not {d["function"] for d in data} & near_misses
    text = result.stdout.str()
    assert "internal errors" not in text and "Traceback" not in text.split("= stabcheck =")[1]
    assert "other transformed calls" in text


def test_transformed_callables_keep_their_types_and_equinox_is_restored() -> None:
    import types

    import jax
    import jax.numpy as jnp

    from stabcheck.runtime._hook import Collector

    eqx = pytest.importorskip("equinox")
    from equinox import _jit

    before = _jit._JitWrapper.__dict__["__call__"]
    collector = Collector()
    calls = []
    collector.listeners.add(calls.append)
    collector.listeners.add(lambda call: 1 / 0)  # a listener that raises never breaks the call
    assert collector.install()
    try:
        g = jax.grad(_loss)
        assert isinstance(g, types.FunctionType) and g.__name__ == "_loss" and g.__wrapped__.__wrapped__ is _loss
        f = eqx.filter_jit(_loss)
        assert type(f).__name__ == "_JitWrapper" and f.lower(jnp.ones(2), jnp.ones(2)) is not None
        assert float(f(jnp.ones(2), jnp.ones(2))) == 4.0
        outer = jax.jit(jax.grad(_loss))
        p = jnp.arange(3.0)
        outer(p, jnp.ones(3))
    finally:
        collector.uninstall()
    assert _jit._JitWrapper.__dict__["__call__"] is before
    assert [c.transform for c in calls] == ["filter_jit", "jit", "grad"]
    assert calls[-1].args[0] is p  # grad traced inside jit is told the jitted call's real arguments
    assert collector.listeners.errors and collector.listeners.errors[0].startswith("ZeroDivisionError")
    assert collector.errors == []


def _rolled_weak(x):
    import jax.numpy as jnp

    return jnp_roll(x) * 2.0, jnp.asarray(1.0) + 1.0  # a jnp function jitted inside (its trace finishes first); a weak output


def jnp_roll(x):
    import jax.numpy as jnp

    return jnp.roll(jnp.sin(x), 1)


def test_filter_jit_is_checked_on_equinox_s_own_trace_naming_the_users_output() -> None:
    """Inside `eqx.filter_jit(f)` the jnp functions JAX jits (`roll`, `sin`) finish their traces
    before equinox's own: the checks run on equinox's, whose `(marker, out, static)` layout is
    named as the user's output (`result[1]`, not equinox's `result[1][1]`)."""
    import jax.numpy as jnp

    from stabcheck.runtime._hook import Collector

    eqx = pytest.importorskip("equinox")
    collector = Collector()
    assert collector.install()
    try:
        eqx.filter_jit(_rolled_weak)(jnp.ones(3))
    finally:
        collector.uninstall()
    weak = [f for f in collector.all_findings() if f.code == "STB302"]
    assert [(f.function, f.evidence.get("transform")) for f in weak] == [("_rolled_weak", "filter_jit")], [(f.code, f.message) for f in collector.all_findings()]
    assert weak[0].message.startswith("`result[1]` is weakly typed"), weak[0].message


def test_flax_is_wrapped_when_the_session_imports_it_not_imported_by_the_plugin() -> None:
    """`pytest --stabcheck` configures before the test modules import anything: a library the
    session has not imported (flax) is wrapped when it is imported (a post-import hook), so a
    session that never uses it does not pay for importing it; uninstalling puts it back."""
    import subprocess
    import sys

    pytest.importorskip("flax")
    code = """
import sys
from stabcheck.runtime._hook import Collector
c = Collector()
assert c.install()
assert "flax" not in sys.modules and "flax.nnx" not in sys.modules, "the plugin imported flax"
from flax import nnx
from flax.nnx import jit as bound
assert getattr(nnx.jit, "stabcheck_original", None) is not None and bound is nnx.jit, "flax.nnx.jit not wrapped after its import"
c.uninstall()
from flax import nnx as again
assert getattr(again.jit, "stabcheck_original", None) is None, "not restored"
assert not any(type(f).__name__ == "_AfterImport" for f in sys.meta_path)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stdout + out.stderr[-2000:]
