"""Positions between stabcheck's columns and the client's, and edits as the client needs them.

A finding's `Span` counts columns 1-based, in characters of the line, or (before spans were
converted where they are made) in UTF-8 bytes as `ast` counts them: `FINDING_COLUMNS` says which.
LSP positions count code units of the encoding negotiated at `initialize` (`positionEncoding`:
UTF-16 unless the client offers `utf-8` or `utf-32`). Lines are split as both Python and LSP split
them: on `\\r\\n`, `\\r` and `\\n` only (not on the other characters `str.splitlines` breaks at).

Pure functions, no pygls: the tests and the benchmark use them directly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from stabcheck.finding import Span

Encoding = Literal["utf-8", "utf-16", "utf-32"]


def _finding_columns() -> Encoding:
    """The unit of `Finding.span` columns: characters once spans are converted where they are made
    (`Span.in_chars`), UTF-8 bytes (ast's `col_offset`) before that."""

    return "utf-32" if hasattr(Span, "in_chars") else "utf-8"


FINDING_COLUMNS: Encoding = _finding_columns()

_NEWLINE = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """The lines of `text` without their line breaks; a final break starts one more (empty) line."""
    return _NEWLINE.split(text)


def units(s: str, encoding: Encoding) -> int:
    """How many code units `s` takes in `encoding`."""
    if encoding == "utf-32" or s.isascii():
        return len(s)
    if encoding == "utf-8":
        return len(s.encode("utf-8", "surrogatepass"))
    return len(s) + sum(1 for ch in s if ord(ch) > 0xFFFF)


def to_index(line: str, column: int, encoding: Encoding) -> int:
    """The code-point index in `line` of a 0-based `column` counted in `encoding` units, clamped to
    the line; a column inside a character (half a surrogate pair, the middle of a UTF-8 sequence)
    rounds down to that character."""
    if column <= 0:
        return 0
    if encoding == "utf-32" or line.isascii():
        return min(column, len(line))
    seen = 0
    for i, ch in enumerate(line):
        seen += units(ch, encoding)
        if seen > column:
            return i
        if seen == column:
            return i + 1
    return len(line)


def convert(line: str, column: int, source: Encoding, target: Encoding) -> int:
    """A 0-based column of `line` in `source` units, in `target` units."""
    if source == target:
        return min(max(column, 0), units(line, target))
    return units(line[: to_index(line, column, source)], target)


def finding_position(lines: Sequence[str], line: int, col: int | None, encoding: Encoding) -> tuple[int, int]:
    """A finding's 1-based (line, col) as a 0-based LSP (line, character) in `encoding`, clamped to
    the document. `col=None` means the end of the line."""
    if not lines:
        return (0, 0)
    li = min(max(line, 1), len(lines)) - 1
    text = lines[li]
    if line > len(lines):
        return (li, units(text, encoding))
    if col is None:
        return (li, units(text, encoding))
    return (li, convert(text, max(col - 1, 0), FINDING_COLUMNS, encoding))


def position_at(text: str, offset: int, encoding: Encoding) -> tuple[int, int]:
    """The 0-based LSP (line, character) of a code-point offset into `text`."""
    head = text[:offset]
    starts = [m.end() for m in _NEWLINE.finditer(head)]
    line_start = starts[-1] if starts else 0
    return (len(starts), units(head[line_start:], encoding))


def minimal_edit(old: str, new: str) -> tuple[int, int, str]:
    """The smallest single replacement turning `old` into `new`: (start, end) offsets into `old`
    (code points) and the text that replaces `old[start:end]`. Never splits a `\\r\\n`."""
    n = min(len(old), len(new))
    start = 0
    while start < n and old[start] == new[start]:
        start += 1
    end_old, end_new = len(old), len(new)
    while end_old > start and end_new > start and old[end_old - 1] == new[end_new - 1]:
        end_old -= 1
        end_new -= 1
    if start and old[start - 1] == "\r" and start < len(old) and old[start] == "\n":
        start -= 1
    if end_old < len(old) and old[end_old] == "\n" and end_old and old[end_old - 1] == "\r" and end_old > start:
        end_old += 1
        end_new += 1
    return start, end_old, new[start:end_new]
