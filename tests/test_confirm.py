"""The confirm stage: findings confirmed, refuted, new at run time; crashes and timeouts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, requires_jax, run_cli

CONFIRM = FIXTURES / "confirm"
pytestmark = [pytest.mark.slow, requires_jax]


def _entries(name: str) -> dict:
    from stabcheck.traced.entries import ENTRY_MARK, normalize

    spec = importlib.util.spec_from_file_location(f"_confirm_fixture_{name}", CONFIRM / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = {}
    for attr, obj in vars(mod).items():
        if callable(obj) and getattr(obj, ENTRY_MARK, False):
            out.update(normalize(obj(), attr))
    return out


def _suspect(code: str, path: Path, line: int, stage: str = "static"):
    from stabcheck import registry
    from stabcheck.finding import Span

    shown = str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
    return registry.get(code).finding(path=shown, span=Span(line, 1), message=f"suspected {code}", stage=stage)


def test_where_sqrt_nan_is_confirmed_with_its_primitive_and_line():
    from stabcheck.confirm.run import confirm_entry

    (name, entry), = _entries("where_sqrt").items()
    path = CONFIRM / "where_sqrt.py"
    out = confirm_entry(name, entry, [_suspect("STB401", path, 8)])
    settled = [f for f in out if f.code == "STB401"][0]
    assert settled.status == "confirmed" and settled.stage == "confirmed"
    assert "NaN" in settled.evidence["confirmed"] or "Inf" in settled.evidence["confirmed"]
    (nan,) = [f for f in out if f.code == "STB408"]
    assert nan.line == 8 and nan.path.endswith("fixtures/confirm/where_sqrt.py")
    assert nan.evidence["first_nonfinite"] == "div (in the derivative of sqrt)"
    assert "`div` (in the derivative of `sqrt`)" in nan.message and nan.status == "confirmed"
    assert "jnp.sqrt(x)" in nan.snippet and nan.help


def test_double_where_near_miss_is_refuted_on_boundary_values():
    from stabcheck.confirm.run import confirm_entry

    (name, entry), = _entries("double_where").items()
    out = confirm_entry(name, entry, [_suspect("STB401", CONFIRM / "double_where.py", 9)])
    assert [f.code for f in out] == ["STB401"]
    assert out[0].status == "refuted" and out[0].stage == "confirmed"
    assert "zeros" in out[0].evidence["refuted"] and "negative values" in out[0].evidence["refuted"]


def test_bf16_cotangent_is_accepted_by_jax_and_reported_as_new_finding():
    import jax
    import jax.numpy as jnp

    from stabcheck.confirm.run import confirm_entry

    entries = _entries("bf16_bwd")
    loss = entries["entries:loss"]
    assert jax.grad(loss.fn)(*loss.args).dtype == jnp.bfloat16  # JAX accepts it silently
    out = confirm_entry("entries:loss", loss, [])
    (f,) = out
    assert f.code == "STB406" and f.stage == "confirmed" and f.evidence["leaf"] == "w"
    assert "`bfloat16`" in f.message and "`float32`" in f.message
    # at the custom rule that makes the bfloat16 cotangent (JAX records its equations at the
    # call of `scale`; the line to fix is `_bwd`), not at the entry's def
    bwd = next(i for i, ln in enumerate((CONFIRM / "bf16_bwd.py").read_text().splitlines(), 1) if ln.startswith("def _bwd"))
    assert f.line == bwd and f.path.endswith("bf16_bwd.py"), (f.path, f.line)
    assert confirm_entry("entries:loss_ok", entries["entries:loss_ok"], []) == []


def test_retrace_counts_compilations_and_names_the_argument():
    from stabcheck.confirm.run import confirm_entry

    entries = _entries("retrace_step")
    out = confirm_entry("step_entry", entries["step_entry"], [], max_traces=3)
    (f,) = [f for f in out if f.code == "STB504"]
    assert f.evidence["compiles"] == 4 and f.evidence["calls"] == 5  # np.float32 and jnp.float32 share one program
    assert "`lr` was Python int, now Python float" in f.message and "bfloat16" in f.message
    assert [f for f in confirm_entry("stable_entry", entries["stable_entry"], [], max_traces=1) if f.code == "STB504"] == []
    suspected = _suspect("STB504", CONFIRM / "retrace_step.py", 10, "traced")
    (settled,) = [f for f in confirm_entry("stable_entry", entries["stable_entry"], [suspected], max_traces=1) if f.code == "STB504"]
    assert settled.status == "refuted"


def test_dtype_claims_are_checked_against_the_compiled_program(write, monkeypatch):
    import jax

    from stabcheck.confirm.run import confirm_entry
    from stabcheck.traced.entries import Entry

    p = write(
        "mix.py",
        """
        import jax.numpy as jnp
        import numpy as np

        MASK64 = np.array([1.0, 0.0])

        def f(x):
            y = MASK64 * x
            z = x * 2.0
            return jnp.sum(y) + jnp.sum(z)
        """,
    )
    monkeypatch.chdir(p.parent)
    monkeypatch.syspath_prepend(str(p.parent))
    mod = importlib.import_module("mix")
    import jax.numpy as jnp

    entry = Entry(mod.f, (jnp.ones(2, jnp.float32),), transforms=("jit",), jax_config={"jax_enable_x64": True})
    out = confirm_entry("f", entry, [_suspect("STB301", p, 7, "traced"), _suspect("STB301", p, 8, "traced")])
    assert not jax.config.jax_enable_x64  # the entry's flags are restored
    by_line = {f.line: f for f in out}
    assert by_line[7].status == "confirmed" and "f64" in by_line[7].evidence["confirmed"]
    assert by_line[8].status == "refuted"
    sys.modules.pop("mix", None)


def test_static_findings_on_lines_the_entry_does_not_run_are_left_alone():
    from stabcheck.confirm.run import confirm_entry

    (name, entry), = _entries("double_where").items()
    elsewhere = _suspect("STB401", CONFIRM / "where_sqrt.py", 8)  # another file's finding
    assert confirm_entry(name, entry, [elsewhere]) == []


def test_memory_limit_skips_a_transform_with_a_note():
    from stabcheck.confirm.run import confirm_entry

    (name, entry), = _entries("where_sqrt").items()
    out = confirm_entry(name, entry, [_suspect("STB401", CONFIRM / "where_sqrt.py", 8)], memory_limit=16)
    (f,) = out
    assert f.status == "suspected" and "over the memory limit" in f.evidence["confirm"]


def test_check_confirm_on_scenarios_and_examples_confirms_every_traced_finding():
    examples = FIXTURES.parent / "examples"
    r = run_cli("check", str(FIXTURES / "traced" / "scenario_entries.py"), str(examples), "--confirm", "--no-cache", "--output-format", "json")
    assert r.returncode == 1, r.stderr
    found = json.loads(r.stdout)
    got = {(Path(f["path"]).name, f["code"], f["line"], f["status"]) for f in found if f["stage"] != "static"}
    assert got == {
        ("masking_flow.py", "STB301", 52, "confirmed"),
        ("masking_flow.py", "STB402", 91, "confirmed"),  # where the mask enters the differentiated params
        ("rbf_interpolator.py", "STB101", 38, "confirmed"),
        ("rbf_interpolator.py", "STB405", 67, "confirmed"),
        # the demo project: one confirmed problem per story, nothing on the fixed versions
        ("coupling_flow.py", "STB301", 31, "confirmed"),
        ("rbf_fit.py", "STB101", 22, "confirmed"),
        ("rbf_fit.py", "STB201", 24, "suspected"),  # the union that `if` chooses between, seeded by the trace
        ("solver.py", "STB403", 36, "confirmed"),
        ("solver.py", "STB404", 47, "confirmed"),
        ("solver.py", "STB408", 52, "confirmed"),
        ("solver.py", "STB401", 52, "confirmed"),  # the static STB401 there, confirmed by the same NaN
    }
    # train_step_ok, loss_ok and the examples' fixed versions come out clean
    clean = ("_ok", "apply_ok", "loss_ok", "couple", "fit_loss", "radius_safe")
    assert not [f for f in found if f["function"].endswith(clean)]
    assert {f["device"]["jax"] for f in found} and all(f["device"]["platform"] for f in found)


def test_confirm_command_survives_crash_and_timeout():
    r = run_cli("confirm", str(CONFIRM / "crash.py"), "--timeout", "5", "--output-format", "json")
    assert r.returncode == 1, r.stderr
    found = json.loads(r.stdout)
    by_entry = {f["function"]: f for f in found}
    assert set(by_entry) == {"entries:boom", "entries:hang"}
    assert all(f["code"] == "STB902" for f in found)
    assert "exited with status 3" in by_entry["entries:boom"]["message"]
    assert "timed out" in by_entry["entries:hang"]["message"]
    assert found[0]["device"]["jax"]  # the entry that ran reported the device


def test_confirm_command_with_arg_specs_runs_seeded_inputs_and_settles_static_findings():
    r = run_cli("confirm", f"{CONFIRM / 'where_sqrt.py'}:root_sum", "--arg", "f32[3]", "--output-format", "json")
    assert r.returncode == 1, r.stderr
    found = {(f["code"], f["line"]): f for f in json.loads(r.stdout)}
    assert set(found) == {("STB408", 8), ("STB401", 8)}
    assert "seeded random arguments" in found[("STB408", 8)]["message"]
    assert found[("STB401", 8)]["status"] == "confirmed"  # the static finding, settled by the run
    assert found[("STB408", 8)]["device"]["platform"]


def test_every_transform_runs_clean_on_a_near_miss():
    import jax.numpy as jnp

    from stabcheck.confirm.run import confirm_entry
    from stabcheck.traced.entries import TRANSFORMS, Entry

    def mlp(w, x, n):  # a static int and a non-differentiated array
        return jnp.sum(jnp.tanh(w @ x) ** n)

    entry = Entry(mlp, (jnp.ones((3, 4)) / 4, jnp.ones((4, 2)), 2), static_argnums=(2,), transforms=tuple(t for t in TRANSFORMS if t != "call"))
    assert confirm_entry("mlp", entry, []) == []


def test_suspected_error_is_refuted_when_the_transform_runs_clean():
    import jax.numpy as jnp
    from jax import lax

    from stabcheck.confirm.run import confirm_entry
    from stabcheck.traced.entries import Entry

    def cube(x):  # fori_loop with static bounds lowers to scan: reverse mode works
        return jnp.sum(lax.fori_loop(0, 3, lambda i, v: v * x, jnp.ones_like(x)))

    suspected = _suspect("STB404", Path(__file__), 1, "traced")
    (f,) = confirm_entry("cube", Entry(cube, (jnp.arange(3.0),), transforms=("jit",)), [suspected])
    assert f.status == "refuted" and "`grad`" in f.evidence["refuted"]


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_confirm_fixture_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _recorded(fn, *specs):
    """`fn` as the replay builds a recorded `grad` signature: abstract args, a recorded site."""
    import jax

    from stabcheck.traced.entries import Entry

    entry = Entry(fn, tuple(jax.ShapeDtypeStruct(s, jax.numpy.float32) for s in specs), transforms=("grad",))
    object.__setattr__(entry, "recorded_site", ("tests/test_model.py", 1))
    return entry


def test_a_recorded_gradient_also_runs_on_ones_where_the_codes_inf_meets_a_mask():
    import jax.numpy as jnp

    from stabcheck.confirm.run import confirm_entry

    mod = _load_module(CONFIRM / "recorded_masks.py")
    # under JAX: a mask of ones makes the NaN at `0 * -inf`, the idiomatic mask does not
    assert bool(jnp.isnan(mod.inf_mask(jnp.ones(3), jnp.ones(3)))) and bool(jnp.isfinite(mod.inf_mask_ok(jnp.ones(3), jnp.ones(3))))
    line = _line_of(CONFIRM / "recorded_masks.py", "# loud: STB408")
    found = confirm_entry("inf_mask", _recorded(mod.inf_mask, (3,), (3,)), [])
    at = {(f.code, f.line): f for f in found}
    assert ("STB408", line) in at, [(f.code, f.line, f.message) for f in found]
    assert at[("STB408", line)].evidence["inputs"] == "ones" and "`mul` made the first NaN" in at[("STB408", line)].message
    assert confirm_entry("inf_mask_ok", _recorded(mod.inf_mask_ok, (3,), (3,)), []) == []
    # ones are outside `log_gap`'s domain (log(0) = -inf from finite values): not passed, silent
    assert bool(jnp.isinf(mod.log_gap(jnp.ones(3), jnp.ones(3))))
    assert confirm_entry("log_gap", _recorded(mod.log_gap, (3,), (3,)), []) == []


LEAK = '''
import jax
import jax.numpy as jnp

import stabcheck
from stabcheck import Entry

CACHE = {}


def lazy_scale(h):
    if "w" not in CACHE:
        CACHE["w"] = h * 2.0  # the side effect keeps a value made inside the scan
    return h + CACHE["w"]


def leaky_init(xs):
    jax.lax.scan(lambda h, x: (lazy_scale(h) + x, None), jnp.zeros(()), xs)
    return CACHE["w"] + 0.0


@stabcheck.entry
def entries():
    return {"leaky_init": Entry(leaky_init, (jnp.ones(3),), transforms=("call",))}
'''


def test_a_leaked_tracer_is_a_side_effect_at_the_line_that_kept_it(tmp_path: Path) -> None:
    """UnexpectedTracerError (dm-haiku#214's lazily created parameter, held-out set B): JAX names
    where the leaked value was made; the finding is STB104 there, not stabcheck's own STB902."""
    (tmp_path / "leak.py").write_text(LEAK, encoding="utf-8")
    proc = run_cli("check", "leak.py", "--trace", "--confirm", "--no-cache", "--exit-zero", "--output-format", "json", cwd=tmp_path)
    found = {(d["code"], d["line"]) for d in json.loads(proc.stdout)}
    made = next(i for i, line in enumerate(LEAK.splitlines(), 1) if 'CACHE["w"] = h * 2.0' in line)
    assert ("STB104", made) in found and not any(code == "STB902" for code, _ in found), found


WHILE_UNDER_USER_GRAD = '''
import jax
import jax.numpy as jnp
from jax import lax

import stabcheck
from stabcheck import Entry


def sinkhorn_cost(a, K):
    def body(state):
        it, u = state
        return it + 1, a / (K @ u)

    _, u = lax.while_loop(lambda s: s[0] < 5, body, (0, jnp.ones_like(a)))
    return jnp.sum(u)


def sinkhorn_grad(a, K):
    return jax.grad(sinkhorn_cost)(a, K)


@stabcheck.entry
def entries():
    return {"sinkhorn_grad": Entry(sinkhorn_grad, (jnp.ones(3), jnp.eye(3)), transforms=("call",))}
'''


def test_reverse_mode_through_a_loop_is_reported_at_the_loop_by_every_stage(tmp_path: Path) -> None:
    """The user's own `jax.grad` reaches a `while_loop` (held-out set B's sinkhorn): JAX raises at
    the `grad` call, and chains the loop's traceback as the cause; the static and the confirmed
    finding are one, at the loop, the line to change."""
    (tmp_path / "sink.py").write_text(WHILE_UNDER_USER_GRAD, encoding="utf-8")
    proc = run_cli("check", "sink.py", "--trace", "--confirm", "--no-cache", "--exit-zero", "--output-format", "json", cwd=tmp_path)
    found = [(d["code"], d["line"], d["status"]) for d in json.loads(proc.stdout) if d["code"] == "STB404"]
    loop = next(i for i, line in enumerate(WHILE_UNDER_USER_GRAD.splitlines(), 1) if "lax.while_loop(" in line)
    assert found == [("STB404", loop, "confirmed")], found


def test_a_size_jit_made_of_constants_is_reported_at_the_jnp_op() -> None:
    """JAX lists the operations that made a value a tracer; when the first takes literals only,
    jit staged a static value out (`jnp.maximum(jnp.abs(span / dt), 1)`, jax-ml/jax#5208): the
    line to change is that op, not the `linspace` that needed the value. A size derived from an
    argument stays at the use."""
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp

    from stabcheck.traced.errors import classify

    def grid():
        num_steps = jnp.maximum(jnp.abs(1.0 / 0.1), 1)  # the op
        return jnp.linspace(0.0, 1.0, num_steps + 1)

    def from_arg(n):
        m = n + 1
        return jnp.zeros((m,))  # the use

    here = grid.__code__.co_firstlineno
    for fn, args, line in ((grid, (), here + 1), (from_arg, (3,), from_arg.__code__.co_firstlineno + 2)):
        with pytest.raises((TypeError, jax.errors.ConcretizationTypeError)) as info:
            jax.jit(fn)(*args)
        failure = classify(info.value)
        assert (failure.code, failure.line) == ("STB102", line)


def test_vmap_in_axes_errors_are_structure_findings_not_stabchecks_own() -> None:
    """jax-ml/jax#18548: a dict as `in_axes` raises TypeError when `vmap` is built; the confirm
    stage files it as STB206, not as STB902 (stabcheck's own failure)."""
    pytest.importorskip("jax")
    import jax

    from stabcheck.traced.errors import code_of

    with pytest.raises(TypeError) as info:
        jax.vmap(lambda t: t["a"], in_axes={"a": 0})
    assert code_of(info.value)[0] == "STB206"


def test_library_edges_are_filed_under_their_codes_and_near_misses_stay_clean() -> None:
    """Held-out set E: a typed PRNG key in the arguments, an `eqx.filter_jit` step returning a model
    that holds `jax.nn.relu` (a custom_jvp object), a custom_vjp fwd rule without residuals and
    `eqx.debug.assert_max_traces` each used to come out as STB902, STB505 or line 1."""
    path = CONFIRM / "library_edges.py"
    r = run_cli("check", str(path), "--trace", "--confirm", "--no-cache", "--exit-zero", "--output-format", "json")
    found = {(d["code"], d["line"], d["status"]) for d in json.loads(r.stdout) if d["stage"] != "static"}
    lines = path.read_text(encoding="utf-8").splitlines()
    fwd = next(i for i, ln in enumerate(lines, 1) if "# expect: STB405" in ln)
    twice = next(i for i, ln in enumerate(lines, 1) if "fk_step(Model(" in ln)
    assert found == {("STB405", fwd, "confirmed"), ("STB504", twice, "confirmed")}, found


def test_an_optimizer_given_gradients_of_another_tree_is_a_structure_finding() -> None:
    """optax#808 / equinox#458: gradients taken w.r.t. the wrong argument are an array where the
    optimizer state holds a dict (or a Module); optax's update then fails with a plain Python
    `unsupported operand` TypeError, which is a tree mismatch (STB206), not stabcheck's STB902.
    A Python error between numbers stays STB902."""
    pytest.importorskip("optax")
    import jax.numpy as jnp
    import optax

    from stabcheck.traced.errors import code_of

    params = {"w": jnp.ones(3)}
    opt = optax.adam(0.1)
    with pytest.raises(TypeError) as info:
        opt.update(jnp.ones(3), opt.init(params), params)
    assert code_of(info.value)[0] == "STB206", str(info.value)
    with pytest.raises(TypeError) as plain:
        _ = 1 + "a"  # type: ignore[operator]
    assert code_of(plain.value)[0] == "STB902"
