"""Reporters: pure functions `(findings, report) -> str`. They render; they never analyse."""

from __future__ import annotations

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


def get(fmt: str) -> Callable[[list[Finding], Report], str]:
    import importlib

    if fmt not in FORMATS:
        raise KeyError(fmt)
    mod = importlib.import_module(f"stabcheck.reporters.{fmt}_")
    return mod.render  # type: ignore[no-any-return]


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
