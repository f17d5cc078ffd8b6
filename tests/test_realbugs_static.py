"""Real bugs the static stage proves (fixtures/realbugs/static_structure.py), and STB203's
operand-nesting fixtures (fixtures/static/branch_operand_nesting_*.py): each hazard fails under
the installed JAX with its issue's error, each near miss runs, and `stabcheck check` (static
stage only) reports the hazard at its marked line and nothing on the near misses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_jax

ROOT = Path(__file__).resolve().parents[1]
REALBUGS = ROOT / "fixtures" / "realbugs" / "static_structure.py"
NESTING = ROOT / "fixtures" / "static"
MARK = re.compile(r"#\s*(?:bug|expect):\s*(STB\d{3})")


def _static(path: Path) -> set[tuple[str, int]]:
    cmd = [sys.executable, "-m", "stabcheck", "check", str(path), "--no-cache", "--no-types", "--exit-zero", "--output-format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return {(d["code"], d["line"]) for d in json.loads(out.stdout)}


def _marked(path: Path) -> set[tuple[str, int]]:
    return {(m.group(1), i) for i, line in enumerate(path.read_text().splitlines(), 1) if (m := MARK.search(line))}


@pytest.mark.parametrize("path", [REALBUGS, NESTING / "branch_operand_nesting_bad.py", NESTING / "branch_operand_nesting_ok.py"], ids=lambda p: p.name)
def test_static_stage_reports_exactly_the_marked_lines(path: Path) -> None:
    assert _static(path) == _marked(path)


_RUNNER = r"""
import importlib.util, json, sys, warnings
warnings.simplefilter("ignore")

def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def outcome(thunk):
    try:
        thunk()
        return None
    except Exception as e:
        return [type(e).__name__, str(e).splitlines()[0]]

bugs = load(sys.argv[1], "realbugs_static")
out = {name: [expect, outcome(lambda n=name: bugs.run_jitted(n))] for name, (_f, _a, expect) in bugs.CASES.items()}
for kind in ("bad", "ok"):
    mod = load(f"{sys.argv[2]}/branch_operand_nesting_{kind}.py", f"nesting_{kind}")
    out[f"nesting_{kind}"] = ["same pytree structure" if kind == "bad" else None, outcome(mod.run)]
print(json.dumps(out))
"""


@pytest.mark.slow
@requires_jax
def test_hazards_fail_under_jax_and_near_misses_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(REALBUGS), str(NESTING)], capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any(expect is None for expect, _ in results.values()) and any(expect for expect, _ in results.values())
    for name, (expect, got) in results.items():
        if expect is None:
            assert got is None, (name, got)
        else:
            assert got is not None and got[0] == "TypeError" and expect in got[1], (name, got)
