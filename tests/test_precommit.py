"""The pre-commit hooks: the manifest is valid, and the real `pre-commit try-repo` fails on a bad file
and passes on a good one, without ever importing the checked code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / ".pre-commit-hooks.yaml"

BAD = """
import jax
import jax.numpy as jnp

@jax.jit
def relu(x):
    if x > 0:
        return x
    return jnp.zeros_like(x)
"""

GOOD = """
import pathlib
import jax
import jax.numpy as jnp

pathlib.Path("IMPORTED").write_text("the hook ran user code")  # must never happen

@jax.jit
def relu(x):
    return jnp.where(x > 0, x, 0.0)
"""


def _manifest() -> dict[str, dict]:
    from pre_commit.clientlib import load_manifest

    return {h["id"]: h for h in load_manifest(str(MANIFEST))}


def test_manifest_declares_static_and_trace_hooks():
    hooks = _manifest()
    static, trace = hooks["stabcheck"], hooks["stabcheck-trace"]
    assert static["language"] == "python" and static["types"] == ["python"] and static["pass_filenames"] is True
    assert static["entry"].split()[:2] == ["stabcheck", "check"] and "--trace" not in static["entry"] and "--confirm" not in static["entry"]
    assert trace["pass_filenames"] is False and "--trace" in trace["entry"].split()
    assert "pre-commit" not in trace["stages"], "the tracing hook must be opt-in, not run on every commit"


def test_hook_entries_are_valid_command_lines(tmp_path: Path):
    """The static hook's entry, run the way pre-commit runs it (entry + filenames), works and exits 1."""
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent(BAD).lstrip(), encoding="utf-8")
    entry = _manifest()["stabcheck"]["entry"].split()
    assert "--no-types" in entry  # mypy's cold start is for CI and full runs, not every commit
    exe = Path(sys.executable).parent / entry[0]
    env = {k: v for k, v in os.environ.items() if k != "STABCHECK_TYPES"}
    proc = subprocess.run([str(exe), *entry[1:], str(bad)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "STB101" in proc.stdout


def _git(*args: str, cwd: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, timeout=300)


def _hook_repo(dest: Path) -> Path:
    """This project as a committed git repository, as pre-commit clones it from GitHub.

    try-repo on a working tree only picks up *tracked* changes, so a copy is committed in a
    scratch directory: the test then checks the files as they are now, committed or not.
    """
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "stabcheck", dest / "stabcheck", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _git("init", "-q", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git("commit", "-q", "-m", "hooks", cwd=dest)
    return dest


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_pre_commit_try_repo_fails_on_bad_and_passes_on_good(tmp_path: Path):
    hook = _hook_repo(tmp_path / "hook")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "bad.py").write_text(textwrap.dedent(BAD).lstrip(), encoding="utf-8")
    (proj / "good.py").write_text(textwrap.dedent(GOOD).lstrip(), encoding="utf-8")
    _git("init", "-q", cwd=proj)
    _git("add", "-A", cwd=proj)
    env = {**os.environ, "NO_COLOR": "1", "PRE_COMMIT_COLOR": "never"}
    cmd = [sys.executable, "-m", "pre_commit", "try-repo", str(hook), "stabcheck", "--color", "never"]

    bad = subprocess.run([*cmd, "--files", "bad.py"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "bad.py:6:8: STB101 [branch-on-tracer]" in bad.stdout
    assert "Failed" in bad.stdout

    good = subprocess.run([*cmd, "--files", "good.py"], cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Passed" in good.stdout and "STB" not in good.stdout
    assert not (proj / "IMPORTED").exists(), "the static hook imported the checked file"
