"""Score stabcheck on the project's own real bugs, three ways (issue 17).

1. **entries**: fixtures/realbugs/*.py with their hand-written `@stabcheck.entry` entries,
   `stabcheck check FILE --trace --confirm` (and the static stage alone, `static`), one subprocess
   per file: static + trace + confirm, what issue 17 measured the entries with.
2. **pytest --stabcheck**: fixtures/realbugs_tests/, the same bugs as a user's package of plain
   functions (no entry) and the tests that call them through `jit`, `grad`, `vmap`..., copied to a
   temporary folder and run with `pytest --stabcheck-record --stabcheck-report r.json` (record
   implies `--stabcheck`: one run gives this path's report and the next path's recording).
3. **record + replay**: the same copy with its tests deleted, `stabcheck check --trace --confirm .`
   in a fresh process, replaying `.stabcheck/recorded.json` (static findings included: they are
   what the user gets from that command).

Each hazard line carries `# bug: STBnnn` (or `# loud: STBnnn`). A hazard is found when a finding
of its family (the code's hundreds digit, docs/rules.md: STB501 jit-in-loop at a line marked
STB504 retrace are both recompilation) sits at its line, as issue 17 scored the held-out bugs; the
table also counts those found with the exact code. A finding the confirm stage refuted does not
count. A finding
inside a near miss (a function named `*_ok`, one that says `near miss`, every unmarked function
of near_misses.py) is a false alarm; any other finding that is not a hazard found (another code
or line in a hazard's function, a helper the hazard calls, an entry factory) is "other".

    .venv/bin/python benchmarks/realbugs.py            # print the table
    .venv/bin/python benchmarks/realbugs.py --write    # and write it into docs/precision.md
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "realbugs"
PROJECT = ROOT / "fixtures" / "realbugs_tests"
PACKAGE = "rbugs"  # the project's package: rbugs/<name>.py mirrors fixtures/realbugs/<name>.py
MARK = re.compile(r"#\s*(?:bug|loud):\s*(STB\d{3})")
DOC = ROOT / "docs" / "precision.md"
BEGIN = "<!-- realbugs table: written by benchmarks/realbugs.py -->"
END = "<!-- end of realbugs table -->"
PATHS = ("static", "entries", "pytest --stabcheck", "record + replay")


def expected(path: Path) -> dict[tuple[str, int], str]:
    """(code, line) of each marked hazard -> the name of the function that holds it."""
    owners = _owners(path)
    return {(m.group(1), i): owners.get(i, "?") for i, line in enumerate(path.read_text().splitlines(), 1) if (m := MARK.search(line))}


def _owners(path: Path) -> dict[int, str]:
    """Line -> the top-level function or class it belongs to (decorators included)."""
    out: dict[int, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            for i in range(start, (node.end_lineno or node.lineno) + 1):
                out[i] = node.name
    return out


def near_misses(path: Path) -> set[str]:
    """The functions of `path` that must stay silent (see the module docstring)."""
    lines = path.read_text().splitlines()
    marked = set(expected(path).values())
    spans: dict[str, list[int]] = {}
    for line, name in _owners(path).items():
        spans.setdefault(name, []).append(line)
    return {
        name
        for name, at in spans.items()
        if name not in marked and (name.endswith("_ok") or path.name == "near_misses.py" or any("near miss" in lines[i - 1] for i in at))
    }


@dataclass
class Score:
    """One file under one path."""

    found: set[tuple[str, int]] = field(default_factory=set)  # a finding of the hazard's family at its line
    exact: set[tuple[str, int]] = field(default_factory=set)  # ... with the hazard's own code
    missed: dict[tuple[str, int], str] = field(default_factory=dict)  # hazard -> its function
    false_alarms: list[tuple[str, int, str]] = field(default_factory=list)  # (code, line, function)
    other: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.found) + len(self.missed)


def score(path: Path, got: set[tuple[str, int]]) -> Score:
    """`got`: (code, line) of the findings in `path`."""
    want = expected(path)
    owners = _owners(path)
    quiet = near_misses(path)
    found = {(code, line) for code, line in want if any(c[:4] == code[:4] and at == line for c, at in got)}
    s = Score(found=found, exact=set(want) & got, missed={k: v for k, v in want.items() if k not in found})
    for code, line in sorted(got):
        if any(c[:4] == code[:4] and at == line for c, at in found):
            continue  # the hazard's own finding, or another of its family at its line
        owner = owners.get(line, "<module>")
        (s.false_alarms if owner in quiet else s.other).append((code, line, owner))
    return s


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def _run(args: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())


def _findings(data: Any) -> list[dict[str, Any]]:
    return data["findings"] if isinstance(data, dict) else data


def _keys(findings: list[dict[str, Any]], rel: str) -> set[tuple[str, int]]:
    return {(f["code"], f["line"]) for f in findings if f.get("code", "").startswith("STB") and f.get("path") == rel and f.get("status") != "refuted"}


def entries_path(path: Path, *extra: str) -> set[tuple[str, int]]:
    cmd = ["-m", "stabcheck", "check", str(path), "--no-cache", "--exit-zero", "--output-format", "json", *extra]
    out = _run(cmd, ROOT)
    return {(d["code"], d["line"]) for d in _findings(json.loads(out.stdout)) if d.get("code", "").startswith("STB") and d.get("status") != "refuted"}


@dataclass
class ProjectRuns:
    """The two zero-config paths on one copy of fixtures/realbugs_tests/."""

    plugin: list[dict[str, Any]]
    replay: list[dict[str, Any]]
    recorded: dict[str, Any]
    pytest_out: str
    check_out: str


def project_runs(workdir: Path) -> ProjectRuns:
    """`pytest --stabcheck-record --stabcheck-report r.json` on a copy of the project, then, with
    its tests deleted, `stabcheck check --trace --confirm .` in a fresh process."""
    proj = workdir / "proj"
    shutil.copytree(PROJECT, proj, ignore=shutil.ignore_patterns("__pycache__", ".stabcheck"))
    ran = _run(["-m", "pytest", "-p", "no:cacheprovider", "--stabcheck-record", "--stabcheck-report", "r.json"], proj)
    report = proj / "r.json"
    if not report.exists():
        raise RuntimeError("pytest --stabcheck wrote no report:\n" + ran.stdout[-3000:] + ran.stderr[-3000:])
    plugin = _findings(json.loads(report.read_text()))
    recorded = json.loads((proj / ".stabcheck" / "recorded.json").read_text())
    shutil.rmtree(proj / "tests")  # replayed without the tests
    report.unlink()
    checked = _run(["-m", "stabcheck", "check", "--trace", "--confirm", "--no-cache", "--output-format", "json", "."], proj)
    try:
        replay = _findings(json.loads(checked.stdout))
    except json.JSONDecodeError:
        raise RuntimeError("stabcheck check gave no JSON:\n" + checked.stdout[-3000:] + checked.stderr[-3000:]) from None
    return ProjectRuns(plugin, replay, recorded, ran.stdout, checked.stderr)


def project_scores(runs: ProjectRuns) -> dict[str, dict[str, Score]]:
    """Path -> module name -> its score."""
    out: dict[str, dict[str, Score]] = {"pytest --stabcheck": {}, "record + replay": {}}
    for path in sorted((PROJECT / PACKAGE).glob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = f"{PACKAGE}/{path.name}"
        out["pytest --stabcheck"][path.name] = score(path, _keys(runs.plugin, rel))
        out["record + replay"][path.name] = score(path, _keys(runs.replay, rel))
    return out


def table(scores: dict[str, dict[str, Score]]) -> str:
    names = sorted({n for per in scores.values() for n in per})
    lines = ["| file | path | hazards found at their line (family) | of them, exact code | false alarms | other findings |", "|---|---|---:|---:|---:|---:|"]
    for name in names:
        for stage in PATHS:
            s = scores.get(stage, {}).get(name)
            if s is not None:
                lines.append(f"| {name} | {stage} | {len(s.found)}/{s.total} | {len(s.exact)} | {len(s.false_alarms)} | {len(s.other)} |")
    for stage in PATHS:
        per = scores.get(stage, {}).values()
        if per:
            hit, total, exact = sum(len(s.found) for s in per), sum(s.total for s in per), sum(len(s.exact) for s in per)
            fa, other = sum(len(s.false_alarms) for s in per), sum(len(s.other) for s in per)
            lines.append(f"| **all** | {stage} | **{hit}/{total}** | {exact} | {fa} | {other} |")
    return "\n".join(lines)


def details(scores: dict[str, dict[str, Score]]) -> str:
    """What each path missed, and where its false alarms and other findings are."""
    lines = []
    for stage in PATHS[1:]:
        per = scores.get(stage, {})
        missed = [f"`{fn}` ({code}, {name}:{line})" for name, s in sorted(per.items()) for (code, line), fn in sorted(s.missed.items(), key=lambda kv: kv[0][1])]
        alarms = [f"{code} at {name}:{line} (`{fn}`)" for name, s in sorted(per.items()) for code, line, fn in s.false_alarms]
        other = [f"{code} at {name}:{line} (`{fn}`)" for name, s in sorted(per.items()) for code, line, fn in s.other]
        lines.append(f"- **{stage}** missed: {', '.join(missed) or 'none'}; false alarms: {', '.join(alarms) or 'none'}; other: {', '.join(other) or 'none'}.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write the table into {DOC.relative_to(ROOT)}")
    args = ap.parse_args()
    scores: dict[str, dict[str, Score]] = {"static": {}, "entries": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # each file checked as a user's file, outside this repository: stabcheck's own sources name
        # the x64 flag, a project-level fact that a user's project does not share (STB301)
        alone = Path(tmp) / "realbugs"
        alone.mkdir()
        for path in sorted(FIX.glob("*.py")):
            copy = alone / path.name
            shutil.copyfile(path, copy)
            scores["static"][path.name] = score(path, entries_path(copy))
            scores["entries"][path.name] = score(path, entries_path(copy, "--trace", "--confirm"))
        scores.update(project_scores(project_runs(Path(tmp))))
    text = table(scores) + "\n\n" + details(scores)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _doc import write_section  # benchmarks/_doc.py

        write_section(DOC, f"{BEGIN}\n{text}\n{END}", BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
