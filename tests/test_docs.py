"""The docs are true: rules.md is generated and current, every config key is documented with its
real default, the quick start's commands print what the page shows, and examples parse."""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from stabcheck.config import _KEYS, Config
from stabcheck.docs import rules_markdown

from .conftest import run_cli

DOCS = Path(__file__).resolve().parents[1] / "docs"
MINE = ("index.md", "quickstart.md", "configuration.md", "ci.md", "pre-commit.md")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(page: str, lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall((DOCS / page).read_text(encoding="utf-8")) if kind == lang]


def test_rules_md_is_generated_and_current():
    committed = (DOCS / "rules.md").read_text(encoding="utf-8")
    assert committed == rules_markdown(), "docs/rules.md is stale: run `python -m stabcheck.docs > docs/rules.md`"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def test_configuration_reference_documents_every_key_with_its_default():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    cfg = Config()
    for key in _KEYS:
        m = re.search(rf"^### `{re.escape(key)}`\nDefault: `(.*?)`", text, re.M)
        assert m, f"configuration.md does not document `{key}`"
        default = getattr(cfg, key.replace("-", "_"))
        if key == "types":
            assert default is None  # unset: STABCHECK_TYPES, else off
            default = False
        want = "{}" if key == "per-file-ignores" else _toml(default)
        assert m.group(1) == want, f"`{key}`: documented default {m.group(1)}, real default {want}"
    documented = set(re.findall(r"^### `([\w-]+)`", text, re.M))
    assert documented == set(_KEYS), f"documented keys that do not exist: {documented - set(_KEYS)}"


def test_configuration_examples_are_accepted(tmp_path: Path):
    from stabcheck.config import load_config

    (toml,) = _blocks("configuration.md", "toml")
    (tmp_path / "pyproject.toml").write_text(toml, encoding="utf-8")
    cfg = load_config(tmp_path / "pyproject.toml")
    assert cfg.ignore == ("STB303",) and cfg.per_file_ignores == (("tests/*", ("STB501",)),)


def _console(page: str, index: int) -> tuple[list[str], list[str]]:
    lines = _blocks(page, "console")[index].splitlines()
    assert lines[0].startswith("$ ")
    return shlex.split(lines[0][2:]), lines[1:]


def test_quickstart_commands_print_what_the_page_shows(tmp_path: Path):
    (source,) = _blocks("quickstart.md", "python")[:1]
    (tmp_path / "train.py").write_text(source, encoding="utf-8")
    cmd, shown = _console("quickstart.md", 0)
    assert cmd[:3] == ["stabcheck", "check", "train.py"]
    proc = run_cli(*cmd[1:], "--no-cache", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    real = proc.stdout.splitlines()
    # the location, code and slug of every finding, and the summary, are as shown (messages may be reworded)
    prefix = re.compile(r"^(\S+:\d+:\d+: STB\d{3} \[[\w-]+\])")
    assert [prefix.match(x).group(1) if prefix.match(x) else x for x in real] == [prefix.match(x).group(1) if prefix.match(x) else x for x in shown]

    cmd, shown = _console("quickstart.md", 1)
    diff = run_cli(*cmd[1:], "--no-cache", cwd=tmp_path)
    assert diff.returncode == 1 and diff.stdout.splitlines() == shown  # --diff exits 1 when fixes are pending


def test_configuration_error_example_is_exact(tmp_path: Path):
    cmd, shown = _console("configuration.md", 0)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text("[tool.stabcheck]\ntimeout = -1\n", encoding="utf-8")
    proc = run_cli(*cmd[1:], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines() == shown


def _check_options() -> set[str]:
    import typer.main

    from stabcheck.cli import app

    cmd = typer.main.get_command(app).commands["check"]  # type: ignore[attr-defined]
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("page", MINE)
def test_every_command_shown_uses_real_options(page: str):
    options = _check_options()
    text = (DOCS / page).read_text(encoding="utf-8")
    commands = re.findall(r"stabcheck check [^\n`\"]*", text)
    for command in commands:
        for word in command.split():
            if word.startswith("--"):
                assert word in options, f"{page}: `{command}` uses {word}, which `stabcheck check` does not have"


@pytest.mark.parametrize("page", MINE)
def test_examples_parse(page: str):
    for body in _blocks(page, "python"):
        ast.parse(body)
    for body in _blocks(page, "yaml"):
        assert yaml.safe_load(body) is not None
    for body in _blocks(page, "toml"):
        import tomllib

        tomllib.loads(body)


def test_ci_workflows_upload_sarif_and_annotate():
    flows = [yaml.safe_load(b) for b in _blocks("ci.md", "yaml") if "jobs" in b]
    steps = [s for f in flows for s in f["jobs"]["stabcheck"]["steps"]]
    assert any("--output-format github" in s.get("run", "") for s in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif"))
    sarif_run = next(s for s in steps if "--output-format sarif" in s.get("run", ""))
    assert upload["with"]["sarif_file"] in sarif_run["run"]
    assert any(f.get("permissions", {}).get("security-events") == "write" for f in flows)


def _hook_ids(data: object) -> list[str]:
    if isinstance(data, dict):
        return ([data["id"]] if "id" in data else []) + [i for v in data.values() for i in _hook_ids(v)]
    if isinstance(data, list):
        return [i for v in data for i in _hook_ids(v)]
    return []


def test_pre_commit_page_names_real_hooks():
    hooks = {h["id"] for h in yaml.safe_load((DOCS.parent / ".pre-commit-hooks.yaml").read_text())}
    shown = [i for body in _blocks("pre-commit.md", "yaml") for i in _hook_ids(yaml.safe_load(body))]
    assert set(shown) == hooks


@pytest.mark.parametrize("page", MINE)
def test_links_between_pages_resolve(page: str):
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
        assert (DOCS / target).is_file(), f"{page} links to {target}, which does not exist"
