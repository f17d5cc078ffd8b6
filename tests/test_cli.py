"""The command line as a user runs it: exit codes 0/1/2, output formats, selection, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stabcheck.api import __version__

from .conftest import run_cli

BRANCH = "import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    return -x\n"
CLEAN = "import jax\n\n@jax.jit\ndef g(x):\n    return x + 1\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "bad.py").write_text(BRANCH)
    (tmp_path / "clean.py").write_text(CLEAN)
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "latin1.py").write_bytes(b'x = "caf\xe9"\n')
    return tmp_path


def test_exit_0_when_clean(tree: Path) -> None:
    proc = run_cli("check", "clean.py", "--no-cache", cwd=tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All checks passed" in proc.stdout


def test_exit_1_with_findings_and_0_with_exit_zero(tree: Path) -> None:
    proc = run_cli("check", ".", "--no-cache", cwd=tree)
    assert proc.returncode == 1
    assert "STB101" in proc.stdout and "bad.py:5" in proc.stdout
    assert "STB901" in proc.stdout and "broken.py" in proc.stdout and "latin1.py" in proc.stdout
    assert run_cli("check", ".", "--no-cache", "--exit-zero", cwd=tree).returncode == 0


def test_select_and_ignore(tree: Path) -> None:
    only_syntax = run_cli("check", ".", "--no-cache", "--select", "STB901", "--output-format", "json", cwd=tree)
    assert {r["code"] for r in json.loads(only_syntax.stdout)} == {"STB901"}
    ignored = run_cli("check", ".", "--no-cache", "--ignore", "STB9,branch-on-tracer", "--output-format", "json", cwd=tree)
    assert ignored.returncode == 0 and json.loads(ignored.stdout) == []


@pytest.mark.parametrize(
    "fmt,check",
    [
        ("concise", lambda out: "bad.py:5:8: STB101" in out),
        ("full", lambda out: "STB101" in out and "if x > 0" in out and "help:" in out),
        ("json", lambda out: {(r["code"], r["line"]) for r in json.loads(out)} >= {("STB101", 5), ("STB901", 1)}),
        ("sarif", lambda out: json.loads(out)["version"] == "2.1.0" and any(r["ruleId"] == "STB101" for r in json.loads(out)["runs"][0]["results"])),
        ("github", lambda out: "::error " in out and "file=bad.py,line=5" in out),
        ("markdown", lambda out: "STB101" in out and "|" in out),
    ],
)
def test_output_formats(tree: Path, fmt: str, check) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("check", ".", "--no-cache", "--output-format", fmt, cwd=tree)
    assert proc.returncode == 1, proc.stderr
    assert check(proc.stdout), proc.stdout


def test_output_file_and_statistics(tree: Path) -> None:
    proc = run_cli("check", ".", "--no-cache", "--output-format", "json", "--output-file", "out.json", cwd=tree)
    assert proc.returncode == 1 and proc.stdout == ""
    assert any(r["code"] == "STB101" for r in json.loads((tree / "out.json").read_text()))
    stats = run_cli("check", ".", "--no-cache", "--statistics", "--output-format", "concise", cwd=tree)
    assert "STB901" in stats.stdout and "2" in stats.stdout


@pytest.mark.parametrize(
    "args,words",
    [
        (["--output-format", "yaml"], ["--output-format", "yaml", "json"]),
        (["--jobs", "0"], ["--jobs", "0", "positive"]),
        (["--select", "STB777"], ["select", "STB777"]),
        (["--ignore", "nope-rule"], ["ignore", "nope-rule"]),
        (["missing_dir"], ["does not exist", "missing_dir"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(tree: Path, args: list[str], words: list[str]) -> None:
    proc = run_cli("check", *(args if args[0] == "missing_dir" else [".", *args]), "--no-cache", cwd=tree)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabcheck: error:"), proc.stderr
    for w in words:
        assert w in lines[0]


def test_version_explain_and_rules() -> None:
    assert run_cli("--version").stdout.strip() == f"stabcheck {__version__}"
    explain = run_cli("explain", "STB101")
    assert explain.returncode == 0 and "branch-on-tracer" in explain.stdout and "Use instead" in explain.stdout
    assert run_cli("explain", "branch-on-tracer").stdout == explain.stdout
    unknown = run_cli("explain", "STB777")
    assert unknown.returncode == 2 and "STB777" in unknown.stderr and "Traceback" not in unknown.stderr
    rules = json.loads(run_cli("rules", "--output-format", "json").stdout)
    codes = {r["code"] for r in rules}
    assert {"STB101", "STB501", "STB900", "STB901", "STB902"} <= codes


def test_internal_error_is_one_line_and_exit_2(tree: Path) -> None:
    # an unwritable --output-file is an OSError inside the command: reported, not a traceback
    proc = run_cli("check", ".", "--no-cache", "--output-file", "no/such/dir/out.txt", cwd=tree)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
