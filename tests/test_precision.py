"""Issue 16: a static finding is a claim the analysis proves. The near misses of real libraries
(fixtures/static/precision_near_misses.py) are silent, their guesses appear only with `--preview`, the
hazards beside them (precision_hazards.py) keep firing, and under JAX the first run clean while the
second fail. `@stabcheck.stable` reports a retrace only when JAX really traced again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from stabcheck.api import check_source
from stabcheck.config import Config, ConfigError, from_mapping
from stabcheck.finding import Finding
from stabcheck.rule import expected_lines
from tests.conftest import requires_jax

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "static"
OK, BAD = FIXTURES / "precision_near_misses.py", FIXTURES / "precision_hazards.py"


def _check(path: Path, **config: Any) -> list[Finding]:
    return check_source(path.read_text(encoding="utf-8"), str(path), Config(**config))


def test_near_misses_of_real_libraries_are_silent() -> None:
    assert [(f.line, f.code, f.message) for f in _check(OK)] == []


def test_their_guesses_are_kept_for_preview() -> None:
    guesses = _check(OK, preview=True)
    assert guesses and all(f.confidence == "guess" for f in guesses)
    # a guess names what it would mean, like any finding, and carries its confidence in JSON
    assert {"STB101", "STB202", "STB401"} <= {f.code for f in guesses}
    assert all(f.to_dict()["confidence"] == "guess" and Finding.from_dict(f.to_dict()).confidence == "guess" for f in guesses)


def test_hazards_beside_them_keep_firing_proven() -> None:
    text = BAD.read_text(encoding="utf-8")
    expected = set(expected_lines(text))
    found = {(f.line, f.code) for f in _check(BAD)}
    assert expected and found == expected
    assert all(f.confidence == "proven" for f in _check(BAD))


def test_preview_is_a_config_key_and_a_flag(tmp_path: Path) -> None:
    assert from_mapping({"preview": True}).preview is True
    with pytest.raises(ConfigError):
        from_mapping({"preview": "yes"})
    src = tmp_path / "m.py"
    src.write_text(OK.read_text(encoding="utf-8"), encoding="utf-8")
    cmd = [sys.executable, "-m", "stabcheck", "check", str(src), "--no-types", "--no-cache", "--output-format", "json"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    loud = subprocess.run([*cmd, "--preview"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and json.loads(quiet.stdout) == []
    assert loud.returncode == 1 and {d["confidence"] for d in json.loads(loud.stdout)} == {"guess"}


_RUNNER = r"""
import importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
def load(path):
    spec = importlib.util.spec_from_file_location(path.rsplit("/", 1)[-1][:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
ok, bad = load(sys.argv[1]), load(sys.argv[2])
out = {"ok": ok.run(), "bad": {}}
for name in sorted(n for n in dir(bad) if n.startswith("case_")):
    try:
        out["bad"][name] = {"result": getattr(bad, name)()}
    except Exception as e:
        out["bad"][name] = {"error": type(e).__name__}
print(json.dumps(out, default=repr))
"""


@pytest.mark.slow
@requires_jax
def test_near_misses_run_and_hazards_fail_under_jax() -> None:
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(OK), str(BAD)], capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ok, bad = out["ok"], out["bad"]
    assert ok["solve"] == [2.0, 2.0, 2.0] and ok["solve_last"] == [3.5, 3.5, 3.5] and ok["norm_of"] == 5.0
    assert ok["trace_sites"] == 6.0 and ok["guarded"] == [3.0, 4.0, 5.0, 6.0] and ok["mean_of"] == 1.5
    assert ok["viterbi"] == [2, 1, 0] and ok["forward"] == 2 and "PyTreeDef" in ok["structure"]
    assert ok["grad_mean_count"] == 0.0 and abs(ok["grad_log1mexp"] + 0.58198) < 1e-4  # finite gradients
    assert bad["case_solve"] == {"error": "TracerBoolConversionError"}
    assert bad["case_trace_sites"] == {"error": "TracerBoolConversionError"}
    assert bad["case_guarded"] == {"error": "TracerBoolConversionError"}
    assert bad["case_recorder"] == {"error": "UnexpectedTracerError"}
    assert bad["case_mean_count"]["result"] != bad["case_mean_count"]["result"]  # NaN


# -- runtime: a retrace is reported only where JAX traced again -----------------------------------
@requires_jax
@pytest.mark.parametrize(
    ("sequence", "jax_traces"),
    [
        (("py_float", "weak_array", "py_float"), 1),  # an optax schedule value after a Python float
        (("py_float", "weak_array", "strong_array"), 2),
        (("py_int", "weak_int"), 1),
        (("strong_array", "py_float"), 2),
        (("py_float", "py_float_other"), 1),
    ],
)
def test_stable_reports_a_retrace_only_when_jax_traced_again(sequence: tuple[str, ...], jax_traces: int) -> None:
    import jax
    import jax.numpy as jnp

    import stabcheck
    from stabcheck.runtime import StabilityWarning

    values = {
        "py_float": lambda: 0.1,
        "py_float_other": lambda: 0.25,
        "weak_array": lambda: jnp.asarray(0.1) * 1.0,
        "strong_array": lambda: jnp.float32(0.1),
        "py_int": lambda: 3,
        "weak_int": lambda: jnp.asarray(3),
    }
    traces: list[int] = []

    def make() -> Any:
        def update(w: Any, lr: Any) -> Any:
            traces.append(1)  # runs once per JAX trace
            return w - lr * w

        return update  # a new function each time: JAX shares traces between jits of one function

    plain = jax.jit(make())
    for name in sequence:
        plain(jnp.ones(2), values[name]())
    assert len(traces) == jax_traces  # JAX's own count of its traces

    checked = stabcheck.stable(max_traces=1)(jax.jit(make()))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for name in sequence:
            checked(jnp.ones(2), values[name]())
    retraces = [x for x in w if issubclass(x.category, StabilityWarning) and x.message.code == "STB504"]
    assert len(retraces) == jax_traces - 1, [str(x.message) for x in retraces]


def test_a_suppression_of_a_hidden_guess_is_not_unused() -> None:
    """Without `preview` a guess is not shown, but the `# noqa` on its line is not unused either
    (STB900 would tell the user to delete it, and `--preview` would then report the line)."""
    from stabcheck.api import check_source
    from stabcheck.config import Config

    src = "import jax\n\n\ndef measure(x):\n    def body(v):\n        return v * 2.0\n\n    plain = jax.jit(body)  # noqa: STB501\n    return plain(x)\n"
    bare = src.replace("  # noqa: STB501", "")
    guesses = [f for f in check_source(bare, "m.py", Config(preview=True)) if f.code == "STB501"]
    assert guesses and all(f.confidence == "guess" for f in guesses)
    assert [f.code for f in check_source(src, "m.py", Config())] == []
    assert [f.code for f in check_source(src, "m.py", Config(preview=True))] == []


JIT_IN_LOOP = "import jax\n\n\ndef run(xs, w=None):\n    out = [jax.jit(lambda v: v * 2)(x) for x in xs]\n    return out\n"
BOTH_MODES = "import jax\nimport jax.numpy as jnp\n\n\n@jax.jit\ndef f(x, w):\n    return x if w is None else x * w\n\n\ndef check():\n    f(jnp.ones(2), None)\n    f(jnp.ones(2), jnp.ones(2))\n"


@pytest.mark.parametrize("path", ["tests/test_m.py", "pkg/test_m.py", "m_test.py", "conftest.py", "a/test/m.py"])
@pytest.mark.parametrize("source, code", [(JIT_IN_LOOP, "STB501"), (BOTH_MODES, "STB503")])
def test_a_recompile_in_test_code_is_a_guess(path: str, source: str, code: str):
    # a test compiles each variant on purpose (R3: 17 false alarms in test suites); elsewhere proven
    where = [(f.code, f.confidence) for f in check_source(source, "pkg/model.py", Config()) if f.code == code]
    assert where and all(c == "proven" for _, c in where)
    assert not [f for f in check_source(source, path, Config()) if f.code == code], "a guess is not reported by default"
    in_test = [(f.code, f.confidence) for f in check_source(source, path, Config(preview=True)) if f.code == code]
    assert in_test and all(c == "guess" for _, c in in_test)


SAFE_DIV = "import jax.numpy as jnp\n\n\ndef test_relative_error(a, b):\n    return jnp.where(b == 0, a, a / b)\n"
# jax-fem's tests define the problem the library solves (and differentiates): not a test function
PROBLEM = "import jax.numpy as np\n\n\nclass Plasticity:\n    def get_maps(self):\n        def safe_sqrt(x):\n            return np.where(x > 0.0, np.sqrt(x), 0.0)\n        return safe_sqrt\n"


def test_a_masked_division_is_a_guess_unless_a_visible_derivative_reaches_it() -> None:
    # jax_verify's tests: a `_safe_div` helper computing an error to assert on (no gradient); a
    # library helper nothing in its module differentiates is a guess as well (R9-R14: 15 STB401
    # on unseen code, none judged true, most in code nothing differentiates)
    for path in ("pkg/metrics.py", "tests/test_metrics.py"):
        assert check_source(SAFE_DIV, path, Config()) == []
        assert [(f.code, f.confidence) for f in check_source(SAFE_DIV, path, Config(preview=True))] == [("STB401", "guess")]
    graded = SAFE_DIV + "\n\ndef test_grad():\n    import jax\n    jax.grad(test_relative_error)(1.0, 2.0)\n"
    assert [(f.code, f.confidence) for f in check_source(graded, "tests/test_metrics.py", Config())] == [("STB401", "proven")]
    # jax-fem's tests define the problem the library differentiates in another module: a guess
    assert [(f.code, f.confidence) for f in check_source(PROBLEM, "tests/test_plasticity.py", Config(preview=True))] == [("STB401", "guess")]
    # reached through a caller, a vmap in a differentiated function, or a nested def: proven
    through = "import jax\nimport jax.numpy as jnp\n\n\ndef ratio(a, b):\n    return jnp.where(b == 0, a, a / b)\n\n\n"
    callers = {
        "def loss(a, b):\n    return ratio(a, b).sum()\n\n\ng = jax.grad(loss)\n": "proven",
        "def loss(a, b):\n    return jax.vmap(ratio)(a, b).sum()\n\n\ng = jax.value_and_grad(loss)\n": "proven",
        "@jax.jit\ndef loss(a, b):\n    return ratio(a, b).sum()\n": "guess",  # jitted, never differentiated here
        # an entry declares its transforms: the default (jit, grad) differentiates, jit alone does not
        "import stabcheck\n\nE = stabcheck.Entry(ratio, (1.0, 2.0))\n": "proven",
        "import stabcheck\n\nE = stabcheck.Entry(ratio, (1.0, 2.0), transforms=('jit', 'vmap'))\n": "guess",
    }
    for tail, confidence in callers.items():
        assert [(f.code, f.confidence) for f in check_source(through + tail, "pkg/m.py", Config(preview=True))] == [("STB401", confidence)], tail
    nested = "import jax\nimport jax.numpy as jnp\n\n\ndef loss(a, b):\n    def ratio(u):\n        return jnp.where(b == 0, u, u / b)\n    return jax.lax.map(ratio, a).sum()\n\n\ng = jax.grad(loss, argnums=1)\n"
    assert [(f.code, f.confidence) for f in check_source(nested, "pkg/m.py", Config())] == [("STB401", "proven")]


def test_newer_python_syntax_is_a_note_not_a_syntax_error(tmp_path: Path) -> None:
    # efax (R4) is Python 3.12 code: 12 STB901 telling the user to fix syntax errors that are not there
    import sys

    from stabcheck.api import Options, run

    (tmp_path / "new.py").write_text("import jax.numpy as jnp\ntype Axis = int | tuple[int, ...]\n\n\ndef mean[T](x: T) -> T:\n    return jnp.mean(x)\n", encoding="utf-8")
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n", encoding="utf-8")
    result = run([str(tmp_path)], Config(), Options(cache=False))
    if sys.version_info >= (3, 12):
        assert [Path(f.path).name for f in result.findings] == ["broken.py"]
        return
    assert [(Path(f.path).name, f.code) for f in result.findings] == [("broken.py", "STB901")]
    (note,) = [n for n in result.notes if "newer interpreter" in n]
    assert "new.py" in note and "broken.py" not in note
