"""A baseline of accepted findings, so CI fails only on new ones.

    stabcheck check src/ --baseline .stabcheck-baseline.json --write-baseline   # record
    stabcheck check src/ --baseline .stabcheck-baseline.json                    # only new findings

An entry is keyed by (code, file, qualified function, culprit), never by line, with a count: moving
code, or editing lines above it, does not revive a recorded finding, and a third copy of a hazard
recorded twice is reported. The culprit is the finding's `detail` (a variable, a leaf path), else
its source line with whitespace normalised. File paths are stored relative to the baseline's
directory, so the check may run from any working directory.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
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


def write(path: Path, findings: list[Finding]) -> None:
    """Record `findings` (refuted ones are not findings to accept) in the baseline file."""
    base = _base(path)
    counts = Counter(key(f, base) for f in findings if f.status != "refuted")
    entries = [{"code": c, "path": p, "function": fn, "detail": d, "count": n} for (c, p, fn, d), n in sorted(counts.items())]
    data = {"stabcheck-baseline": VERSION, "findings": entries}
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    write_atomic_nofollow(path, text, what="baseline file")


def read(path: Path) -> Counter[Key]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"baseline file not found: {path}; create it with `--baseline {path} --write-baseline`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read baseline file {path}: {e}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("stabcheck-baseline") != VERSION:
            raise ValueError(f"expected an object with \"stabcheck-baseline\": {VERSION}")
        counts: Counter[Key] = Counter()
        for entry in data["findings"]:
            counts[(str(entry["code"]), str(entry["path"]), str(entry.get("function", "")), str(entry.get("detail", "")))] += int(entry.get("count", 1))
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"malformed baseline file {path}: {e}; rewrite it with --write-baseline") from None
    return counts


def filter(path: Path, findings: list[Finding]) -> tuple[list[Finding], int]:  # noqa: A001 - the cli's name
    """(findings not in the baseline, number of baseline entries no longer found)."""
    left = read(path)
    base = _base(path)
    new: list[Finding] = []
    for f in findings:
        k = key(f, base)
        if f.status != "refuted" and left[k] > 0:
            left[k] -= 1
        else:
            new.append(f)
    stale = sum(n for n in left.values() if n > 0)
    return new, stale
