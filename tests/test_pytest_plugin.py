"""The pytest plugin, run with `pytester` on a small project of jitted code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
SCHEMAS = Path(__file__).resolve().parents[1] / "tests" / "data"
pytest.importorskip("jax")

STORM = '''
import jax
import jax.numpy as jnp


@jax.jit
def scale(x, lr):
    return x * lr


@jax.jit
def schedule(x, step):
    return x + 1, step * 0.1


@jax.jit
def doubled(x, lr):
    return x + 1, lr * 2.0


def test_retrace_storm():
    for n in range(1, 7):
        assert scale(jnp.ones(n), 0.5).shape == (n,)


def test_weak_output():
    out, lr = schedule(jnp.ones(3), jnp.int32(3))
    assert lr.weak_type
    out, lr = doubled(jnp.ones(3), 0.1)
    assert lr.weak_type  # only because the test passed a Python float: not the function's hazard
'''

CLEAN = '''
import jax
import jax.numpy as jnp


@jax.jit
def step(w, x):
    return w - 0.1 * jnp.tanh(w * x)


def test_clean():
    w = jnp.ones(3)
    for _ in range(5):
        w = step(w, jnp.ones(3))
    assert w.dtype == jnp.float32
'''


def _table(rows: list[str]) -> list[str]:
    """The finding rows of the summary: after the header, before the `stabcheck:` total."""
    end = next(i for i, r in enumerate(rows) if r.startswith("stabcheck:"))
    return rows[1:end]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_storm=STORM, test_clean=CLEAN)
    return pytester


def _line(text: str) -> int:
    """1-based line of `text` in the test_storm.py that pytester writes (leading blank line dropped)."""
    return STORM.strip("\n").splitlines().index(text) + 1


def _rows(output: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(output) if "stabcheck" in line and line.startswith("="))
    return output[start + 1 :]


@pytest.mark.slow
def test_off_by_default(project: pytest.Pytester) -> None:
    from jax._src import pjit

    before = pjit._trace_for_jit
    result = project.runpytest()
    result.assert_outcomes(passed=3)
    assert "= stabcheck =" not in result.stdout.str()
    assert pjit._trace_for_jit is before


@pytest.mark.slow
def test_summary_names_the_storm_and_the_weak_output(project: pytest.Pytester) -> None:
    from jax._src import pjit

    before = pjit._trace_for_jit
    result = project.runpytest("--stabcheck")
    result.assert_outcomes(passed=3)
    assert result.ret == 0  # findings alone do not fail the session
    rows = _rows(result.outlines)
    assert rows[0].split()[:5] == ["function", "file:line", "code", "count", "message"]
    storm = [r for r in rows if r.startswith("scale ")]
    # at the jitted function's `def` (not its decorator's line, co_firstlineno), where `check --trace --confirm` places a replayed storm
    assert len(storm) == 1 and "STB504" in storm[0] and f"test_storm.py:{_line('def scale(x, lr):')}" in storm[0]
    assert storm[0].split()[3] == "3"  # signatures 4, 5 and 6 exceed the default max-traces of 3
    assert "`x` was float32[3], now float32[4]" in storm[0]
    weak = [r for r in rows if r.startswith("schedule ")]
    assert len(weak) == 1 and "STB302" in weak[0] and f"test_storm.py:{_line('    return x + 1, step * 0.1')}" in weak[0]
    assert not any(r.startswith("doubled ") for r in rows)  # its weak output comes from the weak argument alone
    assert not any(r.startswith("step ") for r in rows)
    assert pjit._trace_for_jit is before  # uninstalled at the end of the session


@pytest.mark.slow
def test_strict_fails_the_session_only_with_findings(project: pytest.Pytester) -> None:
    result = project.runpytest("--stabcheck-strict", "--stabcheck-max-traces", "6")
    result.assert_outcomes(passed=3)
    assert result.ret == 1
    assert "--stabcheck-strict: the session fails (exit 1) because of" in result.stdout.str()  # why "3 passed" exits 1
    assert "STB504" not in result.stdout.str()  # six signatures are allowed now
    clean = project.runpytest("--stabcheck-strict", "test_clean.py")
    assert clean.ret == 0 and "--stabcheck-strict: the session fails" not in clean.stdout.str()
    assert "stabcheck: no findings (1 jitted function, 1 trace checked)" in clean.stdout.str()


@pytest.mark.slow
def test_ini_option_and_ignore(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nstabcheck = true\nstabcheck_max_traces = 2\n")
    result = project.runpytest("--stabcheck-ignore", "STB302")
    text = result.stdout.str()
    assert "STB504" in text and "STB302" not in text
    assert "   4  " in next(r for r in _rows(result.outlines) if r.startswith("scale "))


@pytest.mark.slow
def test_project_config_applies_and_options_override(project: pytest.Pytester) -> None:
    project.makepyprojecttoml('[tool.stabcheck]\nmax-traces = 5\nignore = ["weak-type-output"]\n')
    result = project.runpytest("--stabcheck")
    rows = _rows(result.outlines)
    assert [r.split()[2] for r in _table(rows)] == ["STB504"] and rows[1].split()[3] == "1"
    result = project.runpytest("--stabcheck", "--stabcheck-max-traces", "1", "--stabcheck-ignore", "STB5")
    assert [r.split()[2] for r in _table(_rows(result.outlines))] == ["STB302"]
    project.makepyprojecttoml("[tool.stabcheck]\nmax-traces = 0\n")
    bad = project.runpytest("--stabcheck")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR and "max-traces" in bad.stderr.str() and "Traceback" not in bad.stderr.str()


@pytest.mark.slow
def test_report_json_and_sarif(project: pytest.Pytester) -> None:
    result = project.runpytest("--stabcheck-report", "out.json")
    assert result.ret == 0
    data = json.loads((project.path / "out.json").read_text())
    assert sorted({(d["code"], d["stage"]) for d in data}) == [("STB302", "runtime"), ("STB504", "runtime")]
    assert {d["path"] for d in data} == {"test_storm.py"}
    result = project.runpytest("--stabcheck-report", "out.sarif")
    assert result.ret == 0
    sarif = json.loads((project.path / "out.sarif").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(sarif, json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text()))
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {"STB302", "STB504"}


def test_bad_report_suffix_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result = pytester.runpytest("--stabcheck-report", "out.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid value for `--stabcheck-report`: 'out.txt'; expected a file ending in .json or .sarif" in result.stderr.str()


def test_collector_declines_when_jax_has_no_hook_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from jax._src import pjit

    from stabcheck.runtime._hook import Collector

    monkeypatch.delattr(pjit, "_trace_for_jit")
    assert Collector().install() is False


def test_collector_checks_user_functions_only_and_uninstalls() -> None:
    import jax
    import jax.numpy as jnp
    from jax._src import pjit

    from stabcheck.runtime._hook import Collector

    original = pjit._trace_for_jit
    collector = Collector(max_traces=1)
    assert collector.install()
    try:
        f = jax.jit(lambda x, lr: x * lr)
        f(jnp.ones(2), 0.5)
        f(jnp.ones(2), jnp.float32(0.5))
        jnp.where(jnp.ones(2) > 0, 1.0, 2.0)  # jitted inside JAX itself: not the user's code
    finally:
        collector.uninstall()
    assert pjit._trace_for_jit is original
    assert len(collector._monitors) == 1 and collector.traces == 2
    assert [(f.code, f.detail) for f in collector.findings] == [("STB504", "lr")]
    assert "`lr` was weak float32[], now float32[]" in collector.findings[0].message


RAISES = '''
import jax
import jax.numpy as jnp
from jax import lax


def relu(x):
    if x > 0:
        return x
    return 0.0 * x


def metrics(flag, loss):
    return lax.cond(flag, lambda: {"loss": loss, "acc": loss}, lambda: {"loss": loss})


def test_relu_under_jit():
    assert jax.jit(relu)(jnp.float32(1.0)) == 1.0


def test_metrics_under_jit():
    jax.jit(metrics)(True, jnp.float32(1.0))


def test_plain_failure():
    assert 1 == 2
'''


@pytest.mark.slow
def test_a_test_failing_because_jax_raised_yields_the_hazard_at_the_user_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_raises=RAISES)
    report = pytester.path / "r.json"
    result = pytester.runpytest("--stabcheck", f"--stabcheck-report={report}")
    result.assert_outcomes(failed=3)
    lines = RAISES.strip("\n").splitlines()
    found = {(f["code"], f["line"]) for f in json.loads(report.read_text())}
    assert ("STB101", lines.index("    if x > 0:") + 1) in found
    assert ("STB203", lines.index('    return lax.cond(flag, lambda: {"loss": loss, "acc": loss}, lambda: {"loss": loss})') + 1) in found
    assert len(found) == 2, found  # the plain assertion failure is the test's own business
