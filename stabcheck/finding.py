"""The one data type that flows through every stage: `Finding`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
Stage = Literal["static", "traced", "confirmed", "runtime"]
Status = Literal["suspected", "confirmed", "refuted"]
Applicability = Literal["safe", "unsafe"]
# how sure a finding is: "proven" when the analysis proves every premise (the transform is
# visible, the operand is traced, the path reaches a jitted or differentiated use); "guess" when a
# premise is assumed (a value of unknown kind, a config not visible statically). The static stage
# reports guesses only with `--preview`; the traced/confirm stages confirm or refute them.
Confidence = Literal["proven", "guess"]

STAGE_STRENGTH: dict[str, int] = {"static": 0, "traced": 1, "runtime": 1, "confirmed": 2}


@dataclass(frozen=True, slots=True)
class Span:
    """1-based line and column of the start, and of the end (inclusive line, exclusive col)."""

    line: int
    col: int = 1
    end_line: int | None = None
    end_col: int | None = None

    @classmethod
    def of(cls, node: Any) -> Span:
        """The span of an `ast` node (ast columns are 0-based)."""
        line = getattr(node, "lineno", 1) or 1
        col = (getattr(node, "col_offset", 0) or 0) + 1
        end_line = getattr(node, "end_lineno", None) or line
        end_col = getattr(node, "end_col_offset", None)
        return cls(line, col, end_line, (end_col + 1) if end_col is not None else None)


    def in_chars(self, lines: Sequence[str]) -> Span:
        """This span, made with UTF-8 byte columns (as `ast`, tokenize and code objects count),
        with columns in characters (what editors, SARIF and every reporter show). Done once,
        where a position is made (`FileContext.add`, the traced stage's `Site`)."""
        col = char_col(lines[self.line - 1], self.col) if 0 < self.line <= len(lines) else self.col
        end_col = self.end_col
        end_line = self.end_line or self.line
        if end_col is not None and 0 < end_line <= len(lines):
            end_col = char_col(lines[end_line - 1], end_col)
        if col == self.col and end_col == self.end_col:
            return self
        return Span(self.line, col, self.end_line, end_col)


def char_col(text: str, byte_col: int) -> int:
    """The 1-based character column of the 1-based UTF-8 byte column `byte_col` of `text`."""
    if byte_col <= 1 or text.isascii():
        return byte_col
    data = text.encode("utf-8")
    head = data[: byte_col - 1]
    return len(head.decode("utf-8", "ignore")) + max(0, byte_col - 1 - len(data)) + 1


def byte_col(text: str, col: int) -> int:
    """The inverse of `char_col`: the 1-based UTF-8 byte column of character column `col`."""
    if col <= 1 or text.isascii():
        return col
    return len(text[: col - 1].encode("utf-8")) + max(0, col - 1 - len(text)) + 1


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace the text of `span` (end exclusive) with `replacement`."""

    span: Span
    replacement: str


@dataclass(frozen=True, slots=True)
class Fix:
    description: str
    applicability: Applicability = "safe"
    edits: tuple[Edit, ...] = ()


@dataclass(frozen=True, slots=True)
class Frame:
    """One step of an instability chain: a user line, the function it is in, and `via`, what makes
    that function transformed when it is the chain's outermost step (`jax.jit`, `jax.grad`,
    `@stabcheck.entry`, ...; empty for a plain call)."""

    path: str
    line: int
    col: int = 1
    function: str = ""
    via: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "col": self.col, "function": self.function, "via": self.via}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Frame:
        return cls(d["path"], d["line"], d.get("col", 1), d.get("function", ""), d.get("via", ""))


# A chain runs from the offending line (innermost) to the transformed entry (outermost).
Chain = tuple[Frame, ...]
MAX_CHAINS = 8  # per finding: the shortest are kept


@dataclass(frozen=True, slots=True)
class Finding:
    """A hazard found at `path:span`, by `stage`, with `status` saying how sure we are.

    Later stages refine a finding with `dataclasses.replace` (see `refine`).
    `detail` names the culprit (a variable, a leaf path) and keys the baseline.
    """

    code: str
    name: str
    message: str
    path: str
    span: Span
    help: str = ""
    severity: Severity = "error"
    stage: Stage = "static"
    status: Status = "suspected"
    function: str = ""
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: Fix | None = None
    snippet: str = ""
    chains: tuple[Chain, ...] = ()  # innermost -> outermost, one per way a transform reaches it
    confidence: Confidence = "proven"

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def line(self) -> int:
        return self.span.line

    @property
    def col(self) -> int:
        return self.span.col

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity used to merge findings of different stages: (code, path, line)."""
        return (self.code, self.path, self.span.line)

    @property
    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.path, self.span.line, self.span.col, self.code, self.message)

    def refine(self, **changes: Any) -> Finding:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape shared by the json reporter, the cache and the worker protocol;
        `chains` is present only when there is one (outputs without chains are unchanged)."""
        d: dict[str, Any] = {
            "code": self.code,
            "name": self.name,
            "message": self.message,
            "help": self.help,
            "path": self.path,
            "line": self.span.line,
            "col": self.span.col,
            "end_line": self.span.end_line,
            "end_col": self.span.end_col,
            "severity": self.severity,
            "stage": self.stage,
            "status": self.status,
            "function": self.function,
            "detail": self.detail,
            "evidence": self.evidence,
            "snippet": self.snippet,
            "confidence": self.confidence,
            "fix": None
            if self.fix is None
            else {
                "description": self.fix.description,
                "applicability": self.fix.applicability,
                "edits": [
                    {
                        "line": e.span.line,
                        "col": e.span.col,
                        "end_line": e.span.end_line,
                        "end_col": e.span.end_col,
                        "replacement": e.replacement,
                    }
                    for e in self.fix.edits
                ],
            },
        }
        if self.chains:
            d["chains"] = [[fr.to_dict() for fr in c] for c in self.chains]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        fix = d.get("fix")
        return cls(
            code=d["code"],
            name=d["name"],
            message=d["message"],
            help=d.get("help", ""),
            path=d["path"],
            span=Span(d["line"], d.get("col", 1), d.get("end_line"), d.get("end_col")),
            severity=d.get("severity", "error"),
            stage=d.get("stage", "static"),
            status=d.get("status", "suspected"),
            function=d.get("function", ""),
            detail=d.get("detail", ""),
            evidence=dict(d.get("evidence") or {}),
            snippet=d.get("snippet", ""),
            chains=tuple(tuple(Frame.from_dict(fr) for fr in c) for c in d.get("chains") or ()),
            confidence="guess" if d.get("confidence") == "guess" else "proven",
            fix=None
            if not fix
            else Fix(
                fix["description"],
                fix.get("applicability", "safe"),
                tuple(
                    Edit(Span(e["line"], e["col"], e["end_line"], e["end_col"]), e["replacement"])
                    for e in fix.get("edits", ())
                ),
            ),
        )


def merge(findings: list[Finding]) -> list[Finding]:
    """One finding per (code, path, line): the strongest stage wins, evidence is combined."""
    best: dict[tuple[str, str, int], Finding] = {}
    for f in findings:
        old = best.get(f.key)
        if old is None:
            best[f.key] = f
            continue
        strong, weak = (f, old) if _strength(f) > _strength(old) else (old, f)
        evidence = {**weak.evidence, **strong.evidence}
        stages = sorted({*weak.evidence.get("stages", [weak.stage]), *strong.evidence.get("stages", [strong.stage])}, key=lambda s: STAGE_STRENGTH.get(s, 0))
        evidence["stages"] = stages
        best[f.key] = strong.refine(
            evidence=evidence,
            fix=strong.fix or weak.fix,
            function=strong.function or weak.function,
            detail=strong.detail or weak.detail,
            snippet=strong.snippet or weak.snippet,
            chains=merge_chains(strong.chains, weak.chains),
            confidence="proven" if "proven" in (strong.confidence, weak.confidence) else "guess",
        )
    return sorted(best.values(), key=lambda f: f.sort_key)


def merge_chains(*groups: tuple[Chain, ...]) -> tuple[Chain, ...]:
    """The chains of findings that are one finding: each distinct chain once, in a stable order
    (shortest first, then by location), at most `MAX_CHAINS`."""
    seen: dict[tuple[tuple[str, int, str], ...], Chain] = {}
    for group in groups:
        for c in group:
            # the same path through the code, whichever stage saw it (columns differ by stage)
            seen.setdefault(tuple((fr.path, fr.line, fr.function) for fr in c), c)
    ordered = sorted(seen.values(), key=lambda c: (len(c), [(fr.path, fr.line, fr.col, fr.function, fr.via) for fr in c]))
    return tuple(ordered[:MAX_CHAINS])


def _strength(f: Finding) -> tuple[int, int]:
    # a refuted finding is weaker than a suspected one of the same stage only by status
    return (STAGE_STRENGTH.get(f.stage, 0), 0 if f.status == "refuted" else 1)
