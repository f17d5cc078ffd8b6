"""Real bugs the static stage proves (fixtures/realbugs/static_structure.py), and the fixtures of
the static cases added for issue 18 (fixtures/static/, STB203 operand nesting, STB409 rank >= 1
losses): each hazard fails under the installed JAX with its error, each near miss runs, and
`stabcheck check` (static stage only) reports the hazards at their marked lines and nothing on
the near misses."""

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
# fixture stem -> the text of the TypeError (or of the error named as "IndexError: ...") every
# `run*` of its `_bad` file raises
STATIC_PAIRS = {
    "branch_operand_nesting": "switch branch outputs must have the same pytree structure",
    "non_scalar_gradient": "Gradient only defined for scalar-output",
    "jnp_size": "Shapes must be 1D sequences of concrete values",
    "jit_method": "as an abstract array",
    "static_array_field": "ValueError: static arguments should be comparable",
    "vmapped_static": "ValueError: Non-hashable static arguments are not supported",
    "traced_slice": "IndexError: Slice entries must be static integers",
    "grad_int_leaf": "grad requires real- or complex-valued inputs",
    "unmapped_branch": "TracerBoolConversionError: Attempted boolean conversion",
}
MARK = re.compile(r"#\s*(?:bug|expect):\s*(STB\d{3})")


def _static(path: Path) -> set[tuple[str, int]]:
    cmd = [sys.executable, "-m", "stabcheck", "check", str(path), "--no-cache", "--no-types", "--exit-zero", "--output-format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return {(d["code"], d["line"]) for d in json.loads(out.stdout)}


def _marked(path: Path) -> set[tuple[str, int]]:
    return {(m.group(1), i) for i, line in enumerate(path.read_text().splitlines(), 1) if (m := MARK.search(line))}


@pytest.mark.parametrize("path", [REALBUGS, *(NESTING / f"{stem}_{kind}.py" for stem in STATIC_PAIRS for kind in ("bad", "ok"))], ids=lambda p: p.name)
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
for stem, message in json.loads(sys.argv[3]).items():
    for kind in ("bad", "ok"):
        mod = load(f"{sys.argv[2]}/{stem}_{kind}.py", f"{stem}_{kind}")
        for run in sorted(n for n in vars(mod) if n.startswith("run")):
            out[f"{stem}_{kind}.{run}"] = [message if kind == "bad" else None, outcome(getattr(mod, run))]
print(json.dumps(out))
"""


@pytest.mark.slow
@requires_jax
def test_hazards_fail_under_jax_and_near_misses_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(REALBUGS), str(NESTING), json.dumps(STATIC_PAIRS)], capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"non_scalar_gradient_bad.run", "non_scalar_gradient_bad.run_aux", "jnp_size_bad.run_padded", "jnp_size_ok.run", "jit_method_bad.run_checkpoint", "jit_method_bad.run_object", "jit_method_ok.run_pytree", "jit_method_ok.run_object", "static_array_field_bad.run", "vmapped_static_bad.run_jnp_count", "vmapped_static_ok.run", "traced_slice_bad.run_cache", "traced_slice_ok.run_masked", "grad_int_leaf_bad.run", "grad_int_leaf_ok.run", "route"} <= results.keys()
    for name, (expect, got) in results.items():
        if expect is None:
            assert got is None, (name, got)
        else:
            kind, _, text = expect.partition(": ") if re.match(r"\w+Error: ", expect) else ("TypeError", "", expect)
            assert got is not None and got[0] == kind and text in got[1], (name, got)
