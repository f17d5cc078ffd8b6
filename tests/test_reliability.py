"""Reliability (issue 22): user code cannot escape the worker or spoil the entries after it, and
nothing the file system can present stops a run.

Containment: a double-forking daemon (`os.setsid`), a process that ignores SIGTERM and a child that
holds the worker's result file open are all stopped with their entry (marker pid files prove it);
an entry that changes the process state (cwd, environment, `sys.path`, a `jnp` function, x64) does
not change the next entry's findings; a thread an entry leaves behind does not kill the next one;
no temp file stays; healthy entries beside them are still reported.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from .conftest import FIXTURES, requires_jax, run_cli

HOSTILE = FIXTURES / "reliability" / "hostile_entries.py"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _line(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hostile")
    project, markers, tmp = root / "project", root / "markers", root / "tmp"
    for d in (project, markers, tmp):
        d.mkdir()
    shutil.copy(HOSTILE, project / HOSTILE.name)
    env = {"STABCHECK_TEST_MARKERS": str(markers), "TMPDIR": str(tmp), "JAX_PLATFORMS": "cpu"}
    proc = run_cli("check", ".", "--trace", "--no-cache", "--output-format", "concise", "--timeout", "240", cwd=project, env=env)
    return proc, project, markers, tmp


@pytest.mark.slow
@requires_jax
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="process accounting reads /proc (Linux)")
def test_no_process_started_by_user_code_survives_the_run(hostile_run) -> None:
    proc, _, markers, _ = hostile_run
    started = {p.name.split("-")[0]: int(p.read_text()) for p in markers.glob("*.pid")}
    assert {"daemon", "stubborn", "holder"} <= set(started), (started, proc.stderr)
    deadline = time.monotonic() + 10  # SIGKILL is asynchronous: the kernel may take a moment
    while any(_alive(pid) for pid in started.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = {name: pid for name, pid in started.items() if _alive(pid)}
    for pid in survivors.values():  # do not leave them to the next test
        os.kill(pid, 9)
    assert not survivors, survivors
    assert "atexit" not in started  # user code's atexit handlers never run after the last entry
    assert "the worker left" not in proc.stdout  # each was stopped with its entry, not at the end


@pytest.mark.slow
@requires_jax
def test_healthy_entries_beside_hostile_ones_are_reported_unspoiled(hostile_run) -> None:
    proc, project, _, _ = hostile_run
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    got = sorted((ln.split(":")[1], ln.split(" ")[1]) for ln in proc.stdout.splitlines() if ln.startswith("hostile_entries.py:"))
    want = ["return w * x", "return jnp.add(w, x)", "return jnp.add(x, w)"]
    assert got == sorted((str(_line(HOSTILE, needle)), "STB303") for needle in want), proc.stdout

@pytest.mark.slow
@requires_jax
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="subreaper containment is Linux-only")
def test_the_run_says_it_stopped_processes(hostile_run) -> None:
    proc, _, _, _ = hostile_run
    for who in ("daemon", "stubborn", "holder"):
        # the daemon's middle process may not have finished exiting yet: "1 process" or "2 processes"
        assert re.search(rf"note: entry `hostile:{who}` left [12] process(es)? running; stabcheck stopped (it|them)", proc.stdout), proc.stdout


@pytest.mark.slow
@requires_jax
def test_no_temp_file_is_left(hostile_run) -> None:
    _, project, _, tmp = hostile_run
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in project.iterdir()) == ["hostile_entries.py"]


@pytest.mark.slow
@requires_jax
def test_every_traced_finding_names_the_workers_jax_version() -> None:
    import jax

    from stabcheck.worker.stage import run_targets

    findings, _, outcome = run_targets([{"target": f"{FIXTURES / 'traced' / 'state_drift.py'}:drift"}], timeout=240, memory_limit=None)
    assert findings and outcome.jax == jax.__version__
    assert all(f.evidence["jax"] == jax.__version__ for f in findings)
