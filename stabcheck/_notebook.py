"""Jupyter notebooks (`.ipynb`), checked cell by cell as ruff does.

The code cells are joined into one Python source (each cell's lines kept, so the static stage,
`# noqa` and merging work on it unchanged), and findings are mapped back to `cell N, line L`
afterwards. IPython syntax that is not Python is blanked, line for line: line magics (`%time`),
shell escapes (`!pip`), help (`x?`) (an indented one becomes `pass`), their outputs assigned
(`files = !ls`: the value becomes `None`), automagics (`run x.py`,
`cd dir`: a magic's name without `%`, on a line that is not Python), and whole cells under a cell
magic (`%%bash`; also after leading comment lines, as Colab runs `#@title Setup` then
`%%capture`, where Jupyter would not), and a cell's leading indent is removed as IPython does
(` run_bench(5)`). A cell that parses as Python is kept as it is, and as in IPython only a line
that starts a statement is IPython syntax (inside open brackets `% (x,)` is the format
operator). Jupyter runs each cell on its own, so each is parsed on its own: a cell that
still does not parse is blanked too and named in `Cells.broken` (one STB901 each, the other cells
are checked).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from stabcheck.finding import Finding, Span

SUFFIX = ".ipynb"
_MAGIC = re.compile(r"^\s*(?:[%!]|\?\?|\?)|^[^#'\"]*\?\s*$")
# IPython's automagics (line magics callable without `%`) and its default shell aliases
_AUTOMAGIC = re.compile(
    r"^\s*(?:run|cd|ls|pwd|pip|conda|mamba|env|load_ext|reload_ext|unload_ext|matplotlib|pylab|time|timeit|who|whos|"
    r"history|autoreload|load|save|store|reset|cat|cp|mv|rm|rmdir|mkdir|alias|bookmark|pushd|popd|dhist|sx|sc|system)(?:\s|$)"
)


# a shell or magic output assigned (`files = !ls`, `t[c] = %timeit -o f()`): IPython's
# `get_ipython().getoutput(...)`, a Python value; its right-hand side becomes `None`
_TARGET = r"[A-Za-z_][\w.]*(?:\[[^\]=]*\])*"  # a name, an attribute, a subscript (`t[c]`)
# a target list may end in a comma (`n, = !ls | wc -l`: IPython >= 7 takes whatever precedes `= !`)
_ASSIGNED = re.compile(rf"^(\s*{_TARGET}(?:\s*,\s*{_TARGET})*\s*,?\s*=\s*)[!%]")


class NotebookError(ValueError):
    """Not a notebook stabcheck can read: the reason, for an STB901 finding."""


@dataclass(frozen=True, slots=True)
class Cells:
    source: str  # the code cells joined
    starts: tuple[tuple[int, int], ...]  # (cell number, 1-based, counting every cell; first joined line)
    broken: tuple[tuple[int, int, str], ...] = ()  # cells that do not parse: (joined line of the error, column, message)
    broken_sources: tuple[str, ...] = ()  # each broken cell's source, as it was parsed (`api`: newer-Python syntax?)


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
    broken: list[tuple[int, int, str]] = []
    broken_sources: list[str] = []
    line = 1
    for number, cell in enumerate(raw, start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else str(src)
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        error = None
        if _cell_magic(lines):
            lines = [""] * len(lines)  # a cell magic: the cell is not Python
        else:
            error = _parse_error(lines)
            if error is not None:  # IPython strips a cell's leading indent before running it
                dedented = _leading_indent(lines)
                if dedented is not lines:
                    lines, error = dedented, _parse_error(dedented)
            if error is not None:  # a cell that is Python as it stands has no magic
                lines = _blank_magics(lines)
                error = _parse_error(lines)
        if not lines:
            continue
        if error is not None:
            lines = [_blank(ln) if _AUTOMAGIC.match(ln) and _parse_error([ln.strip()]) is not None else ln for ln in lines]
            error = _parse_error(lines)
            if error is not None:
                at, col, message = error
                broken.append((line + min(max(at, 1), len(lines)) - 1, col, message))
                broken_sources.append("\n".join(lines))
                lines = [""] * len(lines)
        starts.append((number, line))
        parts.extend(lines)
        line += len(lines)
    return Cells("\n".join(parts) + ("\n" if parts else ""), tuple(starts), tuple(broken), tuple(broken_sources))


def _leading_indent(lines: list[str]) -> list[str]:
    """IPython's `leading_indent` cleanup: when the cell's first non-blank line is indented, that
    indent is removed from every line that starts with it (` run_bench(5)` runs in Jupyter).
    The same list when there is nothing to remove. (A finding's column in such a cell counts from
    the removed indent.)"""
    first = next((ln for ln in lines if ln.strip()), "")
    indent = first[: len(first) - len(first.lstrip(" \t"))]
    if not indent:
        return lines
    return [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines]


def _parse_error(lines: list[str]) -> tuple[int, int, str] | None:
    """Where one cell's source does not parse as Python (line in the cell, column, message)."""
    try:
        ast.parse("\n".join(lines))
    except SyntaxError as e:
        return e.lineno or 1, max(e.offset or 1, 1), e.msg
    except ValueError as e:  # NUL bytes
        return 1, 1, str(e)
    return None


def _blank_magics(lines: list[str]) -> list[str]:
    """Magic and shell lines blanked, with the lines a trailing backslash continues them onto
    (`!git clone \\` then the URL on the next line). As in IPython, only a line that starts a
    statement can be one: inside open brackets `% (x,)` is the format operator."""
    out: list[str] = []
    continued = False
    depth = 0
    for ln in lines:
        assigned = None if continued or depth else _ASSIGNED.match(ln)
        if continued or assigned or (not depth and _MAGIC.match(ln)):
            out.append("" if continued else f"{assigned.group(1)}None" if assigned else _blank(ln))
            continued = ln.rstrip().endswith("\\")
        else:
            out.append(ln)
            depth = max(0, depth + _bracket_change(ln))
    return out


_QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")


def _bracket_change(line: str) -> int:
    """Brackets a line opens minus those it closes, outside simple string literals and comments."""
    code = _QUOTED.sub("", line).split("#", 1)[0]
    return sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")


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


def _cell_magic(lines: list[str]) -> bool:
    """The cell is under a cell magic: its first line that is not blank or a comment starts with
    `%%` (Jupyter wants it on the first line; Colab, whose forms put `#@title` above it, runs it)."""
    for ln in lines:
        stripped = ln.strip()
        if stripped and not stripped.startswith("#"):
            return stripped.startswith("%%")
    return False
