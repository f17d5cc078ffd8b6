"""Reliability (issue 22): user code cannot escape the worker or spoil the entries after it, and
nothing the file system can present stops a run.

Containment: a double-forking daemon (`os.setsid`), a process that ignores SIGTERM and a child that
holds the worker's result file open are all stopped with their entry (marker pid files prove it);
an entry that changes the process state (cwd, environment, `sys.path`, a `jnp` function, x64) does
not change the next entry's findings; a thread an entry leaves behind does not kill the next one;
no temp file stays; healthy entries beside them are still reported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
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


# -- discovery and reading ------------------------------------------------------------------------
BRANCH = "import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    return -x\n"  # STB101 at line 5


def _hostile_tree(root: Path) -> dict[str, str]:
    """Every kind of file the file system can present under a `.py` name -> the STB901 reason."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "good.py").write_text(BRANCH)
    (root / "sub").mkdir()
    (root / "sub" / "also_good.py").write_text(BRANCH)
    expected = {}
    for name, dev in (("zero.py", "/dev/zero"), ("urandom.py", "/dev/urandom")):
        if os.path.exists(dev):
            (root / name).symlink_to(dev)
            expected[name] = "is not a regular file: it is a character device"
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.py")
        expected["fifo.py"] = "is not a regular file: it is a FIFO"
    if hasattr(socket, "AF_UNIX"):
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(root / "sock.py"))
        expected["sock.py"] = "is not a regular file: it is a socket"
    bad_name = os.fsdecode(b"caf\xe9.py")
    try:
        (root / bad_name).write_text(BRANCH)
        expected["caf\\xe9.py"] = "file name that is not valid UTF-8"
    except (OSError, UnicodeEncodeError):  # a file system that only takes UTF-8 names
        pass
    (root / "loop.py").symlink_to(root / "loop.py")  # unreadable, even for root
    expected["loop.py"] = "cannot be read"
    if os.geteuid() != 0:
        (root / "locked.py").write_text(BRANCH)
        (root / "locked.py").chmod(0)
        expected["locked.py"] = "cannot be read"
    with open(root / "big.py", "wb") as f:  # 50 MB: sparse where the file system allows
        f.write(b"x = 1\n")
        f.seek(50 * 2**20)
        f.write(b"\n")
    expected["big.py"] = "is too large (50.0 MiB"
    return expected


def test_every_special_huge_or_unreadable_file_is_one_stb901(tmp_path: Path) -> None:
    from stabcheck import api, reporters
    from stabcheck.config import Config

    expected = _hostile_tree(tmp_path / "tree")
    result = api.run([str(tmp_path / "tree")], Config(), api.Options(cache=False, jobs=1))
    by_name: dict[str, list] = {}
    for f in result.findings:
        by_name.setdefault(f.path.rsplit("/", 1)[-1], []).append(f)
    assert [f.code for f in by_name.pop("good.py")] == ["STB101"]
    assert [f.code for f in by_name.pop("also_good.py")] == ["STB101"]
    for name, reason in expected.items():
        got = by_name.pop(name, [])
        assert [f.code for f in got] == ["STB901"] and reason in got[0].message, (name, [f.message for f in got])
    assert not by_name, by_name
    for fmt in reporters.FORMATS:  # every reporter renders every path, non-UTF-8 names included
        reporters.get(fmt)(result.findings, reporters.Report(files=result.files)).encode("utf-8")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_hostile_tree_on_the_command_line_exits_1_without_traceback_in_bounded_memory(tmp_path: Path, jobs: str) -> None:
    import subprocess
    import sys

    expected = _hostile_tree(tmp_path / "tree")
    # a fresh parent whose only child is the run: RUSAGE_CHILDREN is then that run's peak RSS
    probe = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'stabcheck', 'check', 'tree', '--no-cache', '--jobs', sys.argv[1], '--output-format', 'json'], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr, 'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    res = subprocess.run([sys.executable, "-c", probe, jobs], cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    got = json.loads(res.stdout)
    assert got["rc"] == 1 and "Traceback" not in got["err"] and "internal error" not in got["err"], got["err"]
    findings = json.loads(got["out"])
    stb901 = sorted(f["path"].rsplit("/", 1)[-1] for f in findings if f["code"] == "STB901")
    assert stb901 == sorted(expected)
    assert sorted(f["path"] for f in findings if f["code"] == "STB101") == ["tree/good.py", "tree/sub/also_good.py"]
    assert got["kb"] < 300 * 1024, f"peak RSS {got['kb'] / 1024:.0f} MiB"  # 50 MB and /dev/zero never read


@pytest.mark.slow
def test_the_typed_tier_survives_the_hostile_tree(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    expected = _hostile_tree(tmp_path / "tree")
    proc = run_cli("check", "tree", "--no-cache", "--types", "--output-format", "concise", cwd=tmp_path, env={"STABCHECK_TYPES": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for name in expected:
        assert f"tree/{name}:1:1: STB901" in proc.stdout, proc.stdout
    assert "tree/good.py:5:8: STB101" in proc.stdout


@pytest.mark.parametrize(("value", "size"), [(1000, 1000), ("5MiB", 5 * 2**20), ("500KB", 500_000), ("2mb", 2_000_000)])
def test_max_file_size_is_configurable(tmp_path: Path, value: object, size: int) -> None:
    from stabcheck import api
    from stabcheck.config import from_mapping

    cfg = from_mapping({"max-file-size": value})
    assert cfg.max_file_size == size
    (tmp_path / "a.py").write_text(BRANCH + "#" * (size - len(BRANCH) + 1) + "\n")
    (tmp_path / "b.py").write_text(BRANCH)
    findings = api.run([str(tmp_path)], cfg, api.Options(cache=False, jobs=1)).findings
    assert [(Path(f.path).name, f.code) for f in findings] == [("a.py", "STB901"), ("b.py", "STB101")]


@pytest.mark.parametrize("value", [0, -5, "big", "5 parsecs", True, 1.5e-3, float("nan"), [], "0MiB"])
def test_a_bad_max_file_size_is_a_config_error(value: object) -> None:
    from stabcheck.config import ConfigError, from_mapping

    with pytest.raises(ConfigError, match="max-file-size"):
        from_mapping({"max-file-size": value})


def test_a_fifo_named_as_a_target_or_entry_file_does_not_hang(tmp_path: Path) -> None:
    from stabcheck._discover import SourceError, read_source

    os.mkfifo(tmp_path / "x.py")
    with pytest.raises(SourceError, match="FIFO"):
        read_source(tmp_path / "x.py", 2**20)


@pytest.mark.slow
@requires_jax
def test_a_dotted_target_is_imported_only_in_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23 item 3: when a package's `__init__` kills the worker, stabcheck finds the module's
    file by a path search; it never imports the package itself (which would run it here, with no
    timeout)."""
    import sys

    from stabcheck.worker.stage import run_targets

    markers = tmp_path / "markers"
    markers.mkdir()
    pkg = tmp_path / "evilpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import os\nopen(os.path.join(os.environ['STABCHECK_TEST_MARKERS'], f'{os.getpid()}.pid'), 'w').close()\nos._exit(3)\n")
    (pkg / "mod.py").write_text("def f(x):\n    return x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABCHECK_TEST_MARKERS", str(markers))
    findings, _, _ = run_targets([{"target": "evilpkg.mod:f", "args": ["f32[2]"]}], timeout=240, memory_limit=None)
    assert [f.code for f in findings] == ["STB902"], [f.message for f in findings]
    assert findings[0].path == "evilpkg/mod.py" and "exited with status 3" in findings[0].message
    ran_in = {int(p.stem) for p in markers.glob("*.pid")}
    assert ran_in and os.getpid() not in ran_in
    assert "evilpkg" not in sys.modules


@pytest.mark.slow
@requires_jax
def test_a_thread_left_by_one_target_never_hits_the_next(tmp_path: Path) -> None:
    from stabcheck.worker.stage import run_targets

    late = FIXTURES / "reliability" / "late_exit.py"
    targets = [{"target": str(late)}, {"target": f"{FIXTURES / 'traced' / 'state_drift.py'}:drift"}]
    findings, _, outcome = run_targets(targets, timeout=240, memory_limit=None)
    assert all(f.path for f in findings)
    blamed = {Path(f.path).name for f in findings if f.code == "STB902"}
    assert blamed <= {"late_exit.py"}, [f.message for f in findings if f.code == "STB902"]
    assert any(f.code == "STB204" and Path(f.path).name == "state_drift.py" for f in findings)


def test_a_fifo_named_on_the_command_line_is_one_stb901(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.py")
    (tmp_path / "good.py").write_text(BRANCH)
    proc = run_cli("check", "pipe.py", "good.py", "--no-cache", "--output-format", "concise", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "pipe.py:1:1: STB901" in proc.stdout and "good.py:5:8: STB101" in proc.stdout


@pytest.mark.slow
@requires_jax
def test_each_target_imports_its_own_helper_modules(tmp_path: Path) -> None:
    """Two projects with a `helper.py` each: the second target must not get the first one's."""
    from stabcheck.worker.stage import run_targets

    for name, dtype in (("a", "bfloat16"), ("b", "float32")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "helper.py").write_text(f"import jax.numpy as jnp\nDTYPE = jnp.{dtype}\n")
        (tmp_path / name / "entries.py").write_text(
            "import jax.numpy as jnp\nimport stabcheck\nfrom helper import DTYPE\n\n\ndef f(w, x):\n    return w * x\n\n\n"
            "@stabcheck.entry\ndef e():\n    return stabcheck.Entry(f, (jnp.ones(2, DTYPE), jnp.ones(2, jnp.float32)), transforms=('jit',))\n"
        )
    targets = [{"target": str(tmp_path / n / "entries.py")} for n in ("a", "b")]
    findings, _, _ = run_targets(targets, timeout=240, memory_limit=None)
    assert sorted((Path(f.path).parent.name, f.code) for f in findings) == [("a", "STB303")], [(f.path, f.code, f.message) for f in findings]


@pytest.mark.slow
@requires_jax
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="subreaper containment is Linux-only")
def test_killing_stabcheck_itself_still_stops_the_daemons_of_its_entries(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "STABCHECK_TEST_MARKERS": str(markers), "JAX_PLATFORMS": "cpu", "NO_COLOR": "1"}
    cli = subprocess.Popen([sys.executable, "-m", "stabcheck", "trace", str(FIXTURES / "reliability" / "daemon_then_hang.py"), "--timeout", "600"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = None
    try:
        deadline = time.monotonic() + 300  # a busy machine starts JAX slowly
        while daemon is None and time.monotonic() < deadline and cli.poll() is None:
            found = list(markers.glob("daemon-*.pid"))
            if found and found[0].read_text():
                daemon = int(found[0].read_text())
            time.sleep(0.1)
        assert daemon is not None and _alive(daemon), "the entry never started its daemon"
        cli.send_signal(signal.SIGKILL)  # no atexit, no finally: only the supervisor can clean up
        cli.wait(timeout=300)
        deadline = time.monotonic() + 60
        while _alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(daemon)
    finally:
        if cli.poll() is None:
            cli.kill()
        if daemon is not None and _alive(daemon):
            os.kill(daemon, 9)
