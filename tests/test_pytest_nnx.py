"""`pytest --stabcheck` on flax NNX code (issue 17): `nnx.jit` calls are checked like `jax.jit`
ones, at the model's lines. fixtures/nnxproject/ holds the model and its tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytest.importorskip("jax")
pytest.importorskip("flax.nnx")

PROJECT = Path(__file__).resolve().parents[1] / "fixtures" / "nnxproject"


def _line_of(relpath: str, text: str) -> int:
    lines = (PROJECT / relpath).read_text().splitlines()
    return lines.index(text) + 1


@pytest.mark.slow
def test_nnx_jit_calls_are_checked_at_the_models_lines(pytester: pytest.Pytester) -> None:
    shutil.copytree(PROJECT, pytester.path, dirs_exist_ok=True)
    result = pytester.runpytest("-p", "no:cacheprovider", "--stabcheck", "--stabcheck-report=r.json")
    result.assert_outcomes(passed=4, failed=1)  # test_gate fails: JAX raises at the `if`
    data = json.loads((pytester.path / "r.json").read_text())
    model = "nnxmodel/model.py"
    found = {(d["code"], d["path"], d["line"]) for d in data}
    assert found == {
        ("STB101", model, _line_of(model, "        if y.sum() > 0:")),
        ("STB302", model, _line_of(model, "    return 2.0")),
    }
    assert not {d["function"] for d in data} & {"Gate2.__call__", "strong"}
    assert "Traceback" not in result.stdout.str().split("= stabcheck =")[1]
