"""The default, human format: code, slug, location, the source line with a caret, help."""

from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape

from stabcheck.finding import Finding
from stabcheck.reporters import Report, clean, device_line, location, statistics_rows, status_label
from stabcheck.reporters._chains import full_lines as chain_lines
from stabcheck.reporters.concise_ import fix_marker, fixable_line, summary_line

_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}
# Evidence shown to a person, in this order; everything else stays in json/sarif.
_SHOWN = ("confirmed", "refuted", "error", "first_nonfinite", "from", "to", "before", "after", "leaf", "changed", "dtypes", "kinds", "compiles", "traces", "entry", "stage", "note")
_HOW = {"static": "dim", "traced": "cyan", "runtime": "cyan", "confirmed": "bold magenta", "refuted": "green"}


def render(findings: list[Finding], report: Report) -> str:
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=report.color, no_color=not report.color, width=120, highlight=False, soft_wrap=True)
    for f in findings:
        how = status_label(f)
        style = "green" if f.status == "refuted" else _STYLE.get(f.severity, "bold")
        marker = escape(fix_marker(f))
        con.print(f"[{style}]{f.code}[/] [bold]\\[{f.name}][/]{marker} {escape(clean(f.message))} [{_HOW.get(how, 'dim')}]({how})[/]")
        con.print(f"  [blue]-->[/] {escape(clean(location(f)))}" + (f" in `{escape(clean(f.function))}`" if f.function else ""))
        if f.snippet:
            num = str(f.line)
            con.print(f"  [blue]{num} |[/] {escape(clean(f.snippet.rstrip()))}")
            width = 1
            if f.span.end_col and (f.span.end_line in (None, f.line)):
                width = max(1, f.span.end_col - f.col)
            elif f.span.end_line and f.span.end_line > f.line:
                width = max(1, len(f.snippet.rstrip()) - f.col + 1)
            pad = " " * (len(num) + 3 + f.col - 1)
            con.print(f"  {pad}[{style}]{'^' * width}[/]")
        for k in _SHOWN:
            if k in f.evidence and f.evidence[k] not in (None, "", [], {}):
                value = clean(str(f.evidence[k]).strip().splitlines()[0])
                value = value if len(value) <= 160 else value[:157] + "..."
                con.print(f"  [dim]{escape(k.replace('_', ' '))}: {escape(value)}[/]")
        for line in chain_lines(f):
            con.print(f"  [dim]{escape(line)}[/]")
        if f.help:
            con.print(f"  [bold cyan]help:[/] {escape(clean(f.help))}")
        con.print()
    if report.device:
        con.print(f"[dim]{escape(device_line(report.device))}[/]")
    for note in report.notes:
        con.print(f"[yellow]note:[/] {escape(clean(note))}")
    if report.statistics:
        for n, c, s in statistics_rows(findings):
            con.print(f"{n:5d}  {c}  [{s}]".replace("[", "\\["))
    con.print(summary_line(findings, report))
    hint = fixable_line(findings)
    if hint:
        con.print(escape(hint))
    return buf.getvalue()
