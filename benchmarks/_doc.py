"""The one way a benchmark script writes its section of docs/benchmarks.md: between its own
BEGIN and END markers, replacing what a previous run wrote there, or appended the first time."""

from __future__ import annotations

from pathlib import Path


def write_section(doc: Path, section: str, begin: str, end: str) -> None:
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")
