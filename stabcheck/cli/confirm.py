"""`stabcheck confirm TARGET` and `stabcheck matrix TARGET...`; registered by stabcheck.cli.

Importing this module imports no JAX: the work happens in the worker subprocess
(`stabcheck.worker`, tasks "confirm" in `stabcheck.confirm.run` and "matrix" in
`stabcheck.confirm.matrix`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from stabcheck import api, reporters
from stabcheck.api import __version__
from stabcheck.cli._app import Exit, app, color, emit, fail, guard, load_config
from stabcheck.config import Config, check_timeout
from stabcheck.confirm.device import parse_memory_limit
from stabcheck.finding import Finding, merge
from stabcheck.reporters import matrix_
from stabcheck.traced import specs
from stabcheck.traced.entries import TRANSFORMS

if TYPE_CHECKING:
    from stabcheck.worker import Death, Outcome


def _limit(text: str | None) -> int | None:
    try:
        return parse_memory_limit(text)
    except ValueError as e:
        fail(f"invalid value for `--memory-limit`: {e}")


def _death_finding(death: Death, kind: str, timeout: float) -> Finding:
    """STB902 for an entry that killed the worker, where the traced stage puts it (the factory)."""
    from stabcheck.worker.stage import death_finding  # the worker machinery: see `confirm`

    base = death_finding(death, timeout)
    what = f"entry `{death.entry}`" if death.entry else f"importing `{death.target}`"
    return base.refine(
        message=f"{what} {death.reason} in the {kind} worker; it was stopped, nothing of it was checked, and the other entries still ran",
        function=death.entry,
        stage="confirmed",
        status="confirmed",
    )


def _progress(label: str) -> Callable[[dict[str, Any]], None] | None:
    """A callback printing one line per finished entry on a terminal; silent in CI and pipes."""
    if not sys.stderr.isatty() or os.environ.get("CI"):
        return None

    def on_event(e: dict[str, Any]) -> None:
        if e.get("event") == "start":
            sys.stderr.write(f"\r\033[K{label} {e.get('entry')} ...")
            sys.stderr.flush()
        elif e.get("event") == "done":
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    return on_event


@app.command()
@guard
def confirm(
    target: Annotated[str, typer.Argument(help="path.py:NAME, pkg.module:NAME, or path.py (its @stabcheck.entry factories).")],
    arg: Annotated[Optional[list[str]], typer.Option("--arg", help="Argument spec such as 'f32[8,2]' (for a plain function).")] = None,
    static: Annotated[Optional[list[str]], typer.Option("--static", help="Static argument, INDEX=VALUE.")] = None,
    dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Dimension size for jaxtyping names, n=8.")] = None,
    transforms: Annotated[Optional[str], typer.Option(help="Comma-separated transforms to run (overrides the entries').")] = None,
    output_format: Annotated[str, typer.Option("--output-format", help="full | concise | json | sarif | github | markdown | junit")] = "full",
    output_file: Annotated[Optional[Path], typer.Option(help="Write the report to this file.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per entry.")] = 120.0,
    memory_limit: Annotated[Optional[str], typer.Option(help="Memory of the worker and of one compiled transform, e.g. 4GiB or 0.5 (share of RAM).")] = None,
    max_traces: Annotated[Optional[int], typer.Option(help="STB504: compilations allowed per entry (default: config `max-traces`, 3).")] = None,
    fail_on: Annotated[str, typer.Option(help="suspected (default) or confirmed: which findings fail the run.")] = "suspected",
    exit_zero: Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even when there are findings.")] = False,
) -> None:
    """Trace TARGET's entries, then run them for real: confirm or refute each finding."""
    # the worker machinery loads when a command runs it, not on every start-up (`stabcheck check`)
    from stabcheck.worker import run_in_worker

    if output_format not in reporters.FORMATS:
        fail(f"invalid value for `--output-format`: {output_format!r}; expected one of: {', '.join(reporters.FORMATS)}")
    if fail_on not in ("suspected", "confirmed"):
        fail(f"invalid value for `--fail-on`: {fail_on!r}; expected one of: suspected, confirmed")
    tlist = [t.strip() for t in transforms.split(",") if t.strip()] if transforms else None
    bad = [t for t in tlist or () if t not in TRANSFORMS]
    if bad:
        fail(f"invalid value for `--transforms`: {bad[0]!r}; expected names from: {', '.join(TRANSFORMS)}")
    check_timeout(timeout, "--timeout", "command line")
    limit = _limit(memory_limit)
    if max_traces is None:
        where = target.rpartition(":")[0] if target.rpartition(":")[0].endswith(".py") else target
        max_traces = load_config(None, [where if os.path.exists(where) else "."], {}).max_traces
    elif max_traces < 1:
        fail(f"invalid value for `--max-traces`: {max_traces}; expected a positive integer")
    spec = _target_spec(target, arg, static, dim)
    statics, cfg = _static_findings(target)
    payload = {"targets": [spec], "trace": True, "transforms": tlist, "memory_limit": limit, "max_traces": max_traces, "suspected": [f.to_dict() for f in statics]}
    outcome = run_in_worker("confirm", payload, timeout, limit, on_event=_progress("confirming"))
    findings, device = _collect(outcome, "confirm", timeout, statics)
    # a static guess is a hypothesis the run settles: shown once confirmed (then proven), or with preview
    findings = [f for f in findings if api.is_shown(f, cfg)]
    report = reporters.Report(files=1, device=device, color=color() and output_file is None, version=__version__)
    emit(reporters.get(output_format)(findings, report), output_file)
    failing = [f for f in findings if f.status != "refuted" and (fail_on == "suspected" or f.status == "confirmed")]
    raise Exit(0 if exit_zero or not failing else 1)

@app.command()
@guard
def matrix(
    targets: Annotated[list[str], typer.Argument(help="Targets whose entries are the rows (path.py:ENTRIES, path.py).")],
    output_format: Annotated[str, typer.Option("--output-format", help="table | markdown | json")] = "table",
    output_file: Annotated[Optional[Path], typer.Option(help="Write the matrix to this file.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per entry.")] = 120.0,
    memory_limit: Annotated[Optional[str], typer.Option(help="Memory one compiled transform may use (and the worker's cap), e.g. 4GiB or 0.5.")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per cell (after one warm-up); the median is shown.")] = 5,
    columns: Annotated[Optional[str], typer.Option(help="Comma-separated columns (default: all).")] = None,
) -> None:
    """Which AD compositions work for each entry, and what each costs relative to the primal."""
    # the confirm stage's modules (and NumPy) and the worker load only when this command runs
    from stabcheck.confirm.matrix import COLUMNS
    from stabcheck.worker import run_in_worker  # the worker machinery: off the static path

    if output_format not in matrix_.FORMATS:
        fail(f"invalid value for `--output-format`: {output_format!r}; expected one of: {', '.join(matrix_.FORMATS)}")
    if runs < 1:
        fail(f"invalid value for `--runs`: {runs}; expected a positive integer")
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else list(COLUMNS)
    bad = [c for c in cols if c not in COLUMNS]
    if bad:
        fail(f"invalid value for `--columns`: {bad[0]!r}; expected names from: {', '.join(COLUMNS)}")
    check_timeout(timeout, "--timeout", "command line")
    limit = _limit(memory_limit)
    payload = {"targets": [{"target": t} for t in targets], "memory_limit": limit, "runs": runs, "columns": cols}
    # the worker's RSS cap sits above the per-transform limit: the estimate skips, the cap is the backstop
    cap = None if limit is None else max(limit * 4, 2 << 30)
    outcome = run_in_worker("matrix", payload, timeout, cap, on_event=_progress("measuring"))
    rows, device, notes = [], None, []
    for e in outcome.entries:
        if "row" in e:
            rows.append(e["row"])
        device = device or e.get("device")
        for d in e.get("findings", ()):
            notes.append(f"{e.get('entry')}: {d.get('message')}")
    for e in outcome.errors:
        for d in e.get("findings", ()):
            notes.append(f"{e.get('target')}: {d.get('message')}")
    for death in outcome.deaths:
        rows.append({"entry": death.entry or death.target, "primal_s": None, "compile_s": None, "cells": {}, "error": {"code": "STB902", "reason": f"the worker {death.reason}"}})
    result = {"device": device or {}, "rows": rows, "notes": notes}
    emit(matrix_.render(result, output_format, color=color() and output_file is None), output_file)
    raise Exit(2 if not rows else 0)


def _target_spec(target: str, arg: list[str] | None, static: list[str] | None, dim: list[str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"target": target}
    if arg:
        dims = specs.parse_dims(dim or [])
        try:
            for a in arg:
                specs.parse_tree(a, dims) if a.lstrip().startswith(("{", "[")) else specs.parse(a, dims)
        except specs.SpecError as e:
            fail(f"invalid value for `--arg`: {e}")
        spec["args"] = list(arg)
        spec["dims"] = dims
    if static:
        spec["static"] = dict(s.split("=", 1) for s in static if "=" in s)
    return spec


def _static_findings(target: str) -> tuple[list[Finding], Config]:
    """The static findings of the target's file, guesses included: the confirm run settles those
    its entries reach; and the target's config (whether it shows guesses: `preview`)."""
    where = target.rpartition(":")[0] if target.rpartition(":")[0].endswith(".py") else target
    if not (where.endswith(".py") and os.path.isfile(where)):
        return [], Config()
    cfg = load_config(None, [where], {})
    return api.run([where], replace(cfg, preview=True), api.Options(cache=False, stages=("static",))).findings, cfg


def _collect(outcome: Outcome, kind: str, timeout: float, statics: list[Finding] = ()) -> tuple[list[Finding], dict[str, Any] | None]:  # type: ignore[assignment]
    findings: list[Finding] = list(statics)
    device = None
    for e in [*outcome.entries, *outcome.errors]:
        findings += [Finding.from_dict(d) for d in e.get("findings", ())]
        device = device or e.get("device")
    # one finding per dead entry: several may come from one factory line, so they are not merged
    return merge(findings) + [_death_finding(d, kind, timeout) for d in outcome.deaths], device
