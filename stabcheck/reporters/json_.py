from __future__ import annotations

import json

from stabcheck.finding import Finding
from stabcheck.reporters import Report, clean_tree
from stabcheck.reporters._chains import as_json as chain_json

NOTE = "note"  # the `code` of a row that is a note about the run (not a finding)
KEYS = ("code", "name", "message", "help", "path", "line", "col", "end_line", "end_col", "severity", "stage", "status", "confidence", "function", "evidence")


def render(findings: list[Finding], report: Report) -> str:
    rows = []
    for f in findings:
        d = f.to_dict()
        row = {k: d[k] for k in KEYS}
        if f.chains:  # innermost -> outermost; absent when the finding has none
            row["chains"] = chain_json(f)
        if report.device:
            row["device"] = report.device
        rows.append(clean_tree(row))
    for note in report.notes:  # after the findings: rows whose code is "note", severity "info"
        row = note_row(note)
        if report.device:
            row["device"] = report.device
        rows.append(clean_tree(row))
    return json.dumps(rows, indent=2, sort_keys=False, default=str) + "\n"


def note_row(note: str) -> dict[str, object]:
    """A note about the run (the typed tier turned off, a config key ignored) in the rows' shape."""
    return {"code": NOTE, "name": NOTE, "message": note, "help": "", "path": "", "line": 0, "col": 0, "end_line": None, "end_col": None, "severity": "info", "stage": "", "status": NOTE, "confidence": "", "function": "", "evidence": {}}
