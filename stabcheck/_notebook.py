"""Jupyter notebooks (`.ipynb`), checked cell by cell as ruff does.

The code cells are joined into one Python source (each cell's lines kept, so the static stage,
`# noqa` and merging work on it unchanged), and findings are mapped back to `cell N, line L`
afterwards. IPython syntax that is not Python is blanked, line for line: line magics (`%time`),
shell escapes (`!pip`), help (`x?`) (an indented one becomes `pass`), and whole cells under a cell magic (`%%bash`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from stabcheck.finding import Finding, Span

SUFFIX = ".ipynb"
_MAGIC = re.compile(r"^\s*(?:[%!]|\?\?|\?)|^[^#'\"]*\?\s*$")


class NotebookError(ValueError):
    """Not a notebook stabcheck can read: the reason, for an STB901 finding."""


@dataclass(frozen=True, slots=True)
class Cells:
    source: str  # the code cells joined
    starts: tuple[tuple[int, int], ...]  # (cell number, 1-based, counting every cell; first joined line)


def cells(data: bytes) -> Cells:
    """The code cells of a notebook file's bytes. Raises NotebookError."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise NotebookError(f"it is not valid notebook JSON ({e})"[:200]) from None
    raw = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise NotebookError("it has no `cells` list (nbformat 4 is read)")
    parts: list[str] = []
    starts: list[tuple[int, int]] = []
    line = 1
    for number, cell in enumerate(raw, start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else str(src)
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if lines and lines[0].lstrip().startswith("%%"):
            lines = [""] * len(lines)  # a cell magic: the cell is not Python
        else:
            lines = [_blank(ln) if _MAGIC.match(ln) else ln for ln in lines]
        if not lines:
            continue
        starts.append((number, line))
        parts.extend(lines)
        line += len(lines)
    return Cells("\n".join(parts) + ("\n" if parts else ""), tuple(starts))


def _blank(line: str) -> str:
    """A line of IPython syntax as Python: nothing, or `pass` where it is indented (the only
    statement of a block, as `except ImportError:\n    !pip install x`, must stay a statement)."""
    indent = line[: len(line) - len(line.lstrip())]
    return f"{indent}pass" if indent else ""


def locate(starts: tuple[tuple[int, int], ...], line: int) -> tuple[int, int]:
    """(cell number, line in the cell) of a line of the joined source."""
    cell, first = 0, 1
    for number, start in starts:
        if start > line:
            break
        cell, first = number, start
    return cell, line - first + 1


def to_cells(f: Finding, starts: tuple[tuple[int, int], ...]) -> Finding:
    """A finding on the joined source, with its lines made cell-relative and `cell` in evidence."""
    if not starts:
        return f
    cell, line = locate(starts, f.span.line)
    end_line, end_col = f.span.end_line, f.span.end_col
    if end_line is not None:
        end_cell, end_rel = locate(starts, end_line)
        end_line, end_col = (end_rel, end_col) if end_cell == cell else (line, None)
    return f.refine(span=Span(line, f.span.col, end_line, end_col), evidence={**f.evidence, "cell": cell})
