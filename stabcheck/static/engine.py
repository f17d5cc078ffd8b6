"""Runs the static rules over one file: decode, parse once, walk once, dispatch by node type.

Nothing a file contains can stop the run: undecodable bytes, syntax errors, NUL bytes and
pathological nesting become STB901; a crash of the analysis or of one rule becomes STB902 for that
file (the other rules still run); a file whose analysis runs past `FILE_TIME_LIMIT` seconds is
reported and skipped. The walk reads each node's fields directly (no `ast.iter_child_nodes`
generators) and does not descend into `Load`/`Store`/`Del` markers unless a rule asks for them.
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
from dataclasses import dataclass

from stabcheck import suppress
from stabcheck.config import Config
from stabcheck.finding import Finding, Span
from stabcheck.rule import Rule
from stabcheck.static.context import FileContext

_LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_CTX_TYPES = (ast.Load, ast.Store, ast.Del)

ANALYSIS_RECURSION_LIMIT = 12_000
FILE_TIME_LIMIT = 60.0  # seconds of static analysis per file before it is skipped (main thread only)

Handler = Callable[[ast.AST, FileContext], None]


@dataclass(slots=True)
class FileResult:
    findings: list[Finding]
    suppressions: list[suppress.Suppression]


class Dispatcher:
    """Maps an ast node type to the bound `visit_<Type>` methods of the enabled rules."""

    def __init__(self, rules: Iterable[type[Rule]]) -> None:
        table: dict[type, list[Handler]] = {}
        self.owner: dict[Handler, type[Rule]] = {}
        for cls in rules:
            if not cls.has_visitors():
                continue
            inst = cls()
            for attr in dir(cls):
                if attr.startswith("visit_"):
                    node_type = getattr(ast, attr[6:], None)
                    if isinstance(node_type, type):
                        h = getattr(inst, attr)
                        table.setdefault(node_type, []).append(h)
                        self.owner[h] = cls
        self.table: dict[type, list[Handler]] = table
        self.wants_ctx = any(t in table for t in _CTX_TYPES)


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


def check_bytes(data: bytes, path: str, config: Config, dispatcher: Dispatcher) -> FileResult:
    from stabcheck.rules.meta.syntax_error import SyntaxErrorRule

    try:
        source = decode(data)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(line, 1), message=f"`{path}` is not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); no rule could check it", help="save the file as UTF-8 or declare its encoding with a `# -*- coding: ... -*-` line")], [])
    except (LookupError, SyntaxError) as e:
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(1, 1), message=f"`{path}` declares an encoding Python cannot decode: {e}; no rule could check it", help="fix the `coding:` declaration")], [])
    return check_source(source, path, config, dispatcher)


def check_source(source: str, path: str, config: Config, dispatcher: Dispatcher) -> FileResult:
    from stabcheck.rules.meta.syntax_error import SyntaxErrorRule

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
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(line, max(1, e.offset or 1)), message=f"`{path}` does not parse: {msg}; no other rule ran on this file", help="fix the syntax error", snippet=(e.text or "").rstrip("\n"))], [])
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes, pathological nesting
        if isinstance(e, (RecursionError, MemoryError)):
            reason = f"it is nested too deeply for Python's parser ({type(e).__name__})"
        else:
            reason = f"{type(e).__name__}: {e}"[:200]
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(1, 1), message=f"`{path}` cannot be parsed: {reason}; no other rule ran on this file", help="check that this is a Python source file; split deeply nested expressions")], [])
    findings = _analyse(tree, source, path, config, dispatcher)
    try:
        sups = suppress.parse(source)
    except (tokenize.TokenError, SyntaxError, RecursionError):  # pragma: no cover - parse succeeded above
        sups = []
    return FileResult(findings, sups)


def _analyse(tree: ast.Module, source: str, path: str, config: Config, dispatcher: Dispatcher) -> list[Finding]:
    """Build the file's context and walk it, turning any failure into an STB902 finding."""
    from stabcheck.rules.meta.analysis_error import AnalysisError

    ctx: FileContext | None = None
    limit = sys.getrecursionlimit()
    with _time_limit(FILE_TIME_LIMIT):
        try:
            # long generated `a + b + ...` chains nest as deep as they are long; the analysis
            # recurses on expressions, so give it room (Python frames, not C stack, in 3.11+)
            sys.setrecursionlimit(max(limit, ANALYSIS_RECURSION_LIMIT))
            ctx = FileContext(path, source, tree, config)
            walk(tree, ctx, dispatcher)
        except RecursionError:
            return [*(ctx.findings if ctx else ()), AnalysisError.finding(path=path, span=Span(1, 1), message=f"`{path}` is nested too deeply to analyse; it was skipped, so hazards in it stay hidden", help="split the deeply nested expression")]
        except _TimeUp:
            return [*(ctx.findings if ctx else ()), AnalysisError.finding(path=path, span=Span(1, 1), message=f"the analysis of `{path}` ran past {FILE_TIME_LIMIT:g} s and was stopped; hazards in the rest of it stay hidden", help="report this file to the stabcheck maintainers; split it meanwhile")]
        except Exception as e:  # a bug in the shared analysis: this file only
            return [AnalysisError.finding(path=path, span=Span(1, 1), message=f"stabcheck's analysis crashed on `{path}`: {type(e).__name__}: {e}"[:300] + "; no rule checked this file", help="report this file to the stabcheck maintainers")]
        finally:
            sys.setrecursionlimit(limit)
    return ctx.findings


class _time_limit:
    """SIGALRM after `seconds` in the main thread (POSIX); a no-op elsewhere.

    An alarm already pending (pytest-timeout, the embedding program) is respected: when it is due
    first, no limit is set; otherwise it is re-armed with its remaining time on exit."""

    __slots__ = ("seconds", "active", "previous", "pending", "start")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = False
        self.previous: object = None
        self.pending = 0.0
        self.start = 0.0

    def __enter__(self) -> None:
        if self.seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            return
        pending, _interval = signal.getitimer(signal.ITIMER_REAL)
        if pending and pending <= self.seconds:
            return  # someone else's alarm comes first: leave it alone
        try:
            self.previous = signal.signal(signal.SIGALRM, _raise_time_up)
        except ValueError:  # pragma: no cover - not the main interpreter
            return
        self.pending, self.start = pending, time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self.active = True

    def __exit__(self, *exc: object) -> None:
        if not self.active:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)  # type: ignore[arg-type]
        if self.pending:
            signal.setitimer(signal.ITIMER_REAL, max(self.pending - (time.monotonic() - self.start), 1e-3))


def _raise_time_up(signum: int, frame: object) -> None:
    raise _TimeUp()


# -- the walk ----------------------------------------------------------------------------------
_FIELDS: dict[type, tuple[str, ...]] = {}
_AST = ast.AST


def children(node: ast.AST, with_ctx: bool = False) -> list[ast.AST]:
    """`list(ast.iter_child_nodes(node))` in the same order, without generators; `Load`/`Store`/
    `Del` markers are left out unless `with_ctx`."""
    if not with_ctx:
        return _children_fast(node)
    out: list[ast.AST] = []
    for name in node._fields:
        v = getattr(node, name, None)
        if v.__class__ is list:
            out.extend(x for x in v if isinstance(x, _AST))
        elif isinstance(v, _AST):
            out.append(v)
    return out


def walk(tree: ast.Module, ctx: FileContext, dispatcher: Dispatcher) -> None:
    """One depth-first walk; keeps ctx.ancestors / ctx.function / ctx.loops current.

    A rule whose handler raises is reported once (STB902) and not called again on this file.
    """
    table = dispatcher.table
    with_ctx = dispatcher.wants_ctx
    functions = ctx.analysis.functions
    exit_marker = _EXIT
    stack: list[object] = [tree]
    saved: list[tuple[object, object]] = []
    ancestors = ctx.ancestors
    broken: set[type[Rule]] = set()
    get_handlers = table.get
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        node = pop()
        if node is exit_marker:
            ancestors.pop()
            ctx.function, ctx.loops = saved.pop()  # type: ignore[assignment]
            continue
        handlers = get_handlers(node.__class__)
        if handlers:
            for h in handlers:
                try:
                    h(node, ctx)  # type: ignore[arg-type]
                except (RecursionError, _TimeUp):
                    raise
                except Exception as e:
                    table = _rule_crashed(ctx, dispatcher, h, node, e, broken, table)  # type: ignore[arg-type]
                    get_handlers = table.get
        kids = children(node, True) if with_ctx else _children_fast(node)  # type: ignore[arg-type]
        if not kids:
            continue
        saved.append((ctx.function, ctx.loops))
        if isinstance(node, _FUNCS):
            ctx.function = functions.get(node, ctx.function)
            ctx.loops = []
        elif isinstance(node, _LOOPS):
            ctx.loops = [*ctx.loops, node]
        ancestors.append(node)  # type: ignore[arg-type]
        push(exit_marker)
        kids.reverse()
        extend(kids)


_EXIT = object()


def _children_fast(node: ast.AST) -> list[ast.AST]:
    cls = node.__class__
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f for f in cls._fields if f != "ctx")
    out: list[ast.AST] = []
    for name in names:
        v = getattr(node, name, None)
        if v.__class__ is list:
            for x in v:
                if isinstance(x, _AST):
                    out.append(x)
        elif isinstance(v, _AST):
            out.append(v)
    return out


def _rule_crashed(ctx: FileContext, dispatcher: Dispatcher, handler: Handler, node: ast.AST, error: Exception, broken: set[type[Rule]], table: dict[type, list[Handler]]) -> dict[type, list[Handler]]:
    """Report a rule's crash once per file; returns a copy of `table` without that rule."""
    from stabcheck.rules.meta.analysis_error import AnalysisError

    rule = dispatcher.owner.get(handler)
    if rule is None or rule in broken:
        return table
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
    # the walk goes on without this rule (the dispatcher's own table is shared by every file)
    return {t: [h for h in hs if dispatcher.owner.get(h) is not rule] for t, hs in table.items()}
