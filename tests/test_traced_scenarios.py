"""The traced stage end to end, through the real CLI, on the three shared scenarios and the
traced fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import requires_jax, run_cli

pytestmark = [pytest.mark.slow, requires_jax]

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parents[1] / "fixtures" / "scenarios"
SCEN = SCENARIOS
FIX = ROOT / "fixtures" / "traced"


def _line(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def _json(*args: str) -> tuple[int, list[dict]]:
    r = run_cli(*args, "--output-format", "json", cwd=ROOT)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_masking_and_rbf_scenarios() -> None:
    rc, found = _json("trace", str(FIX / "scenario_entries.py"))
    got = {(d["code"], Path(d["path"]).name, d["line"]) for d in found}
    masking, rbf = SCEN / "masking_flow.py", SCEN / "rbf_interpolator.py"
    assert got == {
        ("STB402", "masking_flow.py", _line(masking, "params[\"mask\"] = MASK")),  # where the mask enters the params
        ("STB301", "masking_flow.py", _line(masking, "jnp.concatenate([MASK64 * x")),
        ("STB101", "rbf_interpolator.py", _line(rbf, "    if jnp.allclose(A")),
        ("STB405", "rbf_interpolator.py", _line(rbf, "return (lu_solve(F, g, trans=1),)")),
    }
    assert rc == 1
    by = {d["code"]: d for d in found}
    assert "`params['mask']`" in by["STB402"]["message"] and by["STB402"]["evidence"]["entry"] == "masking:train_step_mask_in_params"
    assert by["STB301"]["evidence"]["entry"] == "masking_x64" and by["STB301"]["evidence"]["from"] == "float32"
    assert "TracerBoolConversionError" in by["STB101"]["evidence"]["jax_message"] or "boolean conversion" in by["STB101"]["evidence"]["jax_message"]
    assert "bwd rule" in by["STB405"]["evidence"]["jax_message"]
    assert all(d["stage"] == "traced" for d in found)
    # nothing on the good variants (train_step_ok also went through the init->step->step state check)
    assert not [d for d in found if d["evidence"].get("entry", "").endswith(("train_step_ok", "loss_ok"))]


def test_higher_order_entries_dict_with_transforms_override() -> None:
    rc, found = _json("trace", f"{SCEN / 'higher_order.py'}:ENTRIES", "--transforms", "grad,jvp")
    ho = SCEN / "higher_order.py"
    got = {(d["code"], d["line"], d["evidence"]["entry"]) for d in found}
    assert got == {
        ("STB403", _line(ho, "return jnp.sum(softclip(x) ** 2)"), "softclip_sum"),
        ("STB404", _line(ho, "lax.while_loop(cond, body, (x, 0.0))"), "while_power_sum"),
    }
    assert rc == 1


def test_check_trace_merges_with_static_and_reports_traced_only_hazards() -> None:
    files = [str(FIX / n) for n in ("more_hazards.py", "nested.py", "state_drift.py")]
    _, found = _json("check", *files, "--trace", "--no-cache")
    mh, st = FIX / "more_hazards.py", FIX / "state_drift.py"
    traced = {(d["code"], Path(d["path"]).name, d["line"]) for d in found if d["stage"] == "traced"}
    expected = {
        ("STB305", "more_hazards.py", _line(mh, "return x @ w - y  #")),
        ("STB407", "more_hazards.py", _line(mh, "jax.pure_callback(np.sinh")),
        ("STB203", "more_hazards.py", _line(mh, "v.astype(jnp.bfloat16), x)")),
        ("STB204", "more_hazards.py", _line(mh, "c.astype(jnp.float16), x)")),
        ("STB205", "more_hazards.py", _line(mh, "return x, jnp.mean(x)  #")),
        ("STB301", "more_hazards.py", _line(mh, "mask.astype(jnp.float64) * x")),
        ("STB304", "more_hazards.py", _line(mh, "mask.astype(jnp.float64) * x")),
        ("STB101", "more_hazards.py", _line(mh, "if jnp.sum(x) > 0")),
        ("STB303", "nested.py", _line(FIX / "nested.py", "y = xi * w  #")),
        ("STB204", "state_drift.py", _line(st, "weak -> strong float32 here")),
    }
    assert expected <= traced, sorted(traced)
    assert not [d for d in found if d["stage"] == "traced" and d["evidence"].get("entry", "").endswith("_ok")]
    drift = next(d for d in found if d["code"] == "STB204" and d["path"].endswith("state_drift.py"))
    assert "`opt_state['lr']`" in drift["message"] and drift["evidence"]["before"] == "~float32[]" and drift["evidence"]["after"] == "float32[]"
    # the static STB101 at the same line is the same finding, shown once with the strongest stage
    branch = [d for d in found if d["code"] == "STB101" and d["line"] == _line(mh, "if jnp.sum(x) > 0")]
    assert len(branch) == 1 and branch[0]["stage"] == "traced"


def test_function_targets_from_specs_and_jaxtyping(tmp_path: Path) -> None:
    pytest.importorskip("jaxtyping")
    mod = tmp_path / "model.py"
    mod.write_text(
        "import jax\n"
        "from jaxtyping import Array, BFloat16, Float32\n\n"
        "@jax.jit\n"
        "def annotated(w: BFloat16[Array, 'n'], x: Float32[Array, 'n']):\n"
        "    return w * x\n\n"
        "def mix(w, x, k):\n"
        "    return (w * x) * k\n"
    )
    r = run_cli("trace", f"{mod}:annotated", "--dim", "n=8", "--output-format", "json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert [(d["code"], d["line"]) for d in json.loads(r.stdout)] == [("STB303", 6)]
    r = run_cli("trace", f"{mod}:mix", "--arg", "bf16[n]", "--arg", "f32[n]", "--static", "2=3", "--dim", "n=4", "--output-format", "json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert [(d["code"], d["line"]) for d in json.loads(r.stdout)] == [("STB303", 9)]
    r = run_cli("trace", f"{mod}:mix", "--arg", "f32[4]", "--arg", "f32[4]", "--static", "2=3", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rbf_union_is_reported_with_the_branch_that_hides_it() -> None:
    """Tracing stops at `factorize`'s `if` (STB101); the union return that `if` chooses between
    (STB201) is still reported: the traced stage seeds the static one (issue 18, item 6)."""
    rbf = SCEN / "rbf_interpolator.py"
    rc, found = _json("check", str(FIX / "scenario_entries.py"), str(rbf), "--trace", "--no-cache")
    got = {(d["code"], d["line"]) for d in found if Path(d["path"]).name == "rbf_interpolator.py"}
    assert ("STB101", _line(rbf, "    if jnp.allclose(A")) in got
    assert ("STB201", _line(rbf, "    return lu_factor(A)")) in got, got
    union = next(d for d in found if d["code"] == "STB201")
    assert union["stage"] == "traced" and "seeded_by" in union["evidence"]
    assert rc == 1
