"""The baseline: recorded findings are keyed by what they are about, not by line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from stabcheck import baseline
from stabcheck.api import Options, run
from stabcheck.config import Config, UsageError

from .conftest import run_cli

OLD = """
import jax
import jax.numpy as jnp

@jax.jit
def relu(x):
    if x > 0:
        return x
    return jnp.zeros_like(x)
"""

NEW = """
@jax.jit
def clip(x):
    while x > 1:
        x = x / 2
    return x
"""


def _check(path: Path):
    return run([str(path)], Config(), Options(cache=False, jobs=1)).findings


def test_moving_a_function_by_ten_lines_keeps_it_suppressed(tmp_path: Path):
    src = tmp_path / "m.py"
    src.write_text(textwrap.dedent(OLD).lstrip(), encoding="utf-8")
    bl = tmp_path / "baseline.json"
    before = _check(src)
    assert [f.code for f in before] == ["STB101"]
    baseline.write(bl, before)

    moved = textwrap.dedent(OLD).lstrip().replace("@jax.jit", "\n" * 10 + "@jax.jit")
    src.write_text(moved, encoding="utf-8")
    after = _check(src)
    assert [f.line for f in after] == [before[0].line + 10]
    assert baseline.filter(bl, after) == ([], 0)


def test_new_findings_are_reported_and_gone_ones_counted_stale(tmp_path: Path):
    src = tmp_path / "m.py"
    src.write_text(textwrap.dedent(OLD).lstrip(), encoding="utf-8")
    bl = tmp_path / "baseline.json"
    baseline.write(bl, _check(src))

    src.write_text(textwrap.dedent(OLD).lstrip() + textwrap.dedent(NEW), encoding="utf-8")
    new, stale = baseline.filter(bl, _check(src))
    assert [(f.code, f.function) for f in new] == [("STB101", "clip")] and stale == 0

    src.write_text("import jax\n" + textwrap.dedent(NEW), encoding="utf-8")
    new, stale = baseline.filter(bl, _check(src))
    assert [f.function for f in new] == ["clip"] and stale == 1


def test_counts_a_third_copy_of_a_hazard_recorded_twice(tmp_path: Path):
    body = "@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    if x > 0:\n        return -x\n    return x\n"
    src = tmp_path / "m.py"
    src.write_text("import jax\n" + body, encoding="utf-8")
    bl = tmp_path / "b.json"
    two = _check(src)
    assert len(two) == 2 and len({baseline.key(f, tmp_path) for f in two}) == 1
    baseline.write(bl, two)
    assert json.loads(bl.read_text())["findings"][0]["count"] == 2
    three = "@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    if x > 0:\n        return -x\n    if x > 0:\n        return 2 * x\n    return x\n"
    src.write_text("import jax\n" + three, encoding="utf-8")
    new, stale = baseline.filter(bl, _check(src))
    assert len(new) == 1 and stale == 0


def test_paths_are_relative_to_the_baseline_file(tmp_path: Path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    src = tmp_path / "pkg" / "m.py"
    src.write_text(textwrap.dedent(OLD).lstrip(), encoding="utf-8")
    bl = tmp_path / "baseline.json"
    monkeypatch.chdir(tmp_path)
    baseline.write(bl, run(["pkg"], Config(), Options(cache=False, jobs=1)).findings)
    assert json.loads(bl.read_text())["findings"][0]["path"] == "pkg/m.py"
    monkeypatch.chdir(tmp_path / "pkg")  # the same check run from elsewhere
    assert baseline.filter(bl, run(["m.py"], Config(), Options(cache=False, jobs=1)).findings) == ([], 0)


@pytest.mark.parametrize("content", ["{not json", '{"findings": []}', '{"stabcheck-baseline": 1, "findings": [{"path": "x"}]}'])
def test_malformed_baseline_is_a_user_error(tmp_path: Path, content: str):
    bl = tmp_path / "b.json"
    bl.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match="malformed baseline"):
        baseline.filter(bl, [])
    with pytest.raises(UsageError, match="not found"):
        baseline.filter(tmp_path / "missing.json", [])


def test_cli_round_trip(tmp_path: Path):
    (tmp_path / "m.py").write_text(textwrap.dedent(OLD).lstrip(), encoding="utf-8")
    first = run_cli("check", "m.py", "--no-cache", "--baseline", "bl.json", "--write-baseline", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "wrote 1 finding" in first.stderr
    again = run_cli("check", "m.py", "--no-cache", "--baseline", "bl.json", "--output-format", "concise", cwd=tmp_path)
    assert again.returncode == 0 and "All checks passed" in again.stdout, again.stdout + again.stderr
    (tmp_path / "m.py").write_text("import jax\n" + textwrap.dedent(NEW), encoding="utf-8")
    later = run_cli("check", "m.py", "--no-cache", "--baseline", "bl.json", cwd=tmp_path)
    assert later.returncode == 1 and "STB101" in later.stdout and "1 baseline entry is stale" in later.stdout + later.stderr
    missing = run_cli("check", "m.py", "--no-cache", "--baseline", "nope.json", cwd=tmp_path)
    assert missing.returncode == 2 and "baseline file not found" in missing.stderr and "Traceback" not in missing.stderr
