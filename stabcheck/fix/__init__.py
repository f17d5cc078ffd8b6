"""`--fix`, `--unsafe-fixes` and `--diff`: libcst rewrites for rules with a mechanical remedy.

Imported only when fixing (libcst is never loaded on the static hot path). One fixer per rule
code, in a module named like the rule. A fixer gets the file's source and one finding, re-locates
the offending node by the finding's span (libcst `PositionProvider`), and returns the rewritten
source, or None when the pattern is not one it can rewrite.

Fixes are applied one at a time. After each, the file is re-checked with the static stage: the
rewrite is kept only if the result parses and the finding it targeted is gone; the next fix uses
the fresh spans. A fix is applied when its applicability is "safe", or "unsafe" with
`--unsafe-fixes`; a rule's `fixable` is the default applicability of its fixes.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stabcheck import registry
from stabcheck.api import check_source
from stabcheck.baseline import culprit
from stabcheck.config import Config
from stabcheck.finding import Applicability, Finding
from stabcheck.fix import float64_leak, jit_in_loop, nan_gradient_where, unhashable_static_arg
from stabcheck.fix._rewrite import Rewrite

Fixer = Callable[[str, Finding], Rewrite | None]
_MAX_ROUNDS = 200


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


def finding_identity(f: Finding) -> tuple[str, str, str, str]:
    return (f.code, f.function, culprit(f), " ".join(f.snippet.split()))


def parses(source: str) -> bool:
    try:
        compile(source, "<fixed>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def fix_source(source: str, path: str, config: Config | None = None, *, unsafe: bool = False) -> FileFix:
    """Apply every applicable fix to one file's source, re-checking after each."""
    config = config or Config()
    table = fixers()
    text = source
    fixed: list[Finding] = []
    skipped: set[tuple[str, str, str, str]] = set()
    unsafe_left: set[tuple[str, str, str, str]] = set()
    for _ in range(_MAX_ROUNDS):
        found = check_source(text, path, config)
        before = Counter(finding_identity(f) for f in found)
        candidate = None
        for f in found:
            ident = finding_identity(f)
            if f.code in table and ident not in skipped:
                candidate = f
                break
        if candidate is None:
            break
        ident = finding_identity(candidate)
        rw = try_fixer(table[candidate.code], text, candidate)
        if rw is None or not parses(rw.source):
            skipped.add(ident)
            continue
        applicability = fix_applicability(candidate.code, rw.applicability)
        if applicability == "unsafe" and not unsafe:
            skipped.add(ident)
            unsafe_left.add(ident)
            continue
        after = Counter(finding_identity(f) for f in check_source(rw.source, path, config))
        if after[ident] >= before[ident]:  # the rewrite did not remove what it targeted
            skipped.add(ident)
            continue
        text = rw.source
        fixed.append(candidate)
    return FileFix(path, source, text, tuple(fixed), len(unsafe_left))


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


def apply_fixes(findings: list[Finding], *, write: bool, unsafe: bool = False, config: Config | None = None) -> tuple[str, list[Finding]]:
    """Fix the files that have fixable findings.

    With `write`, rewrite the files and return (a summary, the findings that remain: the files
    re-checked); without, return (a unified diff of what would change, the findings unchanged).
    """
    config = config or Config()
    table = fixers()
    paths = sorted({f.path for f in findings if f.code in table})
    results: list[FileFix] = []
    for path in paths:
        try:
            source = Path(path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        results.append(fix_source(source, path, config, unsafe=unsafe))
    changed = [r for r in results if r.after != r.before]
    hidden = sum(r.needs_unsafe for r in results)
    if not write:
        diff = "".join(
            "".join(difflib.unified_diff(r.before.splitlines(keepends=True), _ending(r.after).splitlines(keepends=True), f"a/{r.path}", f"b/{r.path}"))
            for r in changed
        )
        tail = f"{hidden} more fix{'es' * (hidden != 1)} available with --unsafe-fixes.\n" if hidden else ""
        return diff + tail, findings
    remaining = [f for f in findings if f.path not in {r.path for r in changed}]
    for r in changed:
        _write(Path(r.path), r.after)
        fixed_ids = Counter(finding_identity(f) for f in r.fixed)
        fresh = check_source(r.after, r.path, config)
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
    return "; ".join(parts), remaining


def _ending(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.stabcheck-fix")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    try:
        os.chmod(tmp, path.stat().st_mode)
    except OSError:
        pass
    os.replace(tmp, path)
