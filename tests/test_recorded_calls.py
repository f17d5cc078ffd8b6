"""A user's function that applies a transform itself, to a lambda closing over its arguments
(`jax.grad(lambda v: mlp(w, v))(x)`), or whose transform JAX rejects before any trace
(`jax.jit(jax.random.PRNGKey)(2**40)`): `pytest --stabcheck-record` records that function as the
test called it (a `call` signature, at the test's line), and the replay runs it as called, its
own transform included. fixtures/recorded_calls/ holds the functions and the tests."""

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

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "recorded_calls"
INNER = FIX / "callpkg" / "inner.py"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


def _line(text: str) -> int:
    return next(i for i, ln in enumerate(INNER.read_text().splitlines(), 1) if text in ln)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    proj = tmp_path_factory.mktemp("calls") / "proj"
    shutil.copytree(FIX, proj)
    ran = _run(["-m", "pytest", "-p", "no:cacheprovider", "--stabcheck-record"], proj)
    assert "3 failed, 3 passed" in ran.stdout, ran.stdout[-3000:]  # the hazards fail as they do under JAX
    data = json.loads((proj / ".stabcheck" / "recorded.json").read_text())
    shutil.rmtree(proj / "tests")
    checked = _run(["-m", "stabcheck", "check", "--trace", "--confirm", "--no-cache", "--output-format", "json", "."], proj)
    out = json.loads(checked.stdout)
    found = [f for f in (out["findings"] if isinstance(out, dict) else out) if f.get("stage") != "static" and f.get("status") != "refuted"]
    return data, found


def test_the_functions_are_recorded_as_called_at_the_test_line(runs) -> None:
    data, _ = runs
    calls = {name: s for name, fn in data["functions"].items() for s in fn["signatures"] if s["transform"] == "call"}
    assert set(calls) == {"callpkg.inner:saliency", "callpkg.inner:saliency_ok", "callpkg.inner:seeded", "callpkg.inner:evaluate"}, sorted(calls)
    # a plain object of the user's class: its type and attributes
    assert calls["callpkg.inner:evaluate"]["args"] == [{"$object": "callpkg.inner:Scale", "fields": {"factor": 2.0}}, "f32[2]"]
    assert calls["callpkg.inner:saliency"]["args"] == ["f32[2,1]", "f32[2]"] and calls["callpkg.inner:saliency"]["site"] == "tests/test_inner.py:10"
    assert calls["callpkg.inner:seeded"]["args"] == [2**40 + 7]
    # the lambdas themselves are not importable: nothing about them is kept
    assert not [k for k in data["skipped"] if "<lambda>" in k]


def test_the_replay_runs_them_as_called(runs) -> None:
    _, found = runs
    got = {(f["code"], f["line"], f["evidence"].get("entry")) for f in found if f["path"] == "callpkg/inner.py"}
    assert got == {
        ("STB409", _line("def saliency(w, x):") + 1, "recorded from tests/test_inner.py:10 (call)"),
        ("STB503", _line("def seeded(seed):") + 1, "recorded from tests/test_inner.py:18 (call)"),
        ("STB505", _line("def evaluate(model, x):") + 1, "recorded from tests/test_inner.py:26 (call)"),
    }, got
