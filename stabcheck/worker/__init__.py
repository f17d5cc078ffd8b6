"""Run user code in a worker subprocess: one entry at a time, each with a timeout and a memory cap.

    outcome = run_in_worker("trace", {"targets": [{"target": "fixtures/x.py:ENTRIES"}]}, timeout=60)
    for event in outcome.entries: ...        # {"entry": name, "findings": [Finding.to_dict()], ...}

Contract (for every task: "trace" here, "confirm"/"matrix" from stabcheck.confirm)
-------------------------------------------------------------------------------------
* The parent (`run_in_worker`, no JAX imported) writes the payload as JSON to a temp file and
  starts `python -m stabcheck.worker TASK PAYLOAD RESULT` in its own process group (a new
  session; on Linux it also dies with its parent). The child appends one JSON object per line to
  RESULT: {"event": "start", "entry": NAME} before an entry, {"event": "entry", "entry": NAME,
  "findings": [...], "notes": [...], ...} after it, {"event": "error", "findings": [...]} for a
  target that could not be loaded, and {"event": "done"} at the end.
* Payload keys the worker itself reads: "targets": [{"target": "path.py:NAME" | "pkg.mod:NAME" |
  "path.py", "args": [spec, ...], "static": {"1": "3"}, "dims": {"n": 8}, "path": shown path of
  the module, "function": name}], "skip": [entry names already done or fatal], "cwd". Everything
  else is the task's own.
* A task is `fn(name: str, entry: Entry, payload: dict) -> dict` run in the child, registered in
  TASKS as "module:function" (imported lazily in the child). Its dict is merged into the
  "entry" event; put findings there as `Finding.to_dict()`s under "findings".
* The clock restarts whenever the child reports progress, so `timeout` bounds each entry.
  An entry that hangs, exits (`sys.exit`, `os._exit`), crashes (segfault) or passes the memory
  limit kills the worker; the parent records an STB902 finding for that entry and restarts the
  worker with the entry skipped, so the others still run. Ctrl-C and stabcheck's exit kill the
  worker's whole process group; no worker survives stabcheck.
* Memory: RLIMIT_AS breaks XLA (with a 1 GiB RLIMIT_AS, `import jax` itself dies), so the child
  sets RLIMIT_DATA = the limit on itself (a large allocation then raises MemoryError, measured with JAX
  0.10.2), and the parent also polls the resident set size of the worker's process group and
  kills it past the limit.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TASKS: dict[str, str] = {
    "trace": "stabcheck.traced.tracing:trace_task",
    "confirm": "stabcheck.confirm.run:confirm_task",
    "matrix": "stabcheck.confirm.run:matrix_task",
}

_LIVE: set[int] = set()  # process groups of running workers


def _kill_all() -> None:
    for pgid in list(_LIVE):
        _killpg(pgid)


atexit.register(_kill_all)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _LIVE.discard(pgid)


@dataclass(frozen=True, slots=True)
class Death:
    """An entry (or a target's import, entry "") that took the worker down."""

    entry: str
    target: str
    reason: str
    stderr: str = ""
    file: str = ""  # where the entry's function is defined, when known
    line: int = 0


@dataclass(slots=True)
class Outcome:
    events: list[dict[str, Any]] = field(default_factory=list)
    deaths: list[Death] = field(default_factory=list)
    peak_rss: int = 0
    pids: list[int] = field(default_factory=list)  # every worker process started

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


def _child_setup() -> None:
    """First thing in the worker: die with the parent (Linux), and cap the data segment.

    Done here rather than in a `preexec_fn`, which would make `subprocess` fork a possibly
    multithreaded parent (JAX's) and run Python between fork and exec.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)
    limit = os.environ.get("STABCHECK_WORKER_MEMORY")
    if limit:
        try:
            import resource

            # RLIMIT_DATA (not RLIMIT_AS, which breaks XLA's reservations): a big NumPy/XLA
            # allocation fails with MemoryError instead of swapping the machine to death.
            resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))
        except (ImportError, ValueError, OSError):
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
            _LIVE.add(proc.pid)
            pids.append(proc.pid)
            last = time.monotonic()
            polls = 0
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
                        events += new
                        for e in new:
                            if on_event is not None:
                                on_event(e)
                    if rc is not None:
                        if any(e.get("event") == "done" for e in events):
                            break
                        why = _exit_reason(rc)
                        break
                    if memory_limit and polls % 5 == 0:
                        rss = _rss(proc.pid)
                        peak = max(peak, rss)
                        if rss > memory_limit:
                            why = f"used more than the memory limit ({rss / 2**20:.0f} MiB > {memory_limit / 2**20:.0f} MiB)"
                            _killpg(proc.pid)
                            proc.wait()
                            break
                    if time.monotonic() - last > timeout:
                        why = f"timed out after {timeout:g}s"
                        _killpg(proc.pid)
                        proc.wait()
                        break
            except BaseException:
                _killpg(proc.pid)
                proc.wait()
                raise
            finally:
                _killpg(proc.pid)  # stray grandchildren in the group
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
    for _ in range(max_restarts):
        events, why, stderr, peak = _once(task, {**payload, "skip": skip, "skip_targets": skip_targets}, timeout, memory_limit, cwd, on_event, out.pids)
        out.peak_rss = max(out.peak_rss, peak)
        out.events += [e for e in events if e.get("event") not in ("start", "done", "target")]
        if why is None:
            break
        started = [e for e in events if e.get("event") == "start"]
        finished = {entry_key(e.get("target", ""), e["entry"]) for e in events if e.get("event") == "entry"}
        running = next((e for e in reversed(started) if entry_key(e.get("target", ""), e["entry"]) not in finished), None)
        skip += sorted(finished)
        skip_targets += [e["target"] for e in events if e.get("event") == "error"]
        if running is not None:
            out.deaths.append(Death(running["entry"], running.get("target", ""), why, stderr, running.get("file", ""), int(running.get("line", 0))))
            skip.append(entry_key(running.get("target", ""), running["entry"]))
            skipped = set(skip)
            for e in events:  # targets whose entries are all done need no second import
                if e.get("event") == "loaded" and all(entry_key(e["target"], n) in skipped for n in e.get("entries", ())):
                    skip_targets.append(e["target"])
            continue
        loading = [e["target"] for e in events if e.get("event") == "target"]
        done_targets = {e.get("target") for e in events if e.get("event") in ("loaded", "error")}
        current = next((t for t in reversed(loading) if t not in done_targets), None)
        out.deaths.append(Death("", current or "", why, stderr))
        if current is None:
            break
        skip_targets.append(current)
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
    from stabcheck.traced.source import function_site

    site = function_site(getattr(entry, "fn", None))
    return {"file": site.file, "line": site.line} if site is not None else {}


def _resolve(task: str) -> Callable[..., dict[str, Any]]:
    import importlib

    mod, _, attr = TASKS[task].partition(":")
    return getattr(importlib.import_module(mod), attr)  # type: ignore[no-any-return]


def child_main(task: str, payload_path: str, result_path: str) -> int:
    """The worker process: load each target's entries, run the task on each, report as it goes."""
    from stabcheck import registry
    from stabcheck.traced import load

    registry.all_rules()  # every task reports through the rule catalogue: load it once, up front

    with open(payload_path, encoding="utf-8") as f:
        payload = json.load(f)
    emit = _Writer(result_path)
    if payload.get("cwd"):
        os.chdir(payload["cwd"])
    fn = _resolve(task)
    skip = set(payload.get("skip", ()))
    skip_targets = set(payload.get("skip_targets", ()))
    for spec in payload.get("targets", []):
        target = spec["target"]
        if target in skip_targets:
            continue
        emit({"event": "target", "target": target})
        try:
            entries = load.load_target(spec)
        except BaseException as e:  # noqa: BLE001 - user code may raise anything, SystemExit included
            emit({"event": "error", "target": target, "findings": [load.load_error(spec, e).to_dict()]})
            continue
        emit({"event": "loaded", "target": target, "entries": list(entries)})
        for name, entry in entries.items():
            if entry_key(target, name) in skip:
                continue
            emit({"event": "start", "entry": name, "target": target, **_where(entry)})
            try:
                result = fn(name, entry, {**payload, "target": spec})
            except BaseException as e:  # noqa: BLE001
                result = {"findings": [load.crash_finding(spec, name, entry, e).to_dict()]}
            emit({"event": "entry", "entry": name, "target": target, **result})
    emit({"event": "done"})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _child_setup()
    if len(args) != 3 or args[0] not in TASKS:
        sys.stderr.write(f"usage: python -m stabcheck.worker {{{','.join(TASKS)}}} PAYLOAD.json RESULT.jsonl\n")
        return 2
    try:
        return child_main(*args)
    except Exception:  # an error of stabcheck itself: say it on stderr, the parent reports it
        traceback.print_exc()
        return 3

