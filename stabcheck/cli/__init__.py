"""The command line: parse, call the library, render, exit 0 (clean) / 1 (findings) / 2 (error).

The commands are registered here: `check`, `explain`, `rules` and `init` below, the others by
importing their module at the end of this file (`cli/trace.py`: `trace`; `cli/confirm.py`:
`confirm`, `matrix`; `cli/explain_finding.py`: `explain-finding`; `cli/server.py`: `server`). A new command goes in `cli/<name>.py` (see `cli/_app.py`) and one import here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stabcheck import api, reporters, registry
from stabcheck import baseline as bl
from stabcheck.api import __version__
from stabcheck.cli._app import Exit as _Exit
from stabcheck.cli._app import FormatOpt, app
from stabcheck.cli._app import color as _color
from stabcheck.cli._app import csv_values as _csv
from stabcheck.cli._app import emit as _emit
from stabcheck.cli._app import fail as _fail
from stabcheck.cli._app import guard as _guard
from stabcheck.cli._app import load_config as _load_config
from stabcheck.config import check_timeout, from_mapping
from stabcheck.docs import render_rule
from stabcheck.init import init_project

def _from_cwd(target: str) -> str:
    """`path.py:NAME` made absolute (a dotted `pkg.mod:NAME` is left as it is)."""
    where, sep, name = target.rpartition(":") if ":" in target else (target, "", "")
    if where.endswith((".py", ".pyi")) or "/" in where or os.sep in where:
        where = os.path.abspath(where)
    return f"{where}{sep}{name}"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stabcheck {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """stabcheck: type-stability linter for JAX."""


@app.command()
@_guard
def check(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Files or directories (default: .)")] = None,
    select: Annotated[Optional[list[str]], typer.Option(help="Rule codes, prefixes or slugs to enable (comma-separated).")] = None,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Rule codes, prefixes or slugs to disable.")] = None,
    extend_select: Annotated[Optional[list[str]], typer.Option(help="Rules to enable on top of `select`.")] = None,
    output_format: FormatOpt = "full",
    output_file: Annotated[Optional[Path], typer.Option(help="Write the report to this file.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Read configuration from this file.")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Also trace the entries found under PATHS (runs user code in a worker).")] = False,
    confirm: Annotated[bool, typer.Option("--confirm", help="Also run the entries for real to confirm or refute findings.")] = False,
    entries: Annotated[Optional[list[str]], typer.Option("--entries", help="Entries to trace, path.py:NAME or pkg.module:NAME (comma-separated; implies --trace).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds per entry for --trace/--confirm.")] = None,
    memory_limit: Annotated[Optional[str], typer.Option(help="Memory limit of the worker, e.g. 4GiB or 0.5 (share of RAM).")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Report only findings not recorded in this baseline file.")] = None,
    write_baseline: Annotated[bool, typer.Option("--write-baseline", help="Record the current findings in --baseline and exit 0.")] = False,
    fix: Annotated[bool, typer.Option("--fix", help="Apply safe fixes.")] = False,
    unsafe_fixes: Annotated[bool, typer.Option("--unsafe-fixes", help="Also apply unsafe fixes (with --fix or --diff).")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show the fixes as a diff instead of writing them.")] = False,
    fail_on: Annotated[Optional[str], typer.Option(help="suspected (default) or confirmed: which findings fail the run.")] = None,
    types: Annotated[Optional[bool], typer.Option("--types/--no-types", help="Use mypy's inferred types (typed tier; off by default, also `types = true` or STABCHECK_TYPES=1). Its first run in an environment analyses jax's sources (~30 s, ~500 MiB); later runs reuse a per-user cache.")] = None,
    exit_zero: Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even when there are findings.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the cache.")] = False,
    cache_dir: Annotated[Optional[str], typer.Option(help="Cache directory (default: one per project under ~/.cache/stabcheck, outside the checked tree; the typed tier's, shared by projects: ~/.cache/stabcheck/typed).")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Parallel processes (default: all cores).")] = None,
    statistics: Annotated[bool, typer.Option("--statistics", help="Show counts per rule.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Also show findings the static stage could not prove (guesses).")] = False,
) -> None:
    """Check PATHS for type-stability hazards (static by default; --trace/--confirm run entries)."""
    paths = paths or ["."]
    if output_format not in reporters.FORMATS:
        _fail(f"invalid value for `--output-format`: {output_format!r}; expected one of: {', '.join(reporters.FORMATS)}")
    if jobs is not None and jobs < 1:
        _fail(f"invalid value for `--jobs`: {jobs}; expected a positive integer")
    if timeout is not None:
        check_timeout(timeout, "--timeout", "command line")
    overrides: dict = {}
    if entries:  # paths on the command line are relative to the working directory, not the config
        overrides["entries"] = [_from_cwd(t) for t in _csv(entries)]
        trace = True
    if select:
        overrides["select"] = _csv(select)
    if extend_select:
        overrides["extend-select"] = _csv(extend_select)
    if fail_on is not None:
        overrides["fail-on"] = fail_on
    if types is not None:
        overrides["types"] = types
    if preview:
        overrides["preview"] = True
    cfg = _load_config(config, paths, overrides)
    if ignore:
        cfg = from_mapping({"ignore": [*cfg.ignore, *_csv(ignore)]}, source="command line", base=cfg)
    stages = ["static"] + (["traced"] if trace or confirm else []) + (["confirm"] if confirm else [])
    if not trace and not confirm:
        stages = list(dict.fromkeys(["static", *cfg.stages]))
    options = api.Options(
        jobs=jobs,
        cache=not no_cache,
        cache_dir=cache_dir,
        stages=tuple(stages),
        timeout=timeout,
        memory_limit=memory_limit,
        progress=sys.stderr.isatty() and not os.environ.get("CI"),
    )
    result = api.run(paths, cfg, options)
    findings = result.findings
    notes = list(result.notes)
    if "traced" in stages and not no_cache:  # for the language server, which never runs user code itself
        from stabcheck._lastrun import record

        if note := record(paths, cfg, findings, stages):
            notes.append(note)
    if fix or diff:
        from stabcheck.fix import apply_fixes  # libcst: loaded only when fixing

        text, findings = apply_fixes(findings, write=fix and not diff, unsafe=unsafe_fixes, config=cfg)
        if diff:
            _emit(text, output_file)
            raise _Exit(0)
        if text:
            notes.append(text)
    if baseline is not None:
        if write_baseline:
            bl.write(baseline, findings)
            sys.stderr.write(f"stabcheck: wrote {len(findings)} finding(s) to {baseline}\n")
            raise _Exit(0)
        findings, stale = bl.filter(baseline, findings)
        if stale:
            notes.append(f"{stale} baseline entr{'y is' if stale == 1 else 'ies are'} stale (no longer found); rewrite it with --write-baseline")
    elif write_baseline:
        _fail("--write-baseline needs --baseline FILE")
    report = reporters.Report(files=result.files, device=result.device, notes=tuple(notes), statistics=statistics, color=_color() and output_file is None, version=__version__)
    _emit(reporters.get(output_format)(findings, report), output_file)
    failing = [f for f in findings if f.status != "refuted" and (cfg.fail_on == "suspected" or f.status == "confirmed" or f.stage == "confirmed")]
    raise _Exit(0 if exit_zero or not failing else 1)


@app.command()
@_guard
def explain(code: Annotated[str, typer.Argument(help="A rule code (STB101) or slug (branch-on-tracer).")]) -> None:
    """Show a rule's documentation, with its example and its fix."""
    rule = registry.get(code)
    if rule is None:
        _fail(f"unknown rule {code!r}; run `stabcheck rules` for the list")
    typer.echo(render_rule(rule))  # type: ignore[arg-type]


@app.command()
@_guard
def rules(output_format: FormatOpt = "full") -> None:
    """List every rule: code, slug, stages, summary."""
    rs = registry.all_rules()
    if output_format == "json":
        typer.echo(json.dumps([{"code": r.code, "name": r.name, "stages": list(r.stages), "fixable": r.fixable, "summary": r.summary()} for r in rs], indent=2))
        return
    for r in rs:
        typer.echo(f"{r.code}  {r.name:32s} {','.join(r.stages):24s} {r.summary()}")


@app.command()
@_guard
def init(
    path: Annotated[Path, typer.Argument(help="Project directory.")] = Path("."),
    pre_commit: Annotated[bool, typer.Option("--pre-commit", help="Also print a .pre-commit-config.yaml snippet.")] = False,
    github: Annotated[bool, typer.Option("--github", help="Also write .github/workflows/stabcheck.yml.")] = False,
    write: Annotated[bool, typer.Option("--write", help="Append the section to pyproject.toml instead of printing it.")] = False,
) -> None:
    """Write a [tool.stabcheck] section for this project (printed unless --write)."""
    typer.echo(init_project(path, pre_commit=pre_commit, github=github, write=write), nl=False)


# the commands of their own modules: importing one registers it on `app`, in this order in
# `--help` (none imports JAX)
import stabcheck.cli.trace  # noqa: E402, F401
import stabcheck.cli.confirm  # noqa: E402, F401
import stabcheck.cli.explain_finding  # noqa: E402, F401
import stabcheck.cli.server  # noqa: E402, F401

__all__ = ["app", "check", "explain", "init", "rules", "run"]


def run() -> None:  # console-script entry point
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    run()
