"""The worker subprocess: hangs, exits, crashes and import failures become STB902 findings for
their entry, the other entries are still traced, and no worker outlives stabcheck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import requires_jax

pytestmark = [pytest.mark.slow, requires_jax]

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "traced"


def _line(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def faults():
    from stabcheck.worker.stage import run_targets

    targets = [{"target": f"{FIX / 'faults.py'}:faults"}, {"target": str(FIX / "raises_at_import.py")}, {"target": str(FIX / "hangs_at_import.py")}, {"target": f"{FIX / 'bad_factories.py'}:raises"}, {"target": f"{FIX / 'bad_factories.py'}:wrong_type"}]
    t0 = time.monotonic()
    findings, notes, outcome = run_targets(targets, timeout=4.0, memory_limit=None)
    return findings, outcome, time.monotonic() - t0


def test_good_entries_before_and_after_the_faults_are_traced(faults) -> None:
    findings, _, _ = faults
    got = {(f.code, Path(f.path).name, f.line) for f in findings}
    assert ("STB303", "faults.py", _line(FIX / "faults.py", "return w * x")) in got
    assert ("STB303", "faults.py", _line(FIX / "faults.py", "return x + w")) in got


@pytest.mark.parametrize(
    ("entry", "needle", "reason"),
    [
        ("faults:hang", "def hang", "timed out after 4s"),
        ("faults:hard_exit", "def hard_exit", "exited with status 3"),
        ("faults:segfault", "def segfault", "crashed (SIGSEGV)"),
        ("faults:soft_exit", "sys.exit(4)", "SystemExit: 4"),
    ],
)
def test_each_fault_is_an_analysis_error_for_its_entry(faults, entry: str, needle: str, reason: str) -> None:
    findings, _, _ = faults
    mine = [f for f in findings if f.code == "STB902" and f.function == entry or f.code == "STB902" and f.detail == entry]
    assert len(mine) == 1, [(f.function, f.detail, f.message) for f in findings if f.code == "STB902"]
    f = mine[0]
    assert f.line == _line(FIX / "faults.py", needle) and Path(f.path).name == "faults.py"
    assert reason in f.message and f.stage == "traced" and f.help


def test_import_failures_name_the_module(faults) -> None:
    findings, _, _ = faults
    raised = [f for f in findings if f.code == "STB902" and f.path.endswith("raises_at_import.py")]
    assert len(raised) == 1 and raised[0].line == 4 and "RuntimeError: this module needs a GPU" in raised[0].message
    hung = [f for f in findings if f.code == "STB902" and f.path.endswith("hangs_at_import.py")]
    assert len(hung) == 1 and "timed out" in hung[0].message and "importing" in hung[0].message


def test_bad_factories(faults) -> None:
    findings, _, _ = faults
    bad = sorted((f.line, f.message) for f in findings if f.path.endswith("bad_factories.py"))
    assert len(bad) == 2, bad
    assert bad[0][0] == 7 and "raised ValueError: no example data" in bad[0][1]
    assert bad[1][0] == _line(FIX / "bad_factories.py", "def wrong_type") - 1 and "returned int" in bad[1][1]


def test_no_worker_survives(faults) -> None:
    _, outcome, elapsed = faults
    assert len(outcome.pids) >= 4  # one restart per fatal entry
    assert not [p for p in outcome.pids if _alive(p)]
    assert elapsed < 60


def test_memory_limit_stops_a_runaway_entry() -> None:
    from stabcheck.worker.stage import run_targets

    findings, _, outcome = run_targets([{"target": f"{FIX / 'faults.py'}:memory"}], timeout=30, memory_limit=int(1.5 * 2**30))
    assert [f.code for f in findings] == ["STB902"]
    assert "MemoryError" in findings[0].message or "memory limit" in findings[0].message
    assert outcome.peak_rss < 2 * 2**30


def test_ctrl_c_kills_the_worker() -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    cli = subprocess.Popen([sys.executable, "-m", "stabcheck", "trace", f"{FIX / 'hangs_at_import.py'}", "--timeout", "120"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        deadline = time.monotonic() + 300  # a busy machine starts Python slowly
        while worker is None and time.monotonic() < deadline:
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read()
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == cli.pid and b"stabcheck.worker" in cmd:
                    worker = int(pid)
            time.sleep(0.1)
        assert worker is not None, "the worker never started"
        time.sleep(1.0)
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=300)
        assert cli.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        for _ in range(50):
            if not _alive(worker):
                break
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        if cli.poll() is None:
            cli.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)
