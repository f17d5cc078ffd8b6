"""The library entry points: run the stages over paths, apply config and suppressions.

    for finding in stabcheck.check_paths(["src/"]):
        print(finding.code, finding.path, finding.line, finding.message)
"""

from __future__ import annotations

import ast
import ctypes
import fnmatch
import gc
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stabcheck import _notebook, registry, suppress
from stabcheck._cache import Cache, cache_home, code_fingerprint, digest, project_cache_dir
from stabcheck._discover import SourceError, discover, display, read_source, source_problem
from stabcheck.config import (
    DEFAULT_MAX_FILE_SIZE,
    Config,
    ConfigError,
    Settings,
    check_timeout,
    project_root,
    rel_to_root,
    trust_note,
)
from stabcheck.errors import UsageError
from stabcheck.finding import Finding, Span, merge
from stabcheck.reporters import clean
from stabcheck.rule import Rule
from stabcheck.rules.meta.analysis_error import AnalysisError
from stabcheck.rules.meta.syntax_error import SyntaxErrorRule
from stabcheck.rules.meta.unused_suppression import UnusedSuppression
from stabcheck.static import typed, xfile
from stabcheck.static.engine import NEWER_SYNTAX, Dispatcher, FileResult, check_bytes, newer_syntax
from stabcheck.static.engine import decode as decode_source  # noqa: F401 - public: source bytes as Python reads them (`check -` with --fix)

__version__ = "0.1.0"


@dataclass(frozen=True, slots=True)
class Options:
    """How to run (as opposed to Config: what to report)."""

    jobs: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    stages: tuple[str, ...] | None = None  # overrides config.stages
    timeout: float | None = None
    memory_limit: str | None = None
    transforms: tuple[str, ...] | None = None  # overrides entries' transforms
    recorded: str | None = None  # signatures recorded by `pytest --stabcheck-record` (default: found under the paths)
    progress: bool = False


@dataclass(slots=True)
class Result:
    findings: list[Finding]
    files: int = 0
    notes: list[str] = field(default_factory=list)
    device: dict[str, Any] | None = None
    rules: tuple[type[Rule], ...] = ()
    # findings an inline `# noqa` / `# stabcheck: ignore` hid, with the comment's text (SARIF
    # keeps them as suppressed results; no other format shows them or counts them)
    suppressed: list[tuple[Finding, str]] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # the files checked, as findings show them


def enabled_rules(config: Config) -> tuple[type[Rule], ...]:
    chosen: dict[str, type[Rule]] = {}
    for sel in (*config.select, *config.extend_select):
        for r in registry.matching(sel):
            chosen[r.code] = r
    for sel in config.ignore:
        for r in registry.matching(sel):
            chosen.pop(r.code, None)
    return tuple(sorted(chosen.values(), key=lambda r: r.code))


def check_paths(paths: Sequence[str], config: Config | None = None, options: Options | None = None) -> Iterator[Finding]:
    """Check files and directories; yields findings in a stable order (path, line, col, code)."""
    yield from run(paths, config, options).findings


def check_source(source: str, path: str = "<string>", config: Config | None = None) -> list[Finding]:
    """Run the static stage on one source string, suppressions applied."""
    config = config or Config()
    rules = enabled_rules(config)
    res = check_bytes(source.encode("utf-8"), path, config, Dispatcher(rules))
    return finalize({path: res}, rules, config, ("static",))


def check_stdin(data: bytes, path: str, config: Config | None = None) -> Result:
    """The static stage on source read from stdin, checked as the file `path` (`--stdin-filename`:
    its name selects per-file-ignores; a `.ipynb` name reads a notebook)."""
    config = _ready(config or Config())
    rules = enabled_rules(config)
    install_project_facts(project_facts(path, config))
    results = {path: _check_one(path, path, replace(config, types=False), Dispatcher(rules), data)}
    result = Result(findings=[], files=1, rules=rules, checked=[path])
    newer = take_newer_syntax(results)
    if newer:
        result.notes.append(_newer_syntax_note(newer))
    result.findings = finalize(results, rules, config, ("static",), result.suppressed)
    if path.endswith(".ipynb"):

        try:
            starts = _notebook.cells(data).starts
        except _notebook.NotebookError:
            starts = ()
        result.findings = [_notebook.to_cells(f, starts) for f in result.findings]
    return result


def run(paths: Sequence[str], config: Config | Settings | None = None, options: Options | None = None, *, force_exclude: bool = False) -> Result:
    """Run the stages over `paths`. `config` is one Config for every file, or `Settings` (each
    file checked with the settings of the nearest config file above it, as ruff does)."""
    settings = config if isinstance(config, Settings) else Settings(fixed=config or Config())
    options = options or Options()
    if options.timeout is not None:
        check_timeout(options.timeout, "timeout", "Options")
    if options.jobs is not None and (isinstance(options.jobs, bool) or not isinstance(options.jobs, int) or options.jobs < 1):
        raise ConfigError("jobs", options.jobs, "a positive integer", "Options")
    base = _ready(settings.for_path(paths[0]) if paths else settings.root)  # entries, stages, cache
    stages = options.stages or base.stages
    skipped: list[str] = []
    files = list(discover(paths, settings, skipped=skipped, force_exclude=force_exclude))
    groups: dict[Config, list[Path]] = {}
    ready: dict[int, Config] = {}  # by the identity of the settings' Config: one look-up per config
    for file in files:
        raw = settings.for_path(file)
        cfg = ready.get(id(raw))
        if cfg is None:
            cfg = ready[id(raw)] = _ready(raw)
        groups.setdefault(cfg, []).append(file)
    cache_dir = _cache_dir(paths, base, options)
    # the typed tier and the traced stage get only files that can be read; the static pass
    # reports each of the others as one STB901 (special file, too large, unreadable, bad name)
    readable = [f for cfg, fs in groups.items() for f in fs if source_problem(f, cfg.max_file_size) is None]
    unreadable = set(files) - set(readable)
    typed_files = [f for cfg, fs in groups.items() if cfg.types for f in fs if f.suffix != ".ipynb" and f not in unreadable]
    type_notes = _prepare_types(typed_files, replace(base, types=bool(typed_files)), options)
    result = Result(findings=[], files=len(files), checked=[display(f) for f in files])
    for cfg in dict.fromkeys([base, *groups]):
        note = trust_note(cfg)
        if note and note not in result.notes:
            result.notes.append(note)
    if skipped:
        result.notes.append(_skipped_note(skipped))
    results: dict[str, FileResult] = {}
    owner: dict[str, Config] = {}
    all_rules: dict[str, type[Rule]] = {}
    for cfg, fs in groups.items():
        rules = enabled_rules(cfg)
        all_rules.update((r.code, r) for r in rules)
        part = _static(fs, cfg, options, rules, cache_dir, result.notes)
        results.update(part)
        owner.update((shown, cfg) for shown in part)
    result.rules = tuple(sorted(all_rules.values(), key=lambda r: r.code))
    result.notes.extend(type_notes)
    newer = take_newer_syntax(results)
    if newer:
        result.notes.append(_newer_syntax_note(newer))
    if "static" not in stages:
        results = {k: FileResult([f for f in v.findings if f.code in ("STB901",)], v.suppressions) for k, v in results.items()}
    later: list[Finding] = []
    if "traced" in stages or "confirm" in stages:
        # the worker machinery loads only for --trace/--confirm (it imports no JAX here)
        from stabcheck.worker.stage import run_stage

        later, notes, device = run_stage([f for f in readable if f.suffix != ".ipynb"], results, base, options, stages)
        result.notes.extend(notes)
        result.device = device
        _seed_from_trace(later, results, {display(f): str(f) for f in files}, base, enabled_rules(base))
    read = set(results)
    for f in later:
        if f.path not in read and f.snippet and _outside(f.path, paths):
            f = f.refine(snippet="")  # a line of a file outside the checked tree is not printed
        results.setdefault(f.path, FileResult([], _sups_for(f.path, base.max_file_size))).findings.append(f)
    by_config: dict[Config, dict[str, FileResult]] = {}
    for path, res in results.items():
        cfg = owner.get(path) or _ready(settings.for_path(path))
        by_config.setdefault(cfg, {})[path] = res
    for cfg, part in by_config.items():
        result.findings += finalize(part, enabled_rules(cfg), cfg, tuple(stages), result.suppressed)
    result.findings.sort(key=lambda f: f.sort_key)
    result.suppressed.sort(key=lambda fs: fs[0].sort_key)
    if any(p.endswith(".ipynb") for p in result.checked):
        result.findings = _cell_locations(result.findings)
        result.suppressed = [(f, text) for f, text in zip(_cell_locations([f for f, _ in result.suppressed]), [t for _, t in result.suppressed])]
    return result


# tracer leaks the traced stage saw happen: the function they are in runs under a transform
_PROVEN_TRACED = frozenset({"STB101", "STB102", "STB103"})
# what the static stage then judges about that function's structure
_STRUCTURE = frozenset({"STB201", "STB202", "STB203", "STB204"})


def _seed_from_trace(later: list[Finding], results: dict[str, FileResult], real_of: dict[str, str], config: Config, rules: tuple[type[Rule], ...]) -> None:
    """The traced stage's proof feeds the static one: a tracer leak that JAX raised (STB101-103)
    proves that its function runs under a transform with the values on the offending line traced,
    even where no transform is visible in the source (an entry jits a plain function). That file
    is checked again with the function seeded as transformed (`static.xfile` seeds), and what the
    static rules then find of its return and carry structure (STB201-204: the union a failing `if`
    chooses between) is added — the user fixing the `if` still has the union to fix. Such a finding
    is proven: the values that choose it are the ones JAX just showed to be traced."""
    wanted: dict[str, xfile.Seeds] = {}
    for f in later:
        if f.code not in _PROVEN_TRACED or f.stage not in ("traced", "confirmed") or f.path not in results or f.path not in real_of:
            continue
        source = _read_text(real_of[f.path])
        found = _enclosing_def(source, f.span.line) if source is not None else None
        if found is None:
            continue
        qual, params = found
        line = source.splitlines()[f.span.line - 1] if source is not None else ""
        pos = [i for i, name in enumerate(params) if name not in ("self", "cls") and re.search(rf"\b{re.escape(name)}\b", line)]
        if not pos:
            continue
        chains = [[fr.to_dict() for fr in c] for c in f.chains[:1]]
        bucket = wanted.setdefault(f.path, {}).setdefault(qual, [])
        seed = {"pos": pos, "kw": [], "star": None, "abstract": True, "chains": chains}
        if seed not in bucket:
            bucket.append(seed)
    if not wanted:
        return
    dispatcher = Dispatcher(rules)
    for path, seeds in sorted(wanted.items()):
        res = results[path]
        merged: xfile.Seeds = {k: list(v) for k, v in (res.seeds or {}).items()}
        for qual, extra in seeds.items():
            merged.setdefault(qual, []).extend(s for s in extra if s not in merged.get(qual, []))
        seen = {(x.code, x.span.line) for x in res.findings}
        again = _check_one(real_of[path], path, config, dispatcher, seeds=merged)
        for x in again.findings:
            if x.code in _STRUCTURE and (x.code, x.span.line) not in seen and x.function.split(".<locals>.")[0] in seeds:
                res.findings.append(x.refine(stage="traced", confidence="proven", evidence={**x.evidence, "seeded_by": "the traced stage: JAX raised a tracer leak in this function"}))


def _enclosing_def(source: str, line: int) -> tuple[str, list[str]] | None:
    """The qualified name and positional parameters of the innermost def holding LINE."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    best: tuple[str, list[str]] | None = None

    def visit(body: list[ast.stmt], prefix: str) -> None:
        nonlocal best
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= line <= (node.end_lineno or node.lineno):
                a = node.args
                best = (f"{prefix}{node.name}", [x.arg for x in (*a.posonlyargs, *a.args)])
                visit(node.body, f"{prefix}{node.name}.<locals>.")

    visit(tree.body, "")
    return best


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def take_newer_syntax(results: dict[str, FileResult]) -> list[str]:
    """The files only a newer Python parses (`engine.NEWER_SYNTAX`), their STB901 taken out of
    `results`: nothing is wrong with them, so it is one note for the run; they are not checked."""
    newer = sorted(k for k, r in results.items() if any(f.code == "STB901" and NEWER_SYNTAX in f.evidence for f in r.findings))
    for k in newer:
        r = results[k]
        results[k] = replace(r, findings=[f for f in r.findings if not (f.code == "STB901" and NEWER_SYNTAX in f.evidence)])
    return newer


def _newer_syntax_note(newer: list[str]) -> str:
    shown = ", ".join(f"`{clean(s)}`" for s in newer[:3]) + (f" and {len(newer) - 3} more" if len(newer) > 3 else "")
    n = len(newer)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"{n} file{'s' * (n != 1)} not checked (of a notebook, the cells): valid Python for a newer interpreter than Python {here}, which runs stabcheck, "
        f"cannot parse (type parameters, `type` aliases, nested f-string quotes...): {shown}; run stabcheck with the project's Python"
    )


def _skipped_note(skipped: list[str]) -> str:
    shown = ", ".join(f"`{clean(s)}`" for s in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    n = len(skipped)
    return f"skipped {n} symbolic link{'s' * (n != 1)} leading outside the checked tree: {shown} (not read; name a file on the command line to check it)"


def _outside(path: str, roots: Sequence[str]) -> bool:
    """Whether `path` lies outside every checked path (and the working directory)."""
    real = os.path.realpath(path)
    for r in (*roots, "."):
        top = os.path.realpath(r)
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return False
    return True


def _cache_dir(paths: Sequence[str], config: Config, options: Options) -> Path | None:
    """Where this run's caches live: `--cache-dir`, else a directory of this project in the user's
    cache home (never in the checked tree); None without a cache."""
    if not options.cache:
        return None
    if options.cache_dir:
        return Path(options.cache_dir)

    root = Path(config.root) if config.source else project_root(Path(paths[0]) if paths else Path.cwd())
    return project_cache_dir(root)


def _cell_locations(findings: list[Finding]) -> list[Finding]:
    """Notebook findings located by cell (`cell 3`, line 2 of it), as ruff shows them."""

    starts: dict[str, tuple[tuple[int, int], ...]] = {}
    out = []
    for f in findings:
        if not f.path.endswith(".ipynb") or "cell" in f.evidence:
            out.append(f)
            continue
        if f.path not in starts:
            try:
                starts[f.path] = _notebook.cells(Path(f.path).read_bytes()).starts
            except (OSError, _notebook.NotebookError):
                starts[f.path] = ()
        out.append(_notebook.to_cells(f, starts[f.path]))
    return out


def _ready(config: Config) -> Config:
    """`types` unset: as `STABCHECK_TYPES` says (else off)."""
    if config.types is None:
        return replace(config, types=typed.on_by_default())
    return config


def _sups_for(path: str, max_size: int = DEFAULT_MAX_FILE_SIZE) -> list[suppress.Suppression]:
    try:
        return suppress.parse(read_source(path, max_size).decode("utf-8"))
    except (SourceError, UnicodeDecodeError, ValueError):
        return []


# -- the static stage over many files ---------------------------------------------------------
_WORKER: tuple[Config, Dispatcher] | None = None


def _init_worker(config: Config, codes: tuple[str, ...], types: dict[str, Any] | None = None, parent: int | None = None, modules: frozenset[str] = frozenset(), x64: dict[str, str] | None = None) -> None:
    global _WORKER
    _die_with_parent(parent)
    xfile.install(modules, x64)
    if types:
        typed.install(types)
    rules = [r for r in registry.all_rules() if r.code in codes]
    _WORKER = (config, Dispatcher(rules))


def _check_many(batch: list[tuple[str, str]]) -> list[tuple[str, list[dict], list[list], list[dict]]]:
    assert _WORKER is not None
    config, dispatcher = _WORKER
    out = []
    for real, shown in batch:
        res = _check_one(real, shown, config, dispatcher)
        out.append((shown, [f.to_dict() for f in res.findings], [s.to_list() for s in res.suppressions], res.exports))
    return out


def _check_one(real: str, shown: str, config: Config, dispatcher: Dispatcher, data: bytes | None = None, seeds: dict[str, list[dict[str, Any]]] | None = None) -> FileResult:
    """One file's static result; `seeds`: its defs that other files' transformed code calls
    with traced arguments (`static.xfile`)."""
    with xfile.active(seeds):
        return _check_one_seeded(real, shown, config, dispatcher, data)


def _check_one_seeded(real: str, shown: str, config: Config, dispatcher: Dispatcher, data: bytes | None) -> FileResult:
    if data is None:
        try:
            data = read_source(real, config.max_file_size)
        except SourceError as e:  # never opened when special or too large; one finding, the run goes on
            return FileResult([SyntaxErrorRule.finding(path=shown, span=Span(1, 1), message=f"`{shown}` {e.message}", help=e.help, detail=e.message)], [])
    if real.endswith(".ipynb"):

        try:
            cells = _notebook.cells(data)
        except _notebook.NotebookError as e:
            return FileResult([SyntaxErrorRule.finding(path=shown, span=Span(1, 1), message=f"`{shown}` cannot be checked: {e}", help="save it with Jupyter (nbformat 4)")], [])
        res = check_bytes(cells.source.encode("utf-8"), shown, config, dispatcher)  # the typed tier does not read notebooks
        res.findings.extend(
            SyntaxErrorRule.finding(
                path=shown,
                span=Span(line, col),
                message=f"a cell of `{shown}` does not parse: {message}; the other cells were checked",
                detail=message,
                # a cell only a newer Python parses (a kernel's nested f-string quotes): a note
                evidence={NEWER_SYNTAX: f"{sys.version_info.major}.{sys.version_info.minor}"} if newer_syntax(text, message) else None,
            )
            for (line, col, message), text in zip(cells.broken, cells.broken_sources)
        )
        return res
    res = check_bytes(data, shown, config, dispatcher)
    if config.types:
        types = typed.lookup(real)
        if types is not None:
            untyped = res
            res = typed.refine(data, shown, config, dispatcher, types, res)
            res.exports, res.seeds = untyped.exports, untyped.seeds
    return res


def _prepare_types(files: list[Path], config: Config, options: Options) -> list[str]:
    """The typed tier (opt-in): mypy runs once over the checked files, in a bounded subprocess,
    before the static pass; `_check_one` (here or in a worker) looks each file's types up by path.
    Its cache is per user and shared by projects (`cache_home()/typed`, or `<--cache-dir>/typed`),
    not the project's own cache directory: jax's analysis is paid once per environment."""
    typed.install({})
    if not config.types:
        return []
    if options.cache:
        root: Path | None = (Path(options.cache_dir) if options.cache_dir else cache_home()) / "typed"
    else:
        root = None
    bounds = typed.Bounds(timeout=config.types_timeout, memory=typed.memory_bytes(config.types_memory_limit), memory_text=config.types_memory_limit)
    progress = _TypedProgress() if options.progress else None
    try:
        prepared = typed.prepare(files, root, bounds=bounds, on_run=progress)
    finally:
        if progress is not None:
            progress.close()
    typed.install(prepared.files)
    return prepared.notes


class _TypedProgress:
    """One line on a terminal while mypy runs (`options.progress`: stderr is a TTY, not CI)."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, files: int, first: bool) -> None:
        cost = " (first run: ~30 s, analysing jax's sources; later runs reuse the cache)" if first else ""
        sys.stderr.write(f"stabcheck: typed tier: running mypy on {files} file{'s' if files != 1 else ''}{cost}...")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:  # the line is done: clear it
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def _start_method() -> str:
    """`fork` is the cheap way to start workers, but forking a process that runs other threads
    (JAX's, when stabcheck is used as a library or from the pytest plugin) can deadlock the
    child: then `forkserver` (workers fork from a clean single-threaded server) or `spawn`."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1 and "jax" not in sys.modules:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def cpu_count() -> int:
    """The cores this process may use (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _static(files: list[Path], config: Config, options: Options, rules: tuple[type[Rule], ...], cache_dir: Path | None = None, notes: list[str] | None = None) -> dict[str, FileResult]:
    """Cache look-ups (content hash), then the misses: in this process, or in `jobs` forked workers."""
    results: dict[str, FileResult] = {}
    cache = None
    if cache_dir is not None:
        cache = Cache(cache_dir, _cache_key(config, rules))
        if cache.note and notes is not None:
            notes.append(cache.note)
        if not cache.usable:
            cache = None
    todo: list[tuple[str, str]] = []
    hashes: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    jobs = min(options.jobs or cpu_count(), cpu_count())  # more processes than cores only cost memory
    modules = xfile.ModuleMap(display(f) for f in files)
    # one read of each file: its content hash (for the cache) and the projects that turn x64 on or
    # name it, a project-level fact (`static.xfile.source_x64`: only files that spell the flag are parsed)
    sums: dict[str, str] = {}
    x64: dict[str, str] = {}
    for f in files:
        shown = display(f)
        root = xfile.project_root(str(f))
        if cache is None and x64.get(root) == "on":
            continue
        try:
            data = read_source(f, config.max_file_size)
        except SourceError:  # reported by _check_one, never cached
            continue
        if cache is not None:
            sums[shown] = digest(data)
            if jobs == 1:
                contents[shown] = data  # read once
        if x64.get(root) != "on":
            xfile.merge_x64(x64, root, xfile.source_x64(data, notebook=str(f).endswith(".ipynb")))
    for root, fact in _x64_elsewhere(files, {r for r, v in x64.items() if v == "on"}, config).items():
        xfile.merge_x64(x64, root, fact)
    xfile.install(modules.names(), x64)
    # a file's calls into other checked modules (its exports) depend on which modules are checked
    # with it: a result cached in a run of other files (one file alone) would miss them
    linked = digest("\n".join(sorted(modules.names())).encode())
    real_of = {display(f): str(f) for f in files}
    for f in files:
        shown = display(f)
        if cache is not None and shown in sums:
            h = digest(f"{sums[shown]}|{linked}".encode())
            level = xfile.x64_fact(str(f))
            if level is not None:  # a project-level fact the file's findings depend on
                h = digest((f"{h}|x64" if level == "on" else f"{h}|x64-{level}").encode())
            if config.types:
                t = typed.lookup(f)
                h = digest(f"{h}|{t.digest() if t is not None else ''}".encode())
            hashes[shown] = h
            hit = cache.get(shown, h)
            extra = cache.extra(shown) if hit is not None else None
            if hit is not None and xfile.valid(extra):
                results[shown] = FileResult(*hit, extra["exports"], extra["seeds"])  # type: ignore[index]
                contents.pop(shown, None)
                continue
        todo.append((str(f), shown))
    with gc_tuned():
        if jobs > 1 and len(todo) >= 8:
            _check_parallel(todo, jobs, config, rules, results)
        dispatcher = Dispatcher(rules)
        for real, shown in todo:
            if shown not in results:  # serial run, or files a dead worker did not return
                results[shown] = _check_one(real, shown, config, dispatcher, contents.pop(shown, None))
        rechecked = _settle(results, real_of, modules, config, dispatcher)
    if cache is not None:
        for shown in sorted({s for _, s in todo} | rechecked):
            if shown in hashes and shown in results:
                r = results[shown]
                cache.put(shown, hashes[shown], r.findings, r.suppressions, {"exports": r.exports, "seeds": r.seeds})
        cache.save()
    return results


# files of a partly checked project read for its x64 fact (each only for the flag's bytes)
X64_SCAN_LIMIT = 5000


def _x64_elsewhere(files: Sequence[Path], known: set[str], config: Config, skip: Sequence[Path] | None = None) -> dict[str, str]:
    """The projects of `files` (not in `known`) where a file this run does not check, or the
    project's test configuration (`xfile.config_x64`: tox's `setenv`, pytest-env), turns x64 on
    ("on") or names it ("named"; `xfile.source_x64`). The x64 fact is the project's, so it must
    not depend on which of its files a run names:
    a pre-commit run on the staged files, `check -` on an editor's buffer or `check src/model.py`
    gives what `check .` gives. Only a real project (`xfile.is_project`) is read, its files as
    `check ROOT` would find them (the config's excludes), at most X64_SCAN_LIMIT of them; `skip`:
    the files not to read (default: `files`, whose fact the run takes from them)."""
    checked = {os.path.realpath(f) for f in (files if skip is None else skip)}
    found: dict[str, str] = {}
    for root in sorted({xfile.project_root(str(f)) for f in files} - known):
        if not xfile.is_project(root):
            continue
        xfile.merge_x64(found, root, xfile.config_x64(root))
        if found.get(root) == "on":
            continue
        try:
            for n, other in enumerate(discover([root], config)):
                if n >= X64_SCAN_LIMIT:
                    break
                if os.path.realpath(other) in checked:
                    continue
                try:
                    data = read_source(other, config.max_file_size)
                except SourceError:
                    continue
                xfile.merge_x64(found, root, xfile.source_x64(data, notebook=other.suffix == ".ipynb"))
                if found.get(root) == "on":
                    break
        except (UsageError, OSError):  # the tree changed under us: the checked files' fact stands
            continue
    return found


def project_facts(path: str, config: Config, *, with_itself: bool = False) -> dict[str, str]:
    """For a file checked alone (`check -`, the language server): the project-level facts that
    `check .` takes from the project's other files (`_x64_elsewhere`): the roots turning x64 on
    or naming it.
    `with_itself`: the file's saved text counts too (facts shared by every open file of the
    project); otherwise its text is the one being checked, which the rules read themselves."""
    if not os.path.isfile(path):
        return {}
    return _x64_elsewhere([Path(path)], set(), config, skip=() if with_itself else (Path(path),))


def install_project_facts(facts: dict[str, str]) -> None:
    xfile.install(xfile.installed(), facts)


def _settle(results: dict[str, FileResult], real_of: dict[str, str], modules: Any, config: Config, dispatcher: Dispatcher) -> set[str]:
    """Calls across files (`static.xfile`): check again, with their seeds, the files whose defs
    other files' transformed code calls with traced arguments, until the seeds no longer change
    (a warm cache already holds the settled results: nothing is checked again)."""
    rechecked: set[str] = set()
    for _ in range(4):
        want = xfile.seeds_for({p: r.exports for p, r in results.items()}, modules)
        stale = [p for p in sorted(results) if p in real_of and (want.get(p) or {}) != (results[p].seeds or {})]
        if not stale:
            break
        for p in stale:
            results[p] = _check_one(real_of[p], p, config, dispatcher, seeds=want.get(p))
            rechecked.add(p)
    return rechecked


def _check_parallel(todo: list[tuple[str, str]], jobs: int, config: Config, rules: tuple[type[Rule], ...], results: dict[str, FileResult]) -> None:
    """Forked workers check interleaved batches. If a worker dies (killed for memory, a crash), the
    files it did not return are checked again one by one in a fresh single worker, so the file that
    kills it is found and reported (STB902) and no other file is lost."""
    ctx = multiprocessing.get_context(_start_method())
    initargs = (config, tuple(r.code for r in rules), _types_registry(config), os.getpid(), xfile.installed(), xfile.installed_x64())

    def collect(batches: list[list[tuple[str, str]]], workers: int) -> bool:
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=initargs) as pool, _workers_end_with_us():
                for batch_out in pool.map(_check_many, batches):
                    for shown, fds, sps, exports in batch_out:
                        results[shown] = FileResult([Finding.from_dict(d) for d in fds], [suppress.Suppression.from_list(s) for s in sps], exports)
        except (BrokenProcessPool, OSError):
            return False
        return True

    # largest files first, dealt round-robin into small batches: the batches come out of a similar
    # size, and the last ones are short, so no core waits long on another at the end
    todo = sorted(todo, key=lambda t: -_size(t[0]))
    if collect([b for b in (todo[i :: jobs * 16] for i in range(jobs * 16)) if b], jobs):
        return
    missing = [t for t in todo if t[1] not in results]
    while missing:
        if not collect([[t] for t in missing], 1):
            real, shown = next(t for t in missing if t[1] not in results)  # in order: the one it died on
            results[shown] = FileResult([AnalysisError.finding(path=shown, span=Span(1, 1), message=f"the worker process checking `{shown}` died (killed for memory, or crashed); this file was not checked", help="run `stabcheck check` on this file alone with --jobs 1 to see the error")], [])
        missing = [t for t in missing if t[1] not in results]


def _die_with_parent(parent: int | None) -> None:
    """In a pool worker: ask the kernel for SIGTERM when the process that started us dies (Linux),
    so that a killed stabcheck (SIGKILL too) leaves no worker holding its stdout."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent and os.getppid() == 1:  # it died before we asked
        os._exit(1)


class _workers_end_with_us:
    """While a pool runs: SIGTERM to stabcheck terminates every pool worker first, then ends
    stabcheck as SIGTERM would (exit status 128+15), so no orphan keeps writing to its stdout.
    Only the main thread may set a signal handler: elsewhere (stabcheck as a library in a thread)
    this does nothing, and the workers' parent-death signal still ends them."""

    def __enter__(self) -> None:
        self.previous: Any = None
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self.previous = signal.signal(signal.SIGTERM, self._terminate)
        except (ValueError, OSError):
            self.previous = None

    @staticmethod
    def _terminate(signum: int, frame: object) -> None:
        children = multiprocessing.active_children()
        for p in children:
            try:
                p.terminate()
            except OSError:
                pass
        for p in children:
            p.join(timeout=5)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            try:
                signal.signal(signal.SIGTERM, self.previous)
            except (ValueError, OSError):
                pass


class gc_tuned:
    """Fewer garbage collections while checking: ASTs are big, short-lived and mostly acyclic.

    Young collections are rare (a high first threshold), full ones still run now and then for the
    reference cycles a file's analysis leaves behind, and what existed before the run is frozen
    out of the collector's scans."""

    def __enter__(self) -> None:
        self.saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(100_000, 20, 10)

    def __exit__(self, *exc: object) -> None:
        gc.set_threshold(*self.saved)
        gc.unfreeze()


def _types_registry(config: Config) -> dict[str, Any] | None:
    if not config.types:
        return None
    return typed.registry()


def _cache_key(config: Config, rules: tuple[type[Rule], ...]) -> str:
    """Version, stabcheck's own code, the enabled rules and every config value (bar where it was read)."""
    parts = [__version__, code_fingerprint(), ",".join(r.code for r in rules), repr(replace(config, root=".", source=""))]
    return digest("|".join(parts).encode())[:16]


# -- config, suppressions, merging ---------------------------------------------------------------
def finalize(results: dict[str, FileResult], rules: tuple[type[Rule], ...], config: Config, stages: tuple[str, ...], suppressed: list[tuple[Finding, str]] | None = None) -> list[Finding]:
    """The findings of enabled rules, after per-file ignores and suppressions (with STB900 for the
    unused ones), in a stable order; the findings a suppression hid go to `suppressed`."""

    enabled = {r.code for r in rules}
    by_code = {r.code: r for r in registry.all_rules()}
    by_slug = {r.name: r for r in registry.all_rules()}
    run_stages = {"static"} | ({"traced"} if "traced" in stages else set()) | ({"traced", "confirmed"} if "confirm" in stages else set())
    out: list[Finding] = []
    for path in sorted(results):
        res = results[path]
        ignored = per_file_ignored(path, config)
        # a hidden guess still uses the suppression on its line: without `preview` it is not
        # shown, but the `# noqa` is not unused (with `preview` it would be reported)
        findings = [f for f in merge(res.findings) if f.code in enabled and f.code not in ignored]
        used: set[tuple[int, int, str]] = set()
        sups_by_line: dict[int, list[suppress.Suppression]] = {}
        for s in res.suppressions:
            sups_by_line.setdefault(s.line, []).append(s)
        for f in findings:
            shown = is_shown(f, config)
            hit = False
            for line in {f.span.line, f.span.end_line or f.span.line}:
                for s in sups_by_line.get(line, ()):
                    if suppress.matches(s, f.code, f.name):
                        if not hit and suppressed is not None and shown:
                            suppressed.append((f, s.text))
                        hit = True
                        for n in s.names or ("*",):
                            if n in (f.code, f.name) or n == "*":
                                used.add((s.line, s.col, n))
            if not hit and shown:
                out.append(f)
        if "STB900" in enabled and "STB900" not in ignored:
            for s in res.suppressions:
                for n in s.names:
                    rule = by_code.get(n) or by_slug.get(n)
                    if rule is None and not n.upper().startswith("STB") and "[" not in s.text:
                        continue  # another tool's code
                    if rule is not None and (rule.code not in enabled or not set(rule.stages) & run_stages or rule.code in ignored):
                        continue
                    if (s.line, s.col, n) in used:
                        continue
                    what = f"unknown rule `{n}`" if rule is None else f"`{n}`"
                    out.append(UnusedSuppression.finding(path=path, span=Span(s.line, s.col), message=f"unused suppression of {what}: no such finding on this line", detail=n))
    return sorted(out, key=lambda f: f.sort_key)


def is_shown(f: Finding, config: Config) -> bool:
    """A static guess (a finding whose premises the analysis could not prove) is a hypothesis:
    shown with `preview`, and otherwise only once a later stage has confirmed it (merged into a
    traced or confirmed finding, which is proven)."""
    return f.confidence == "proven" or config.preview


def per_file_ignored(path: str, config: Config) -> set[str]:
    """Codes the config's `per-file-ignores` turn off for `path`: a glob matches the path relative
    to the config's directory (wherever stabcheck runs from), or the file's name."""
    codes: set[str] = set()
    rel = rel_to_root(path, config) if config.per_file_ignores else ""
    for glob, sels in config.per_file_ignores:
        if fnmatch.fnmatchcase(rel, glob) or fnmatch.fnmatchcase(os.path.basename(path), glob):
            for sel in sels:
                codes |= {r.code for r in registry.matching(sel)}
    return codes


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
