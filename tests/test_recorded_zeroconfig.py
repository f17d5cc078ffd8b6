"""Issue 17's zero-config path, end to end: a project whose only JAX transforms are in its tests.
`pytest --stabcheck-record` (in a subprocess) records what the tests called; then, with the tests
deleted, `stabcheck check --trace --confirm` in a fresh process reports what `pytest --stabcheck`
reported, at the same lines, each finding naming the test line its entry came from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires_jax

pytestmark = [pytest.mark.slow, requires_jax]

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "zeroconfig"
MODEL = FIX / "zcmodel" / "model.py"
NEAR_MISSES = ("schedule_fixed", "safe_norm_fixed", "loss_fixed", "relu_fixed", "aux_loss_fixed")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


def _keys(findings: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    return {(f["code"], f["path"], f["line"]) for f in findings}


def _function_lines(name: str) -> set[int]:
    lines = MODEL.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines, 1) if ln.startswith(f"def {name}("))
    end = next((i for i, ln in enumerate(lines[start:], start + 1) if ln.startswith("def ")), len(lines) + 1)
    return set(range(start, end))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    proj = tmp_path_factory.mktemp("zeroconfig") / "proj"
    shutil.copytree(FIX, proj)
    recorded = _run(["-m", "pytest", "-p", "no:cacheprovider", "--stabcheck-record", "--stabcheck-report", "report.json"], proj)
    assert "stabcheck: recorded " in recorded.stdout, recorded.stdout[-3000:] + recorded.stderr[-3000:]
    by_pytest = json.loads((proj / "report.json").read_text())
    by_pytest = by_pytest["findings"] if isinstance(by_pytest, dict) else by_pytest
    data = json.loads((proj / ".stabcheck" / "recorded.json").read_text())
    (proj / "tests" / "test_model.py").unlink()  # replayed without the tests; test_local.py defines functions the tests transformed
    (proj / "report.json").unlink()
    checked = _run(["-m", "stabcheck", "check", "--trace", "--confirm", "--no-cache", "--output-format", "json", "."], proj)
    assert checked.returncode == 1, checked.stderr[-3000:]
    out = json.loads(checked.stdout)
    replayed = [f for f in (out["findings"] if isinstance(out, dict) else out) if f["code"] != "note" and f["stage"] != "static" and f["status"] != "refuted"]
    return by_pytest, replayed, data


# Both paths place every finding at the same line: STB406 where the gradient's dtype is made
# (`traced.checks.first_cast_site`: here the custom VJP's bwd), STB504 at the compiled function's
# def (the call that made the signature is the finding's entry). Codes still compared by code alone:
AT_EITHER_LINE: set[str] = set()
NOT_REPLAYED: set[str] = set()


def test_replay_reports_every_hazard_pytest_reported(runs) -> None:
    by_pytest, replayed, _ = runs
    assert by_pytest, "pytest --stabcheck reported nothing: the fixture lost its hazards"
    assert {"STB406", "STB504"} <= {f["code"] for f in by_pytest}, "the fixture lost its gradient-dtype or retrace hazard"
    assert not AT_EITHER_LINE and not NOT_REPLAYED  # every finding compared by code, file and line
    missing = _keys(by_pytest) - _keys(replayed)
    assert not missing, f"pytest --stabcheck reported {sorted(missing)}, the replay did not; it reported {sorted(_keys(replayed))}"


def test_every_replayed_finding_names_the_test_line_it_came_from(runs) -> None:
    _, replayed, _ = runs
    for f in replayed:
        assert f["evidence"].get("entry", "").startswith(("recorded from tests/test_model.py:", "recorded from tests/test_local.py:")), f


def test_the_near_misses_stay_silent_in_the_replay(runs) -> None:
    _, replayed, data = runs
    for name in NEAR_MISSES:
        assert f"zcmodel.model:{name}" in data["functions"]  # recorded, replayed, and silent
        lines = _function_lines(name)
        assert not [f for f in replayed if f["path"] == "zcmodel/model.py" and f["line"] in lines], name


def test_a_function_defined_in_a_test_module_is_replayed_from_it(runs) -> None:
    by_pytest, replayed, data = runs
    local = ROOT / "fixtures" / "zeroconfig" / "tests" / "test_local.py"
    assert data["functions"]["test_local:log_barrier"]["file"] == "tests/test_local.py"  # as pytest imported it
    line = local.read_text().splitlines().index("    return jnp.where(x > 0, jnp.log(x), 0.0).sum()") + 1
    assert ("STB408", "tests/test_local.py", line) in _keys(by_pytest) & _keys(replayed)
    assert "test_local:log_barrier_fixed" in data["functions"]
    assert not [f for f in replayed if f.get("function") == "log_barrier_fixed"]


def test_the_recording_is_deterministic_and_merges(runs, tmp_path: Path) -> None:
    _, _, data = runs
    proj = tmp_path / "proj"
    shutil.copytree(FIX, proj)
    for _ in range(2):  # a second run adds nothing new: the same file, byte for byte
        _run(["-m", "pytest", "-p", "no:cacheprovider", "--stabcheck-record"], proj)
        first = (proj / ".stabcheck" / "recorded.json").read_text() if _ == 0 else first
    assert (proj / ".stabcheck" / "recorded.json").read_text() == first
    assert json.loads(first)["functions"] == data["functions"]


def test_a_file_that_is_not_ours_is_left_alone(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(FIX, proj)
    (proj / ".stabcheck").mkdir()
    (proj / ".stabcheck" / "recorded.json").write_text('{"mine": 1}')
    proc = _run(["-m", "pytest", "-p", "no:cacheprovider", "--stabcheck-record", "-k", "schedule"], proj)
    assert "stabcheck: --stabcheck-record: `" in proc.stdout and "is not a stabcheck recorded-signatures file" in proc.stdout and "nothing was recorded" in proc.stdout
    assert proc.returncode == 0 and "Traceback" not in proc.stdout
    assert (proj / ".stabcheck" / "recorded.json").read_text() == '{"mine": 1}'


STORM_MODEL = '''import jax.numpy as jnp


def pad_free(x):
    return jnp.tanh(x).sum()


def pad_free_bounded(x):
    return jnp.tanh(x).sum()
'''

STORM_TESTS = '''import jax
import jax.numpy as jnp

from stormpkg.model import pad_free, pad_free_bounded


def test_storm():
    for n in range(1, 7):  # six shapes: one more than max-traces
        assert jax.jit(pad_free)(jnp.ones(n)).shape == ()


def test_bounded():
    for n in range(1, 6):  # five shapes: within max-traces
        assert jax.jit(pad_free_bounded)(jnp.ones(n)).shape == ()
'''


def test_a_max_traces_above_four_is_reached_by_the_replay(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "stormpkg").mkdir(parents=True)
    (proj / "tests").mkdir()
    (proj / "stormpkg" / "__init__.py").write_text("")
    (proj / "stormpkg" / "model.py").write_text(STORM_MODEL)
    (proj / "tests" / "test_storm.py").write_text(STORM_TESTS)
    (proj / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n\n[tool.stabcheck]\nmax-traces = 5\n')
    _run(["-m", "pytest", "-p", "no:cacheprovider", "--stabcheck-record", "--stabcheck-report", "report.json"], proj)
    by_pytest = json.loads((proj / "report.json").read_text())
    by_pytest = by_pytest["findings"] if isinstance(by_pytest, dict) else by_pytest
    data = json.loads((proj / ".stabcheck" / "recorded.json").read_text())
    assert len(data["functions"]["stormpkg.model:pad_free"]["signatures"]) == 6  # max-traces + 1 kept
    shutil.rmtree(proj / "tests")
    (proj / "report.json").unlink()
    checked = _run(["-m", "stabcheck", "check", "--trace", "--confirm", "--no-cache", "--output-format", "json", "."], proj)
    out = json.loads(checked.stdout)
    replayed = [f for f in (out["findings"] if isinstance(out, dict) else out) if f["code"] == "STB504" and f["status"] != "refuted"]
    storm = ("STB504", "stormpkg/model.py", STORM_MODEL.splitlines().index("def pad_free(x):") + 1)
    assert _keys([f for f in by_pytest if f["code"] == "STB504"]) == {storm}
    assert _keys(replayed) == {storm}, checked.stdout[-3000:] + checked.stderr[-3000:]  # the bounded near miss stays silent
