"""Configuration errors exit 2 with one line naming the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from stabcheck.config import Config, ConfigError, UsageError, find_config, from_mapping, load_config

from .conftest import run_cli

GOOD = "import jax\n\n@jax.jit\ndef f(x):\n    return x + 1\n"

# (pyproject [tool.stabcheck] body, words the one-line message must contain)
BAD_CONFIGS = [
    ("colour = 'red'\n", ["colour", "red", "select"]),
    ("timeout = 'soon'\n", ["timeout", "soon", "positive number"]),
    ("timeout = -1\n", ["timeout", "-1"]),
    ("max-traces = 1.5\n", ["max-traces", "1.5", "positive integer"]),
    ("types = 'yes'\n", ["types", "yes", "true or false"]),
    ("select = 'STB1'\nignore = 42\n", ["ignore", "42"]),
    ("select = ['STB777']\n", ["select", "STB777", "rule code"]),
    ("ignore = ['not-a-rule']\n", ["ignore", "not-a-rule"]),
    ("exclude = ['[abc']\n", ["exclude", "[abc", "glob"]),
    ("stages = ['static', 'quantum']\n", ["stages", "quantum", "static"]),
    ("fail-on = 'sometimes'\n", ["fail-on", "sometimes", "confirmed"]),
    ("per-file-ignores = { 'tests/*' = ['STB9999'] }\n", ["per-file-ignores", "STB9999"]),
    ("per-file-ignores = ['STB101']\n", ["per-file-ignores", "table"]),
]


@pytest.mark.parametrize("body,words", BAD_CONFIGS, ids=[b.split("=")[0].strip() + str(i) for i, (b, _) in enumerate(BAD_CONFIGS)])
def test_bad_config_value_is_a_config_error_naming_it(tmp_path: Path, body: str, words: list[str]) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text("[tool.stabcheck]\n" + body)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    assert str(cfg) in msg


@pytest.mark.parametrize("body,words", [BAD_CONFIGS[0], BAD_CONFIGS[1], BAD_CONFIGS[6], BAD_CONFIGS[8]])
def test_bad_config_through_the_cli_exits_2_with_one_line(tmp_path: Path, body: str, words: list[str]) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.stabcheck]\n" + body)
    (tmp_path / "a.py").write_text(GOOD)
    proc = run_cli("check", "a.py", "--no-cache", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabcheck: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize(
    "text",
    [
        "[tool.stabcheck\nselect = ['STB1']\n",
        "[tool.stabcheck]\nselect = ['STB1'\n",
        "[tool.stabcheck]\nselect = 'STB1'\nselect = 'STB2'\n",
        "\xff\xfe not toml",
    ],
    ids=["unclosed-table", "unclosed-array", "duplicate-key", "garbage"],
)
def test_malformed_toml_exits_2_with_one_line(tmp_path: Path, text: str) -> None:
    (tmp_path / "stabcheck.toml").write_bytes(text.encode("latin-1"))
    (tmp_path / "a.py").write_text(GOOD)
    with pytest.raises(UsageError):
        load_config(tmp_path / "stabcheck.toml")
    proc = run_cli("check", "a.py", "--no-cache", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "stabcheck.toml" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_explicit_config_file_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(GOOD)
    proc = run_cli("check", "a.py", "--config", "missing.toml", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "stabcheck: error: config file not found: missing.toml"


def test_valid_config_is_read_with_dashes_or_underscores(tmp_path: Path) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text("[tool.stabcheck]\nselect = ['STB1', 'STB501']\nmax_traces = 5\nextend-exclude = ['gen/*']\ntimeout = 3\n")
    c = load_config(cfg)
    assert c.select == ("STB1", "STB501") and c.max_traces == 5 and c.extend_exclude == ("gen/*",) and c.timeout == 3.0
    assert c.root == str(tmp_path)
    assert find_config(tmp_path) == cfg


def test_pyproject_without_a_stabcheck_table_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    inner = tmp_path / "pkg"
    inner.mkdir()
    assert find_config(inner) != tmp_path / "pyproject.toml"
    (tmp_path / "stabcheck.toml").write_text("select = ['STB1']\n")
    assert find_config(inner) == tmp_path / "stabcheck.toml"


def test_command_line_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="STB000"):
        from_mapping({"select": ["STB000"]}, source="command line", base=Config())
    assert from_mapping({"select": ["branch-on-tracer"]}, source="command line", base=Config()).select == ("branch-on-tracer",)
