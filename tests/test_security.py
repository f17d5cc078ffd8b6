"""Issue 23: a checked repository is untrusted input. Each attack of the security audit that the
static command line owns is a case here; marker files prove that no code ran, and every case
checks that nothing outside the tree or the named output was touched and that the healthy files'
findings are still reported.

(The worker's containment, no user import in the main process and the typed tier's bounds are
tested with the worker and the typed tier.)
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stabcheck import api, reporters
from stabcheck._cache import Cache, CacheRefused, project_cache_dir, read_bounded, secret_key
from stabcheck.api import Options, run
from stabcheck.config import Config, ConfigError, discover_config, find_config, load_config
from stabcheck.finding import Finding, Span

from .conftest import SCHEMAS, requires_jax, run_cli

BRANCH = "import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    return -x\n"
FORMATS = reporters.FORMATS


def _evil_module(tree: Path, marker: Path) -> None:
    """A module whose import writes `marker`, with an entry the traced stage would run."""
    (tree / "evil.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib
            pathlib.Path({str(marker)!r}).write_text("imported")
            import stabcheck

            @stabcheck.entry
            def make():
                pathlib.Path({str(marker)!r}).write_text("ran")
                return (lambda x: x, (1.0,))
            """
        )
    )


def _healthy(tree: Path) -> None:
    (tree / "model.py").write_text(BRANCH)


def _codes(stdout: str) -> list[tuple[str, str]]:
    return [(Path(r["path"]).name, r["code"]) for r in json.loads(stdout) if r["code"] != "note"]


def _notes(stdout: str) -> list[str]:
    return [r["message"] for r in json.loads(stdout) if r["code"] == "note"]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and mtime: proves what a run did not touch."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


# -- 1. the checked repository's config cannot start code ------------------------------------------
@pytest.mark.parametrize(
    "config_file, text",
    [
        ("pyproject.toml", "[tool.stabcheck]\nstages = ['static', 'traced']\n"),
        ("pyproject.toml", "[tool.stabcheck]\nstages = ['static', 'confirm']\nentries = ['evil.py:make']\n"),
        ("stabcheck.toml", "stages = ['static', 'traced']\nentries = ['evil.py:make']\n"),
    ],
)
def test_a_discovered_config_cannot_turn_on_the_stages_that_run_code(tmp_path: Path, config_file: str, text: str) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    marker = tmp_path / "MARKER"
    (tree / config_file).write_text(text)
    _evil_module(tree, marker)
    _healthy(tree)
    proc = run_cli("check", ".", "--output-format", "json", cwd=tree)
    assert not marker.exists(), "the checked repository's code ran"
    assert proc.returncode == 1, proc.stderr
    assert _codes(proc.stdout) == [("model.py", "STB101")]  # the healthy file's finding is reported
    (note,) = _notes(proc.stdout)
    assert config_file in note and "`stages`" in note and "--config" in note
    if "entries" in text:
        assert "`entries`" in note
    # the keys are honoured from a file the user names, and from a library caller's Config
    assert load_config(tree / config_file).stages != ("static",)
    assert discover_config(tree).stages == ("static",) and discover_config(tree).entries == ()


def test_the_ignored_keys_note_is_shown_in_every_format(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.stabcheck]\nstages = ['static', 'traced']\n")
    _healthy(tmp_path)
    for fmt in ("concise", "github"):
        proc = run_cli("check", ".", "--output-format", fmt, cwd=tmp_path)
        assert proc.returncode == 1 and "`stages` in pyproject.toml ignored" in proc.stdout, (fmt, proc.stdout)
    res = run([str(tmp_path)], discover_config(tmp_path), Options(cache=False, jobs=1))
    for fmt in FORMATS:
        out = reporters.get(fmt)(res.findings, reporters.Report(files=res.files, notes=tuple(res.notes)))
        assert "a configuration found in the checked tree cannot turn on stages that run code" in out, fmt


def test_a_config_in_an_ancestor_of_the_project_does_not_apply(tmp_path: Path) -> None:
    # /tmp/stabcheck.toml must not apply to /tmp/proj, which has its own pyproject.toml
    (tmp_path / "stabcheck.toml").write_text("select = ['STB5']\nstages = ['static', 'traced']\n")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text("[project]\nname = 'proj'\n")
    _healthy(proj)
    assert find_config(proj) is None
    proc = run_cli("check", ".", "--output-format", "json", cwd=proj)
    assert proc.returncode == 1 and _codes(proc.stdout) == [("model.py", "STB101")] and _notes(proc.stdout) == []
    git = tmp_path / "gitproj" / "src"  # a `.git` marks the project root as well
    git.mkdir(parents=True)
    (git.parent / ".git").mkdir()
    assert find_config(git) is None
    (git.parent / "stabcheck.toml").write_text("select = ['STB1']\n")
    assert find_config(git) == git.parent / "stabcheck.toml"  # inside the project: found


def test_stages_and_entries_from_the_command_line_or_an_explicit_config_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.stabcheck]\nstages = ['static', 'traced']\nentries = ['evil.py:make']\n")
    explicit = load_config(tmp_path / "pyproject.toml")
    assert explicit.stages == ("static", "traced") and explicit.entries == ("evil.py:make",) and explicit.ignored == ()
    found = discover_config(tmp_path)
    assert found.ignored == ("stages", "entries") and found.select == explicit.select
    assert run([str(tmp_path)], Config(), Options(cache=False)).notes == []  # a library Config: no note


@requires_jax
def test_entries_on_the_command_line_run_in_the_worker(tmp_path: Path) -> None:
    # what the user asks for on the command line runs (in the worker), with the config's other keys
    tree = tmp_path / "repo"
    (tree / "sub").mkdir(parents=True)
    marker = tmp_path / "MARKER"
    (tree / "pyproject.toml").write_text("[tool.stabcheck]\nentries = ['nothing.py:x']\n")
    _evil_module(tree / "sub", marker)
    proc = run_cli("check", ".", "--entries", "evil.py:make", "--output-format", "json", cwd=tree / "sub")
    assert marker.read_text() == "ran", proc.stdout + proc.stderr  # relative to the working directory
    assert "`entries` in" in " ".join(_notes(proc.stdout))  # the file's own entries were not used


# -- 2. output files -----------------------------------------------------------------------------
def test_a_committed_symlink_is_not_followed_by_output_file(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    tree = tmp_path / "repo"
    tree.mkdir()
    _healthy(tree)
    (tree / "stabcheck-junit.xml").symlink_to(site / "zz.pth")
    before = _snapshot(tmp_path)
    proc = run_cli("check", ".", "--output-format", "junit", "--output-file", "stabcheck-junit.xml", cwd=tree)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "stabcheck: error: refusing to write --output-file stabcheck-junit.xml: it is a symbolic link (remove it, or write to another path)"
    assert not (site / "zz.pth").exists() and _snapshot(tmp_path) == before
    (tree / "reports").symlink_to(site, target_is_directory=True)  # a symlinked directory on the way
    proc = run_cli("check", ".", "--output-file", "reports/zz.pth", cwd=tree)
    assert proc.returncode == 2 and "reports is a symbolic link" in proc.stderr and not (site / "zz.pth").exists()


def test_baseline_and_pytest_report_refuse_symlinks_too(tmp_path: Path) -> None:
    from stabcheck._files import write_atomic_nofollow
    from stabcheck.config import UsageError

    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    tree = tmp_path / "repo"
    tree.mkdir()
    _healthy(tree)
    (tree / "baseline.json").symlink_to(outside)
    proc = run_cli("check", ".", "--baseline", "baseline.json", "--write-baseline", cwd=tree)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr and outside.read_text() == "precious\n"
    with pytest.raises(UsageError, match="symbolic link"):
        write_atomic_nofollow(tree / "baseline.json", "x", what="--stabcheck-report")
    assert outside.read_text() == "precious\n"


def test_output_file_is_replaced_atomically_and_keeps_its_mode(tmp_path: Path) -> None:
    _healthy(tmp_path)
    out = tmp_path / "report.json"
    out.write_text("old")
    out.chmod(0o640)
    proc = run_cli("check", ".", "--output-format", "json", "--output-file", "report.json", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert _codes(out.read_text()) == [("model.py", "STB101")]
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py", "report.json"]  # no temp file left
    missing = run_cli("check", ".", "--output-file", "no/such/dir/out.txt", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == "stabcheck: error: cannot write --output-file no/such/dir/out.txt: directory no does not exist"


NASTY = 'x\nimport os;os.system("touch PWNED")#.py'


@pytest.mark.skipif(sys.platform == "win32", reason="newlines in file names")
def test_file_names_with_newlines_and_escapes_are_rendered_visibly_in_every_format(tmp_path: Path) -> None:
    (tmp_path / NASTY).write_text(BRANCH)
    (tmp_path / "e\x1b[2Jvil.py").write_text(BRANCH)
    _healthy(tmp_path)
    for fmt in FORMATS:
        proc = run_cli("check", ".", "--output-format", fmt, "--output-file", "out.txt", cwd=tmp_path)
        assert proc.returncode == 1, (fmt, proc.stderr)
        text = (tmp_path / "out.txt").read_text()
        assert "\x1b" not in text, fmt
        lines = text.splitlines()
        assert not any(line.lstrip().startswith("import") for line in lines), (fmt, text)  # a .pth would run it
        hits = [line for line in lines if "PWNED" in line]
        # shown as `x\nimport` (in JSON text `x\\nimport`), or percent-encoded in a SARIF URI
        assert hits and all("x\\nimport" in line or "x%0Aimport" in line or "x\\\\nimport" in line for line in hits), (fmt, hits)
        assert "model.py" in text, fmt  # the healthy file is still reported
    assert not (tmp_path / "PWNED").exists()


def test_every_reporter_escapes_control_characters_in_user_text() -> None:
    evil = "pa\rth\x1b]8;;http://x\x07\u202e.py"
    f = Finding("STB101", "branch-on-tracer", "msg `a\nb` \x1b[31mred", evil, Span(1, 1, 1, 2), help="h\x00elp", function="f\x1bn", snippet="s = '\x1b[2J'", evidence={"error": "e\x1b[0m\nx"})
    report = reporters.Report(files=1, notes=("note\x1b[1m\nwith newline",))
    for fmt in FORMATS:
        out = reporters.get(fmt)([f], report)
        assert "\x1b" not in out and "\r" not in out and "\x00" not in out and "\u202e" not in out and "\x07" not in out, fmt
        assert "\\x1b" in out or "\\\\x1b" in out, fmt


def test_notes_are_rendered_in_every_format_and_sarif_stays_valid() -> None:
    note = "typed tier off for this run: mypy stopped; the untyped analysis was used"
    f = Finding("STB101", "branch-on-tracer", "m", "a.py", Span(1, 1))
    for fmt in FORMATS:
        for findings in ([f], []):
            out = reporters.get(fmt)(findings, reporters.Report(files=1, notes=(note,), version="1"))
            assert note in out, (fmt, out)
    doc = json.loads(reporters.get("sarif")([f], reporters.Report(files=1, notes=(note,), version="1")))
    assert doc["runs"][0]["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"] == note
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator(json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text())).validate(doc)


# -- 3. reads: symlinks out of the checked tree ----------------------------------------------------
def test_a_source_symlink_to_an_outside_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "home" / ".netrc"
    secret.parent.mkdir()
    secret.write_text("password ghp_TOKEN123 (\n")  # does not parse: its line would be printed
    tree = tmp_path / "repo"
    tree.mkdir()
    _healthy(tree)
    (tree / "leak.py").symlink_to(secret)
    (tree / "vendored").symlink_to(secret.parent, target_is_directory=True)
    (secret.parent / "mod.py").write_text("password = 'ghp_TOKEN123' (\n")
    for fmt in FORMATS:
        proc = run_cli("check", ".", "--output-format", fmt, cwd=tree)
        assert proc.returncode == 1, (fmt, proc.stderr)
        assert "ghp_TOKEN123" not in proc.stdout + proc.stderr, fmt
        assert "model.py" in proc.stdout and "leak.py" in proc.stdout, fmt  # named in the note
    proc = run_cli("check", ".", "--output-format", "json", cwd=tree)
    assert _codes(proc.stdout) == [("model.py", "STB101")]
    (note,) = _notes(proc.stdout)
    assert note.startswith("skipped 2 symbolic links leading outside the checked tree") and "`leak.py`" in note and "`vendored/`" in note
    named = run_cli("check", "leak.py", "--output-format", "json", cwd=tree)  # named: the user asked
    assert [r["code"] for r in json.loads(named.stdout)] == ["STB901"]
    inside = tree / "alias.py"  # a link that stays inside the tree is checked as before
    inside.symlink_to(tree / "model.py")
    assert run([str(tree)], Config(), Options(cache=False, jobs=1)).files == 1  # model.py once


def test_traced_findings_in_files_outside_the_tree_show_no_source_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a traced finding can point into any file the entry ran (a traceback into a token file)
    import stabcheck.worker.stage as stage

    outside = tmp_path / "elsewhere.py"
    outside.write_text("TOKEN = 'ghp_TOKEN123'\n")
    tree = tmp_path / "repo"
    tree.mkdir()
    _healthy(tree)
    later = [
        Finding("STB902", "analysis-error", "m", str(outside), Span(1, 1), stage="traced", snippet="TOKEN = 'ghp_TOKEN123'"),
        Finding("STB101", "branch-on-tracer", "m", str(tree / "model.py"), Span(5, 8), stage="traced", snippet="    if x > 0:"),
    ]
    monkeypatch.setattr(stage, "run_stage", lambda *a: (later, [], None))
    monkeypatch.chdir(tmp_path / "repo")
    res = run(["."], Config(), Options(cache=False, jobs=1, stages=("static", "traced")))
    snippets = {Path(f.path).name: f.snippet for f in res.findings}
    assert snippets["elsewhere.py"] == "" and snippets["model.py"] == "    if x > 0:"
    assert api._outside(str(outside), [str(tree)]) and not api._outside(str(tree / "a.py"), [str(tree)])


# -- 4. the cache ----------------------------------------------------------------------------------
def _findings(tree: Path, **opts: object) -> list[tuple[str, str]]:
    res = run([str(tree)], Config(), Options(jobs=1, **opts))  # type: ignore[arg-type]
    return [(Path(f.path).name, f.code) for f in res.findings]


def test_the_cache_lives_outside_the_checked_tree_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "cache-home"
    monkeypatch.setenv("STABCHECK_CACHE_DIR", str(home))
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    _healthy(tree)
    before = _snapshot(tree)
    proc = run_cli("check", ".", cwd=tree, env={"STABCHECK_CACHE_DIR": str(home)})
    assert proc.returncode == 1
    assert _snapshot(tree) == before  # nothing written in the checked tree
    files = list(project_cache_dir(tree).glob("static-*.json"))
    assert len(files) == 1 and files[0].read_bytes().startswith(b"stabcheck-cache 2 ")
    key = home / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    assert project_cache_dir(tree) != project_cache_dir(tmp_path)  # one directory per project


def test_a_planted_or_forged_cache_entry_is_ignored(tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    _healthy(tree)
    planted = tree / ".stabcheck_cache"  # committed by the pull request; CI passes --cache-dir
    cold = _findings(tree, cache=True, cache_dir=str(planted))
    assert cold == [("model.py", "STB101")]
    (f,) = planted.glob("static-*.json")
    head, _, payload = f.read_text().partition("\n")
    data = json.loads(payload)
    for entry in data["files"].values():
        entry["findings"] = []  # hide the finding
    forged = [
        json.dumps(data),  # the old, unauthenticated format
        head + "\n" + json.dumps(data),  # a real MAC over other content
        "stabcheck-cache 2 " + "0" * 64 + "\n" + json.dumps(data),
    ]
    for text in forged:
        f.write_text(text)
        assert _findings(tree, cache=True, cache_dir=str(planted)) == cold
    other_key = Cache(planted, "k", secret=b"k" * 32)  # another user's key: not ours
    other_key.put("model.py", "h", [], [])
    other_key.save()
    assert Cache(planted, "k").entries == {}


def test_symlinked_cache_files_and_directories_are_not_followed(tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    _healthy(tree)
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tree / ".stabcheck_cache"
    cache.symlink_to(outside, target_is_directory=True)
    res = run([str(tree)], Config(), Options(jobs=1, cache=True, cache_dir=str(cache)))
    assert [f.code for f in res.findings] == ["STB101"]
    assert list(outside.iterdir()) == [] and any("symbolic link" in n and "uncached" in n for n in res.notes)
    cache.unlink()
    assert _findings(tree, cache=True, cache_dir=str(cache)) == [("model.py", "STB101")]
    (entry,) = cache.glob("static-*.json")
    entry.unlink()
    entry.symlink_to("/dev/zero")  # would never end
    res = run([str(tree)], Config(), Options(jobs=1, cache=True, cache_dir=str(cache)))
    assert [f.code for f in res.findings] == ["STB101"] and any("uncached" in n for n in res.notes)
    assert os.path.islink(entry)  # left alone, not written through
    entry.unlink()
    (cache / ".gitignore").unlink()
    (cache / ".gitignore").symlink_to(outside / "victim")  # a dangling link: creating it would write outside
    assert _findings(tree, cache=True, cache_dir=str(cache)) == [("model.py", "STB101")]
    assert not (outside / "victim").exists()


def test_cache_reads_are_bounded_and_regular_files_only(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100)
    with pytest.raises(CacheRefused, match="larger"):
        read_bounded(big, limit=10)
    assert read_bounded(big, limit=100) == b"x" * 100 and read_bounded(tmp_path / "none") is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CacheRefused, match="not a regular file"):
        read_bounded(fifo)  # opened non-blocking: no hang


def test_the_secret_key_must_be_ours_and_private(tmp_path: Path) -> None:
    key = secret_key(tmp_path)
    assert key is not None and len(key) == 32 and secret_key(tmp_path) == key
    (tmp_path / "key").chmod(0o644)  # readable by others: anyone could forge entries
    assert secret_key(tmp_path) is None
    (tmp_path / "key").unlink()
    (tmp_path / "key").symlink_to(tmp_path / "elsewhere")
    assert secret_key(tmp_path) is None and not (tmp_path / "elsewhere").exists()


# -- 5. faults -----------------------------------------------------------------------------------
def test_jobs_is_capped_at_the_core_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(10):
        (tmp_path / f"m{i}.py").write_text(BRANCH)
    seen: list[int] = []
    monkeypatch.setattr(api, "_check_parallel", lambda todo, jobs, *a: seen.append(jobs))
    res = run([str(tmp_path)], Config(), Options(jobs=10_000, cache=False))
    assert res.files == 10
    if api.cpu_count() > 1:
        assert seen == [api.cpu_count()]
    else:
        assert seen == []  # one core: checked in this process
    proc = run_cli("check", ".", "--jobs", "10000", "--output-format", "concise", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr == "" and "Found 10 findings" in proc.stdout


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_timeout_must_be_finite_and_positive_on_the_command_line(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "MARKER"
    _evil_module(tmp_path, marker)
    for args in (["check", ".", "--trace"], ["trace", "evil.py:make"]):
        proc = run_cli(*args, "--timeout", value, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "`--timeout`" in proc.stderr and value.lstrip("-").replace("inf", "inf") in proc.stderr, proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_timeout_must_be_finite_and_positive_in_config(tmp_path: Path, value: str) -> None:
    (tmp_path / "stabcheck.toml").write_text(f"timeout = {value}\n")
    with pytest.raises(ConfigError, match="timeout"):
        load_config(tmp_path / "stabcheck.toml")
    with pytest.raises(ConfigError, match="timeout"):
        run([str(tmp_path)], Config(), Options(timeout=float(value), cache=False))
    proc = run_cli("check", ".", cwd=tmp_path)
    assert proc.returncode == 2 and "`timeout`" in proc.stderr and "Traceback" not in proc.stderr


_SIGTERM_SCRIPT = """
import os, sys, time
from pathlib import Path
from stabcheck import api
from stabcheck.config import Config

pids = Path(sys.argv[2])

def stuck(batch):
    with open(pids / str(os.getpid()), "w") as fh:
        fh.write("started")
    time.sleep(600)

api._check_many = stuck
api.run([sys.argv[1]], Config(), api.Options(jobs=2, cache=False))
"""


@pytest.mark.skipif(api.cpu_count() < 2 or sys.platform != "linux", reason="needs two cores for a pool (and Linux)")
def test_sigterm_ends_every_pool_worker(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(16):
        (tree / f"m{i:02d}.py").write_text(BRANCH)
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "run.py"
    script.write_text(_SIGTERM_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tree), str(pids)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list(pids.iterdir())) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2, proc.communicate(timeout=300)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)  # returns only once no process holds the pipes
    assert proc.returncode == -signal.SIGTERM, err
    for pid in workers:
        for _ in range(3000):
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), f"pool worker {pid} outlived stabcheck"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_repository_config_cannot_raise_max_file_size_past_the_cap(tmp_path: Path) -> None:
    """A checked repository may not make stabcheck read a committed multi-gigabyte file whole:
    a discovered `max-file-size` is capped (with a note); `--config` may go higher."""
    from stabcheck.config import REPOSITORY_MAX_FILE_SIZE, discover_config, load_config, trust_note

    (tmp_path / "pyproject.toml").write_text('[tool.stabcheck]\nmax-file-size = "4GiB"\n')
    found = discover_config(tmp_path)
    assert found.max_file_size == REPOSITORY_MAX_FILE_SIZE
    assert "max-file-size" in (trust_note(found) or "")
    assert load_config(tmp_path / "pyproject.toml").max_file_size == 4 * 2**30  # named explicitly: trusted
    (tmp_path / "pyproject.toml").write_text('[tool.stabcheck]\nmax-file-size = "20MiB"\n')
    assert discover_config(tmp_path).max_file_size == 20 * 2**20 and trust_note(discover_config(tmp_path)) is None
