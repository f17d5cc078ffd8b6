"""GitHub Actions workflow commands: one annotation per finding, shown on the PR diff."""

from __future__ import annotations

from stabcheck.finding import Finding
from stabcheck.reporters import Report, clean, status_label
from stabcheck.reporters._chains import short as chain_short

_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}
PER_STEP = 10  # GitHub shows at most 10 annotations of each level per step (and 50 per job)


def _escape_data(s: str) -> str:
    return clean(s).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def render(findings: list[Finding], report: Report) -> str:
    lines = []
    for f in findings:
        level = "notice" if f.status == "refuted" else _LEVEL.get(f.severity, "warning")
        props = [f"file={_escape_prop(f.path)}", f"line={f.line}", f"col={f.col}"]
        if f.span.end_line:
            props.append(f"endLine={f.span.end_line}")
        if f.span.end_col and f.span.end_line == f.line:
            props.append(f"endColumn={f.span.end_col}")
        props.append(f"title={_escape_prop(f'{f.code} {f.name}')}")
        msg = _escape_data(f"{f.code} [{status_label(f)}] {f.message}")
        via = chain_short(f)
        if via:  # the outermost transformed caller
            msg += "%0A" + _escape_data(via)
        if f.help:
            msg += "%0A" + _escape_data(f"help: {f.help}")
        lines.append(f"::{level} {','.join(props)}::{msg}")
    counts = {lv: sum(ln.startswith(f"::{lv} ") for ln in lines) for lv in ("error", "warning", "notice")}
    over = {lv: n for lv, n in counts.items() if n > PER_STEP}
    if over:
        what = ", ".join(f"{n} {lv}s" for lv, n in over.items())
        note = f"stabcheck wrote {what}; GitHub shows only {PER_STEP} annotations of each level per step (50 per job), so some are not on the diff: see the job log, or upload SARIF (`--output-format sarif`) to code scanning"
        lines.append(f"::notice title=stabcheck::{_escape_data(note)}")
    for note in report.notes:  # e.g. the typed tier was turned off, a config key was ignored
        lines.append(f"::notice title=stabcheck::{_escape_data(f'note: {note}')}")
    return "\n".join(lines) + ("\n" if lines else "")
