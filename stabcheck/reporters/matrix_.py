"""Render the AD matrix (`stabcheck matrix`) as a rich table, Markdown or JSON. Renders only.

The matrix is `{"device": {...}, "rows": [{"entry", "primal_s", "compile_s", "cells": {column:
{"ok": true, "ratio": r} | {"ok": false, "code": "STB403", "reason": "..."}}}], "notes": [...]}`.
"""

from __future__ import annotations

import io
import json
from typing import Any

from stabcheck.reporters import clean, clean_tree, device_line

FORMATS = ("table", "markdown", "json")


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _ratio(r: float) -> str:
    return f"{r:.2g}x" if r < 100 else f"{r:.0f}x"


def cell_text(cell: dict[str, Any] | None, *, reason: bool = True) -> str:
    if cell is None:
        return "-"
    if cell.get("ok"):
        return _ratio(cell["ratio"])
    if cell.get("skipped"):
        return "skipped: memory"
    return f"{cell.get('code') or 'error'} {cell.get('reason', '') if reason else ''}".strip()


def _failures(matrix: dict[str, Any]) -> list[str]:
    """One line per distinct failure code: what it means."""
    seen: dict[str, str] = {}
    for row in matrix.get("rows", []):
        for cell in row.get("cells", {}).values():
            if not cell.get("ok") and cell.get("code"):
                seen.setdefault(cell["code"], cell.get("reason", ""))
    return [f"{code}: {why} (stabcheck explain {code})" for code, why in sorted(seen.items())]


def columns_of(matrix: dict[str, Any]) -> list[str]:
    cols: dict[str, None] = {}
    for row in matrix.get("rows", []):
        cols.update(dict.fromkeys(row.get("cells", {})))
    return list(cols)


def _device(matrix: dict[str, Any]) -> str:
    return device_line(matrix.get("device"))


def _footnotes(matrix: dict[str, Any]) -> list[str]:
    out = []
    for row in matrix.get("rows", []):
        if row.get("error"):
            out.append(f"{row['entry']}: {row['error'].get('code')} {row['error'].get('reason', '')}")
        for col, cell in row.get("cells", {}).items():
            if cell.get("skipped"):
                out.append(f"{row['entry']} / {col}: skipped, {cell.get('reason', '')}")
    return out + list(matrix.get("notes", []))


LEGEND = "primal: median time of the compiled forward pass; cells: median time of each compiled transform (jit: the call through `jax.jit`, dispatch included) / primal; a code means the transform fails"


def render(matrix: dict[str, Any], fmt: str = "table", *, color: bool = False) -> str:
    if fmt == "json":
        out = {"device": matrix.get("device") or {}, "rows": clean_tree(matrix.get("rows", []))}
        if matrix.get("notes"):
            out["notes"] = clean_tree(matrix["notes"])
        return json.dumps(out, indent=2, default=str) + "\n"
    cols = columns_of(matrix)
    head = ["entry", "primal", "compile", *cols]
    short = fmt == "table"
    rows = [[clean(r["entry"]), _seconds(r.get("primal_s")), _seconds(r.get("compile_s")), *(clean(cell_text(r.get("cells", {}).get(c), reason=not short)) if not r.get("error") else (r["error"].get("code") or "error") for c in cols)] for r in matrix.get("rows", [])]
    if fmt == "markdown":
        lines = ["| " + " | ".join(f"`{h}`" if h in cols else h for h in head) + " |", "|" + "---|" * 1 + "---:|" * (len(head) - 1)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines += ["", f"_{_device(matrix)}. {LEGEND}._"]
        lines += [f"- {clean(n)}" for n in _footnotes(matrix)]
        return "\n".join(lines) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown matrix format {fmt!r}; expected one of {', '.join(FORMATS)}")
    # rich: imported only when rendering
    from rich.console import Console
    from rich.markup import escape  # rich: only when a table or a bar is drawn
    from rich.table import Table  # rich: only when a table or a bar is drawn

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=color, no_color=not color, width=max(120, 36 + 16 * len(head)), highlight=False, soft_wrap=True)
    table = Table(title="AD matrix: which transforms work, and their cost relative to the primal", title_justify="left")
    for h in head:
        table.add_column(h, justify="left" if h == "entry" else "right", no_wrap=h != "entry")
    for r, row in zip(matrix.get("rows", []), rows):
        styled = [escape(row[0]), *row[1:3]]
        for c, text in zip(cols, row[3:]):
            cell = r.get("cells", {}).get(c) or {}
            style = "green" if cell.get("ok") else "yellow" if cell.get("skipped") else "bold red"
            styled.append(f"[{style}]{escape(text)}[/]")
        table.add_row(*styled)
    con.print(table)
    con.print(f"[dim]{_device(matrix)}[/]")
    con.print(f"[dim]{LEGEND}[/]")
    for line in map(clean, _failures(matrix)):
        con.print(f"[bold red]{escape(line.split(':')[0])}[/]:{escape(line.split(':', 1)[1])}")
    for n in _footnotes(matrix):
        con.print(f"[yellow]note:[/] {escape(clean(n))}")
    return buf.getvalue()
