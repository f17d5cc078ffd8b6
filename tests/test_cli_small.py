"""Small command-line promises of issue 19: suppression codes read whole, honest summaries, one
line per finding in `concise`, GitHub's annotation limit said out loud."""

from __future__ import annotations

from pathlib import Path

from stabcheck import reporters
from stabcheck.api import check_source
from stabcheck.config import Config
from stabcheck.finding import Finding, Span

from .conftest import run_cli

BRANCH = "import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:{noqa}\n        return x\n    return -x\n"


def test_noqa_with_a_letter_o_is_an_unknown_code_not_a_family() -> None:
    found = check_source(BRANCH.format(noqa="  # noqa: STB1O1"), "m.py", Config(types=False))
    assert sorted(f.code for f in found) == ["STB101", "STB900"]  # not silenced as `STB1`
    assert "unknown rule `STB1O1`" in next(f.message for f in found if f.code == "STB900")
    assert [f.code for f in check_source(BRANCH.format(noqa="  # noqa: STB101 -- a traced test, on purpose"), "m.py", Config(types=False))] == []


def test_summary_counts_files_with_findings_and_files_checked(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(BRANCH.format(noqa=""), encoding="utf-8")
    for i in range(3):
        (tmp_path / f"ok{i}.py").write_text("x = 1\n", encoding="utf-8")
    proc = run_cli("check", ".", "--no-cache", "--no-types", "--output-format", "concise", cwd=tmp_path)
    assert proc.stdout.splitlines()[-1] == "Found 1 finding in 1 file (4 files checked)."


def test_concise_is_one_line_per_finding_whatever_the_message() -> None:
    f = Finding("STB902", "analysis-error", "the import failed:\n  Traceback line\r\n  more", "m.py", Span(1, 1))
    lines = reporters.get("concise")([f], reporters.Report(files=1)).splitlines()
    assert lines[0] == "m.py:1:1: STB902 [analysis-error] the import failed:\\n  Traceback line\\r\\n  more" and len(lines) == 2


def test_github_says_when_annotations_exceed_what_a_step_shows() -> None:
    many = [Finding("STB101", "branch-on-tracer", "m", "m.py", Span(i + 1, 1)) for i in range(12)]
    lines = reporters.get("github")(many, reporters.Report()).splitlines()
    assert len(lines) == 13 and lines[-1].startswith("::notice title=stabcheck::stabcheck wrote 12 errors; GitHub shows only 10")
    assert not reporters.get("github")(many[:10], reporters.Report()).splitlines()[-1].startswith("::notice")


def test_statistics_as_json(tmp_path: Path) -> None:
    import json

    (tmp_path / "bad.py").write_text(BRANCH.format(noqa=""), encoding="utf-8")
    proc = run_cli("check", ".", "--no-cache", "--no-types", "--statistics", "--output-format", "json", cwd=tmp_path)
    assert proc.returncode == 1 and json.loads(proc.stdout) == [{"code": "STB101", "name": "branch-on-tracer", "count": 1, "fixable": 0}]



def test_module_names_are_those_bound_at_module_level():
    import ast

    from stabcheck.cli.trace import module_names

    tree = ast.parse(
        "import a.b as c, d.e\nfrom f import g\nx = 1\nif y:\n    def h(): z = 2\n    class K: w = 3\n"
        "try:\n    from m import n\nexcept ImportError:\n    n = None\nfor i in range(2): pass\n"
    )
    assert module_names(tree) == {"c", "d", "g", "x", "h", "K", "n", "i"}
    assert module_names(ast.parse("if t:\n    from m import *\n")) is None


def test_trace_names_a_missing_function_without_importing(tmp_path):
    (tmp_path / "mod.py").write_text("raise SystemExit('imported!')\ndef f(): pass\n", encoding="utf-8")
    proc = run_cli("trace", "mod.py:g", "--arg", "f32[2]", cwd=tmp_path)
    assert proc.returncode == 2 and "defines no `g` at module level" in proc.stderr, proc.stderr
    assert "imported!" not in proc.stdout + proc.stderr
