"""A Markdown summary for a pull-request comment or `$GITHUB_STEP_SUMMARY`."""

from __future__ import annotations

import re

from stabcheck.finding import Finding
from stabcheck.reporters import Report, clean, statistics_rows, status_label
from stabcheck.reporters._chains import short as chain_short
from stabcheck.reporters.concise_ import summary_line
from stabcheck.reporters.sarif_ import help_uri


def _cell(text: str) -> str:
    """Text safe inside a table cell: one line, no control character, pipes kept literal."""
    return " ".join(clean(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    """A code span that `text` (a file name may hold backticks) cannot close early."""
    body = _cell(text)
    run = max((len(r) for r in re.findall("`+", body)), default=0)
    fence = "`" * (run + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def render(findings: list[Finding], report: Report) -> str:
    out = ["## stabcheck", ""]
    counted = [f for f in findings if f.status != "refuted"]
    out.append(f"**{summary_line(findings, report)}**")
    out.append("")
    if findings:
        out += ["| rule | count |", "|---|---:|"]
        for n, code, slug in statistics_rows(findings):
            out.append(f"| [{code}]({help_uri(code, slug)}) `{slug}` | {n} |")
        out.append("")
        out += ["| | location | rule | finding | how sure |", "|---|---|---|---|---|"]
        for f in findings:
            mark = ":white_check_mark:" if f.status == "refuted" else {"error": ":x:", "warning": ":warning:"}.get(f.severity, ":information_source:")
            where = _code(f"{f.path}:{f.line}") + (f" in {_code(f.function)}" if f.function else "")
            via = chain_short(f)
            msg = _cell(f.message) + (f"<br>*{_cell(via)}*" if via else "") + (f"<br>*help:* {_cell(f.help)}" if f.help else "")
            out.append(f"| {mark} | {where} | [{f.code}]({help_uri(f.code, f.name)}) | {msg} | {status_label(f)} |")
        out.append("")
    if counted:
        confirmed = sum(1 for f in counted if status_label(f) == "confirmed")
        if confirmed:
            out.append(f"{confirmed} of {len(counted)} confirmed by running the code.")
            out.append("")
    if report.device:
        d = report.device
        out.append(f"Device: {_cell(str(d.get('platform', '?')))} {_cell(str(d.get('device_kind', '')))}, jax {_cell(str(d.get('jax', '?')))}".rstrip())
        out.append("")
    for note in report.notes:
        out.append(f"> note: {_cell(note)}")
    return "\n".join(out).rstrip() + "\n"
