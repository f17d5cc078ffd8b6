"""ruff's project model: per-file settings from the nearest config, paths relative to the config
that declares them, `extend`, .gitignore, --force-exclude, --show-settings, --show-files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stabcheck import api
from stabcheck.config import Settings, UsageError, find_config, load_config

from .conftest import run_cli

LEAK = "import jax\nimport numpy as np\n\n\n@jax.jit\ndef f(x):\n    return x * np.float64(2.0)\n"
OPTS = api.Options(cache=False, jobs=1)


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def _found(paths: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> set[tuple[str, str]]:
    """(absolute path, code) of every finding of a check run from `cwd`."""
    monkeypatch.chdir(cwd)
    res = api.run(paths, Settings(), api.Options(cache=False, jobs=1, stages=("static",)), **kw)  # type: ignore[arg-type]
    return {(os.path.realpath(f.path), f.code) for f in res.findings}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository: a root config with per-file-ignores and excludes, a subproject that extends
    it, a .gitignore'd directory."""
    (tmp_path / ".git").mkdir()
    _tree(
        tmp_path,
        {
            "pyproject.toml": '[tool.stabcheck]\nextend-exclude = ["gen", "src/legacy/*"]\n[tool.stabcheck.per-file-ignores]\n"tests/*" = ["STB301"]\n',
            ".gitignore": "scratch/\n*.tmp.py\n",
            "src/a.py": LEAK,
            "src/legacy/old.py": LEAK,
            "src/x.tmp.py": LEAK,
            "tests/test_a.py": LEAK,
            "gen/g.py": LEAK,
            "scratch/s.py": LEAK,
            "sub/stabcheck.toml": 'extend = "../pyproject.toml"\nper-file-ignores = { "deep/*" = ["STB3"] }\n',
            "sub/deep/d.py": LEAK,
            "sub/tests/t.py": LEAK,
            "sub/gen/g.py": LEAK,
        },
    )
    return tmp_path


def _r(root: Path, rel: str) -> tuple[str, str]:
    return (os.path.realpath(root / rel), "STB301")


def test_per_file_settings_come_from_the_nearest_config(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = _found(["."], repo, monkeypatch)
    # root config: tests/* ignored; gen, src/legacy excluded; scratch and *.tmp.py git-ignored
    # sub's config replaces per-file-ignores (deep/* ignored there, tests/* no longer) and keeps
    # the extended excludes: `gen` is a name pattern, so sub/gen is excluded too
    assert found == {_r(repo, "src/a.py"), _r(repo, "sub/tests/t.py")}


def test_same_findings_from_the_root_a_subdirectory_and_explicit_files(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _found(["."], repo, monkeypatch)
    from_sub = _found([".."], repo / "sub", monkeypatch)
    from_tests = _found(["..", "../sub"], repo / "tests", monkeypatch)
    explicit = _found(["src/a.py", "tests/test_a.py", "sub/deep/d.py", "sub/tests/t.py"], repo, monkeypatch)
    from_tests_explicit = _found(["test_a.py", "../sub/deep/d.py"], repo / "tests", monkeypatch)
    assert whole == from_sub == from_tests == explicit
    assert from_tests_explicit == set()  # per-file-ignores match relative to their config, not the cwd


def test_excluded_and_gitignored_files_named_explicitly(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = ["gen/g.py", "scratch/s.py", "src/x.tmp.py", "src/legacy/old.py", "src/a.py"]
    assert len(_found(named, repo, monkeypatch)) == 5  # as ruff: explicit files are checked
    assert _found(named, repo, monkeypatch, force_exclude=True) == {_r(repo, "src/a.py")}
    assert _found(["a.py", "legacy/old.py"], repo / "src", monkeypatch, force_exclude=True) == {_r(repo, "src/a.py")}


def test_respect_gitignore_false(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (repo / "pyproject.toml").read_text()
    (repo / "pyproject.toml").write_text(text.replace("[tool.stabcheck]\n", "[tool.stabcheck]\nrespect-gitignore = false\n"))
    found = _found(["src", "scratch"], repo, monkeypatch)
    assert found == {_r(repo, "src/a.py"), _r(repo, "src/x.tmp.py"), _r(repo, "scratch/s.py")}


def test_gitignore_negation_and_nested_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".git").mkdir()
    _tree(tmp_path, {".gitignore": "*.py\n!keep.py\n", "pkg/.gitignore": "!also.py\n", "keep.py": LEAK, "drop.py": LEAK, "pkg/also.py": LEAK, "pkg/no.py": LEAK})
    assert _found(["."], tmp_path, monkeypatch) == {_r(tmp_path, "keep.py"), _r(tmp_path, "pkg/also.py")}


def test_discovery_stops_at_the_project_root(tmp_path: Path) -> None:
    (tmp_path / "stabcheck.toml").write_text("select = ['STB1']\n")
    inner = tmp_path / "proj"
    (inner / "pkg").mkdir(parents=True)
    (inner / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    assert find_config(inner / "pkg") is None  # proj/ is a project root without a stabcheck table
    (inner / "pyproject.toml").unlink()
    (inner / ".git").mkdir()
    assert find_config(inner / "pkg") is None
    (inner / ".git").rmdir()
    assert find_config(inner / "pkg") == tmp_path / "stabcheck.toml"


def test_extend_keeps_the_extended_files_patterns_relative_to_it(repo: Path) -> None:
    cfg = load_config(repo / "sub" / "stabcheck.toml")
    assert cfg.extend_exclude == ("gen", "../src/legacy/*")
    assert cfg.per_file_ignores == (("deep/*", ("STB3",)),)
    assert dict(cfg.origins)["extend-exclude"] == str(repo / "pyproject.toml")
    assert dict(cfg.origins)["per-file-ignores"] == str(repo / "sub" / "stabcheck.toml")


def test_extend_cycle_and_missing_target_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "stabcheck.toml").write_text('extend = "../stabcheck.toml"\n')
    (tmp_path / "stabcheck.toml").write_text('extend = "a/stabcheck.toml"\n')
    with pytest.raises(UsageError, match="cycle"):
        load_config(tmp_path / "stabcheck.toml")
    (tmp_path / "stabcheck.toml").write_text('extend = "nope.toml"\n')
    with pytest.raises(UsageError, match="does not exist: nope.toml"):
        load_config(tmp_path / "stabcheck.toml")


def test_cli_show_settings_show_files_force_exclude(repo: Path) -> None:
    proc = run_cli("check", "--show-settings", "deep/d.py", cwd=repo / "sub")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"config file: {repo / 'sub' / 'stabcheck.toml'}" in lines
    assert f'per-file-ignores = {{"deep/*": ["STB3"]}}  # {repo / "sub" / "stabcheck.toml"}' in lines
    assert f'extend-exclude = ["gen", "../src/legacy/*"]  # {repo / "pyproject.toml"}' in lines
    assert 'select = ["ALL"]  # default' in lines
    proc = run_cli("check", "--show-settings", "deep/d.py", "--select", "STB1", cwd=repo / "sub")
    assert 'select = ["STB1"]  # command line' in proc.stdout.splitlines()

    proc = run_cli("check", "--show-files", cwd=repo)
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["src/a.py", "sub/deep/d.py", "sub/tests/t.py", "tests/test_a.py"]

    proc = run_cli("check", "--no-cache", "--no-types", "--force-exclude", "--output-format", "json", "gen/g.py", "scratch/s.py", cwd=repo)
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


def test_unknown_key_suggests_the_closest_and_empty_select_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "stabcheck.toml").write_text("per-file-ignore = {}\n")
    proc = run_cli("check", "a.py", "--no-cache", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown key `per-file-ignore`" in proc.stderr and "did you mean `per-file-ignores`?" in proc.stderr
    (tmp_path / "stabcheck.toml").write_text("select = []\n")
    proc = run_cli("check", "a.py", "--no-cache", cwd=tmp_path)
    assert proc.returncode == 2 and "`select`" in proc.stderr and "non-empty" in proc.stderr
