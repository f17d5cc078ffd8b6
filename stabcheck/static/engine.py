"""Runs the static rules over one file: decode, parse once, walk once, dispatch by node type."""

from __future__ import annotations

import ast
import codecs
import io
import re
import tokenize
from collections import defaultdict
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


@dataclass(slots=True)
class FileResult:
    findings: list[Finding]
    suppressions: list[suppress.Suppression]


class Dispatcher:
    """Maps an ast node type to the bound `visit_<Type>` methods of the enabled rules."""

    def __init__(self, rules: Iterable[type[Rule]]) -> None:
        self.table: dict[type, list[Callable[[ast.AST, FileContext], None]]] = defaultdict(list)
        for cls in rules:
            if not cls.has_visitors():
                continue
            inst = cls()
            for attr in dir(cls):
                if attr.startswith("visit_"):
                    node_type = getattr(ast, attr[6:], None)
                    if isinstance(node_type, type):
                        self.table[node_type].append(getattr(inst, attr))
        self.table = dict(self.table)  # type: ignore[assignment]


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
    from stabcheck.rules.meta.analysis_error import AnalysisError

    try:
        source = decode(data)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(line, 1), message=f"`{path}` is not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); it cannot be checked", help="save the file as UTF-8 or declare its encoding with a `# -*- coding: ... -*-` line")], [])
    except (LookupError, SyntaxError) as e:
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(1, 1), message=f"`{path}` declares an encoding Python cannot decode: {e}", help="fix the `coding:` declaration")], [])
    return check_source(source, path, config, dispatcher)


def check_source(source: str, path: str, config: Config, dispatcher: Dispatcher) -> FileResult:
    from stabcheck.rules.meta.analysis_error import AnalysisError
    from stabcheck.rules.meta.syntax_error import SyntaxErrorRule

    try:
        tree = ast.parse(source, filename=path, type_comments=False)
    except SyntaxError as e:
        line = e.lineno or 1
        msg = e.msg or "invalid syntax"
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(line, max(1, e.offset or 1)), message=f"`{path}` does not parse: {msg}; no other rule ran on this file", help="fix the syntax error", snippet=(e.text or "").rstrip("\n"))], [])
    except (ValueError, RecursionError, MemoryError) as e:  # NUL bytes, pathological nesting
        reason = "it contains NUL bytes" if "null" in str(e).lower() else f"{type(e).__name__}: {e}"[:200]
        return FileResult([SyntaxErrorRule.finding(path=path, span=Span(1, 1), message=f"`{path}` cannot be parsed: {reason}", help="check that this is a Python source file")], [])
    try:
        ctx = FileContext(path, source, tree, config)
        walk(tree, ctx, dispatcher)
    except RecursionError:
        return FileResult([AnalysisError.finding(path=path, span=Span(1, 1), message=f"`{path}` is nested too deeply to analyse; it was skipped", help="split the deeply nested expression")], [])
    try:
        sups = suppress.parse(source)
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - parse succeeded above
        sups = []
    return FileResult(ctx.findings, sups)


def walk(tree: ast.Module, ctx: FileContext, dispatcher: Dispatcher) -> None:
    """One depth-first walk; keeps ctx.ancestors / ctx.function / ctx.loops current."""
    table = dispatcher.table
    functions = ctx.analysis.functions
    exit_marker = object()
    stack: list[object] = [tree]
    saved: list[tuple[object, object]] = []
    ancestors = ctx.ancestors
    while stack:
        node = stack.pop()
        if node is exit_marker:
            ancestors.pop()
            fn, loops = saved.pop()
            ctx.function, ctx.loops = fn, loops  # type: ignore[assignment]
            continue
        handlers = table.get(type(node))
        if handlers:
            for h in handlers:
                h(node, ctx)  # type: ignore[arg-type]
        children = list(ast.iter_child_nodes(node))  # type: ignore[arg-type]
        if not children:
            continue
        saved.append((ctx.function, ctx.loops))
        if isinstance(node, _FUNCS):
            ctx.function = functions.get(node, ctx.function)
            ctx.loops = []
        elif isinstance(node, _LOOPS):
            ctx.loops = [*ctx.loops, node]
        ancestors.append(node)  # type: ignore[arg-type]
        stack.append(exit_marker)
        stack.extend(reversed(children))
