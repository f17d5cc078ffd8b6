"""Inline suppressions: `# noqa`, `# noqa: STB101,STB102`, `# stabcheck: ignore[branch-on-tracer]`.

Unused STB suppressions become STB900 findings. Blanket `# noqa` and other tools' codes
(`# noqa: E501`) are never reported: they belong to other linters too.
"""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass

# a code is letters, a digit, then letters or digits: `STB1O1` (a letter O) is read whole, and
# reported as an unknown rule, not as `STB1` (which would silence a whole family)
NOQA_RE = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9][A-Z0-9]*(?:[\s,]+[A-Z]+[0-9][A-Z0-9]*)*))?", re.I)
IGNORE_RE = re.compile(r"#\s*stabcheck:\s*ignore(?:\[(?P<names>[^\]]*)\])?")


@dataclass(frozen=True, slots=True)
class Suppression:
    line: int
    col: int
    names: tuple[str, ...]  # codes or slugs; () means every rule
    text: str

    def to_list(self) -> list:
        return [self.line, self.col, list(self.names), self.text]

    @classmethod
    def from_list(cls, v: list) -> Suppression:
        return cls(v[0], v[1], tuple(v[2]), v[3])


_CANDIDATE = re.compile(r"#\s*(?:noqa|stabcheck:)", re.I)


def parse(source: str) -> list[Suppression]:
    """Suppression comments of a file; cheap when the file has none.

    Only a real comment counts (not `# noqa` inside a string), so the file is tokenized, but only
    up to the last line where a candidate appears: `# noqa: F401` among the imports costs a few
    lines, not the whole file."""
    last = 0
    for m in _CANDIDATE.finditer(source):
        last = m.start()
    if not last and not _CANDIDATE.match(source):
        return []
    last_line = source.count("\n", 0, last) + 1
    out: list[Suppression] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.start[0] > last_line:
                break
            if tok.type != tokenize.COMMENT:
                continue
            m = NOQA_RE.search(tok.string)
            if m:
                codes = tuple(c.upper() for c in re.split(r"[\s,]+", m.group("codes") or "") if c)
                out.append(Suppression(tok.start[0], tok.start[1] + m.start() + 1, codes, m.group(0)))
            m = IGNORE_RE.search(tok.string)
            if m:
                names = tuple(n.strip() for n in (m.group("names") or "").split(",") if n.strip())
                out.append(Suppression(tok.start[0], tok.start[1] + m.start() + 1, names, m.group(0)))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []
    return out


def matches(s: Suppression, code: str, slug: str) -> bool:
    return not s.names or code in s.names or slug in s.names
