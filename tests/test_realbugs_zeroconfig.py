"""Issue 17 on the project's own real bugs: fixtures/realbugs_tests/ holds the bugs of
fixtures/realbugs/ as plain functions with no entry and the tests that call them through their
transforms. `pytest --stabcheck` (the plugin's report) and `pytest --stabcheck-record` followed,
without the tests, by `stabcheck check --trace --confirm` in a fresh process must each find the
hazards the hand-written entries find (`stabcheck check FILE --trace --confirm`: every one at its
marked line but the two parameter leaves of ad_line.py, which they place at the differentiated
function), at their marked lines, and raise no alarm on the near misses. The scoring is
benchmarks/realbugs.py's, which prints the table of docs/precision.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires_jax

pytestmark = [pytest.mark.slow, requires_jax]

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("_realbugs_bench", ROOT / "benchmarks" / "realbugs.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _bench()

# fixtures/realbugs files whose bugs are not yet in the project as functions + tests: the tests
# below leave them out by name, and fail if any other file lacks its twin
NOT_MIRRORED: set[str] = set()


def _mirrored() -> list[Path]:
    return [p for p in sorted(bench.FIX.glob("*.py")) if p.name not in NOT_MIRRORED]

# What a path still misses that the entries find, by (file, function), each with the reason (none
# now). The replay can only rebuild what the recording holds: dtype[shape] specs (no values but
# Python literals), importable functions and types, plain objects of the user's classes, and
# stand-ins for a static object it cannot rebuild (the call pattern only).
KNOWN_MISSES: dict[str, set[tuple[str, str]]] = {"pytest --stabcheck": set(), "record + replay": set()}
# No path may raise an alarm on a near miss. `power_loop` is called with a Python float
# (`jax.jit(power_loop)(2.0)`): its output is weak only because the argument is, and every path
# judges that as the entries do (`tracing.code_weak_outputs`: traced again with strong inputs).
KNOWN_FALSE_ALARMS: dict[str, set[tuple[str, str, str]]] = {"pytest --stabcheck": set(), "record + replay": set()}


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    runs = bench.project_runs(tmp_path_factory.mktemp("realbugs_tests"))
    assert "stabcheck: recorded " in runs.pytest_out, runs.pytest_out[-3000:]
    return bench.project_scores(runs)


def _hazards(path: Path) -> set[tuple[str, str]]:
    return {(fn, code) for (code, _line), fn in bench.expected(path).items()}


def test_the_project_holds_the_hazards_the_entries_check() -> None:
    """Every hazard of fixtures/realbugs/ (each found by its entry: tests/test_realbugs.py) is in
    the project under the same function name and code, and nothing else."""
    assert {p.name for p in bench.FIX.glob("*.py") if not (bench.PROJECT / bench.PACKAGE / p.name).exists()} == NOT_MIRRORED
    for path in _mirrored():
        mirror = bench.PROJECT / bench.PACKAGE / path.name
        assert mirror.exists(), path.name
        assert _hazards(mirror) == _hazards(path), path.name
        assert bench.near_misses(mirror) <= bench.near_misses(path) | {"quiet", "loud"}, path.name
    text = "".join(p.read_text() for p in (bench.PROJECT / bench.PACKAGE).glob("*.py"))
    assert "import stabcheck" not in text and "from stabcheck" not in text, "the package must have no entry"


@pytest.fixture(scope="module")
def entries_missed() -> set[tuple[str, str]]:
    """(file, function) of each hazard the hand-written entries do not find at its line
    (`stabcheck check FILE --trace --confirm`, the benchmark's entries path)."""
    return {(p.name, fn) for p in _mirrored() for fn in bench.score(p, bench.entries_path(p, "--trace", "--confirm")).missed.values()}


def test_the_entries_miss_nothing(entries_missed) -> None:
    """The baseline: the entries find every hazard at its marked line, the int/bool leaves of
    ad_line.py's parameters included (made in `make_params`/`make_masked`, which the entry's
    factory calls: `traced.source.leaf_origin` follows it there)."""
    assert entries_missed == set()


@pytest.mark.parametrize("path", ["pytest --stabcheck", "record + replay"])
def test_each_zero_config_path_finds_what_the_entries_find(scores, entries_missed, path: str) -> None:
    per = scores[path]
    missed = {(name, fn) for name, s in per.items() for fn in s.missed.values()}
    assert missed - entries_missed <= KNOWN_MISSES[path], f"{path} newly missed {sorted(missed - entries_missed - KNOWN_MISSES[path])}"
    assert KNOWN_MISSES[path] <= missed, f"{path} now finds {sorted(KNOWN_MISSES[path] - missed)}: take them out of KNOWN_MISSES"
    assert sum(s.total for s in per.values()) == sum(len(bench.expected(p)) for p in _mirrored())


@pytest.mark.parametrize("path", ["pytest --stabcheck", "record + replay"])
def test_no_false_alarm_on_the_near_misses(scores, path: str) -> None:
    alarms = {(name, code, fn) for name, s in scores[path].items() for code, _line, fn in s.false_alarms}
    assert alarms <= KNOWN_FALSE_ALARMS[path], f"{path}: new false alarms {sorted(alarms - KNOWN_FALSE_ALARMS[path])}"
