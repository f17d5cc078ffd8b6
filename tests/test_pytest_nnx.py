"""`pytest --stabcheck` on flax NNX code (issue 17): `nnx.jit` calls are checked like `jax.jit`
ones and `nnx.grad` calls like `jax.grad` ones, at the model's lines. fixtures/nnxproject/ holds the model and its tests."""

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
        # nnx.grad of `Norm`: the first non-finite value is made by sqrt's derivative at 0
        ("STB408", model, _line_of(model, "        return jnp.sqrt(jnp.sum(self.lin(x) ** 2 * 0.0))")),
    }
    (weak,) = [d for d in data if d["code"] == "STB302"]
    # the user's own output, not nnx.jit's internal `(args_out, kwargs_out, out)` layout
    assert weak["message"].startswith("`result` is weakly typed"), weak["message"]
    (nan,) = [d for d in data if d["code"] == "STB408"]
    assert "`nnx.grad` ran on `norm_loss`" in nan["message"], nan["message"]
    assert not {d["function"] for d in data} & {"Gate2.__call__", "strong"}
    assert "Traceback" not in result.stdout.str().split("= stabcheck =")[1]
