"""`stabcheck explain-finding LOCATION`: one finding with its whole evidence.

    stabcheck explain-finding src/helpers.py:12
    stabcheck explain-finding src/helpers.py:12:8 --code STB101 --trace

LOCATION is `path.py:LINE` or `path.py:LINE:COL`. The project (PATHS, default: the directory the
configuration was found in, else `.`) is checked as `check` would (static by default,
`--trace/--confirm` add the later stages), so that the chains through other files are found; then
the findings at LOCATION are printed with every step of their instability chains (each with its
source line), the jaxpr equations at the line, what JAX raised and the confirm run.

Exit 0 when a finding is shown, 1 when there is none at LOCATION, 2 for a bad LOCATION.
Importing this module imports neither JAX nor the user's code.
"""

from __future__ import annotations

import io
import json
import linecache
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from stabcheck import api
from stabcheck.cli._app import Exit, app, color, emit, fail, guard, load_config
from stabcheck.finding import Finding
from stabcheck.reporters import Report, get

_LOCATION = re.compile(r"^(?P<path>.+?):(?P<line>\d+)(?::(?P<col>\d+))?$")
# evidence keys in the order a person reads them; the rest follow alphabetically
_ORDER = ("stages", "stage", "entry", "transform", "equation", "equations", "jaxpr", "error", "jax_message", "confirmed", "refuted", "first_nonfinite", "dtypes", "kinds", "compiles", "traces")


def parse_location(text: str) -> tuple[str, int, int | None]:
    """`path.py:12` or `path.py:12:5` -> (path, line, col); ValueError naming what is wrong."""
    m = _LOCATION.match(text.strip())
    if m is None:
        raise ValueError(f"invalid LOCATION {text!r}; expected PATH:LINE or PATH:LINE:COL, e.g. src/model.py:12")
    line, col = int(m["line"]), int(m["col"]) if m["col"] else None
    if line < 1 or (col is not None and col < 1):
        raise ValueError(f"invalid LOCATION {text!r}: lines and columns start at 1")
    return m["path"], line, col


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normpath(a) == os.path.normpath(b)


def select(findings: list[Finding], path: str, line: int, col: int | None, code: str | None) -> list[Finding]:
    """The findings at `path:line` (and covering `col`), of `code` when given."""
    out = []
    for f in findings:
        if f.line != line or not _same_file(f.path, path):
            continue
        if code and code.upper() not in (f.code, f.name.upper()):
            continue
        if col is not None:
            end = f.span.end_col if (f.span.end_line or f.line) == f.line else None
            if not (col == f.col or (end is not None and f.col <= col < end)):
                continue
        out.append(f)
    return out


def _source(path: str, line: int) -> str:
    return linecache.getline(path, line).rstrip()


def render(findings: list[Finding], *, color: bool = False) -> str:
    """Each finding as `check` shows it (`full`), then its chains step by step and its evidence."""
    # rich: imported only when rendering
    from rich.console import Console
    from rich.markup import escape  # rich: only when a table or a bar is drawn

    parts: list[str] = []
    for f in findings:
        parts.append(get("full")([f], Report(files=1, color=color)).rsplit("\n\n", 1)[0] + "\n")
        buf = io.StringIO()
        con = Console(file=buf, force_terminal=color, no_color=not color, width=120, highlight=False, soft_wrap=True)
        if f.chains:
            for i, c in enumerate(f.chains, 1):
                con.print(f"[bold]chain {i} of {len(f.chains)}[/] (innermost -> outermost):")
                for depth, fr in enumerate(c):
                    under = f", under {escape(fr.via)}" if fr.via else ""
                    con.print(f"  {'  ' * depth}{escape(fr.path)}:{fr.line}:{fr.col} in {escape(fr.function or '<module>')}{under}")
                    text = _source(fr.path, fr.line).strip()
                    if text:
                        con.print(f"  {'  ' * depth}  [blue]{fr.line} |[/] {escape(text)}")
        else:
            con.print("[bold]chain:[/] none: the finding is in the transformed function itself")
        if f.evidence:
            con.print("[bold]evidence:[/]")
            keys = [k for k in _ORDER if k in f.evidence] + sorted(k for k in f.evidence if k not in _ORDER)
            for k in keys:
                value = f.evidence[k]
                if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                    text = "\n".join(value)  # equations, stages: one per line
                else:
                    text = value if isinstance(value, str) else json.dumps(value, default=str)
                lines = str(text).strip().splitlines() or [""]
                con.print(f"  [dim]{escape(k.replace('_', ' '))}:[/] {escape(lines[0])}")
                for extra in lines[1:]:
                    con.print(f"      {escape(extra)}")
        stages = f.evidence.get("stages") or [f.stage]
        if "confirmed" not in stages and f.status != "refuted":
            con.print("[dim]not run for real: add --confirm to run the entry and confirm or refute it[/]" if "traced" in stages else "[dim]static only: add --trace (or --confirm) to see what JAX does at this line[/]")
        parts.append(buf.getvalue())
    return "\n".join(parts)


@app.command("explain-finding")
@guard
def explain_finding(
    location: Annotated[str, typer.Argument(help="PATH:LINE or PATH:LINE:COL of the finding.")],
    paths: Annotated[Optional[list[str]], typer.Argument(help="What to check for the callers (default: the project the configuration is in, else .).")] = None,
    code: Annotated[Optional[str], typer.Option(help="Only the finding of this rule code or slug.")] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Also trace the entries found under PATHS (runs user code in a worker).")] = False,
    confirm: Annotated[bool, typer.Option("--confirm", help="Also run the entries for real to confirm or refute the finding.")] = False,
    types: Annotated[Optional[bool], typer.Option("--types/--no-types", help="Use mypy's inferred types (typed tier).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds per entry for --trace/--confirm.")] = None,
    output_format: Annotated[str, typer.Option("--output-format", help="full | json")] = "full",
    config: Annotated[Optional[Path], typer.Option(help="Read configuration from this file.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the cache.")] = False,
) -> None:
    """Show one finding with its whole evidence: chains, jaxpr equations, JAX's error, the confirm run."""
    try:
        path, line, col = parse_location(location)
    except ValueError as e:
        fail(str(e))
    if output_format not in ("full", "json"):
        fail(f"invalid value for `--output-format`: {output_format!r}; expected one of: full, json")
    if not os.path.isfile(path):
        fail(f"no such file: {path}")
    overrides: dict[str, Any] = {} if types is None else {"types": types}
    cfg = load_config(config, [path], overrides)
    if not paths:
        paths = [cfg.root if cfg.source and cfg.root else "."]
        if not any(_under(path, p) for p in paths):
            paths = [os.path.dirname(path) or "."]
    elif not any(_under(path, p) for p in paths):
        paths = [*paths, path]
    stages = ("static", *(("traced",) if trace or confirm else ()), *(("confirm",) if confirm else ()))
    result = api.run(paths, cfg, api.Options(cache=not no_cache, stages=stages, timeout=timeout))
    found = select(result.findings, path, line, col, code)
    if not found:
        here = sorted({f"{f.line}:{f.col} {f.code}" for f in result.findings if _same_file(f.path, path)}, key=lambda s: tuple(int(x) for x in s.split(" ")[0].split(":")))
        what = f" of {code}" if code else ""
        hint = f"; findings in this file: {', '.join(here[:12])}" if here else "; this file has no findings"
        sys.stderr.write(f"stabcheck: no finding{what} at {location}{hint}\n")
        raise Exit(1)
    if output_format == "json":
        emit(json.dumps([f.to_dict() for f in found], indent=2, default=str) + "\n", None)
    else:
        emit(render(found, color=color()), None)
    raise Exit(0)


def _under(path: str, root: str) -> bool:
    a, b = os.path.realpath(path), os.path.realpath(root)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)
