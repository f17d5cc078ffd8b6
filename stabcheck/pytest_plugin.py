"""pytest plugin: `pytest --stabcheck` checks every transformed call the test session makes.

A test that fails because JAX raised (TracerBoolConversionError, a cond whose branches differ,
grad of a non-scalar...) also yields that hazard's finding at the user's line (`runtime._raised`).

Off unless `--stabcheck` (or ini `stabcheck = true`). The project's `[tool.stabcheck]` `select`,
`ignore` and `max-traces` apply; the `--stabcheck-*` options override them. While on, each user-defined function that
JAX traces for `jit` is checked once per signature, as if it carried `@stabcheck.stable` (the
traced dtype checks and STB504 retraces), without editing user code; so is each user function a
test calls through `grad`, `value_and_grad`, `vmap`, `jacfwd`, `jacrev`, `hessian`, `jvp`, `vjp`,
`eqx.filter_jit`/`filter_grad`/`filter_value_and_grad`, `nnx.jit` or `nnx.grad` (`runtime._intercept`,
`runtime._transformed`): the jaxpr checks, and for the differentiated ones STB402/STB406, STB410
(a gradient that is zero by construction) and the first NaN/Inf-producing primitive (STB408) on
the arguments the test passed. A `jit` trace that JAX raises on is reported even under
`pytest.raises`, and a `float64` request JAX narrows while tracing is STB301. Each finding's
evidence says where its entry came from (`entry`: the test line of the call). Findings are
collected, not warned. At the end: a summary table in the terminal, `--stabcheck-strict` turns findings
into exit status 1, `--stabcheck-report FILE` writes them as JSON (`.json`) or SARIF (`.sarif`).
Registered through the `pytest11` entry point `stabcheck`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stabcheck.finding import Finding

_COLLECTOR = pytest.StashKey[Any]()
_FAILED = pytest.StashKey[str]()
_REPORT_ERROR = pytest.StashKey[str]()
_STRICT_FAILED = pytest.StashKey[int]()
_RECORDER = pytest.StashKey[Any]()
_RECORDED = pytest.StashKey[str]()
_BEFORE = pytest.StashKey[tuple[int, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stabcheck", "type stability of jitted JAX code (stabcheck)")
    group.addoption("--stabcheck", action="store_true", default=False, help="check every user function a test calls through jit, grad, vmap and the other JAX transforms, once per signature")
    group.addoption("--stabcheck-strict", action="store_true", default=False, help="fail the session (exit 1) when stabcheck finds anything; implies --stabcheck")
    group.addoption("--stabcheck-report", metavar="FILE", default=None, help="write the findings to FILE: JSON (.json) or SARIF (.sarif); implies --stabcheck")
    group.addoption("--stabcheck-record", action="store_true", default=False, help="also write the abstract signatures of the transformed calls to .stabcheck/recorded.json, for `stabcheck check --trace/--confirm`; implies --stabcheck")
    group.addoption("--stabcheck-max-traces", metavar="N", type=int, default=None, help="signatures per function before STB504 (default: max-traces of [tool.stabcheck], 3)")
    group.addoption("--stabcheck-select", metavar="CODES", default=None, help="comma-separated codes, prefixes or slugs to report")
    group.addoption("--stabcheck-ignore", metavar="CODES", default=None, help="comma-separated codes, prefixes or slugs not to report")
    parser.addini("stabcheck", type="bool", default=False, help="run stabcheck on every jitted function (as --stabcheck)")
    parser.addini("stabcheck_max_traces", default="", help="signatures per function before STB504 (default: max-traces of [tool.stabcheck], 3)")


def _enabled(config: pytest.Config) -> bool:
    opt = config.option
    return bool(opt.stabcheck or opt.stabcheck_strict or opt.stabcheck_report or opt.stabcheck_record or config.getini("stabcheck"))


def _report_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".sarif" or path.lower().endswith(".sarif.json"):
        return "sarif"
    if suffix == ".json":
        return "json"
    raise pytest.UsageError(f"invalid value for `--stabcheck-report`: {path!r}; expected a file ending in .json or .sarif")


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    # every pytest run loads this plugin: stabcheck's own modules load only with --stabcheck
    from stabcheck.config import ConfigError, UsageError, discover_config
    from stabcheck.runtime._monitor import Selector

    if config.option.stabcheck_report:
        _report_format(config.option.stabcheck_report)
    try:
        project = discover_config(Path(str(config.rootpath)))
    except (ConfigError, UsageError) as e:
        raise pytest.UsageError(str(e)) from None
    max_traces = config.option.stabcheck_max_traces
    raw = str(config.getini("stabcheck_max_traces") or "").strip()
    if max_traces is None and raw:
        if not raw.isdigit() or int(raw) < 1:
            raise pytest.UsageError(f"invalid value for `stabcheck_max_traces`: {raw!r}; expected an integer >= 1")
        max_traces = int(raw)
    if max_traces is None:
        max_traces = project.max_traces
    if max_traces < 1:
        raise pytest.UsageError(f"invalid value for `--stabcheck-max-traces`: {max_traces!r}; expected an integer >= 1")
    select = _split(config.option.stabcheck_select) or [*project.select, *project.extend_select]
    ignore = _split(config.option.stabcheck_ignore) or list(project.ignore)
    try:
        selector = Selector.of(select, ignore)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    try:
        import jax  # noqa: F401 - JAX: only with --stabcheck
    except ImportError:
        config.stash[_FAILED] = "JAX is not installed; nothing was checked"
        return
    from stabcheck.runtime._hook import Collector  # only with --stabcheck (see above)

    collector = Collector(max_traces=max_traces, selector=selector)
    if not collector.install():
        import jax  # JAX: only with --stabcheck

        config.stash[_FAILED] = f"cannot observe jit tracing in JAX {jax.__version__} (no jax._src.pjit._trace_for_jit); nothing was checked"
        return
    config.stash[_COLLECTOR] = collector
    if config.option.stabcheck_record:
        _start_recording(config, collector, project)


def _start_recording(config: pytest.Config, collector: Any, project: Any) -> None:
    from stabcheck.runtime._recorder import Recorder  # only with --stabcheck-record (see above)

    listeners = getattr(collector, "listeners", None)
    if listeners is None:
        config.stash[_RECORDED] = "--stabcheck-record: this stabcheck's collector reports no transformed calls; nothing was recorded"
        return
    recorder = Recorder(Path(project.root) if project.source else Path(str(config.rootpath)), max_traces=getattr(collector, "max_traces", 3))
    listeners.add(recorder)
    config.stash[_RECORDER] = recorder


def pytest_unconfigure(config: pytest.Config) -> None:
    collector = config.stash.get(_COLLECTOR, None)
    if collector is not None:
        collector.uninstall()


def _findings(config: pytest.Config) -> list[Finding]:
    collector = config.stash.get(_COLLECTOR, None)
    if collector is None:
        return []
    return sorted(collector.all_findings(), key=lambda f: f.sort_key)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    collector = item.config.stash.get(_COLLECTOR, None)
    if collector is not None:  # what was found before the test ran (see pytest_runtest_makereport)
        item.stash[_BEFORE] = collector.count()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test that fails because JAX raised yields the hazard's finding at the user's line, unless
    a transformed call of the test already reported that hazard (placed where it is fixed: a
    custom rule's `return`, not the frame JAX raised in)."""
    yield
    collector = item.config.stash.get(_COLLECTOR, None)
    if collector is None or call.when != "call" or call.excinfo is None:
        return
    from stabcheck.runtime._raised import finding_for  # only with --stabcheck (see pytest_configure)

    found = finding_for(call.excinfo.value, item.nodeid)
    recorder = item.config.stash.get(_RECORDER, None)
    if found is not None and recorder is not None:
        try:
            recorder.raised(call.excinfo.value)
        except Exception:  # noqa: BLE001 - never break the session for the recording
            pass
    if found is not None and any(f.code == found.code for f in collector.since(item.stash.get(_BEFORE, (0, 0)))):
        return
    if found is not None and collector.selector(found.code) and not collector.knows(found.code, found.path, found.span.line):
        path, line, _ = item.location
        collector.findings.append(found.refine(evidence={**found.evidence, "entry": f"{path}:{(line or 0) + 1}"}))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not _enabled(config):
        return
    findings = _findings(config)
    recorder = config.stash.get(_RECORDER, None)
    if recorder is not None:
        from stabcheck.config import UsageError  # only with --stabcheck-record
        from stabcheck.traced.recorded import RecordedError

        try:
            config.stash[_RECORDED] = recorder.write()
        except (RecordedError, UsageError, OSError) as e:
            config.stash[_RECORDED] = f"--stabcheck-record: {e}; nothing was recorded"
    report = config.option.stabcheck_report
    if report:
        # only with --stabcheck-report (see pytest_configure)
        from stabcheck import reporters
        from stabcheck._files import write_atomic_nofollow
        from stabcheck.api import __version__
        from stabcheck.config import UsageError

        render = reporters.get(_report_format(report))
        try:
            write_atomic_nofollow(report, render(findings, reporters.Report(version=__version__)), what="--stabcheck-report")
        except UsageError as e:
            config.stash[_REPORT_ERROR] = str(e)
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    if config.option.stabcheck_strict and findings and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        config.stash[_STRICT_FAILED] = len(findings)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summary_rows(findings: list[Finding]) -> list[tuple[str, str, str, str, int]]:
    """(function, file:line, code, message, count), one row per function, place and code."""
    rows: dict[tuple[str, str, str], list[Any]] = {}
    for f in findings:
        key = (f.function, f"{f.path}:{f.line}", f.code)
        if key in rows:
            rows[key][1] += 1
        else:
            rows[key] = [f.message, 1]
    return [(fn, where, code, msg, n) for (fn, where, code), (msg, n) in rows.items()]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _enabled(config):
        return
    tr = terminalreporter
    failed = config.stash.get(_FAILED, None)
    tr.write_sep("=", "stabcheck")
    if failed:
        tr.write_line(f"stabcheck: {failed}")
        return
    collector = config.stash.get(_COLLECTOR, None)
    findings = _findings(config)
    functions = len(collector._monitors) if collector is not None else 0
    checked = f"{_n(functions, 'jitted function')}, {_n(collector.traces if collector else 0, 'trace')} checked"
    other = collector.checker if collector is not None else None
    if other is not None and other.checked:
        checked += f"; {_n(other.checked, 'other transformed call')} of {_n(len(other.monitors), 'function')}"
    if not findings:
        tr.write_line(f"stabcheck: no findings ({checked})")
    else:
        rows = summary_rows(findings)
        header = ("function", "file:line", "code", "message", "count")
        width = [max(len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(3)]
        tr.write_line(f"{header[0]:<{width[0]}}  {header[1]:<{width[1]}}  {header[2]:<{width[2]}}  {header[4]:>5}  {header[3]}")
        for fn, where, code, msg, n in rows:
            short = msg if len(msg) <= 100 else msg[:97] + "..."
            tr.write_line(f"{fn:<{width[0]}}  {where:<{width[1]}}  {code:<{width[2]}}  {n:>5}  {short}")
        tr.write_line(f"stabcheck: {_n(len(findings), 'finding')} ({checked})")
    if config.stash.get(_RECORDED, None):
        tr.write_line(f"stabcheck: {config.stash[_RECORDED]}")
    if config.stash.get(_REPORT_ERROR, None):
        tr.write_line(f"stabcheck: {config.stash[_REPORT_ERROR]}")
    errors = [*collector.errors, *collector.listeners.errors] if collector is not None else []
    if errors:
        tr.write_line(f"stabcheck: {len(errors)} internal errors; first: {errors[0]}")
    strict = config.stash.get(_STRICT_FAILED, 0)
    if strict:  # the tests passed: say why the session fails
        tr.write_line(f"stabcheck: --stabcheck-strict: the session fails (exit 1) because of {_n(strict, 'stabcheck finding')} above, although the tests passed", red=True, bold=True)
