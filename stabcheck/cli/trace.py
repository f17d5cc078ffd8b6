"""`stabcheck trace TARGET...`: trace entries or functions in a worker and report what JAX sees.

    stabcheck trace fixtures/traced/scenario_entries.py
    stabcheck trace fixtures/scenarios/higher_order.py:ENTRIES --transforms grad,jvp
    stabcheck trace model.py:loss --arg 'f32[8,2]' --arg '{"w": "f32[2,2]"}' --static 2=3

Importing this module imports neither JAX nor the user's code.
"""

from __future__ import annotations

import ast
import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Annotated, Optional

import typer

from stabcheck import reporters, suppress
from stabcheck.api import __version__, enabled_rules, per_file_ignored
from stabcheck.cli._app import Exit, app, color, emit, fail, guard, load_config
from stabcheck.config import Config, UsageError, check_timeout
from stabcheck.finding import Finding, merge
from stabcheck.traced import specs
from stabcheck.traced.entries import TRANSFORMS


@app.command()
@guard
def trace(
    targets: Annotated[list[str], typer.Argument(help="path.py[:NAME] or pkg.module:NAME (an @entry factory, an Entry/(fn, args)/dict of them, or a function).")],
    arg: Annotated[Optional[list[str]], typer.Option("--arg", help="Abstract argument: dtype[shape] such as 'f32[8,2]', 'f32?[]' (weak scalar), or a JSON pytree of specs.")] = None,
    static: Annotated[Optional[list[str]], typer.Option("--static", help="Static argument POSITION=VALUE, e.g. 1=3.")] = None,
    dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Size of a named dimension, e.g. n=8 (for specs and jaxtyping annotations).")] = None,
    transforms: Annotated[Optional[str], typer.Option("--transforms", help=f"Comma-separated transforms to trace, overriding the entries': {', '.join(TRANSFORMS)}.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds per entry before the worker is stopped.")] = None,
    memory_limit: Annotated[Optional[str], typer.Option(help="Memory limit of the worker: 4GiB, or 0.5 (share of RAM); 0 for none.")] = None,
    output_format: Annotated[str, typer.Option("--output-format", help="full | concise | json | sarif | github | markdown | junit")] = "full",
    output_file: Annotated[Optional[Path], typer.Option(help="Write the report to this file.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Read configuration from this file.")] = None,
    exit_zero: Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even when there are findings.")] = False,
) -> None:
    """Trace TARGETs abstractly (make_jaxpr, no FLOPs) in a worker and report hazards at the user's lines."""
    # the worker machinery loads when a command runs it, not on every start-up (`stabcheck check`)
    from stabcheck.worker.stage import absolute_target, memory_limit_bytes, run_targets

    if output_format not in reporters.FORMATS:
        fail(f"invalid value for `--output-format`: {output_format!r}; expected one of: {', '.join(reporters.FORMATS)}")
    chosen = tuple(t.strip() for t in (transforms or "").split(",") if t.strip()) or None
    for t in chosen or ():
        if t not in TRANSFORMS:
            fail(f"invalid value for `--transforms`: {t!r}; expected a comma-separated list drawn from: {', '.join(TRANSFORMS)}")
    if timeout is not None:
        check_timeout(timeout, "--timeout", "command line")
    try:
        dims = specs.parse_dims(dim or [])
        trees = [specs.to_json(specs.parse_tree(a, dims)) for a in arg or []]
        statics = specs.parse_static(static or [])
    except specs.SpecError as e:
        raise UsageError(str(e)) from None
    cfg = load_config(config, [t.rpartition(":")[0] or t for t in targets], {})
    for t in targets:
        where = t.rpartition(":")[0] if ":" in t else t
        if (where.endswith(".py") or "/" in where) and not os.path.isfile(where):
            fail(f"target file does not exist: {where}")
        problem = _target_problem(t)
        if problem:
            fail(f"bad target `{t}`: {problem}")
    payload_targets = [{"target": absolute_target(t), "args": trees, "static": {str(k): v for k, v in statics.items()}, "dims": dims, **({"transforms": list(chosen)} if chosen else {})} for t in targets]
    limit = memory_limit_bytes(memory_limit if memory_limit is not None else cfg.memory_limit)
    progress = None
    if sys.stderr.isatty() and not os.environ.get("CI"):
        from stabcheck.worker.progress import Progress  # rich: loaded only on a terminal

        progress = Progress(len(targets))
    try:
        findings, notes, _ = run_targets(payload_targets, timeout=float(timeout or cfg.timeout), memory_limit=limit, transforms=chosen, on_event=progress.event if progress else None)
    finally:
        if progress is not None:
            progress.close()
    findings = _filter(findings, cfg)
    report = reporters.Report(files=len(targets), notes=tuple(notes), color=color() and output_file is None, version=__version__)
    emit(reporters.get(output_format)(findings, report), output_file)
    raise Exit(0 if exit_zero or not findings else 1)


def _filter(findings: list[Finding], cfg: Config) -> list[Finding]:
    """Config select/ignore/per-file-ignores and inline suppressions, then one finding per line."""
    enabled = {r.code for r in enabled_rules(cfg)} | {"STB902"}
    sups: dict[str, list[suppress.Suppression]] = {}
    out = []
    for f in merge(findings):
        if f.code not in enabled or f.code in per_file_ignored(f.path, cfg):
            continue
        if f.path not in sups:
            try:
                sups[f.path] = suppress.parse(Path(f.path).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                sups[f.path] = []
        if any(s.line == f.line and suppress.matches(s, f.code, f.name) for s in sups[f.path]):
            continue
        out.append(f)
    return out


def _target_problem(target: str) -> str:
    """Why `target` cannot name anything, found without importing it (a usage error, exit 2):
    a module that is not on the path, or a NAME its file does not bind at module level."""
    where, sep, name = target.rpartition(":") if ":" in target else (target, "", "")
    if where.endswith(".py") or "/" in where or os.sep in where:
        origin: str | None = where
    else:
        if not where.replace(".", "").replace("_", "").isalnum():
            return f"`{where}` is neither a .py file nor a module name"
        parts = where.split(".")
        if parts[0] in sys.builtin_module_names:
            return ""
        search: list[str] | None = [os.getcwd(), *sys.path]
        spec = None
        for i, part in enumerate(parts):
            spec = PathFinder.find_spec(".".join(parts[: i + 1]), search)
            if spec is None:
                return f"no module `{'.'.join(parts[: i + 1])}` on the Python path"
            search = list(spec.submodule_search_locations or [])
            if i < len(parts) - 1 and not search:
                return f"`{'.'.join(parts[: i + 1])}` is a module, not a package"
        origin = spec.origin if spec is not None else None
    if not sep or not name or origin is None or not origin.endswith(".py"):
        return ""
    try:
        with open(origin, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return ""  # the worker reports it (STB901/STB902)
    head = name.split(".")[0]
    bound = module_names(tree)
    if bound is None:  # a star import may bind anything
        return ""
    if head in bound or "__getattr__" in bound:
        return ""
    return f"`{where}` defines no `{head}` at module level"


def module_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds at module level (defs, classes, imports, assignments, under
    if/try/with too; not inside functions or classes); None when a star import may bind any."""
    bound: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)  # what its body binds is not module level
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return None
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif not isinstance(node, ast.Lambda):
            todo += ast.iter_child_nodes(node)
    return bound
