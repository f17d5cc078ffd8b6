"""`--fix`, `--unsafe-fixes` and `--diff`: libcst rewrites for rules with a mechanical remedy.

Imported only when fixing (libcst is never loaded on the static hot path). One fixer per rule
code, in a module named like the rule. A fixer gets the file's source and one finding, re-locates
the offending node by the finding's span (libcst `PositionProvider`), and returns the rewritten
source, or None when the pattern is not one it can rewrite.

Fixes are applied one at a time. After each, the file is re-checked with the static stage: the
rewrite is kept only if the result parses and the finding it targeted is gone; the next fix uses
the fresh spans. Each finding of the original file is fixed at most once (a rewrite that makes a
new finding like the old one is not fixed again), so fixing converges in at most one pass per
finding. A fix is applied when its applicability is "safe", or "unsafe" with `--unsafe-fixes`;
a rule's `fixable` is the default applicability of its fixes, and a fixer says "unsafe" where it
cannot prove the rewrite keeps the behaviour. `--unfixable CODES` leaves those rules' fixes out.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stabcheck import registry
from stabcheck._files import write_atomic_nofollow
from stabcheck.api import check_source
from stabcheck.config import Config, UsageError
from stabcheck.finding import Applicability, Finding, Fix
from stabcheck.fix import float64_leak, jit_in_loop, nan_gradient_where, unhashable_static_arg
from stabcheck.fix._rewrite import Rewrite

Fixer = Callable[[str, Finding], Rewrite | None]
_MAX_ROUNDS = 200  # a hard bound on top of "each finding once"
MAX_MARKED = 200  # findings whose fixability the [*] marker is computed for, at most
MAX_MARKED_BYTES = 256 * 1024  # ... and bytes of source in their files (libcst parses each one)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
_WS = re.compile(r"\s+")


def fixers() -> dict[str, Fixer]:
    return {
        "STB301": float64_leak.fix,
        "STB401": nan_gradient_where.fix,
        "STB501": jit_in_loop.fix,
        "STB502": unhashable_static_arg.fix,
    }


@dataclass(frozen=True, slots=True)
class FileFix:
    path: str
    before: str
    after: str
    fixed: tuple[Finding, ...]
    needs_unsafe: int  # fixes left out because they are unsafe and --unsafe-fixes was not given


def finding_identity(f: Finding) -> tuple[str, str, str]:
    """What a finding is about, whatever the formatting of its line (rewrites reformat lines)."""
    return (f.code, f.function, _WS.sub("", f.detail or f.message))


def parses(source: str) -> bool:
    try:
        compile(source, "<fixed>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def fix_source(source: str, path: str, config: Config | None = None, *, unsafe: bool = False, unfixable: frozenset[str] = frozenset()) -> FileFix:
    """Apply every applicable fix to one file's source, once per finding, re-checking after each."""
    config = config or Config()
    table = {code: fx for code, fx in fixers().items() if code not in unfixable}
    text = source
    fixed: list[Finding] = []
    skipped: set[tuple[str, str, str]] = set()
    unsafe_left: set[tuple[str, str, str]] = set()
    found = check_source(text, path, config)
    # Each finding is fixed at most once: an identity gets as many fixes as it has findings, plus
    # the findings a fix of another kind reveals (one finding per line is shown, so fixing the
    # outer `where` of a line reveals the inner one); a rewrite that leaves as many findings of its
    # own kind is rejected, so nothing nests. Rounds are bounded besides, by the findings at start.
    budget: Counter[tuple[str, str, str]] = Counter(finding_identity(f) for f in found if f.code in table)
    rounds = min(_MAX_ROUNDS, 3 * sum(budget.values()) + 10)
    for _ in range(rounds):
        before = Counter(finding_identity(f) for f in found)
        candidate = next((f for f in found if f.code in table and budget[finding_identity(f)] > 0 and finding_identity(f) not in skipped), None)
        if candidate is None:
            break
        ident = finding_identity(candidate)
        got = applicable_rewrite(table[candidate.code], text, candidate, unsafe=unsafe)
        if not isinstance(got, Applicable):
            skipped.add(ident)
            if got == "unsafe":
                unsafe_left.add(ident)
            continue
        rw = got.rewrite
        after_found = check_source(rw.source, path, config)
        if Counter(finding_identity(f) for f in after_found)[ident] >= before[ident]:  # the rewrite did not remove what it targeted
            skipped.add(ident)
            continue
        budget[ident] -= 1
        now = Counter(finding_identity(f) for f in after_found if f.code in table)
        for other, n in now.items():
            if other != ident and n > before[other]:  # revealed by this fix
                budget[other] += n - before[other]
        text, found = rw.source, after_found
        fixed.append(candidate)
    return FileFix(path, source, text, tuple(fixed), len(unsafe_left))


@dataclass(frozen=True, slots=True)
class Applicable:
    """A rewrite that parses and may be applied, with its applicability."""

    rewrite: Rewrite
    applicability: Applicability


def applicable_rewrite(fixer: Fixer, text: str, finding: Finding, *, unsafe: bool) -> Applicable | Literal["unsafe"] | None:
    """The fixer's rewrite of `finding` when it parses and may be applied (an unsafe one only with
    `unsafe`); "unsafe" when it is held back for want of `--unsafe-fixes`; None when there is none.
    Whether the rewrite removes the finding is for the caller to re-check."""
    rw = try_fixer(fixer, text, finding)
    if rw is None or not parses(rw.source):
        return None
    applicability = fix_applicability(finding.code, rw.applicability)
    if applicability == "unsafe" and not unsafe:
        return "unsafe"
    return Applicable(rw, applicability)


def try_fixer(fixer: Fixer, text: str, finding: Finding) -> Rewrite | None:
    # libcst: imported only when fixing
    import libcst

    try:
        return fixer(text, finding)
    except (libcst.ParserSyntaxError, RecursionError):
        return None


def fix_applicability(code: str, own: Applicability | None) -> Applicability:
    """The fix's own verdict, else the rule's declared `fixable` (unknown: unsafe)."""
    if own is not None:
        return own
    rule = registry.get(code)
    return "safe" if rule is not None and rule.fixable == "safe" else "unsafe"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `--fix`/`--diff` did or would do."""

    text: str  # with write: a summary; without: the unified diff (and the --unsafe-fixes hint)
    findings: list[Finding]  # with write: what remains (fixed files re-checked); else unchanged
    changed: tuple[FileFix, ...]  # files whose source the fixes change
    hidden: int  # fixes left out because they are unsafe and --unsafe-fixes was not given


def run_fixes(findings: list[Finding], *, write: bool, unsafe: bool = False, config: Config | None = None, unfixable: frozenset[str] = frozenset(), settings: object | None = None) -> Outcome:
    """Fix the files that have fixable findings (each with its own settings, given `settings`).

    With `write`, rewrite the files and return what remains (the files re-checked); without,
    return the unified diff of what would change, the findings unchanged."""
    config = config or Config()
    table = fixers()

    def cfg_for(path: str) -> Config:
        return settings.for_path(path) if settings is not None else config  # type: ignore[attr-defined, no-any-return]

    paths = sorted({f.path for f in findings if f.code in table and f.code not in unfixable and not f.path.endswith(".ipynb")})
    results: list[FileFix] = []
    for path in paths:
        try:
            source = Path(path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        results.append(fix_source(source, path, cfg_for(path), unsafe=unsafe, unfixable=unfixable))
    changed = tuple(r for r in results if r.after != r.before)
    hidden = sum(r.needs_unsafe for r in results)
    if not write:
        diff = "".join(
            "".join(difflib.unified_diff(r.before.splitlines(keepends=True), _ending(r.after).splitlines(keepends=True), f"a/{r.path}", f"b/{r.path}"))
            for r in changed
        )
        tail = f"{hidden} more fix{'es' * (hidden != 1)} available with --unsafe-fixes.\n" if hidden else ""
        return Outcome(diff + tail, findings, changed, hidden)
    refused: dict[str, str] = {}
    for r in changed:
        try:
            write_atomic_nofollow(r.path, r.after, what="the fixed file")
        except UsageError as e:  # a symlink, a file that is gone: the other files are still fixed
            refused[r.path] = str(e)
    changed = tuple(r for r in changed if r.path not in refused)
    remaining = [f for f in findings if f.path not in {r.path for r in changed}]
    for r in changed:
        fixed_ids = Counter(finding_identity(f) for f in r.fixed)
        fresh = check_source(r.after, r.path, cfg_for(r.path))
        fresh_ids = {finding_identity(f) for f in fresh}
        # findings of later stages in a fixed file stay unless their hazard was fixed away
        later = [f for f in findings if f.path == r.path and f.stage != "static" and not (finding_identity(f) in fixed_ids and finding_identity(f) not in fresh_ids)]
        remaining += fresh + [f for f in later if f.key not in {g.key for g in fresh}]
    remaining.sort(key=lambda f: f.sort_key)
    n = sum(len(r.fixed) for r in changed)
    parts = []
    if n:
        parts.append(f"fixed {n} finding{'s' * (n != 1)} in {len(changed)} file{'s' * (len(changed) != 1)}")
    if hidden:
        parts.append(f"{hidden} more fix{'es' * (hidden != 1)} available with --unsafe-fixes")
    parts += refused.values()
    return Outcome("; ".join(parts), remaining, changed, hidden)


def apply_fixes(findings: list[Finding], *, write: bool, unsafe: bool = False, config: Config | None = None) -> tuple[str, list[Finding]]:
    """`run_fixes` as (text, findings)."""
    out = run_fixes(findings, write=write, unsafe=unsafe, config=config)
    return out.text, out.findings


def mark_fixable(findings: list[Finding], *, unsafe: bool = False, unfixable: frozenset[str] = frozenset(), config: Config | None = None, settings: object | None = None) -> list[Finding]:
    """The findings, each with `fix` set when `--fix` (with `unsafe`: `--unsafe-fixes`) would fix
    it now: its fixer rewrites it, the result parses, and re-checked it is gone. The `[*]` marker
    of the human formats. Loads libcst only when some finding's rule has a fixer; past
    `MAX_MARKED` candidates (a first run on a large codebase) no finding is marked: each costs a
    rewrite and a re-check, and `--diff` or `--show-fixes` says what `--fix` would do. Likewise
    past `MAX_MARKED_BYTES` of source in the files concerned (libcst's parse costs about a second
    per 100 kB: the default check must cost what the static pass costs, issue 15)."""

    table = {c: fx for c, fx in fixers().items() if c not in unfixable}
    candidates = [f for f in findings if f.code in table and f.stage == "static" and not f.path.endswith(".ipynb")]
    if not candidates or len(candidates) > MAX_MARKED:
        return findings
    todo = {f.path for f in candidates}
    if sum(_size(p) for p in todo) > MAX_MARKED_BYTES:
        return findings  # libcst parses each of these files: on a large first run that costs more than the check
    sources: dict[str, str | None] = {}
    before: dict[str, Counter[tuple[str, str, str]]] = {}
    out: list[Finding] = []
    for f in findings:
        if f.path not in todo or f.code not in table or f.stage != "static":
            out.append(f)
            continue
        if f.path not in sources:
            try:
                sources[f.path] = Path(f.path).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                sources[f.path] = None
        text = sources[f.path]
        got = applicable_rewrite(table[f.code], text, f, unsafe=unsafe) if text is not None else None
        if not isinstance(got, Applicable):
            out.append(f)
            continue
        rw = got.rewrite
        cfg = settings.for_path(f.path) if settings is not None else (config or Config())  # type: ignore[attr-defined]
        ident = finding_identity(f)
        if f.path not in before:
            before[f.path] = Counter(finding_identity(g) for g in check_source(text, f.path, cfg))  # type: ignore[arg-type]
        after = sum(finding_identity(g) == ident for g in check_source(rw.source, f.path, cfg))
        if after >= before[f.path][ident]:
            out.append(f)
            continue
        out.append(f.refine(fix=Fix(rw.description or f"fix {f.code}", got.applicability)))
    return out


def _ending(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"
