"""Columns count characters, not UTF-8 bytes, in every format (SARIF declares code points)."""

from __future__ import annotations

import json
import re

import pytest

from stabcheck import api, reporters
from stabcheck.config import Config
from stabcheck.finding import byte_col, char_col

SOURCE = 'import jax\nimport numpy as np\n\n\n@jax.jit\ndef f(x):\n    s = "ééé"; return x * np.float64(2.0)\n'
LINE = SOURCE.splitlines()[6]
COL = LINE.index("x * np") + 1  # 23 characters in; 26 bytes


def _finding():
    found = [f for f in api.check_source(SOURCE, "a.py", Config(types=False)) if f.code == "STB301"]
    assert len(found) == 1
    return found[0]


def test_the_finding_counts_characters() -> None:
    f = _finding()
    assert (f.line, f.col) == (7, COL)
    assert f.span.end_col == LINE.index("(2.0)") + len("(2.0)") + 1
    assert COL != len(LINE[: COL - 1].encode()) + 1  # the test line really has multi-byte characters


def test_char_and_byte_columns_round_trip() -> None:
    for i in range(len(LINE) + 1):
        b = len(LINE[:i].encode()) + 1
        assert char_col(LINE, b) == i + 1 and byte_col(LINE, i + 1) == b


@pytest.mark.parametrize("fmt", ["full", "concise", "json", "sarif", "github"])
def test_every_format_shows_the_character_column(fmt: str) -> None:
    f = _finding()
    out = reporters.get(fmt)([f], reporters.Report(files=1))
    if fmt == "full":
        lines = out.splitlines()
        i = next(i for i, ln in enumerate(lines) if ln.strip().startswith("7 |"))
        src, caret = lines[i], lines[i + 1]
        start = src.index("|") + 2
        assert caret.index("^") - start == COL - 1
        assert caret.strip() == "^" * len("x * np.float64(2.0)")
        assert src[caret.index("^") : caret.rindex("^") + 1] == "x * np.float64(2.0)"
        assert f"a.py:7:{COL}" in out
    elif fmt == "concise":
        assert out.startswith(f"a.py:7:{COL}: STB301")
    elif fmt == "json":
        row = json.loads(out)[0]
        assert (row["line"], row["col"]) == (7, COL)
    elif fmt == "sarif":
        run = json.loads(out)["runs"][0]
        region = run["results"][0]["locations"][0]["physicalLocation"]["region"]
        assert run["columnKind"] == "unicodeCodePoints" and region["startColumn"] == COL
        assert LINE[region["startColumn"] - 1 : region["endColumn"] - 1] == "x * np.float64(2.0)"
    else:
        m = re.search(r"line=7,col=(\d+),endLine=7,endColumn=(\d+)", out)
        assert m and int(m.group(1)) == COL and LINE[COL - 1 : int(m.group(2)) - 1] == "x * np.float64(2.0)"


def test_traced_sites_count_characters(tmp_path) -> None:
    from stabcheck.traced.source import Site

    p = tmp_path / "m.py"
    p.write_text(SOURCE, encoding="utf-8")
    byte = len(LINE[: COL - 1].encode()) + 1  # what a code object's positions give
    assert Site(str(p), 7, byte).col == COL
    assert Site(str(p), 1, 5).col == 5  # ASCII lines are unchanged


def test_fixes_find_their_node_on_a_line_with_multibyte_characters() -> None:
    from stabcheck.fix import fix_source

    fixed = fix_source(SOURCE, "a.py", Config(types=False))
    assert [f.code for f in fixed.fixed] == ["STB301"]
    assert fixed.after.splitlines()[6] == '    s = "ééé"; return x * np.float64(2.0).astype(x.dtype)'


def test_chain_frames_count_characters_too() -> None:
    src = (
        "import jax\n\n\n"
        "def helper(x):\n"
        "    if x > 0:\n"
        "        return x\n"
        "    return -x\n\n\n"
        "@jax.jit\n"
        "def f(x):\n"
        '    s = "ééé"; return helper(x)\n'
    )
    found = [f for f in api.check_source(src, "a.py", Config(types=False)) if f.code == "STB101" and f.chains]
    assert found, "the helper's finding carries its chain"
    call = next(fr for fr in found[0].chains[0] if fr.line == 12)
    assert call.col == src.splitlines()[11].index("helper(x)") + 1
