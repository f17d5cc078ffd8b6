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


def test_a_partial_run_keeps_the_other_files_entries(tmp_path: Path):
    """pre-commit checks the staged files only: the other files' entries are neither stale nor lost."""
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text(textwrap.dedent(OLD).lstrip(), encoding="utf-8")
    full = run_cli("check", ".", "--no-cache", "--no-types", "--baseline", "bl.json", "--write-baseline", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    data = json.loads((tmp_path / "bl.json").read_text())
    assert sorted(e["path"] for e in data["findings"]) == ["a.py", "b.py"]
    assert data["stabcheck-version"] and data["stabcheck-baseline"] == baseline.VERSION

    (tmp_path / "a.py").write_text("x = 1\n", encoding="utf-8")  # a.py's finding fixed
    one = run_cli("check", "b.py", "--no-cache", "--no-types", "--baseline", "bl.json", "--output-format", "concise", cwd=tmp_path)
    assert one.returncode == 0 and "stale" not in one.stdout + one.stderr, one.stdout
    assert one.stdout.splitlines()[-1] == "All checks passed: 1 file checked; 1 finding hidden by the baseline."
    both = run_cli("check", "a.py", "b.py", "--no-cache", "--no-types", "--baseline", "bl.json", "--output-format", "concise", cwd=tmp_path)
    assert "1 baseline entry is stale" in both.stdout

    # rewriting from a run over b.py alone keeps a.py's entry; over a.py drops it (fixed)
    run_cli("check", "b.py", "--no-cache", "--no-types", "--baseline", "bl.json", "--write-baseline", cwd=tmp_path)
    assert sorted(e["path"] for e in json.loads((tmp_path / "bl.json").read_text())["findings"]) == ["a.py", "b.py"]
    run_cli("check", "a.py", "--no-cache", "--no-types", "--baseline", "bl.json", "--write-baseline", cwd=tmp_path)
    assert [e["path"] for e in json.loads((tmp_path / "bl.json").read_text())["findings"]] == ["b.py"]


@pytest.mark.parametrize(
    "content,words",
    [
        ('{"version": 2, "rules": []}', "not a stabcheck baseline"),
        ('{"stabcheck-baseline": 7, "stabcheck-version": "9.0", "findings": []}', "written by stabcheck 9.0"),
        ('{"stabcheck-baseline": 1, "findings": ["STB101"]}', "entry 1 is not an object"),
        ('{"stabcheck-baseline": 1, "findings": [{"code": "STB101", "path": "m.py", "count": 0}]}', "count 0"),
        ('[1, 2]', "not a stabcheck baseline"),
    ],
)
def test_foreign_or_malformed_baseline_exits_2_with_the_reason(tmp_path: Path, content: str, words: str):
    (tmp_path / "m.py").write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "bl.json").write_text(content, encoding="utf-8")
    proc = run_cli("check", "m.py", "--no-cache", "--no-types", "--baseline", "bl.json", cwd=tmp_path)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_write_baseline_repairs_a_damaged_baseline_but_never_overwrites_a_foreign_file(tmp_path: Path):
    (tmp_path / "m.py").write_text(textwrap.dedent(OLD).lstrip(), encoding="utf-8")
    (tmp_path / "bl.json").write_text('{"stabcheck-baseline": 1, "findings": 3}', encoding="utf-8")
    proc = run_cli("check", "m.py", "--no-cache", "--no-types", "--baseline", "bl.json", "--write-baseline", cwd=tmp_path)
    assert proc.returncode == 0 and len(json.loads((tmp_path / "bl.json").read_text())["findings"]) == 1
    (tmp_path / "package.json").write_text('{"name": "web"}', encoding="utf-8")
    proc = run_cli("check", "m.py", "--no-cache", "--no-types", "--baseline", "package.json", "--write-baseline", cwd=tmp_path)
    assert proc.returncode == 2 and "not a stabcheck baseline" in proc.stderr
    assert (tmp_path / "package.json").read_text() == '{"name": "web"}'
