"""`make bench`, the pytest plugin part: what `pytest --stabcheck` costs over a plain `pytest`.

    python benchmarks/plugin.py             # measure, print, and rewrite its section of docs/benchmarks.md
    python benchmarks/plugin.py --no-write  # measure and print only
    python benchmarks/plugin.py --runs 3    # fewer runs (default 5)

Two suites, each run as a whole `pytest` process (start-up, imports, collection and the
plugin's summary count), plain and with `--stabcheck`, interleaved (plain, checked, plain,
checked...) so that a change in the machine's load hits both alike; the ratio is of the medians:

- stabcheck's own JAX-heavy tests that run JAX in the pytest process (`tests/test_runtime.py`,
  `tests/test_traced_checks.py`): dozens of jitted functions, `@stable`, equinox, `grad` and
  `vmap` calls, hypothesis-generated shapes; the rest of the suite runs JAX in worker
  subprocesses, which the plugin does not see;
- `fixtures/zeroconfig/`, a project whose only JAX transforms are in its tests (every test is a
  transformed call: the plugin's worst case per test).

The outcome of every test must be the same in both runs (the plugin never changes a test's
result), else the script says so and exits 1. Target: `pytest --stabcheck` at most 1.5x the
plain run. Runs after `benchmarks/run.py`, which rewrites docs/benchmarks.md: this script
replaces only the part between its markers, appending it when they are missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _doc import write_section  # benchmarks/_doc.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TARGET = 1.5
BEGIN, END = "<!-- plugin-benchmark:begin -->", "<!-- plugin-benchmark:end -->"
OWN = ["tests/test_runtime.py", "tests/test_traced_checks.py"]


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    dt = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()
    outcome = next((line for line in reversed(tail) if re.search(r"\d+ (passed|failed)", line)), f"exit {proc.returncode}")
    return dt, re.sub(r" in [\d.]+s.*$", "", outcome.strip("= "))


def measure_suite(label: str, cwd: Path, args: list[str], runs: int) -> dict[str, Any]:
    base = [PY, "-m", "pytest", "-p", "no:cacheprovider", *args]
    plain: list[float] = []
    checked: list[float] = []
    outcomes: set[tuple[str, str]] = set()
    summary = ""
    for i in range(runs):
        dt, out_plain = run(base, cwd)
        plain.append(dt)
        dt, out_checked = run([*base, "--stabcheck"], cwd)
        checked.append(dt)
        outcomes.add((out_plain, out_checked))
        print(f"  {label} run {i + 1}: plain {plain[-1]:.2f} s, --stabcheck {checked[-1]:.2f} s ({out_checked})", flush=True)
    proc = subprocess.run([*base, "--stabcheck"], cwd=cwd, capture_output=True, text=True, timeout=1800)
    summary = next((line for line in proc.stdout.splitlines() if line.startswith("stabcheck: ")), "")
    same = all(a == b for a, b in outcomes)
    p, c = statistics.median(plain), statistics.median(checked)
    return {"label": label, "plain": p, "checked": c, "ratio": c / p, "runs": runs, "outcome": sorted(outcomes)[0][0], "same": same, "summary": summary, "min_ratio": min(checked) / min(plain)}


def measure(runs: int) -> list[dict[str, Any]]:
    results = [measure_suite("stabcheck's in-process JAX tests", ROOT, ["-o", "addopts=", "-q", *OWN], runs)]
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "zeroconfig"
        shutil.copytree(ROOT / "fixtures" / "zeroconfig", project)
        results.append(measure_suite("fixtures/zeroconfig", project, ["-q"], runs))
    return results


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def render(results: list[dict[str, Any]], load: str) -> str:
    rows = []
    for r in results:
        met = "met" if r["ratio"] <= TARGET else "NOT met"
        rows.append(f"| {r['label']} | {r['outcome']} | {r['plain']:.2f} | {r['checked']:.2f} | **{r['ratio']:.2f}x** ({met}; fastest runs {r['min_ratio']:.2f}x) | {r['summary'].removeprefix('stabcheck: ')} |")
    differ = [r["label"] for r in results if not r["same"]]
    return "\n".join(
        [
            BEGIN,
            "## The pytest plugin: `pytest --stabcheck` over a plain `pytest`",
            "",
            "Written by `benchmarks/plugin.py` (run by `make bench`). Each suite runs as a whole `pytest` process, plain and "
            f"with `--stabcheck`, interleaved, {results[0]['runs']} times each; the median wall time of each, and their ratio. "
            f"Target: at most {TARGET}x the plain run. `{' '.join(OWN)}` are the tests of stabcheck's own suite that run JAX in the "
            "pytest process (the rest runs it in worker subprocesses, which the plugin does not see); `fixtures/zeroconfig` is a "
            "project whose every test is a transformed call (`jit`, `grad`, `vmap`, `hessian`, `jvp`, `eqx.filter_jit`...).",
            "",
            "| suite | tests | plain s | `--stabcheck` s | ratio | what the plugin checked |",
            "|---|---|---:|---:|---|---|",
            *rows,
            "",
            f"Every test had the same outcome in both runs: {'yes' if not differ else 'NO: ' + ', '.join(differ)}. "
            f"The machine's load average at the end of the run was {load} on {os.cpu_count()} cores; whole-process times grow with it, the ratio less so.",
            "",
            END,
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    results = measure(args.runs)
    section = render(results, _load())
    print(section)
    if not args.no_write:
        write_section(Path(args.output), section, BEGIN, END)
        print(f"wrote {args.output}")
    if not all(r["same"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
