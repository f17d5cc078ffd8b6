"""Score stabcheck on the project's own real-bug fixtures (fixtures/realbugs/).

Each hazard line carries `# bug: STBnnn` (or `# loud: STBnnn`); every other entry is a near miss
that must stay silent. Runs `stabcheck check --trace` (and the static stage alone) on each file
in a subprocess and prints, per file and in total: hazards found with the right code at the
marked line, and findings anywhere else (false alarms on near misses).

    .venv/bin/python benchmarks/realbugs.py          # the figures in docs/precision.md
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "realbugs"
MARK = re.compile(r"#\s*(?:bug|loud):\s*(STB\d{3})")


def expected(path: Path) -> set[tuple[str, int]]:
    return {(m.group(1), i) for i, line in enumerate(path.read_text().splitlines(), 1) if (m := MARK.search(line))}


def found(path: Path, *extra: str) -> set[tuple[str, int]]:
    cmd = [sys.executable, "-m", "stabcheck", "check", str(path), "--no-cache", "--exit-zero", "--output-format", "json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    return {(d["code"], d["line"]) for d in json.loads(out.stdout) if d.get("code", "").startswith("STB")}


def main() -> int:
    rows = []
    for path in sorted(FIX.glob("*.py")):
        want = expected(path)
        for stage, extra in (("static", ()), ("static + traced", ("--trace",))):
            got = found(path, *extra)
            rows.append((path.name, stage, len(want & got), len(want), len(got - want)))
    print("| file | stages | hazards found at their line | false alarms |")
    print("|---|---|---:|---:|")
    for name, stage, hit, total, extra in rows:
        print(f"| {name} | {stage} | {hit}/{total} | {extra} |")
    for stage in ("static", "static + traced"):
        hit = sum(r[2] for r in rows if r[1] == stage)
        total = sum(r[3] for r in rows if r[1] == stage)
        extra = sum(r[4] for r in rows if r[1] == stage)
        print(f"| **all** | {stage} | **{hit}/{total}** | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
