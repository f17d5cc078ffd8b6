"""The traced (and confirm) stage of `stabcheck check --trace/--confirm`: entries -> worker -> findings.

Runs in the stabcheck process and imports no JAX: it finds the entries statically, runs the
"trace" (or "trace+confirm") task in a worker subprocess (`stabcheck.worker`) and turns what the
worker reports (findings, and entries that hung, crashed or exited) into `Finding`s.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stabcheck import registry
from stabcheck._discover import SourceError, read_source
from stabcheck.config import DEFAULT_MAX_FILE_SIZE, Config, ConfigError, UsageError
from stabcheck.confirm.device import default_memory_limit, parse_memory_limit
from stabcheck.finding import Finding, Span
from stabcheck.traced.checks import shown_path
from stabcheck.traced import recorded
from stabcheck.traced.discover import entry_targets
from stabcheck.worker import Death, Outcome, run_in_worker


def memory_limit_bytes(text: str | None) -> int | None:
    """The worker's memory cap: '4GiB', '0.5' (share of RAM), '0'/'none' (no cap), default half of RAM."""
    if text is None or text == "":
        return default_memory_limit()
    if str(text).strip().lower() in ("0", "none", "off"):
        return None
    try:
        return parse_memory_limit(text)
    except ValueError:
        raise ConfigError("memory-limit", text, "a size such as '4GiB' or a fraction of RAM such as '0.5'") from None


def run_targets(
    targets: Sequence[dict[str, Any]],
    *,
    timeout: float,
    memory_limit: int | None,
    transforms: Sequence[str] | None = None,
    confirm: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[list[Finding], list[str], Outcome]:
    """Trace TARGETS in a worker (and run them for real with `confirm`); every failure of user code
    becomes an STB902 finding. `extra` goes into the payload (the confirm stage reads
    "suspected", "memory_limit" and "max_traces")."""
    payload: dict[str, Any] = {**(extra or {}), "targets": list(targets), "cwd": os.getcwd()}
    if transforms:
        payload["transforms"] = list(transforms)
    outcome = run_in_worker("trace+confirm" if confirm else "trace", payload, timeout, memory_limit, on_event=on_event)
    findings: list[Finding] = []
    notes: list[str] = []
    for e in outcome.events:
        findings += [Finding.from_dict(d) for d in e.get("findings", ())]
        notes += [n for n in e.get("notes", ()) if n not in notes]
    for d in outcome.deaths:
        findings.append(death_finding(d, timeout))
    return findings, notes, outcome


def run_stage(files: list[Path], results: dict[str, Any], config: Config, options: Any, stages: Sequence[str]) -> tuple[list[Finding], list[str], dict[str, Any] | None]:
    """Called by `stabcheck.api.run` for --trace/--confirm: (findings, notes, device)."""
    targets: list[dict[str, Any]] = [{"target": absolute_target(t)} for t in entry_targets(files, config)]
    replayed, notes_before = recorded_targets(files, config, getattr(options, "recorded", None))
    targets += replayed
    if not targets and notes_before:
        return [], notes_before, None
    if not targets:
        return [], ["--trace: no entries found (decorate a factory with @stabcheck.entry, or set `entries` in [tool.stabcheck])"], None
    timeout = float(options.timeout or config.timeout)
    limit = memory_limit_bytes(options.memory_limit if options.memory_limit is not None else config.memory_limit)
    progress = None
    if getattr(options, "progress", False):
        from stabcheck.worker.progress import Progress  # rich: loaded only on a terminal

        progress = Progress(len(targets))
    try:
        extra: dict[str, Any] = {"memory_limit": limit, "max_traces": config.max_traces}
        if "confirm" in stages:  # static findings the confirm stage can confirm or refute
            extra["suspected"] = [f.to_dict() for r in results.values() for f in r.findings if _confirmable(f.code)]
        findings, notes, outcome = run_targets(targets, timeout=timeout, memory_limit=limit, transforms=options.transforms, confirm="confirm" in stages, on_event=progress.event if progress else None, extra=extra)
    finally:
        if progress is not None:
            progress.close()
    device = next((e["device"] for e in outcome.events if e.get("device")), None)
    return findings, [*notes_before, *notes], device


def recorded_targets(files: Sequence[Path], config: Config, path: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """One worker target per function that `pytest --stabcheck-record` saw: from PATH, else from
    `.stabcheck/recorded.json` at the root of the checked project. Reads JSON only: the functions
    and types it names are imported in the worker. A bad file given by PATH is a usage error."""
    if path is None:
        roots = [str(config.root)] if config.source else []
        path = recorded.find([*roots, *(str(f) for f in files[:1]), os.getcwd()])
        if path is None:
            return [], []
        try:
            data = recorded.read(path)
        except recorded.RecordedError as e:
            return [], [f"{e}; its signatures were not replayed"]
    else:
        try:
            data = recorded.read(path)
        except recorded.RecordedError as e:
            raise UsageError(f"invalid value for `--recorded`: {e}") from None
    root = os.path.dirname(os.path.dirname(os.path.abspath(path))) if os.path.basename(os.path.dirname(os.path.abspath(path))) == ".stabcheck" else os.path.dirname(os.path.abspath(path))
    paths = [root, os.path.join(root, "src")]
    notes = [f"recorded `{name}` was not kept: {s.get('reason', '?')} (at {s.get('site', '?')})" for name, s in list(data["skipped"].items())[:5]]
    if len(data["skipped"]) > 5:
        notes.append(f"... and {len(data['skipped']) - 5} more calls not kept (\"skipped\" in {shown_path(path)})")
    return [{"target": name, "recorded": fn, "paths": paths} for name, fn in data["functions"].items()], notes


def _confirmable(code: str) -> bool:
    rule = registry.get(code)
    return rule is not None and "confirmed" in rule.stages and code not in ("STB900", "STB901", "STB902")


def absolute_target(target: str) -> str:
    where, sep, attr = target.rpartition(":")
    if sep and (where.endswith(".py") or os.sep in where or "/" in where):
        return f"{os.path.abspath(where)}:{attr}"
    if not sep and target.endswith(".py"):
        return os.path.abspath(target)
    return target


def death_finding(d: Death, timeout: float) -> Finding:
    """STB902 for an entry (or a target's import) that killed the worker."""
    rule = registry.get("STB902")
    assert rule is not None
    where, _, attr = d.target.rpartition(":") if ":" in d.target else (d.target, "", "")
    file = where if where.endswith(".py") else _module_file(where)
    line = _definition_line(file, attr) if file else 1
    if d.entry and d.file and d.line:
        file, line = d.file, d.line
    reason = d.reason
    shown = f"{shown_path(where)}:{attr}" if attr and where.endswith(".py") else shown_path(d.target) if d.target.endswith(".py") else d.target
    if d.entry:
        message = f"entry `{d.entry}` {reason} while being traced; the worker was stopped and its findings are missing"
    elif d.after:
        message = f"the worker {reason} after `{shown}` had run: a thread, timer or atexit handler it left behind stopped the process"
    else:
        message = f"importing `{shown}` {reason}; its entries were not traced"
    help = f"raise --timeout (now {timeout:g}s) or --memory-limit, or make the entry smaller" if "timed out" in reason or "memory" in reason else "run the entry by hand: it exits or crashes the interpreter (sys.exit, os._exit, a segfault)"
    if d.after:
        help = "do not start threads or timers at import or in entries that outlive them (join them, or guard them with `if __name__ == \"__main__\":`)"
    last = [ln for ln in d.stderr.strip().splitlines() if ln.strip()][-3:]
    return rule.finding(
        path=shown_path(file) if file else d.target,
        span=Span(line, 1),
        message=message,
        help=help,
        function=d.entry,
        detail=d.entry or d.target,
        evidence={"reason": reason, "target": d.target, "entry": d.entry, "stderr": "\n".join(last), **({"jax": d.jax} if d.jax else {})},
        stage="traced",
    )


def _module_file(module: str) -> str:
    """Where MODULE's source is, by a search of the file system that imports nothing.

    `importlib.util.find_spec("pkg.mod")` would import `pkg/__init__.py` here, in stabcheck's own
    process and without a timeout: user code must only run in the worker. A package that changes
    its `__path__` at import time is not followed; the finding then names the target alone."""
    parts = module.split(":")[0].split(".")
    if not all(p.isidentifier() for p in parts):
        return ""
    for base in dict.fromkeys([os.getcwd(), *sys.path]):
        if not base:
            base = os.getcwd()
        folder = os.path.join(base, *parts[:-1])
        for candidate in (os.path.join(folder, parts[-1] + ".py"), os.path.join(folder, parts[-1], "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
    return ""


def _definition_line(file: str, name: str) -> int:
    """The line that defines NAME at module level (a def or an assignment), found by `ast`."""
    if not name:
        return 1

    try:
        tree = ast.parse(read_source(file, DEFAULT_MAX_FILE_SIZE))
    except (SourceError, SyntaxError, ValueError, RecursionError, MemoryError):
        return 1
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node.lineno
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return node.lineno
    return 1
