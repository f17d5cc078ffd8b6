"""`stabcheck check --trace/--confirm` replays the signatures `pytest --stabcheck-record` wrote to
`.stabcheck/recorded.json`: in the worker, with the AD transforms the tests did not run, each
finding naming the test line it came from; hand-written entries win; a gone function is a note;
a bad file given by --recorded is exit 2; a static run imports nothing the file names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stabcheck.traced import recorded
from tests.conftest import requires_jax

pytestmark = [pytest.mark.slow, requires_jax]

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "recorded"
MODEL = FIX / "src" / "recpkg" / "model.py"


def _line(needle: str) -> int:
    return next(i for i, ln in enumerate(MODEL.read_text().splitlines(), 1) if needle in ln)


def _sig(transform: str, args: list[Any], site: str, **extra: Any) -> dict[str, Any]:
    return {"transform": transform, "options": extra.pop("options", {}), "args": args, "kwargs": extra.pop("kwargs", {}), "site": site, **extra}


def _project(tmp_path: Path, functions: dict[str, list[dict[str, Any]]], skipped: dict[str, Any] | None = None) -> Path:
    proj = tmp_path / "proj"
    shutil.copytree(FIX, proj)
    data = recorded.empty()
    for name, sigs in functions.items():
        for s in sigs:
            recorded.add(data, name, "src/recpkg/model.py", s)
    data["skipped"] = skipped or {}
    (proj / ".stabcheck").mkdir()
    (proj / ".stabcheck" / "recorded.json").write_text(recorded.dumps(recorded.merge(recorded.empty(), data)))
    return proj


def _check(proj: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stabcheck", "check", "--no-cache", "--output-format", "json", *args], cwd=proj, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _findings(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    return data["findings"] if isinstance(data, dict) else data


SIGS = {
    "recpkg.model:soft_sqrt": [_sig("jit", ["f32[3]"], "tests/test_model.py:42")],
    "recpkg.model:safe_sqrt": [_sig("grad", ["f32[3]"], "tests/test_model.py:50")],
    "recpkg.model:branchy": [_sig("jit", ["f32[3]"], "tests/test_model.py:60")],
    "recpkg.model:predict": [
        _sig("jit", [{"$type": "recpkg.model:Params", "fields": {"w": "f32[3,2]", "b": "f32[2]"}}, "f32[4,3]"], "tests/test_model.py:70", options={"static_argnames": ["kind"]}, kwargs={"kind": {"$str": "relu"}}),
        _sig("vmap", [{"$type": "recpkg.model:Params", "fields": {"w": "f32[3,2]", "b": "f32[2]"}}, "f32[5,3]"], "tests/test_model.py:71", options={"in_axes": [None, 0]}),
    ],
    "recpkg.model:schedule": [_sig("jit", ["i32[]", "f32[3]"], "tests/test_model.py:80")],
    "recpkg.model:doubled": [_sig("jit", [0.5, "f32[3]"], "tests/test_model.py:84")],
    "recpkg.model:avg_step": [
        _sig("jit", ["f32[3]", {"$type": "recpkg.model:Avg", "fields": {"value": "f32?[]"}}, "f32[]"], "tests/test_model.py:100"),
        _sig("jit", ["f32[3]", {"$type": "recpkg.model:Avg", "fields": {"value": "f32[]"}}, "f32[]"], "tests/test_model.py:100"),
    ],
    "recpkg.model:scaled_step": [
        _sig("jit", ["f32[3]", {"$type": "recpkg.model:Avg", "fields": {"value": "f32[]"}}, "f32[]"], "tests/test_model.py:104"),
        _sig("jit", ["f32[5]", {"$type": "recpkg.model:Avg", "fields": {"value": "f32[]"}}, "f32[]"], "tests/test_model.py:105"),
    ],
    "recpkg.model:to_half": [_sig("jit", ["f32[3]"], "tests/test_model.py:108"), _sig("jit", ["f32[4]"], "tests/test_model.py:109")],
    "recpkg.model:reach": [_sig("filter_jit", [{"$type": "recpkg.model:Arm", "fields": {"scale": "f32[3]", "forward": {"$jit": "recpkg.model:kinematics"}}}, "f32[3]"], "tests/test_model.py:112", objects=5)],
    "recpkg.model:reach_ok": [_sig("filter_jit", [{"$type": "recpkg.model:Arm", "fields": {"scale": "f32[3]", "forward": {"$jit": "recpkg.model:kinematics"}}}, "f32[3]"], "tests/test_model.py:116")],
    "recpkg.model:fit_step": [_sig("jit", ["f32[3]", {"$opaque": "recpkg.model:Sgd"}], "tests/test_model.py:120", options={"static_argnums": [1]}, objects=5)],
    "recpkg.model:fit_step_ok": [_sig("jit", ["f32[3]", {"$opaque": "recpkg.model:Sgd"}], "tests/test_model.py:124", options={"static_argnums": [1]})],
    "recpkg.model:counted": [
        _sig("grad", [{"w": "f32[3]", "step": "i32?[]"}, "f32[3]"], "tests/test_model.py:90"),
        _sig("filter_grad", [{"w": "f32[2]", "step": "i32?[]"}, "f32[2]"], "tests/test_model.py:91"),
    ],
}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    proj = _project(tmp_path_factory.mktemp("replay"), SIGS, {"tests.test_model:<locals>.f": {"transform": "jit", "reason": "`f` is defined inside a function", "site": "tests/test_model.py:80"}})
    proc = _check(proj, "--trace", "--confirm", "src")
    return _findings(proc) + [{"notes": proc.stdout}]


def _traced(found: list[dict[str, Any]]) -> set[tuple[str, int, str]]:
    return {(f["code"], f["line"], f["evidence"].get("entry", "")) for f in found if "code" in f and f.get("stage") != "static"}


def test_recorded_signatures_find_the_hazards_at_their_lines(replayed: list[dict[str, Any]]) -> None:
    got = _traced(replayed)
    assert ("STB401", _line("jnp.where(x > 0, jnp.sqrt(x)"), "recorded from tests/test_model.py:42 (jit; grad, hessian added)") in got
    assert ("STB101", _line("if x.sum() > 0"), "recorded from tests/test_model.py:60 (jit)") in got


def test_a_weak_output_the_code_makes_is_reported_and_one_of_a_weak_argument_is_not(replayed: list[dict[str, Any]]) -> None:
    got = _traced(replayed)
    assert ("STB302", _line("return x * 0.5, step * 0.1"), "recorded from tests/test_model.py:80 (jit)") in got
    # `doubled(0.5, x)`: weak only because the test passed a Python float, as the entries judge it
    assert not [f for f in got if f[1] == _line("return x * lr, lr * 2.0  # weak only when the caller passes a weak `lr`")]


def test_a_step_whose_returned_state_was_given_back_is_replayed_as_a_step(replayed: list[dict[str, Any]]) -> None:
    """The recording holds `avg_step` called with a weak `value` and with the strong one it
    returns: the tests fed the state back. Under JAX that compiles the step twice."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(FIX / "src"))
    try:
        from recpkg import model
    finally:
        sys.path.remove(str(FIX / "src"))
    step = jax.jit(model.avg_step)
    params, state = jnp.ones(3), model.avg_init()
    for _ in range(3):
        params, state = step(params, state, jnp.float32(1.0))
    assert step._cache_size() == 2
    got = {(f["code"], f["line"], f.get("status")) for f in replayed if f.get("code") == "STB204"}
    assert got == {("STB204", _line("value = state.value + (loss - state.value) / 10.0"), "confirmed")}, got
    # near misses: a state that keeps its type, an output shaped like the argument never given back
    assert not [f for f in replayed if f.get("function") in ("scaled_step", "to_half")]


def test_a_jit_built_per_module_is_replayed_with_as_many_jit_objects(replayed: list[dict[str, Any]]) -> None:
    """`reach` was recorded called with 5 `Arm`s, each with its own `jax.jit(kinematics)`: the
    replay rebuilds 5 jit objects, and JAX compiles `reach` for each (under JAX too)."""
    import equinox as eqx
    import jax.numpy as jnp

    sys.path.insert(0, str(FIX / "src"))
    try:
        from recpkg import model
    finally:
        sys.path.remove(str(FIX / "src"))
    f = eqx.filter_jit(model.reach)
    for _ in range(5):
        f(model.Arm(model.kinematics), jnp.ones(3))
    assert f._cached._cache_size() == 5
    (found,) = [f for f in replayed if f.get("code") == "STB504" and f.get("function") == "reach"]
    assert found["line"] == _line("self.forward = jax.jit(fk)") and found["status"] == "confirmed", found
    assert "compiled 5 times in 5 calls" in found["message"] and found["evidence"]["entry"] == "recorded from tests/test_model.py:112 (filter_jit)"
    assert not [f for f in replayed if f.get("function") == "reach_ok"]


def test_a_static_argument_made_anew_per_call_is_replayed_as_a_recorded_pattern(replayed: list[dict[str, Any]]) -> None:
    """`fit_step` was recorded jitted with 5 unequal optimizers (closures: kept as their type):
    the replay passes 5 unequal stand-ins and counts JAX's traces; the finding says so. Under
    JAX, the real optimizers compile it 5 times; one optimizer passed every time, once."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(FIX / "src"))
    try:
        from recpkg import model
    finally:
        sys.path.remove(str(FIX / "src"))
    step = jax.jit(model.fit_step, static_argnums=1)
    for _ in range(5):
        step(jnp.ones(3), model.sgd(0.1))
    assert step._cache_size() == 5
    (found,) = [f for f in replayed if f.get("code") == "STB504" and f.get("function") == "fit_step"]
    assert found["line"] == _line("def fit_step(params, optimizer):") and found["status"] == "confirmed", found
    assert found["message"].startswith("replaying a recorded call pattern:") and "JAX traced `fit_step` 5 times" in found["message"], found["message"]
    assert found["evidence"]["entry"] == "recorded from tests/test_model.py:120 (jit)"
    assert not [f for f in replayed if f.get("function") == "fit_step_ok"]


def test_an_int_leaf_given_to_grad_is_confirmed_at_the_test_call(replayed: list[dict[str, Any]]) -> None:
    found = [f for f in replayed if f.get("code") == "STB402"]
    assert [(f["path"], f["line"], f["status"], f["evidence"]["entry"]) for f in found] == [("tests/test_model.py", 90, "confirmed", "recorded from tests/test_model.py:90 (grad)")]


def test_the_near_miss_and_the_clean_signatures_stay_silent(replayed: list[dict[str, Any]]) -> None:
    lines = {line for _, line, _ in _traced(replayed)}
    assert not lines & {_line("safe = jnp.where"), _line("jnp.sqrt(safe)"), _line("y = x @ params.w"), _line("jnp.maximum(y, 0.0)")}


def test_what_was_kept_out_is_a_note(replayed: list[dict[str, Any]]) -> None:
    assert "recorded `tests.test_model:<locals>.f` was not kept: `f` is defined inside a function (at tests/test_model.py:80)" in replayed[-1]["notes"]


def test_a_hand_written_entry_wins(tmp_path: Path) -> None:
    proj = _project(tmp_path, {"recpkg.model:soft_sqrt": SIGS["recpkg.model:soft_sqrt"]})
    (proj / "src" / "recpkg" / "entries.py").write_text("import jax.numpy as jnp\n\nimport stabcheck\nfrom model import soft_sqrt\n\n\n@stabcheck.entry\ndef soft_sqrt_entry():\n    return stabcheck.Entry(soft_sqrt, (jnp.ones(3),), transforms=('jit', 'grad'))\n")
    found = _findings(_check(proj, "--confirm", "src"))
    entries = {e for c, _, e in _traced(found) if c == "STB401"}
    assert entries and not any(e.startswith("recorded") for e in entries)


def test_a_function_that_is_gone_is_one_note(tmp_path: Path) -> None:
    proj = _project(tmp_path, {"recpkg.model:renamed": [_sig("jit", ["f32[3]"], "tests/t.py:1")], "recpkg.gone:f": [_sig("jit", ["f32[3]"], "tests/t.py:2")]})
    proc = _check(proj, "--trace", "src")
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr + proc.stdout
    assert "recorded function `recpkg.model:renamed` cannot be found (AttributeError" in proc.stdout
    assert "recorded function `recpkg.gone:f` cannot be found (ModuleNotFoundError" in proc.stdout
    assert not [f for f in _findings(proc) if f["code"] == "STB902"]


def test_a_bad_recorded_file_is_a_usage_error_or_a_note(tmp_path: Path) -> None:
    proj = _project(tmp_path, {})
    bad = proj / "other.json"
    bad.write_text('{"format": "stabcheck-recorded", "version": 7, "functions": {}}')
    proc = _check(proj, "--trace", "--recorded", str(bad), "src")
    assert proc.returncode == 2 and "has version 7" in proc.stderr and "Traceback" not in proc.stderr
    (proj / ".stabcheck" / "recorded.json").write_text("{oops")
    proc = _check(proj, "--trace", "src")
    assert proc.returncode in (0, 1) and "is not valid JSON" in proc.stdout


def test_recorded_file_given_by_option(tmp_path: Path) -> None:
    proj = _project(tmp_path, {})
    data = recorded.empty()
    recorded.add(data, "recpkg.model:branchy", "", _sig("jit", ["f32[3]"], "tests/t.py:5"))
    (proj / "elsewhere.json").write_text(recorded.dumps(data))
    found = _findings(_check(proj, "--trace", "--recorded", "elsewhere.json", "src"))
    assert ("STB101", _line("if x.sum() > 0"), "recorded from tests/t.py:5 (jit)") in _traced(found)


def test_a_static_run_imports_nothing_the_file_names(tmp_path: Path) -> None:
    proj = _project(tmp_path, {"recpkg.on_import:f": [_sig("jit", ["f32[3]"], "tests/t.py:1")]})
    marker = tmp_path / "imported"
    proc = _check(proj, "src", env={"RECPKG_MARKER": str(marker)})
    assert proc.returncode in (0, 1) and not marker.exists()
    _check(proj, "--trace", "src", env={"RECPKG_MARKER": str(marker)})
    assert marker.exists()  # the same file under --trace: imported, in the worker
