from __future__ import annotations

from stabcheck.finding import Finding
from stabcheck.reporters import Report, clean, statistics_rows, status_label
from stabcheck.reporters._chains import short as chain_short


def render(findings: list[Finding], report: Report) -> str:
    lines = []
    for f in findings:
        tag = "" if f.stage == "static" and f.status == "suspected" else f" ({status_label(f)})"
        via = chain_short(f)
        lines.append(f"{clean(f.path)}:{f.line}:{f.col}: {f.code} [{f.name}] {clean(f.message)}{tag}" + (f" [{via}]" if via else ""))
    lines += [f"note: {clean(note)}" for note in report.notes]  # e.g. the typed tier fell back to untyped
    if report.statistics:
        lines += [f"{n:5d}\t{c}\t[{s}]" for n, c, s in statistics_rows(findings)]
    lines.append(summary_line(findings, report))
    return "\n".join(lines) + "\n"


def summary_line(findings: list[Finding], report: Report) -> str:
    counted = [f for f in findings if f.status != "refuted"]
    refuted = len(findings) - len(counted)
    extra = f" ({refuted} refuted by running the code)" if refuted else ""
    if not counted:
        return f"All checks passed: {report.files} file{'s' * (report.files != 1)} checked{extra}."
    return f"Found {len(counted)} finding{'s' * (len(counted) != 1)} in {report.files} file{'s' * (report.files != 1)}{extra}."
