"""A baseline of accepted findings, so CI fails only on new ones.

    stabcheck check src/ --baseline .stabcheck-baseline.json --write-baseline   # record
    stabcheck check src/ --baseline .stabcheck-baseline.json                    # only new findings

An entry is keyed by (code, file, qualified function, culprit), never by line, with a count: moving
code, or editing lines above it, does not revive a recorded finding, and a third copy of a hazard
recorded twice is reported. The culprit is the finding's `detail` (a variable, a leaf path), else
its source line with whitespace normalised. File paths are stored relative to the baseline's
directory, so the check may run from any working directory.

A run over some files (pre-commit passes the staged ones) judges only those files' entries: the
others are neither stale nor dropped by `--write-baseline`. The file records the format and the
stabcheck version that wrote it; a malformed or foreign file is a clear error (exit 2).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stabcheck._files import write_atomic_nofollow
from stabcheck.config import UsageError
from stabcheck.finding import Finding

VERSION = 1
_WS = re.compile(r"\s+")

Key = tuple[str, str, str, str]


def culprit(f: Finding) -> str:
    """What the finding is about, independent of where it is."""
    return f.detail or _WS.sub(" ", f.snippet).strip() or f.message


def _rel(path: str, base: Path) -> str:
    try:
        rel = os.path.relpath(os.path.abspath(path), base)
    except ValueError:  # another drive on Windows
        return path.replace(os.sep, "/")
    return rel.replace(os.sep, "/")


def key(f: Finding, base: Path) -> Key:
    return (f.code, _rel(f.path, base), f.function, culprit(f))


def _base(path: Path) -> Path:
    return path.resolve().parent


class ForeignFile(UsageError):
    """The --baseline path holds something that is not a stabcheck baseline: never overwritten."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a baseline made of a run's findings."""

    new: list[Finding]  # not recorded: reported
    hidden: list[Finding]  # recorded: not reported (SARIF keeps them as suppressed results)
    stale: int  # entries of checked files that no longer match a finding


def write(path: Path, findings: list[Finding], checked: Iterable[str] | None = None, *, version: str = "") -> None:
    """Record `findings` (refuted ones are not findings to accept) in the baseline file.

    With `checked` (the files this run covered), entries of other files already in the baseline
    are kept: `--write-baseline` on a few files (a pre-commit run) does not forget the rest.
    `version` (the writer's stabcheck version) is recorded in the file."""
    base = _base(path)
    counts = Counter(key(f, base) for f in findings if f.status != "refuted")
    if checked is not None and path.exists():
        covered = {_rel(p, base) for p in checked} | {k[1] for k in counts}
        try:
            old = read(path)
        except ForeignFile:
            raise
        except UsageError:  # a damaged baseline: rewritten from this run
            old = Counter()
        for k, n in old.items():
            if k[1] not in covered:
                counts[k] += n
    entries = [{"code": c, "path": p, "function": fn, "detail": d, "count": n} for (c, p, fn, d), n in sorted(counts.items())]
    data = {"stabcheck-baseline": VERSION, "stabcheck-version": version or "unknown", "findings": entries}
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    write_atomic_nofollow(path, text, what="baseline file")


def read(path: Path) -> Counter[Key]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"baseline file not found: {path}; create it with `--baseline {path} --write-baseline`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read baseline file {path}: {e}") from None
    bad = f"malformed baseline file {path}"
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{bad}: not JSON ({e}); rewrite it with --write-baseline") from None
    if not isinstance(data, dict) or "stabcheck-baseline" not in data:
        raise ForeignFile(f"{bad}: not a stabcheck baseline (no \"stabcheck-baseline\" key); check the --baseline path")
    version = data["stabcheck-baseline"]
    if version != VERSION:
        writer = data.get("stabcheck-version", "another version")
        raise UsageError(f"{bad}: format {version!r} (written by stabcheck {writer}); this stabcheck reads format {VERSION}; rewrite it with --write-baseline")
    rows = data.get("findings")
    if not isinstance(rows, list):
        raise UsageError(f"{bad}: \"findings\" must be a list of entries; rewrite it with --write-baseline")
    counts: Counter[Key] = Counter()
    for i, entry in enumerate(rows):
        if not isinstance(entry, dict):
            raise UsageError(f"{bad}: entry {i + 1} is not an object; rewrite it with --write-baseline")
        missing = [k for k in ("code", "path") if not isinstance(entry.get(k), str)]
        if missing:
            raise UsageError(f"{bad}: entry {i + 1} has no {' or '.join(repr(k) for k in missing)}; rewrite it with --write-baseline")
        n = entry.get("count", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"{bad}: entry {i + 1} has count {n!r}, expected a positive integer; rewrite it with --write-baseline")
        counts[(entry["code"], entry["path"], str(entry.get("function", "")), str(entry.get("detail", "")))] += n
    return counts


def split(path: Path, findings: list[Finding], checked: Iterable[str] | None = None) -> Outcome:
    """Split findings by the baseline. Entries are stale only when their file was checked in
    this run (`checked`; None: every entry's file was), so a partial run never calls the other
    files' entries stale."""
    left = read(path)
    base = _base(path)
    new: list[Finding] = []
    hidden: list[Finding] = []
    for f in findings:
        k = key(f, base)
        if f.status != "refuted" and left[k] > 0:
            left[k] -= 1
            hidden.append(f)
        else:
            new.append(f)
    covered = None if checked is None else {_rel(p, base) for p in checked} | {key(f, base)[1] for f in findings}
    stale = sum(n for k, n in left.items() if n > 0 and (covered is None or k[1] in covered))
    return Outcome(new, hidden, stale)


def filter(path: Path, findings: list[Finding], checked: Iterable[str] | None = None) -> tuple[list[Finding], int]:  # noqa: A001 - the cli's name
    """(findings not in the baseline, number of baseline entries no longer found)."""
    out = split(path, findings, checked)
    return out.new, out.stale
