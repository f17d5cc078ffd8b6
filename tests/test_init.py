"""`stabcheck init`: a section that fits the project and that stabcheck itself accepts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from stabcheck.config import UsageError, find_config, load_config
from stabcheck.init import init_project, survey

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path, layout: str) -> Path:
    root = tmp_path / "proj"
    pkg = root / ("src/mypkg" if layout == "src" else "mypkg")
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "model.py").write_text("import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    return -x\n", encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests" / "test_model.py").write_text("import jax\n\ndef test_f():\n    for i in range(3):\n        jax.jit(lambda v: v + i)(1.0)\n", encoding="utf-8")
    (root / "docs").mkdir()
    (root / "docs" / "conf.py").write_text("", encoding="utf-8")
    (root / ".venv").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "mypkg"\nversion = "0"\n', encoding="utf-8")
    return root


@pytest.mark.parametrize(("layout", "source"), [("src", "src/mypkg"), ("flat", "mypkg")])
def test_survey_finds_sources_and_tests(tmp_path: Path, layout: str, source: str):
    found = survey(_project(tmp_path, layout))
    assert found.sources == (source,) and found.tests == "tests"


def test_printed_section_is_accepted_by_the_config_reader(tmp_path: Path):
    root = _project(tmp_path, "src")
    text = init_project(root)
    assert text.startswith("[tool.stabcheck]") and "stabcheck check src/mypkg tests" in text
    assert (root / "pyproject.toml").read_text() == '[project]\nname = "mypkg"\nversion = "0"\n', "printing must not write"
    cfg_file = tmp_path / "pyproject.toml"
    cfg_file.write_text(text, encoding="utf-8")
    cfg = load_config(cfg_file)
    assert cfg.select == ("ALL",) and cfg.per_file_ignores == (("tests/*", ("STB501",)),)


def test_write_appends_and_the_check_uses_it(tmp_path: Path):
    root = _project(tmp_path, "src")
    assert "added [tool.stabcheck]" in init_project(root, write=True)
    data = tomllib.loads((root / "pyproject.toml").read_text())
    assert data["project"]["name"] == "mypkg" and data["tool"]["stabcheck"]["select"] == ["ALL"]
    assert find_config(root / "src") == root / "pyproject.toml"
    with pytest.raises(UsageError, match="already has a \\[tool.stabcheck\\]"):
        init_project(root, write=True)
    proc = run_cli("check", "src/mypkg", "tests", "--no-cache", "--output-format", "concise", cwd=root)
    assert proc.returncode == 1, proc.stderr
    assert "src/mypkg/model.py:5" in proc.stdout and "tests/" not in proc.stdout  # STB501 in tests is ignored
    again = run_cli("init", "--write", cwd=root)
    assert again.returncode == 2 and "already has" in again.stderr and "Traceback" not in again.stderr


def test_write_refuses_a_malformed_pyproject(tmp_path: Path):
    root = _project(tmp_path, "flat")
    (root / "pyproject.toml").write_text("[project\n", encoding="utf-8")
    with pytest.raises(UsageError, match="malformed TOML"):
        init_project(root, write=True)
    assert (root / "pyproject.toml").read_text() == "[project\n"


def test_pre_commit_snippet_names_a_real_hook(tmp_path: Path):
    text = init_project(_project(tmp_path, "flat"), pre_commit=True)
    snippet = text[text.index("repos:") :]
    hooks = yaml.safe_load(snippet)["repos"][0]["hooks"]
    manifest = {h["id"] for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert hooks == [{"id": "stabcheck"}] and "stabcheck" in manifest


def test_github_writes_a_workflow_that_uploads_sarif(tmp_path: Path):
    root = _project(tmp_path, "src")
    text = init_project(root, github=True)
    wf = root / ".github" / "workflows" / "stabcheck.yml"
    assert f"wrote {wf}" in text
    data = yaml.safe_load(wf.read_text())
    steps = data["jobs"]["stabcheck"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any("--output-format github" in r and "src/mypkg tests" in r for r in runs)
    assert any("--output-format sarif --output-file stabcheck.sarif" in r for r in runs)
    upload = next(s for s in steps if "upload-sarif" in s.get("uses", ""))
    assert upload["with"]["sarif_file"] == "stabcheck.sarif"
    assert data["permissions"]["security-events"] == "write"
    assert "exists; left unchanged" in init_project(root, github=True)


def test_write_never_follows_a_symlinked_pyproject(tmp_path: Path):
    root = _project(tmp_path, "flat")
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('[project]\nname = "x"\n', encoding="utf-8")
    (root / "pyproject.toml").unlink(missing_ok=True)
    (root / "pyproject.toml").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="symbolic link"):
        init_project(root, write=True)
    assert elsewhere.read_text() == '[project]\nname = "x"\n'
