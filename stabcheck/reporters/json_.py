from __future__ import annotations

import json

from stabcheck.finding import Finding
from stabcheck.reporters import Report

KEYS = ("code", "name", "message", "help", "path", "line", "col", "end_line", "end_col", "severity", "stage", "status", "function", "evidence")


def render(findings: list[Finding], report: Report) -> str:
    rows = []
    for f in findings:
        d = f.to_dict()
        row = {k: d[k] for k in KEYS}
        if report.device:
            row["device"] = report.device
        rows.append(row)
    return json.dumps(rows, indent=2, sort_keys=False, default=str) + "\n"
