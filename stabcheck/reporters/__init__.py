"""Reporters: pure functions `(findings, report) -> str`. They render; they never analyse."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stabcheck.finding import Finding

FORMATS = ("full", "concise", "json", "sarif", "github", "markdown", "junit")


@dataclass(frozen=True, slots=True)
class Report:
    """What a reporter may show besides the findings."""

    files: int = 0
    device: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    statistics: bool = False
    color: bool = False
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # findings hidden by `# noqa` ("inSource") or the baseline ("external"), with the reason:
    # only SARIF shows them (as suppressed results); the others print the baseline's count
    suppressed: tuple[tuple[Finding, str, str], ...] = ()
    baselined: int = 0
    root: str = ""  # the repository root that SARIF URIs are relative to ("": paths as shown)
    cwd: str = ""  # the working directory of the run


# Characters that change what a reader sees rather than show something: C0 controls but tab (a
# newline starts a new line of a report, and `.pth` files run lines that start with `import`),
# ESC (ANSI sequences), DEL, C1 controls, Unicode line separators and bidirectional overrides
# ("Trojan Source"), zero-width no-break space.
_INVISIBLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _visible(m: re.Match[str]) -> str:
    ch = m.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def clean(text: object) -> str:
    """Text that came from the checked tree (file names, messages quoting source or error texts,
    notes) made safe to print in any format: each control character, ANSI escape, line separator
    or bidi control is rendered visibly (`\\n`, `\\x1b`, `\\u202e`), so a report is one line per
    finding whatever a file is called. Every reporter passes user-derived text through here."""
    s = text if isinstance(text, str) else str(text)
    return _INVISIBLE.sub(_visible, s)


def clean_tree(value: object) -> object:
    """`clean` applied to every string of a JSON-like value (keys included)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_tree(v) for v in value]
    return value


def get(fmt: str) -> Callable[[list[Finding], Report], str]:
    if fmt not in FORMATS:
        raise KeyError(fmt)
    mod = importlib.import_module(f"stabcheck.reporters.{fmt}_")
    return mod.render  # type: ignore[no-any-return]


def device_line(device: dict[str, Any] | None) -> str:
    """`device: gpu (NVIDIA H100 80GB HBM3), jax 0.10.2` — shared by every human format."""
    d = device or {}
    platform, kind = str(d.get("platform", "?")), str(d.get("device_kind", ""))
    where = platform if kind in ("", platform) else f"{platform} ({kind})"
    return clean(f"device: {where}, jax {d.get('jax', '?')}")


def status_label(f: Finding) -> str:
    """How sure: static / traced / confirmed / refuted."""
    if f.status == "refuted":
        return "refuted"
    if f.status == "confirmed" or f.stage == "confirmed":
        return "confirmed"
    return f.stage


def statistics_rows(findings: list[Finding]) -> list[tuple[int, str, str]]:
    counts: dict[tuple[str, str], int] = {}
    for f in findings:
        counts[(f.code, f.name)] = counts.get((f.code, f.name), 0) + 1
    return sorted(((n, c, s) for (c, s), n in counts.items()), key=lambda r: (-r[0], r[1]))


def statistics(findings: list[Finding], fmt: str) -> str:
    """`--statistics`: only the counts per rule (a JSON list with `--output-format json`)."""
    rows = statistics_rows(findings)
    fixable: dict[str, int] = {}
    for f in findings:
        if f.fix is not None:
            fixable[f.code] = fixable.get(f.code, 0) + 1
    if fmt == "json":
        return json.dumps([{"code": c, "name": s, "count": n, "fixable": fixable.get(c, 0)} for n, c, s in rows], indent=2) + "\n"
    return "".join(f"{n:5d}\t{c}\t{'[*] ' if fixable.get(c) else ''}{s}\n" for n, c, s in rows)


def location(f: Finding) -> str:
    """`path:line:col`, or `nb.ipynb:cell 3:2:5` for a notebook cell (as ruff shows them)."""
    cell = f.evidence.get("cell") if f.evidence else None
    return f"{f.path}:cell {cell}:{f.line}:{f.col}" if cell else f"{f.path}:{f.line}:{f.col}"
