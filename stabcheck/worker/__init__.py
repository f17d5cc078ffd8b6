"""The worker: runs user code in a subprocess, one entry at a time, each with a timeout and a memory cap.

This part sits above the traced and confirm stages: the parent side (`run_in_worker`) imports
neither, the child dispatches each entry to a task function they export.

    outcome = run_in_worker("trace", {"targets": [{"target": "fixtures/x.py:ENTRIES"}]}, timeout=60)
    for event in outcome.entries: ...        # {"entry": name, "findings": [Finding.to_dict()], ...}

Contract (for every task: "trace" from stabcheck.traced, "confirm"/"matrix"/"trace+confirm" from
stabcheck.confirm)
-------------------------------------------------------------------------------------
* The parent (`run_in_worker`, no JAX imported) writes the payload as JSON to a temp file and
  starts `python -m stabcheck.worker TASK PAYLOAD RESULT` in its own process group (a new
  session). The child appends one JSON object per line to RESULT: {"event": "hello", "jax":
  VERSION} first, {"event": "start", "entry": NAME} before an entry, {"event": "entry", "entry":
  NAME, "findings": [...], "notes": [...], ...} after it, {"event": "error", "findings": [...]} for
  a target that could not be loaded, and {"event": "done"} at the end.
* Payload keys the worker itself reads: "targets": [{"target": "path.py:NAME" | "pkg.mod:NAME" |
  "path.py", "args": [spec, ...], "static": {"1": "3"}, "dims": {"n": 8}, "path": shown path of
  the module, "function": name}], "skip": [entry names already done or fatal], "cwd". Everything
  else is the task's own.
* A task is `fn(name: str, entry: Entry, payload: dict) -> dict` run in the child, named in
  TASKS and looked up by `_task` (imported in the child only). Its dict is merged into the
  "entry" event; put findings there as `Finding.to_dict()`s under "findings". Every finding the
  worker reports carries the worker's JAX version in `evidence["jax"]`.
* The clock restarts whenever the child reports progress, so `timeout` bounds each entry. The
  worker's own start (`import jax` on a busy machine) has `STARTUP_TIMEOUT` instead.
  An entry that hangs, exits (`sys.exit`, `os._exit`), crashes (segfault) or passes the memory
  limit kills the worker; the parent records an STB902 finding for that entry and restarts the
  worker with the entry skipped, so the others still run. Ctrl-C and stabcheck's exit stop the
  worker and everything it started; no process of user code survives stabcheck.

Containment (Linux)
-------------------
The process the parent starts is a small *supervisor*: it makes itself a child subreaper
(`prctl(PR_SET_CHILD_SUBREAPER)`) and forks the real worker before importing anything else. A
process user code starts, even a daemon that double-forks and calls `os.setsid` to leave the
process group, stays a descendant of the supervisor (orphans are re-parented to it, not to init).
After each entry the worker kills every descendant of the supervisor but itself; when the worker
ends (done, crashed, or stopped by the parent's SIGTERM on a timeout, Ctrl-C or stabcheck's death)
the supervisor kills every descendant left, SIGKILL, so a process that ignores SIGTERM or holds the
result file open ends too, and reaps them. Each kill is counted and reported as a note
("stopped N processes that ... left running"). The parent only SIGKILLs the process group itself
when the supervisor does not answer. Elsewhere (no subreaper) the process-group kill is all there is.
Results travel through a regular file, not a pipe, so a child that holds it open blocks nothing.

Fresh state per entry
---------------------
One worker runs many entries, because a fresh one costs an interpreter, `import jax` and XLA's
start (0.8-1.2 s measured here with JAX 0.10.2, against about 10 ms for the snapshot below).
Around each entry the worker saves and afterwards restores what user code commonly changes and
what would change the next entry's results: the working directory, `os.environ`, `sys.path`,
`sys.meta_path`, `sys.argv`, replaced or deleted `sys.modules` entries, functions, classes and
modules rebound in any loaded module (monkeypatches of `jnp`, `np`, `os`, ...), every `jax.config`
option, NumPy's error state, warning filters, the recursion limit and the umask; interval timers
are cancelled. Before each target the state the worker started with is put back, and the
modules imported from the user's files are forgotten, so two projects' `helper.py` stay apart.
What cannot be undone in-process (a thread the entry left running, which could
exit or chdir the worker later) makes the worker finish that entry and exit; the parent starts a
fresh worker for the rest ("recycle"), so the next entry never runs beside it. The worker ends
with `os._exit`, so atexit handlers and non-daemon threads of user code never run after the last
entry, and a death that no entry or target can be blamed for is reported against the last target.

Memory
------
RLIMIT_AS breaks XLA (with a 1 GiB RLIMIT_AS, `import jax` itself dies), so the child
sets RLIMIT_DATA = the limit on itself (a large allocation then raises MemoryError, measured with JAX
0.10.2), and the parent also polls the resident set size of the worker's process group and
kills it past the limit.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stabcheck import registry
from stabcheck.traced import load, recorded
from stabcheck.traced.source import function_site

TASKS = ("trace", "confirm", "matrix", "trace+confirm")
STARTUP_TIMEOUT = 120.0  # the worker's own start (interpreter, `import jax`): not an entry's time
_STABCHECK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # stabcheck's own package

_LIVE: dict[int, subprocess.Popen[bytes]] = {}  # running workers (their supervisors), by pid
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _kill_all() -> None:
    for proc in list(_LIVE.values()):
        _stop(proc, grace=2.0)


atexit.register(_kill_all)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a worker and every process it started: SIGTERM asks the supervisor to kill them all
    (the worker, daemons that left the process group, processes that ignore SIGTERM); the
    process-group SIGKILL is the fallback for a supervisor that does not answer in time."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    _killpg(proc.pid)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _LIVE.pop(proc.pid, None)


@dataclass(frozen=True, slots=True)
class Death:
    """An entry (or a target's import, entry "") that took the worker down."""

    entry: str
    target: str
    reason: str
    stderr: str = ""
    file: str = ""  # where the entry's function is defined, when known
    line: int = 0
    jax: str = ""  # the worker's JAX version
    after: bool = False  # the worker died after the target's entries had all run


@dataclass(slots=True)
class Outcome:
    events: list[dict[str, Any]] = field(default_factory=list)
    deaths: list[Death] = field(default_factory=list)
    peak_rss: int = 0
    pids: list[int] = field(default_factory=list)  # every worker process started
    recycled: int = 0  # fresh workers started because an entry left state that cannot be undone
    jax: str = ""  # the worker's JAX version ("" when JAX is not installed there)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "entry"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "error"]


def entry_key(target: str, name: str) -> str:
    """How `skip` names an entry: unique across targets."""
    return f"{target}::{name}"


# -- parent side ---------------------------------------------------------------------------------
def _rss(pgid: int) -> int:
    """Resident bytes of every process in a process group (Linux /proc; 0 elsewhere)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:  # fields: state ppid pgrp ...
                continue
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _child_setup() -> None:
    """First thing in the started process: stop with the parent (Linux; SIGTERM, so the supervisor
    still stops what it contains), and cap the data segment.

    Done here rather than in a `preexec_fn`, which would make `subprocess` fork a possibly
    multithreaded parent (JAX's) and run Python between fork and exec.
    """
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent or parent == 1:  # the parent is already gone
            os._exit(1)
    limit = os.environ.get("STABCHECK_WORKER_MEMORY")
    if limit:
        try:
            # RLIMIT_DATA (not RLIMIT_AS, which breaks XLA's reservations): a big NumPy/XLA
            # allocation fails with MemoryError instead of swapping the machine to death.
            resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))
        except (ValueError, OSError):
            pass


def _once(task: str, payload: dict[str, Any], timeout: float, memory_limit: int | None, cwd: str | None, on_event: Callable[[dict[str, Any]], None] | None, pids: list[int]) -> tuple[list[dict[str, Any]], str | None, str, int]:
    """One worker run: (events, why it died or None, stderr tail, peak rss)."""
    with tempfile.TemporaryDirectory(prefix="stabcheck-worker-") as tmp:
        pin, pout, perr = (os.path.join(tmp, n) for n in ("payload.json", "result.jsonl", "stderr.txt"))
        with open(pin, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        open(pout, "w").close()
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")}
        if not env["JAX_PLATFORMS"]:
            env.pop("JAX_PLATFORMS")
        env.pop("STABCHECK_WORKER_MEMORY", None)
        if memory_limit:
            env["STABCHECK_WORKER_MEMORY"] = str(int(memory_limit))
        why: str | None = None
        peak = 0
        events: list[dict[str, Any]] = []
        offset = 0
        with open(perr, "w", encoding="utf-8") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stabcheck.worker", task, pin, pout],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
            _LIVE[proc.pid] = proc
            pids.append(proc.pid)
            last = time.monotonic()
            polls = 0
            started = False  # until the child says hello, the clock times stabcheck's own start-up
            try:
                while True:
                    polls += 1
                    try:
                        rc = proc.wait(timeout=0.05)
                    except subprocess.TimeoutExpired:
                        rc = None
                    new, offset = _read_events(pout, offset)
                    if new:
                        last = time.monotonic()
                        started = True
                        events += new
                        for e in new:
                            if on_event is not None:
                                on_event(e)
                    if rc is not None:
                        if any(e.get("event") in ("done", "recycle") for e in events):
                            break
                        why = _exit_reason(rc)
                        break
                    if memory_limit and polls % 5 == 0:
                        rss = _rss(proc.pid)
                        peak = max(peak, rss)
                        if rss > memory_limit:
                            why = f"used more than the memory limit ({rss / 2**20:.0f} MiB > {memory_limit / 2**20:.0f} MiB)"
                            _stop(proc)
                            break
                    if time.monotonic() - last > (timeout if started else max(timeout, STARTUP_TIMEOUT)):
                        why = f"timed out after {timeout:g}s" if started else f"timed out after {max(timeout, STARTUP_TIMEOUT):g}s starting the worker (importing JAX)"
                        _stop(proc)
                        break
            except BaseException:
                _stop(proc, grace=2.0)
                raise
            finally:
                _stop(proc)  # stray grandchildren in the group; a no-op when all is done
        new, offset = _read_events(pout, offset)
        events += new
        with open(perr, encoding="utf-8", errors="replace") as f:
            stderr = f.read()[-3000:]
        return events, why, stderr, peak


def _read_events(path: str, offset: int) -> tuple[list[dict[str, Any]], int]:
    try:
        with open(path, encoding="utf-8") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    out: list[dict[str, Any]] = []
    consumed = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a line still being written (or cut short by a kill)
        consumed += len(line.encode("utf-8"))
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out, offset + consumed


def _exit_reason(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"crashed ({name})"
    return f"exited with status {rc}"


def run_in_worker(
    task: str,
    payload: dict[str, Any],
    timeout: float = 120.0,
    memory_limit: int | None = None,
    *,
    cwd: str | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    max_restarts: int = 64,
) -> Outcome:
    """Run TASK over the payload's targets and entries; never raises for what user code does.

    Entries that kill the worker are recorded in `Outcome.deaths` and skipped on the restart.
    """
    if task not in TASKS:
        raise ValueError(f"unknown worker task {task!r}; expected one of: {', '.join(TASKS)}")
    out = Outcome()
    skip: list[str] = list(payload.get("skip", []))
    skip_targets: list[str] = list(payload.get("skip_targets", []))
    order = [t.get("target", "") for t in payload.get("targets", [])]
    deaths = 0
    while deaths < max_restarts:
        before = len(set(skip)) + len(set(skip_targets))
        events, why, stderr, peak = _once(task, {**payload, "skip": skip, "skip_targets": skip_targets}, timeout, memory_limit, cwd, on_event, out.pids)
        out.peak_rss = max(out.peak_rss, peak)
        out.jax = next((e.get("jax", "") for e in events if e.get("event") == "hello"), out.jax)
        out.events += [e for e in events if e.get("event") not in ("start", "done", "target", "hello", "recycle")]
        started = [e for e in events if e.get("event") == "start"]
        finished = {entry_key(e.get("target", ""), e["entry"]) for e in events if e.get("event") == "entry"}
        running = next((e for e in reversed(started) if entry_key(e.get("target", ""), e["entry"]) not in finished), None) if why else None
        skip += sorted(finished - set(skip))
        skip_targets += [e["target"] for e in events if e.get("event") == "error"]
        if running is not None:
            skip.append(entry_key(running.get("target", ""), running["entry"]))
        skipped = set(skip)
        for e in events:  # targets whose entries are all done need no second import
            if e.get("event") == "loaded" and all(entry_key(e["target"], n) in skipped for n in e.get("entries", ())):
                skip_targets.append(e["target"])
        if why is None:
            if any(e.get("event") == "recycle" for e in events) and len(set(skip)) + len(set(skip_targets)) > before:
                out.recycled += 1  # the rest runs in a fresh worker
                continue
            break
        deaths += 1
        if running is not None:
            out.deaths.append(Death(running["entry"], running.get("target", ""), why, stderr, running.get("file", ""), int(running.get("line", 0)), out.jax))
            continue
        loading = [e["target"] for e in events if e.get("event") == "target"]
        done_targets = {e.get("target") for e in events if e.get("event") in ("loaded", "error")}
        current = next((t for t in reversed(loading) if t not in done_targets), None)
        if current is not None:
            out.deaths.append(Death("", current, why, stderr, jax=out.jax))
            skip_targets.append(current)
            continue
        # no entry was running and no target loading: a thread, timer or atexit handler left by
        # the last target stopped the worker between two steps; blame that target, never nothing
        last = next((t for t in reversed(loading)), None)
        pending = [t for t in order if t not in skip_targets]
        out.deaths.append(Death("", last or (pending[0] if pending else (order[0] if order else "")), why, stderr, jax=out.jax, after=last is not None))
        if last is None:
            break  # the worker died before loading anything: stabcheck's own failure, in stderr
        if last not in skip_targets:
            skip_targets.append(last)
        if all(t in skip_targets for t in order):
            break
    return out


# -- child side ----------------------------------------------------------------------------------
class _Writer:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, event: dict[str, Any]) -> None:
        self.f.write(json.dumps(event, default=str) + "\n")
        self.f.flush()


def _where(entry: Any) -> dict[str, Any]:
    """The entry function's file and first line, for a finding if the entry kills the worker."""
    site = function_site(getattr(entry, "fn", None))
    return {"file": site.file, "line": site.line} if site is not None else {}


def _task(task: str) -> Callable[..., dict[str, Any]]:
    # imported in the child only: the stages' task modules bring NumPy (and JAX when they run)
    from stabcheck.confirm import matrix, run
    from stabcheck.traced import tracing  # JAX (through the traced stage): only in the worker's child

    tasks: dict[str, Callable[..., dict[str, Any]]] = {"trace": tracing.trace_task, "confirm": run.confirm_task, "matrix": matrix.matrix_task, "trace+confirm": run.trace_confirm_task}
    return tasks[task]


def child_main(task: str, payload_path: str, result_path: str, supervisor: int | None = None) -> int:
    """The worker process: load each target's entries, run the task on each, report as it goes.

    SUPERVISOR is the pid of the subreaper that started this process (Linux), whose descendants
    are user code's processes once this worker's own are excluded."""
    registry.all_rules()  # every task reports through the rule catalogue: load it once, up front
    jax_version = _import_jax()  # before the baseline, so patches of jax by one target are undone

    with open(payload_path, encoding="utf-8") as f:
        payload = json.load(f)
    emit = _Writer(result_path)
    emit({"event": "hello", "jax": jax_version})
    if payload.get("cwd"):
        os.chdir(payload["cwd"])
    fn = _task(task)
    skip = set(payload.get("skip", ()))
    skip_targets = set(payload.get("skip_targets", ()))
    root = supervisor or os.getpid()
    baseline = _State.take()
    for spec in payload.get("targets", []):
        target = spec["target"]
        if target in skip_targets:
            continue
        baseline.restore()
        baseline.forget_user_modules()  # one target's helper `utils.py` is not another's
        emit({"event": "target", "target": target})
        try:
            entries = load.load_target(spec)
        except BaseException as e:  # noqa: BLE001 - user code may raise anything, SystemExit included
            emit({"event": "error", "target": target, "findings": _stamp([load.load_error(spec, e).to_dict()], jax_version), "notes": _strays(root, f"importing `{target}`")})
            if _State.threads() - baseline.thread_ids:
                emit({"event": "recycle", "reason": "a thread started by the import is still running"})
                return 0
            continue
        notes = [*load.NOTES, *_strays(root, f"importing `{target}`")]
        load.NOTES.clear()
        emit({"event": "loaded", "target": target, "entries": list(entries), "notes": notes})
        loaded = _State.take()
        for name, entry in entries.items():
            if entry_key(target, name) in skip:
                continue
            emit({"event": "start", "entry": name, "target": target, **_where(entry)})
            try:
                result = fn(name, entry, {**payload, "target": spec})
            except BaseException as e:  # noqa: BLE001
                result = {"findings": [load.crash_finding(spec, name, entry, e).to_dict()]}
            result["findings"] = _stamp(result.get("findings", []), jax_version, entry)
            result["notes"] = [*result.get("notes", ()), *_strays(root, f"entry `{name}`")]
            lingering = _State.threads() - loaded.thread_ids
            loaded.restore()
            emit({"event": "entry", "entry": name, "target": target, **result})
            if lingering:  # cannot be undone here: the next entry runs in a fresh worker
                emit({"event": "recycle", "reason": f"entry `{name}` left {len(lingering)} thread(s) running"})
                return 0
        if _State.threads() - baseline.thread_ids:
            emit({"event": "recycle", "reason": f"`{target}` left a thread running"})
            return 0
    emit({"event": "done"})
    return 0


def _import_jax() -> str:
    try:
        import jax  # JAX: only where user code runs
        import jax.numpy  # noqa: F401
    except Exception:  # noqa: BLE001 - JAX missing or broken: the tasks say so per entry
        return ""
    return str(getattr(jax, "__version__", ""))


def _stamp(findings: list[dict[str, Any]], jax_version: str, entry: Any = None) -> list[dict[str, Any]]:
    """Every finding of the worker names the JAX version that produced it (and a recorded entry's
    findings where the entry came from: `recorded from tests/test_model.py:42 (jit)`)."""
    origin = getattr(entry, "origin", "")
    for d in findings:
        if isinstance(d, dict) and jax_version:
            d["evidence"] = {**(d.get("evidence") or {}), "jax": jax_version}
        if isinstance(d, dict) and origin:
            recorded.stamp(d, origin, getattr(entry, "recorded_site", None), getattr(entry, "made_sites", None))
    return findings


# -- fresh state per entry -------------------------------------------------------------------------
def _callable_or_module(v: Any) -> bool:
    return callable(v) or isinstance(v, type(sys))


class _State:
    """What an entry may change in the worker process, saved to be put back (see the docstring)."""

    def __init__(self) -> None:
        self.cwd = ""
        self.environ: dict[str, str] = {}
        self.lists: list[tuple[list[Any], list[Any]]] = []
        self.modules: dict[str, Any] = {}
        self.attrs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.jax_config: dict[str, Any] = {}
        self.np_err: dict[str, Any] | None = None
        self.recursion = 0
        self.umask = 0
        self.thread_ids: set[int] = set()

    @staticmethod
    def threads() -> set[int]:
        return {t.ident or 0 for t in threading.enumerate() if t.is_alive() and t is not threading.current_thread()}

    @classmethod
    def take(cls) -> _State:
        st = cls()
        try:
            st.cwd = os.getcwd()
        except OSError:
            st.cwd = ""
        st.environ = dict(os.environ)
        st.lists = [(lst, list(lst)) for lst in (sys.path, sys.meta_path, sys.path_hooks, sys.argv, warnings.filters)]
        st.modules = dict(sys.modules)
        for mod in list(st.modules.values()):
            d = getattr(mod, "__dict__", None)
            if isinstance(d, dict):
                st.attrs.append((d, {k: v for k, v in list(d.items()) if _callable_or_module(v)}))
        cfg = _jax_config()
        if cfg is not None:
            st.jax_config = {k: getattr(h, "value", None) for k, h in list(getattr(cfg, "_value_holders", {}).items())}
        np = sys.modules.get("numpy")
        if np is not None:
            st.np_err = dict(np.geterr())
        st.recursion = sys.getrecursionlimit()
        st.umask = os.umask(0o022)
        os.umask(st.umask)
        st.thread_ids = cls.threads()
        return st

    def forget_user_modules(self) -> None:
        """Drop the modules imported since this snapshot from files of the user's (not the standard
        library's, an installed package's or stabcheck's): the next target imports its own."""
        keep = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, _STABCHECK_DIR} if p)
        for name, mod in list(sys.modules.items()):
            if name in self.modules:
                continue
            file = getattr(mod, "__file__", None)
            if not file or os.path.realpath(file).startswith(keep):
                continue
            del sys.modules[name]

    def restore(self) -> None:
        if self.cwd:
            try:
                os.chdir(self.cwd)
            except OSError:
                pass
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        for lst, saved in self.lists:
            if lst != saved:
                lst[:] = saved
        mutated = getattr(warnings, "_filters_mutated", None)  # the module caches what filters say
        if mutated is not None:
            mutated()
        for name, mod in self.modules.items():
            if sys.modules.get(name) is not mod:
                sys.modules[name] = mod
        for d, saved_attrs in self.attrs:
            for k, v in saved_attrs.items():
                if d.get(k, _MISSING) is not v:
                    d[k] = v
        cfg = _jax_config()
        if cfg is not None and self.jax_config:
            holders = getattr(cfg, "_value_holders", {})
            for k, v in self.jax_config.items():
                h = holders.get(k)
                if h is not None and getattr(h, "value", None) != v:
                    try:
                        cfg.update(k, v)
                    except Exception:  # noqa: BLE001 - an option that cannot change after start
                        pass
        np = sys.modules.get("numpy")
        if np is not None and self.np_err is not None:
            np.seterr(**self.np_err)
        if self.recursion and sys.getrecursionlimit() != self.recursion:
            sys.setrecursionlimit(self.recursion)
        os.umask(self.umask)
        if hasattr(signal, "setitimer"):
            for which in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
                signal.setitimer(which, 0)


_MISSING = object()


def _jax_config() -> Any:
    jax = sys.modules.get("jax")
    return getattr(jax, "config", None) if jax is not None else None


# -- containment -----------------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process (Linux /proc; empty elsewhere)."""
    out: dict[int, tuple[int, str]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            out[int(name)] = (int(fields[1]), fields[0].decode("ascii", "replace"))
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(root: int) -> list[int]:
    """Live (not zombie) descendants of ROOT."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if table.get(pid, (0, "Z"))[1] not in ("Z", "X"):
            out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def kill_descendants(root: int, exclude: frozenset[int] = frozenset()) -> int:
    """SIGKILL every live descendant of ROOT but the processes in EXCLUDE (their own descendants are
    killed), until none is left (a process may fork while this runs); reap this process's own
    children. Returns how many were killed."""
    killed: set[int] = set()
    for _ in range(200):
        pids = [p for p in descendants(root) if p not in exclude]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        _reap()
        time.sleep(0.005)
    _reap()
    return len(killed)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _strays(root: int, who: str) -> list[str]:
    """Stop what user code left running; a note when there was anything."""
    if not sys.platform.startswith("linux"):
        return []
    # with a supervisor: its descendants but this worker; without: this worker's own children
    n = kill_descendants(root, frozenset({os.getpid()}) if root != os.getpid() else frozenset())
    return [f"{who} left {n} process{'es' if n != 1 else ''} running; stabcheck stopped {'them' if n != 1 else 'it'}"] if n else []


def _supervise(args: list[str]) -> int:
    """The process the parent started (Linux): a subreaper around the real worker, so that every
    process user code starts ends when the worker does."""
    me = os.getpid()
    stopping: list[int] = []
    pid = -1

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)
        if pid > 0:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    pid = os.fork()
    if pid == 0:  # the worker
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != me:
            os._exit(1)
        _worker_exit(args, me)
    if stopping:  # a signal came before the fork finished
        on_signal(stopping[0], None)
    status = 0
    while True:
        try:
            got, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if got == pid:
            status = st
            break
    n = kill_descendants(me)
    if n:
        try:
            with open(args[2], "a", encoding="utf-8") as f:
                note = f"the worker left {n} process{'es' if n != 1 else ''} running when it ended; stabcheck stopped {'them' if n != 1 else 'it'}"
                f.write(json.dumps({"event": "reaped", "count": n, "notes": [note]}) + "\n")
        except OSError:
            pass
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(me, sig)
        return 128 + sig
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _worker_exit(args: list[str], supervisor: int | None) -> None:
    """Run the worker and leave with `os._exit`: no atexit handler or non-daemon thread of user
    code runs after the last entry."""
    try:
        rc = child_main(args[0], args[1], args[2], supervisor)
    except Exception:  # an error of stabcheck itself: say it on stderr, the parent reports it
        traceback.print_exc()
        rc = 3
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _child_setup()
    if len(args) != 3 or args[0] not in TASKS:
        sys.stderr.write(f"usage: python -m stabcheck.worker {{{','.join(TASKS)}}} PAYLOAD.json RESULT.jsonl\n")
        return 2
    if _prctl(_PR_SET_CHILD_SUBREAPER, 1):
        return _supervise(args)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # no supervisor to clean up: just die with the parent
    _worker_exit(args, None)
    return 0
