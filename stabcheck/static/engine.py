"""Runs the static rules over one file: decode, parse once, walk once, dispatch by node type.

Nothing a file contains can stop the run: undecodable bytes, syntax errors, NUL bytes and
pathological nesting become STB901; a crash of the analysis or of one rule becomes STB902 for that
file (the other rules still run); a file whose analysis runs past `FILE_TIME_LIMIT` seconds of CPU time is
reported and skipped (CPU time: the same files whatever the machine's load). There is one walk per file: `Analysis` records, as it collects scopes and
calls, every node of a type some rule visits (with its function, loops and parent), and `replay`
calls the handlers on that record instead of walking the tree again (`static.walk` says which
fields are read).
"""

from __future__ import annotations

import ast
import codecs
import re
import signal
import sys
import threading
import time
import tokenize
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stabcheck import suppress
from stabcheck.finding import Finding, Span
from stabcheck.rule import Rule
from stabcheck.rules.meta.analysis_error import AnalysisError
from stabcheck.rules.meta.syntax_error import SyntaxErrorRule
from stabcheck.static import xfile
from stabcheck.static.analysis import TypeOracle
from stabcheck.static.context import FileContext

if TYPE_CHECKING:
    from stabcheck.config import Config

_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_UNVISITED = (ast.expr_context, ast.operator, ast.cmpop, ast.unaryop, ast.boolop)  # see static.walk

ANALYSIS_RECURSION_LIMIT = 12_000
FILE_TIME_LIMIT = 60.0  # CPU seconds of static analysis per file before it is skipped (main thread only)

Handler = Callable[[ast.AST, FileContext], None]


@dataclass(slots=True)
class FileResult:
    findings: list[Finding]
    suppressions: list[suppress.Suppression]
    # calls into other checked files, and the seeds this result was computed with (`static.xfile`)
    exports: list[dict[str, Any]] = field(default_factory=list)
    seeds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


_LEVELS = {"anywhere": 0, "transformed": 1, "abstract": 2}


@dataclass(slots=True)
class _Entry:
    """The handlers of one node type: `by_level[0]` run anywhere, `[1]` in transformed code,
    `[2]` in staged-out code (each list includes the ones before it); `callees` maps a call's
    callee to the handlers that asked for it, each with its own level."""

    by_level: tuple[list[Handler], list[Handler], list[Handler]]
    callees: dict[str, list[tuple[Handler, int]]] | None


class Dispatcher:
    """Maps an ast node type to the bound `visit_<Type>` methods of the enabled rules, sorted by
    what each declared with `rule.only` (where it looks, which callees)."""

    def __init__(self, rules: Iterable[type[Rule]]) -> None:
        rules = tuple(rules)
        # the file-level checks that need mypy's types, run by the typed tier after its walk
        self.typed_checks: tuple[Callable[[ast.Module, bytes, str, TypeOracle], list[Finding]], ...] = tuple(r.typed_check for r in rules if r.has_typed_check())
        self.handlers: list[tuple[type, Handler, int, frozenset[str] | None]] = []
        self.owner: dict[Handler, type[Rule]] = {}
        for cls in rules:
            if not cls.has_visitors():
                continue
            inst = cls()
            for attr in dir(cls):
                if not attr.startswith("visit_"):
                    continue
                node_type = getattr(ast, attr[6:], None)
                if not isinstance(node_type, type):
                    continue
                if issubclass(node_type, _UNVISITED):
                    raise ValueError(f"{cls.__name__}.{attr}: context markers and operators are not walked (read `node.ctx` / `node.op`)")
                h = getattr(inst, attr)
                callees = getattr(h, "stabcheck_callees", None)
                if callees is not None and node_type is not ast.Call:
                    raise ValueError(f"{cls.__name__}.{attr}: `only(callees=...)` applies to visit_Call only")
                self.handlers.append((node_type, h, _LEVELS[getattr(h, "stabcheck_inside", "anywhere")], callees))
                self.owner[h] = cls
        # the codes whose every handler runs only in staged-out code: their chains end in `jit`
        levels: dict[str, set[int]] = {}
        for _t, h, level, _c in self.handlers:
            levels.setdefault(self.owner[h].code, set()).add(level)
        self.abstract_codes = frozenset(code for code, lv in levels.items() if lv == {2})
        self.table: dict[type, _Entry] = {}
        for node_type, h, level, callees in self.handlers:
            entry = self.table.get(node_type)
            if entry is None:
                entry = self.table[node_type] = _Entry(([], [], []), None)
            if callees is None:
                for lv in range(level, 3):
                    entry.by_level[lv].append(h)
            else:
                if entry.callees is None:
                    entry.callees = {}
                for q in callees:
                    entry.callees.setdefault(q, []).append((h, level))


class _TimeUp(BaseException):
    """Raised by the per-file alarm; a BaseException so that rules' `except Exception` miss it."""


def decode(data: bytes) -> str:
    """Decode source bytes as Python does (BOM, coding cookie, UTF-8 default).

    Raises UnicodeDecodeError / LookupError / SyntaxError for undecodable files.
    """
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8")
    for line in data.split(b"\n", 2)[:2]:
        m = _COOKIE.match(line)
        if m:
            enc = m.group(1).decode("ascii", "replace")
            return data.decode(enc)
        if line.strip() and not line.lstrip().startswith(b"#"):
            break
    return data.decode("utf-8")


def check_bytes(data: bytes, path: str, config: Config, dispatcher: Dispatcher, types: TypeOracle | None = None) -> FileResult:
    """The file's findings and suppressions; `types` is mypy's view of it when the typed tier is on."""
    try:
        source = decode(data)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(line, 1), message=f"`{path}` is not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); no rule could check it", help="save the file as UTF-8 or declare its encoding with a `# -*- coding: ... -*-` line")], [])
    except (LookupError, SyntaxError) as e:
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(1, 1), message=f"`{path}` declares an encoding Python cannot decode: {e}; no rule could check it", help="fix the `coding:` declaration")], [])
    return check_source(source, path, config, dispatcher, types)


def check_source(source: str, path: str, config: Config, dispatcher: Dispatcher, types: TypeOracle | None = None) -> FileResult:
    nul = source.find("\0")
    if nul >= 0:
        line = source.count("\n", 0, nul) + 1
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(line, 1), message=f"`{path}` cannot be parsed: it contains NUL bytes (first on line {line}); no other rule ran on this file", help="check that this is a Python source file, not a binary one")], [])
    try:
        with warnings.catch_warnings():  # `invalid escape sequence` and friends are not ours to print
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=path, type_comments=False)
    except SyntaxError as e:
        line = e.lineno or 1
        msg = e.msg or "invalid syntax"
        newer = newer_syntax(source, msg)
        return FileResult(
            [
                SyntaxErrorRule.finding(
                    path=path,
                    span=Span(line, max(1, e.offset or 1)),
                    message=f"`{path}` does not parse: {msg}; no other rule ran on this file",
                    help="fix the syntax error",
                    snippet=(e.text or "").rstrip("\n"),
                    evidence={NEWER_SYNTAX: f"{sys.version_info.major}.{sys.version_info.minor}"} if newer else None,
                )
            ],
            [],
        )
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes, pathological nesting
        if isinstance(e, (RecursionError, MemoryError)):
            reason = f"it is nested too deeply for Python's parser ({type(e).__name__})"
        else:
            reason = f"{type(e).__name__}: {e}"[:200]
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(1, 1), message=f"`{path}` cannot be parsed: {reason}; no other rule ran on this file", help="check that this is a Python source file; split deeply nested expressions")], [])
    exports: list[dict[str, Any]] = []
    findings = _analyse(tree, source, path, config, dispatcher, types, exports)
    try:
        sups = suppress.parse(source)
    except (tokenize.TokenError, SyntaxError, RecursionError):  # pragma: no cover - parse succeeded above
        sups = []
    return FileResult(findings, sups, exports, xfile.current() or {})


NEWER_SYNTAX = "newer_syntax"  # evidence of an STB901 on a file only a newer Python parses (api makes it a note)


_NEWER = re.compile(r"^[ \t]*(?:type[ \t]+\w+[ \t]*[\[=]|(?:async[ \t]+)?def[ \t]+\w+[ \t]*\[|class[ \t]+\w+[ \t]*\[)", re.M)


def newer_syntax(source: str, message: str) -> bool:
    """Is a file this interpreter's `ast` rejects valid Python for a newer one (PEP 695 `type X =
    ...`, `def f[T]`, `class C[T]`; PEP 701 f-strings on Python 3.11)? Only a file that spells such
    a construct is read with libcst, which parses every version's grammar (it is imported here
    only: a file that does not parse is rare, and libcst can crash on pathological input)."""
    if not (_NEWER.search(source) or message.startswith("f-string")) or len(source) > 1_000_000:
        return False
    try:
        import libcst

        libcst.parse_module(source)
    except Exception:  # libcst's ParserSyntaxError, or anything else: a real syntax error
        return False
    return True


def _analyse(tree: ast.Module, source: str, path: str, config: Config, dispatcher: Dispatcher, types: TypeOracle | None = None, exports: list[dict[str, Any]] | None = None) -> list[Finding]:
    """Build the file's context and walk it, turning any failure into an STB902 finding; the
    calls into other checked files go to `exports` (`static.xfile`)."""
    ctx: FileContext | None = None
    limit = sys.getrecursionlimit()
    with _time_limit(FILE_TIME_LIMIT):
        try:
            # long generated `a + b + ...` chains nest as deep as they are long; the analysis
            # recurses on expressions, so give it room (Python frames, not C stack, in 3.11+)
            sys.setrecursionlimit(max(limit, ANALYSIS_RECURSION_LIMIT))
            ctx = FileContext(path, source, tree, config, dispatcher.table, types)
            ctx.abstract_codes = dispatcher.abstract_codes
            replay(ctx, dispatcher)
            if exports is not None:
                exports.extend(xfile.exports(ctx))
        except RecursionError:
            return [*(ctx.findings if ctx else ()), AnalysisError.finding(path=path, span=Span(1, 1), message=f"`{path}` is nested too deeply to analyse; it was skipped, so hazards in it stay hidden", help="split the deeply nested expression")]
        except _TimeUp:
            return [*(ctx.findings if ctx else ()), AnalysisError.finding(path=path, span=Span(1, 1), message=f"the analysis of `{path}` ran past {FILE_TIME_LIMIT:g} s of CPU time and was stopped; hazards in the rest of it stay hidden", help="report this file to the stabcheck maintainers; split it meanwhile")]
        except Exception as e:  # a bug in the shared analysis: this file only
            return [AnalysisError.finding(path=path, span=Span(1, 1), message=f"stabcheck's analysis crashed on `{path}`: {type(e).__name__}: {e}"[:300] + "; no rule checked this file", help="report this file to the stabcheck maintainers")]
        finally:
            sys.setrecursionlimit(limit)
    return ctx.findings


class _time_limit:
    """A signal after `seconds` of this process's CPU time (`ITIMER_VIRTUAL`: the file's own
    analysis, not the machine's load, so a busy CI runner stops the same files as an idle one),
    in the main thread (POSIX); a no-op elsewhere. A wall-clock alarm of someone else's
    (pytest-timeout, the embedding program) is another timer and left alone; a CPU-time one
    already pending is respected: when it is due first, no limit is set; otherwise it is
    re-armed with its remaining time on exit."""

    __slots__ = ("seconds", "active", "previous", "pending", "start")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = False
        self.previous: object = None
        self.pending = 0.0
        self.start = 0.0

    def __enter__(self) -> None:
        if self.seconds <= 0 or not hasattr(signal, "ITIMER_VIRTUAL") or threading.current_thread() is not threading.main_thread():
            return
        pending, _interval = signal.getitimer(signal.ITIMER_VIRTUAL)
        if pending and pending <= self.seconds:
            return  # someone else's timer comes first: leave it alone
        try:
            self.previous = signal.signal(signal.SIGVTALRM, _raise_time_up)
        except ValueError:  # pragma: no cover - not the main interpreter
            return
        self.pending, self.start = pending, time.process_time()
        signal.setitimer(signal.ITIMER_VIRTUAL, self.seconds)
        self.active = True

    def __exit__(self, *exc: object) -> None:
        if not self.active:
            return
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, self.previous)  # type: ignore[arg-type]
        if self.pending:
            signal.setitimer(signal.ITIMER_VIRTUAL, max(self.pending - (time.process_time() - self.start), 1e-3))


def _raise_time_up(signum: int, frame: object) -> None:
    raise _TimeUp()


# -- the visits ------------------------------------------------------------------------------
def replay(ctx: FileContext, dispatcher: Dispatcher) -> None:
    """Call the rules' handlers on the nodes `Analysis` recorded in its walk, in source order,
    with `ctx.node`, `ctx.parent`, `ctx.function` and `ctx.loops` set for each; a handler declared
    with `rule.only` is called only where it asked to be.

    A rule whose handler raises is reported once (STB902) and not called again on this file.
    """
    broken: set[type[Rule]] = set()
    get_entry = dispatcher.table.get
    qualname = ctx.names.qualname
    for node, function, loops, parent in ctx.analysis.events:
        entry = get_entry(node.__class__)
        if entry is None:
            continue
        level = 0 if function is None or not function.transformed else 2 if function.abstract else 1
        handlers = entry.by_level[level]
        if entry.callees is not None:
            wanted = entry.callees.get(qualname(node.func))  # type: ignore[attr-defined]
            if wanted:
                handlers = [*handlers, *(h for h, lv in wanted if lv <= level)]
        if not handlers:
            continue
        ctx.node, ctx.parent, ctx.function, ctx.loops = node, parent, function, loops
        for h in handlers:
            if broken and dispatcher.owner[h] in broken:
                continue
            try:
                h(node, ctx)  # type: ignore[arg-type]
            except (RecursionError, _TimeUp):
                raise
            except Exception as e:
                _rule_crashed(ctx, dispatcher, h, node, e, broken)


def _rule_crashed(ctx: FileContext, dispatcher: Dispatcher, handler: Handler, node: ast.AST, error: Exception, broken: set[type[Rule]]) -> None:
    """Report a rule's crash once per file; the rule is then skipped for the rest of the file."""
    rule = dispatcher.owner.get(handler)
    if rule is None or rule in broken:
        return
    broken.add(rule)
    line = getattr(node, "lineno", 1) or 1
    ctx.add(
        AnalysisError.finding(
            path=ctx.path,
            span=Span(line, (getattr(node, "col_offset", 0) or 0) + 1),
            message=f"rule {rule.code} [{rule.name}] crashed here with {type(error).__name__}: {error}"[:300] + f"; {rule.code} did not check the rest of this file",
            help="report this snippet to the stabcheck maintainers; the other rules still ran",
            detail=f"{rule.code}:{type(error).__name__}",
        )
    )
