from __future__ import annotations

from stabcheck.finding import Finding
from stabcheck.reporters import Report, clean, location, statistics_rows, status_label
from stabcheck.reporters._chains import short as chain_short


def render(findings: list[Finding], report: Report) -> str:
    lines = []
    for f in findings:
        tag = "" if f.stage == "static" and f.status == "suspected" else f" ({status_label(f)})"
        via = chain_short(f)
        lines.append(f"{clean(location(f))}: {f.code} [{f.name}]{fix_marker(f)} {clean(f.message)}{tag}" + (f" [{via}]" if via else ""))
    lines += [f"note: {clean(note)}" for note in report.notes]  # e.g. the typed tier fell back to untyped
    if report.statistics:
        lines += [f"{n:5d}\t{c}\t[{s}]" for n, c, s in statistics_rows(findings)]
    lines.append(summary_line(findings, report))
    hint = fixable_line(findings)
    if hint:
        lines.append(hint)
    return "\n".join(lines) + "\n"


def fix_marker(f: Finding) -> str:
    """` [*]` when `--fix` would fix the finding (ruff's marker)."""
    return " [*]" if f.fix is not None else ""


def fixable_line(findings: list[Finding]) -> str:
    n = sum(f.fix is not None for f in findings)
    if not n:
        return ""
    unsafe = sum(f.fix is not None and f.fix.applicability == "unsafe" for f in findings)
    how = "`--fix --unsafe-fixes`" if unsafe else "`--fix`"
    return f"[*] {n} fixable with {how}."


def summary_line(findings: list[Finding], report: Report) -> str:
    """`Found 3 findings in 2 files (40 files checked); 5 findings hidden by the baseline.`"""
    counted = [f for f in findings if f.status != "refuted"]
    refuted = len(findings) - len(counted)
    extra = f" ({refuted} refuted by running the code)" if refuted else ""
    if report.baselined:
        extra += f"; {report.baselined} finding{'s' * (report.baselined != 1)} hidden by the baseline"
    if not counted:
        return f"All checks passed: {report.files} file{'s' * (report.files != 1)} checked{extra}."
    with_findings = len({f.path for f in counted})
    checked = f" ({report.files} file{'s' * (report.files != 1)} checked)" if report.files > with_findings else ""
    return f"Found {len(counted)} finding{'s' * (len(counted) != 1)} in {with_findings} file{'s' * (with_findings != 1)}{checked}{extra}."
