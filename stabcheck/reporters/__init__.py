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


def device_line(device: dict[str, Any] | None) -> str:
    """`device: gpu (NVIDIA H100 80GB HBM3), jax 0.10.2` — shared by every human format."""
    d = device or {}
    platform, kind = str(d.get("platform", "?")), str(d.get("device_kind", ""))
    where = platform if kind in ("", platform) else f"{platform} ({kind})"
    return f"device: {where}, jax {d.get('jax', '?')}"


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
