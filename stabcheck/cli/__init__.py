"""The command line: parse, call the library, render, exit 0 (clean) / 1 (findings) / 2 (error).

The commands are registered here: `check`, `explain`, `rules` and `init` below, the others by
importing their module at the end of this file (`cli/trace.py`: `trace`; `cli/confirm.py`:
`confirm`, `matrix`; `cli/explain_finding.py`: `explain-finding`; `cli/server.py`: `server`). A new command goes in `cli/<name>.py` (see `cli/_app.py`) and one import here.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer

from stabcheck import api, registry, reporters
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


def _settings(config_file: Path | None, overrides: dict, extra_ignore: list[str]) -> "Settings":  # noqa: F821
    """The check's settings: `--config FILE` for every path, else each file's nearest config
    (ruff's hierarchy); the command line's options on top of either."""

    if config_file is not None and not config_file.is_file():
        _fail(f"config file not found: {config_file}")

    def adjust(cfg: "Config") -> "Config":  # noqa: F821
        if overrides:
            cfg = from_mapping(overrides, source="command line", base=cfg)
        if extra_ignore:
            cfg = from_mapping({"ignore": [*cfg.ignore, *extra_ignore]}, source="command line", base=cfg)
        return cfg

    return Settings(fixed=load_config(config_file) if config_file is not None else None, adjust=adjust)


def _check_stdin(paths: list[str], name: str | None, settings: "Settings", output_format: str, output_file: Path | None, fix: bool, diff: bool, unsafe: bool, unfixable: frozenset[str], force_exclude: bool, exit_zero: bool) -> None:  # noqa: F821
    """`stabcheck check - --stdin-filename src/x.py`: what editors run on an unsaved buffer. With
    --fix the fixed source goes to stdout (the report to stderr); with --diff, the diff."""

    if paths != ["-"]:
        _fail("`-` (the source on stdin) cannot be combined with other paths")
    data = sys.stdin.buffer.read()
    shown = name or "-"
    cfg = settings.for_path(name) if name else settings.root
    if force_exclude and name and force_excluded(name, settings):
        if fix:
            sys.stdout.buffer.write(data)
        raise _Exit(0)
    if (fix or diff) and not shown.endswith(".ipynb"):
        from stabcheck.fix import fix_source  # libcst (through stabcheck.fix): only when fixing
        try:
            source = api.decode_source(data)
        except (UnicodeDecodeError, LookupError, SyntaxError):
            source = None
        if source is not None:
            done = fix_source(source, shown, cfg, unsafe=unsafe, unfixable=unfixable)
            if diff:
                text = "".join(difflib.unified_diff(source.splitlines(keepends=True), done.after.splitlines(keepends=True), f"a/{shown}", f"b/{shown}"))
                _emit(text, output_file)
                raise _Exit(1 if done.after != source else 0)
            sys.stdout.write(done.after)  # the fixed buffer, as ruff does; the report goes to stderr
            sys.stdout.flush()
            data = done.after.encode("utf-8")
    result = api.check_stdin(data, shown, cfg)
    report = reporters.Report(files=1, notes=tuple(result.notes), color=False, version=__version__, suppressed=tuple((f, "inSource", t) for f, t in result.suppressed))
    text = reporters.get(output_format)(result.findings, report)
    if fix and output_file is None:
        sys.stderr.write(text)
    else:
        _emit(text, output_file)
    failing = [f for f in result.findings if f.status != "refuted"]
    raise _Exit(0 if exit_zero or not failing else 1)


def _may_fix(findings: list, unfixable: frozenset[str]) -> bool:
    """Whether some finding's rule declares a fix (asked of the registry: no libcst import)."""

    codes = {f.code for f in findings if f.stage == "static" and f.code not in unfixable and not f.path.endswith(".ipynb")}
    return any((r := registry.get(c)) is not None and r.fixable for c in codes)


def _unfixable(selectors: list[str]) -> frozenset[str]:
    codes: set[str] = set()
    for sel in selectors:
        if not registry.is_valid_selector(sel):
            _fail(f"invalid value for `--unfixable`: {sel!r}; expected a known rule code, prefix or slug (see `stabcheck rules`)")
        codes |= {r.code for r in registry.matching(sel)}
    return frozenset(codes)


def _fix_listing(changed: tuple, *, done: bool) -> str:  # tuple[FileFix, ...]
    """ruff's `--show-fixes`: per file, how many of each rule were (or would be) fixed."""

    n = sum(len(r.fixed) for r in changed)
    if not n:
        return "No fixes applied.\n" if done else "No fixes available.\n"
    lines = [f"{'Fixed' if done else 'Would fix'} {n} finding{'s' * (n != 1)}:"]
    for r in changed:
        lines.append(f"- {r.path}:")
        for (code, name), k in sorted(Counter((f.code, f.name) for f in r.fixed).items()):
            lines.append(f"    {k} × {code} ({name})")
    return "\n".join(lines) + "\n"


def _show_settings(settings: "Settings", path: str) -> str:  # noqa: F821

    if not os.path.lexists(path):
        _fail(f"path does not exist: {path}")
    cfg = settings.for_path(path)
    lines = [f"Settings for {path}", f"config file: {cfg.source or '(none: defaults)'}", f"patterns relative to: {os.path.abspath(cfg.root)}", ""]
    for key, value, origin in settings.explain(path):
        lines.append(f"{key} = {json.dumps(value)}  # {origin}")
    return "\n".join(lines) + "\n"


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
    recorded: Annotated[Optional[str], typer.Option("--recorded", metavar="FILE", help="Signatures recorded by `pytest --stabcheck-record` to replay with --trace/--confirm (default: .stabcheck/recorded.json at the checked project's root).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds per entry for --trace/--confirm.")] = None,
    memory_limit: Annotated[Optional[str], typer.Option(help="Memory limit of the worker, e.g. 4GiB or 0.5 (share of RAM).")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Report only findings not recorded in this baseline file.")] = None,
    write_baseline: Annotated[bool, typer.Option("--write-baseline", help="Record the current findings in --baseline and exit 0.")] = False,
    fix: Annotated[bool, typer.Option("--fix", help="Apply safe fixes.")] = False,
    unsafe_fixes: Annotated[bool, typer.Option("--unsafe-fixes", help="Also apply unsafe fixes (with --fix or --diff).")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show the fixes as a diff instead of writing them (exit 1 when there are any).")] = False,
    fix_only: Annotated[bool, typer.Option("--fix-only", help="Apply fixes and report nothing else (exit 0).")] = False,
    unfixable: Annotated[Optional[list[str]], typer.Option(help="Rules (codes, prefixes or slugs) whose fixes are never applied.")] = None,
    show_fixes: Annotated[bool, typer.Option("--show-fixes", help="List the fixes applied (with --fix) or available.")] = False,
    fail_on: Annotated[Optional[str], typer.Option(help="suspected (default) or confirmed: which findings fail the run.")] = None,
    types: Annotated[Optional[bool], typer.Option("--types/--no-types", help="Use mypy's inferred types (typed tier; off by default, also `types = true` or STABCHECK_TYPES=1). Its first run in an environment analyses jax's sources (~30 s, ~500 MiB); later runs reuse a per-user cache.")] = None,
    exit_zero: Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even when there are findings.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the cache.")] = False,
    cache_dir: Annotated[Optional[str], typer.Option(help="Cache directory (default: one per project under ~/.cache/stabcheck, outside the checked tree; the typed tier's, shared by projects: ~/.cache/stabcheck/typed).")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Parallel processes (default: all cores).")] = None,
    statistics: Annotated[bool, typer.Option("--statistics", help="Print only the counts per rule.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Also show findings the static stage could not prove (guesses).")] = False,
    respect_gitignore: Annotated[Optional[bool], typer.Option("--respect-gitignore/--no-respect-gitignore", help="Leave out files .gitignore ignores (default: on, or `respect-gitignore` in the config).")] = None,
    force_exclude: Annotated[bool, typer.Option("--force-exclude", help="Apply excludes and .gitignore to files named on the command line too (pre-commit hooks pass it).")] = False,
    show_settings: Annotated[Optional[str], typer.Option("--show-settings", metavar="FILE", help="Print the settings that apply to FILE, with where each comes from, and exit.")] = None,
    show_files: Annotated[bool, typer.Option("--show-files", help="Print the files that would be checked, and exit.")] = False,
    stdin_filename: Annotated[Optional[str], typer.Option("--stdin-filename", help="With PATH `-` (source on stdin): the file it stands for (its config, per-file-ignores and name in findings).")] = None,
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
    if respect_gitignore is not None:
        overrides["respect-gitignore"] = respect_gitignore
    settings = _settings(config, overrides, _csv(ignore))
    if show_settings is not None:
        _emit(_show_settings(settings, show_settings), output_file)
        raise _Exit(0)
    if show_files:

        _emit("".join(display(f) + "\n" for f in discover(paths, settings, force_exclude=force_exclude)), output_file)
        raise _Exit(0)
    if "-" in paths:
        _check_stdin(paths, stdin_filename, settings, output_format, output_file, fix, diff, unsafe_fixes, _unfixable(_csv(unfixable)), force_exclude, exit_zero)
    elif stdin_filename is not None:
        _fail("--stdin-filename needs the path `-` (the source on stdin)")
    cfg = settings.for_path(paths[0])  # the run's stages: those of the first path's config
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
        recorded=recorded,
        progress=sys.stderr.isatty() and not os.environ.get("CI"),
    )
    result = api.run(paths, settings, options, force_exclude=force_exclude)
    findings = result.findings
    notes = list(result.notes)
    if "traced" in stages and not no_cache:  # for the language server, which never runs user code itself

        if note := record(paths, cfg, findings, stages):
            notes.append(note)
    no_fix = _unfixable(_csv(unfixable))
    human = output_format in ("full", "concise") and not statistics
    if fix or diff or fix_only or show_fixes:
        from stabcheck.fix import run_fixes  # libcst (through stabcheck.fix): only when fixing

        out = run_fixes(findings, write=(fix or fix_only) and not diff, unsafe=unsafe_fixes, unfixable=no_fix, settings=settings)
        if diff:
            _emit(out.text, output_file)
            raise _Exit(1 if out.changed else 0)
        listing = _fix_listing(out.changed, done=fix or fix_only) if show_fixes else ""
        if fix_only:
            text = listing or (f"{out.text}.\n" if out.text else "No fixes available.\n")
            _emit(text, output_file)
            raise _Exit(0)
        if listing:
            (sys.stdout.write if human and output_file is None else sys.stderr.write)(listing)
        if fix:
            findings = out.findings
            if out.text:
                notes.append(out.text)
    if (human or statistics) and _may_fix(findings, no_fix):
        from stabcheck.fix import mark_fixable  # libcst: only when a finding's rule has a fix

        findings = mark_fixable(findings, unsafe=unsafe_fixes, unfixable=no_fix, settings=settings)
    suppressed = [(f, "inSource", text) for f, text in result.suppressed]
    baselined = 0
    if baseline is not None:
        if write_baseline:
            bl.write(baseline, findings, result.checked, version=__version__)
            sys.stderr.write(f"stabcheck: wrote {len(findings)} finding(s) to {baseline}\n")
            raise _Exit(0)
        outcome = bl.split(baseline, findings, result.checked)
        findings, baselined = outcome.new, len(outcome.hidden)
        suppressed += [(f, "external", f"recorded in the baseline {baseline}") for f in outcome.hidden]
        if outcome.stale:
            stale = outcome.stale
            notes.append(f"{stale} baseline entr{'y is' if stale == 1 else 'ies are'} stale (no longer found); rewrite it with --write-baseline")
    elif write_baseline:
        _fail("--write-baseline needs --baseline FILE")

    if not result.files and paths != ["-"]:  # as ruff says it: a run that checked nothing is not a pass
        sys.stderr.write("stabcheck: warning: no Python files found under the given path(s): all excluded or git-ignored (see --show-files, --no-respect-gitignore)\n")
    report = reporters.Report(
        files=result.files,
        device=result.device,
        notes=tuple(notes),
        statistics=statistics,
        color=_color() and output_file is None,
        version=__version__,
        suppressed=tuple(suppressed),
        baselined=baselined,
        root=repository_root(),
        cwd=os.getcwd(),
    )
    if statistics:
        _emit(reporters.statistics(findings, output_format), output_file)
    else:
        _emit(reporters.get(output_format)(findings, report), output_file)
    failing = [f for f in findings if f.status != "refuted" and (settings.for_path(f.path).fail_on == "suspected" or f.status == "confirmed" or f.stage == "confirmed")]
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
# in this order: `stabcheck --help` lists the commands as they are registered
import stabcheck.cli.trace  # noqa: E402, F401, I001
import stabcheck.cli.confirm  # noqa: E402, F401
import stabcheck.cli.explain_finding  # noqa: E402, F401
import stabcheck.cli.server  # noqa: E402, F401
from stabcheck.config import Settings, load_config
from stabcheck._discover import force_excluded
from stabcheck._discover import repository_root
from stabcheck._discover import discover, display
from stabcheck._lastrun import record

__all__ = ["app", "check", "explain", "init", "rules", "run"]


def run() -> None:  # console-script entry point
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    run()
