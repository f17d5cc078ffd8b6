"""Editors' stdin (`check - --stdin-filename`) and Jupyter notebooks, checked cell by cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stabcheck import _notebook
from stabcheck.api import Options, run
from stabcheck.config import Config

LEAK = 'import jax\nimport numpy as np\n\n\n@jax.jit\ndef f(x):\n    return x * np.float64(2.0)\n'
NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "source": ["# a title\n"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "import jax\n", "import numpy as np\n"]},
        {"cell_type": "code", "source": ["!pip install nothing\n", "@jax.jit\n", "def f(x):\n", "    if x > 0:\n", "        return x\n", "    return -x\n"]},
        {"cell_type": "code", "source": ["%%bash\n", "if then fi\n"]},
        {"cell_type": "code", "source": "@jax.jit\ndef g(x):\n    return x * np.float64(2.0)  # noqa: STB301\n"},
        {"cell_type": "code", "source": ["@jax.jit\n", "def h(x):\n", "    return x * np.float64(2.0)\n"]},
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def _stdin(args: list[str], data: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "stabcheck", "check", *args], input=data, capture_output=True, cwd=cwd, timeout=300)


def test_stdin_takes_config_and_per_file_ignores_from_the_given_name(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.stabcheck]\nper-file-ignores = { "tests/*" = ["STB301"] }\n')
    (tmp_path / "tests").mkdir()
    src = _stdin(["-", "--stdin-filename", "src/x.py", "--output-format", "json"], LEAK.encode(), tmp_path)
    assert src.returncode == 1, src.stderr
    (row,) = json.loads(src.stdout)
    assert (row["path"], row["code"], row["line"]) == ("src/x.py", "STB301", 7)
    ignored = _stdin(["-", "--stdin-filename", "x.py", "--output-format", "json"], LEAK.encode(), tmp_path / "tests")
    assert ignored.returncode == 0 and json.loads(ignored.stdout) == []  # tests/x.py, seen from tests/
    (tmp_path / "pyproject.toml").write_text('[tool.stabcheck]\nextend-exclude = ["gen"]\n')
    excluded = _stdin(["-", "--stdin-filename", "gen/x.py", "--force-exclude"], LEAK.encode(), tmp_path)
    assert excluded.returncode == 0 and excluded.stdout == b""


def test_stdin_fix_writes_the_fixed_source_and_diff_exits_1(tmp_path: Path) -> None:
    fixed = _stdin(["-", "--fix", "--stdin-filename", "m.py"], LEAK.encode(), tmp_path)
    assert fixed.returncode == 0 and fixed.stdout.decode().endswith("x * np.float64(2.0).astype(x.dtype)\n")
    assert b"All checks passed" in fixed.stderr
    diff = _stdin(["-", "--diff", "--stdin-filename", "m.py"], LEAK.encode(), tmp_path)
    assert diff.returncode == 1 and diff.stdout.startswith(b"--- a/m.py\n+++ b/m.py\n")
    bad = _stdin(["-", "x.py"], LEAK.encode(), tmp_path)
    assert bad.returncode == 2 and b"cannot be combined" in bad.stderr


def test_notebook_cells_keep_their_lines() -> None:
    cells = _notebook.cells(json.dumps(NOTEBOOK).encode())
    assert [n for n, _ in cells.starts] == [2, 3, 4, 5, 6]  # cells counted as Jupyter shows them, markdown included
    assert _notebook.locate(cells.starts, 4) == (3, 1) and _notebook.locate(cells.starts, 7) == (3, 4)
    compile(cells.source, "nb", "exec")  # magics, shell escapes and cell magics are blanked


def test_notebook_findings_are_located_by_cell(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "nb.ipynb").write_text(json.dumps(NOTEBOOK), encoding="utf-8")
    (tmp_path / "broken.ipynb").write_text("{not json", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    found = run(["."], Config(types=False), Options(cache=False, jobs=1)).findings
    where = [(f.path, f.evidence.get("cell"), f.line, f.code) for f in found]
    assert where == [("broken.ipynb", None, 1, "STB901"), ("nb.ipynb", 3, 4, "STB101"), ("nb.ipynb", 6, 3, "STB301")]
    proc = subprocess.run([sys.executable, "-m", "stabcheck", "check", "nb.ipynb", "--no-cache", "--output-format", "concise"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("nb.ipynb:cell 3:4:8: STB101 [branch-on-tracer] `x > 0` is a traced value")
    assert lines[1].startswith("nb.ipynb:cell 6:3:12: STB301 [float64-leak]")


def test_an_indented_magic_stays_a_statement() -> None:
    # the install cell of many documentation notebooks: the shell escape is the except block's body
    nb = {"cells": [{"cell_type": "code", "source": ["try:\n", "    import netket\n", "except ImportError:\n", "    !pip install netket\n", "    %pip install x\n"]}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cells = _notebook.cells(json.dumps(nb).encode())
    compile(cells.source, "nb", "exec")
    assert cells.source.splitlines()[3:] == ["    pass", "    pass"]


def test_each_cell_is_parsed_alone_automagics_blanked_a_broken_cell_named(tmp_path: Path) -> None:
    # DMFF's example notebook runs `run tests/x.py` (an automagic: no `%`); trax's licence cell
    # has an indented URL line, which Jupyter rejects too: that cell alone is STB901
    nb = {
        "cells": [
            {"cell_type": "code", "source": ["run DMFF/tests/test_qeq.py\n", "cd DMFF\n", "import jax\n", "import numpy as np\n"]},
            {"cell_type": "code", "source": ["# Licensed under the Apache License\n", " https://www.apache.org/licenses/LICENSE-2.0\n"]},
            {"cell_type": "code", "source": ["@jax.jit\n", "def h(x):\n", "    return x * np.float64(2.0)\n"]},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    cells = _notebook.cells(json.dumps(nb).encode())
    compile(cells.source, "nb", "exec")
    assert cells.broken == ((6, 1, "unexpected indent"),)
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    result = run([str(tmp_path / "nb.ipynb")], Config(), Options(cache=False))
    where = sorted((f.evidence.get("cell"), f.span.line, f.code) for f in result.findings)
    assert where == [(2, 2, "STB901"), (3, 3, "STB301")]


def test_a_shell_line_continued_by_a_backslash_is_blanked_whole() -> None:
    # big_vision's colab: the clone's URL is on the line the backslash continues onto
    src = ["import os\n", "if not os.path.exists('repo'):\n", "  !git clone --depth=1 \\\n", "     https://github.com/google-research/big_vision repo\n", "x = 1\n"]
    nb = {"cells": [{"cell_type": "code", "source": src}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cells = _notebook.cells(json.dumps(nb).encode())
    compile(cells.source, "nb", "exec")
    assert cells.broken == () and cells.source.splitlines() == ["import os", "if not os.path.exists('repo'):", "  pass", "", "x = 1"]


def test_a_shell_or_magic_output_assigned_keeps_the_name_bound() -> None:
    # learned_optimization's demo: `gpu_info = !nvidia-smi` (IPython's getoutput), then used;
    # pytreeclass's benchmark: `t_tc[c] = %timeit -o ...` (R8)
    src = ["gpu_info = !nvidia-smi\n", "gpu_info = '\\n'.join(gpu_info)\n", "t = %timeit -o sum(range(3))\n", "a, b = !ls \\\n", "   -la\n", "ok = 1 != 2\n", "r = 5 % 3\n", "t_tc[c] = %timeit -o f()\n", "x[a == b] = 3\n"]
    nb = {"cells": [{"cell_type": "code", "source": src}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cells = _notebook.cells(json.dumps(nb).encode())
    assert cells.broken == ()
    assert cells.source.splitlines() == ["gpu_info = None", "gpu_info = '\\n'.join(gpu_info)", "t = None", "a, b = None", "", "ok = 1 != 2", "r = 5 % 3", "t_tc[c] = None", "x[a == b] = 3"]
    # deepmind-research's rl_unplugged (R16): a one-item target list, `n, = !ls ... | wc -l`
    nb = {"cells": [{"cell_type": "code", "source": ["num_shards_str, = !ls {tmp}/* | wc -l\n", "n = int(num_shards_str)\n", "x, = y\n"]}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cells = _notebook.cells(json.dumps(nb).encode())
    assert cells.broken == () and cells.source.splitlines() == ["num_shards_str, = None", "n = int(num_shards_str)", "x, = y"]


def test_a_percent_inside_open_brackets_is_the_format_operator_not_a_magic() -> None:
    # jax-influence's tutorial (R10): `print(\n    'mean: %.2f'\n    % (x,))`; beside a magic in
    # the same cell the brackets still decide
    plain = ["x = 1.0\n", "print(\n", "    'mean: %.2f'\n", "    % (x,))\n"]
    mixed = ["%matplotlib inline\n", *plain, "d = {'a': (1,\n", "         2)}\n", "%time f()\n"]
    for src in (plain, mixed):
        nb = {"cells": [{"cell_type": "code", "source": src}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        cells = _notebook.cells(json.dumps(nb).encode())
        assert cells.broken == (), src
        assert "    % (x,))" in cells.source.splitlines()
    assert cells.source.splitlines()[0] == "" and cells.source.splitlines()[-1] == ""


def test_a_cell_magic_under_colab_form_lines_is_not_python_but_one_after_code_is() -> None:
    def broken(source: str) -> int:
        nb = {"cells": [{"cell_type": "code", "source": source}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        return len(_notebook.cells(json.dumps(nb).encode()).broken)

    assert broken("#@title Install\n# quietly\n%%capture\npip install x || true\n") == 0  # Colab runs it
    assert broken("import os\n%%bash\ntest -d x || git clone y\n") == 1  # not the first statement: not a cell magic


def test_a_cells_leading_indent_is_removed_as_ipython_does() -> None:
    # spyx's benchmark notebooks (R21): ` run_bench(5, 20, 32, 1, True)` ran in Jupyter, whose
    # `leading_indent` cleanup strips the first line's indent from every line that has it
    nb = {
        "cells": [
            {"cell_type": "code", "source": [" run_bench(5, 20, 32, 1, True)\n"]},
            {"cell_type": "code", "source": ["\n", "  schedule = make(\n", "      1, 2)\n", "plot(schedule)\n"]},
            {"cell_type": "code", "source": ["  x = 1\n", " y = 2\n"]},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    cells = _notebook.cells(json.dumps(nb).encode())
    compile(cells.source, "nb", "exec")
    assert cells.source.splitlines()[:5] == ["run_bench(5, 20, 32, 1, True)", "", "schedule = make(", "    1, 2)", "plot(schedule)"]
    assert cells.broken == ((7, 1, "unexpected indent"),)  # ` y` does not start with the first line's indent: Jupyter fails too


def test_a_cell_only_a_newer_python_parses_is_a_note_not_a_syntax_error(tmp_path: Path) -> None:
    # jax_rtrl (R24): a Python 3.12 kernel's f-string with nested quotes; the notebook's other
    # cells are checked, and a cell that is broken for every Python stays STB901
    new = {"cell_type": "code", "source": ["for i in range(2):\n", '    print(f"#{i}: {"cw" if i else "ccw"}")\n']}
    broken = {"cell_type": "code", "source": ["def f(:\n", "    pass\n"]}
    code = {"cell_type": "code", "source": ["import jax\n", "import numpy as np\n", "@jax.jit\n", "def h(x):\n", "    return x * np.float64(2.0)\n"]}
    for name, cells in (("new.ipynb", [new, code]), ("broken.ipynb", [broken, code])):
        (tmp_path / name).write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    result = run([str(tmp_path)], Config(), Options(cache=False))
    found = sorted((Path(f.path).name, f.evidence.get("cell"), f.code) for f in result.findings)
    assert found == [("broken.ipynb", 1, "STB901"), ("broken.ipynb", 2, "STB301"), ("new.ipynb", 2, "STB301")]
    if sys.version_info >= (3, 12):
        return
    (note,) = [n for n in result.notes if "newer interpreter" in n]
    assert "new.ipynb" in note and "broken.ipynb" not in note
