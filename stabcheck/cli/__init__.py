"""The command line: parse, call the library, render, exit 0 (clean) / 1 (findings) / 2 (error)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stabcheck.api import __version__

app = typer.Typer(
    name="stabcheck",
    help="Type-stability linter and diagnostics for JAX: find what breaks `jit` and `grad` before it does.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

FormatOpt = Annotated[str, typer.Option("--output-format", help="full | concise | json | sarif | github | markdown | junit")]


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _fail(message: str) -> None:
    sys.stderr.write(f"stabcheck: error: {message}\n")
    raise _Exit(2)


def _csv(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _load_config(config_file: Path | None, paths: list[str], overrides: dict) -> "Config":  # noqa: F821
    from stabcheck.config import discover_config, from_mapping, load_config

    if config_file is not None and not config_file.is_file():
        _fail(f"config file not found: {config_file}")
    # a file the user names is trusted; one found in the checked tree may not start code
    cfg = load_config(config_file) if config_file is not None else discover_config(Path(paths[0]) if paths else Path.cwd())
    if overrides:
        cfg = from_mapping(overrides, source="command line", base=cfg)
    return cfg


def _from_cwd(target: str) -> str:
    """`path.py:NAME` made absolute (a dotted `pkg.mod:NAME` is left as it is)."""
    where, sep, name = target.rpartition(":") if ":" in target else (target, "", "")
    if where.endswith((".py", ".pyi")) or "/" in where or os.sep in where:
        where = os.path.abspath(where)
    return f"{where}{sep}{name}"


def _emit(text: str, output_file: Path | None) -> None:
    if output_file is not None:
        from stabcheck._files import write_atomic_nofollow

        write_atomic_nofollow(output_file, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stdout.isatty()


def _guard(fn):  # type: ignore[no-untyped-def]
    """Turn user errors into one line on stderr and exit 2, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        from stabcheck.config import ConfigError, UsageError

        try:
            return fn(*args, **kwargs)
        except _Exit as e:
            raise typer.Exit(e.code) from None
        except (ConfigError, UsageError) as e:
            sys.stderr.write(f"stabcheck: error: {e}\n")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            sys.stderr.write("stabcheck: interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # an internal error: say so, exit 2
            if os.environ.get("STABCHECK_DEBUG"):
                raise
            sys.stderr.write(f"stabcheck: internal error: {type(e).__name__}: {e} (set STABCHECK_DEBUG=1 for a traceback)\n")
            raise typer.Exit(2) from None

    return wrapper


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
    from stabcheck import api, reporters

    paths = paths or ["."]
    if output_format not in reporters.FORMATS:
        _fail(f"invalid value for `--output-format`: {output_format!r}; expected one of: {', '.join(reporters.FORMATS)}")
    if jobs is not None and jobs < 1:
        _fail(f"invalid value for `--jobs`: {jobs}; expected a positive integer")
    if timeout is not None:
        from stabcheck.config import check_timeout

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
        from stabcheck.config import from_mapping

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
        from stabcheck.fix import apply_fixes

        text, findings = apply_fixes(findings, write=fix and not diff, unsafe=unsafe_fixes, config=cfg)
        if diff:
            _emit(text, output_file)
            raise _Exit(0)
        if text:
            notes.append(text)
    if baseline is not None:
        from stabcheck import baseline as bl

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
    from stabcheck import registry
    from stabcheck.docs import render_rule

    rule = registry.get(code)
    if rule is None:
        _fail(f"unknown rule {code!r}; run `stabcheck rules` for the list")
    typer.echo(render_rule(rule))  # type: ignore[arg-type]


@app.command()
@_guard
def rules(output_format: FormatOpt = "full") -> None:
    """List every rule: code, slug, stages, summary."""
    import json

    from stabcheck import registry

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
    from stabcheck.init import init_project

    typer.echo(init_project(path, pre_commit=pre_commit, github=github, write=write), nl=False)


def _add_stage_commands() -> None:
    """`trace` lives in cli/trace.py, `confirm` and `matrix` in cli/confirm.py, `explain-finding`
    in cli/explain_finding.py, `server` in cli/server.py.

    Each module has `register(app, helpers)`; importing it must not import JAX.
    """
    import importlib

    helpers = {"guard": _guard, "emit": _emit, "color": _color, "fail": _fail, "Exit": _Exit, "load_config": _load_config}
    for name in ("stabcheck.cli.trace", "stabcheck.cli.confirm", "stabcheck.cli.explain_finding", "stabcheck.cli.server"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(app, helpers)


_add_stage_commands()


def run() -> None:  # console-script entry point
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    run()
