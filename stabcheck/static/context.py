"""What a static rule sees of one file while the engine walks it."""

from __future__ import annotations

import ast
import re
import dataclasses
from collections.abc import Container
from typing import TYPE_CHECKING

from stabcheck.finding import Finding, Frame, char_col
from stabcheck.static import xfile
from stabcheck.static.analysis import Analysis, FunctionInfo, TypeOracle, array_annotated
from stabcheck.static.names import Names
from stabcheck.static.walk import children, walk

if TYPE_CHECKING:
    from stabcheck.config import Config


_LINE_END = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")


def split_lines_keepends(source: str) -> list[str]:
    """`ast._splitlines_no_ff`: lines with their ends, broken at `\\r\\n`, `\\r` and `\\n` only (as
    the parser counts lines). One regex split instead of its character-by-character loop: 1 ms
    instead of 15 ms for a 2,000-line file, paid on every check (the language server's too)."""
    return [line for line in _LINE_END.split(source) if line]


class FileContext:
    """The parsed file, its names and traced-value analysis, and the walk's position."""

    def __init__(self, path: str, source: str, tree: ast.Module, config: Config, record: Container[type] = (), types: TypeOracle | None = None) -> None:
        self.path = path
        self.source = source
        self.lines = source.splitlines()
        self.tree = tree
        self.config = config
        self.names = Names(tree)
        self.types = types  # mypy's view when the typed tier is on
        self.analysis = Analysis(tree, self.names, self.types, record)
        self.findings: list[Finding] = []
        self._ast_lines: list[bytes] | None = None
        # set by the engine before each visit
        self.node: ast.AST = tree
        self.parent: ast.AST | None = None
        self.function: FunctionInfo | None = None
        self.loops: tuple[ast.AST, ...] = ()  # loops enclosing the node within the current function, outermost first
        self._parents: dict[ast.AST, ast.AST] | None = None
        self.abstract_codes: frozenset[str] = frozenset()  # set by the engine (`Dispatcher.abstract_codes`)

    # -- queries rules use ------------------------------------------------------------
    def qualname(self, expr: ast.AST) -> str | None:
        return self.names.qualname(expr)

    @property
    def function_name(self) -> str:
        return self.function.qualname if self.function is not None else ""

    @property
    def in_transform(self) -> bool:
        return self.function is not None and self.function.transformed

    @property
    def in_abstract(self) -> bool:
        """Inside code that a transform stages out (jit, vmap, scan body, ...)."""
        return self.function is not None and self.function.abstract

    def is_traced(self, expr: ast.AST) -> bool:
        return self.analysis.is_traced(expr, self.function)

    def is_traced_array(self, expr: ast.AST) -> bool:
        return self.analysis.is_traced_array(expr, self.function)

    def proves_traced(self, expr: ast.AST) -> bool:
        """Does the analysis prove `expr` a traced array here (not merely possibly traced)? A name
        bound more than once counts by the assignment that reaches this use in straight-line code
        (`z = z * z + c` just above `if jnp.abs(z) > 2.0:`), where the analysis alone, which asks
        every binding of the name, does not prove it."""
        if self.analysis.proves_traced(expr, self.function):
            return True
        fn = self.function
        if fn is None or not fn.transformed:
            return False
        reaching: dict[str, ast.AST] = {}
        for name in {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}:
            value = self.reaching_value(name, expr)
            if value is not None:
                reaching[name] = value
        return self.analysis.proves_traced_at(expr, fn, reaching)

    def reaching_value(self, name: str, node: ast.AST) -> ast.AST | None:
        """The value of the plain assignment `name = value` that reaches `node` in straight-line
        code: the nearest binding above it in its block, or in the blocks of the `if`/`with`/`try`
        around it, not crossing a loop (an earlier iteration may have bound it) nor the function.
        None for a name the current function does not assign (a parameter, a global, a module)."""
        fn = self.function
        if fn is None or name not in self.analysis.assigned(fn):
            return None
        stmt: ast.AST | None = node
        while stmt is not None and not isinstance(stmt, ast.stmt):
            if isinstance(stmt, (ast.Lambda, ast.comprehension)):
                return None
            stmt = self.parent_of(stmt)
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)) and _binds(stmt, name):
            return None  # the loop's test or iterable sees what its body rebinds
        while stmt is not None:
            parent = self.parent_of(stmt)
            if parent is None or isinstance(parent, (ast.ExceptHandler, ast.match_case)):
                return None
            block = next((b for f in ("body", "orelse", "finalbody") if isinstance(b := getattr(parent, f, None), list) and any(x is stmt for x in b)), None)
            if block is None or (isinstance(parent, ast.Try) and block is not parent.body):
                return None  # an `except`/`else`/`finally` block: not straight after the `try` body
            for sib in reversed(block[: next(i for i, x in enumerate(block) if x is stmt)]):
                if not _binds(sib, name):
                    continue
                if isinstance(sib, (ast.Assign, ast.AnnAssign)) and sib.value is not None:
                    targets = sib.targets if isinstance(sib, ast.Assign) else [sib.target]
                    if len(targets) == 1 and isinstance(targets[0], ast.Name):
                        return sib.value
                return None
            if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module, ast.For, ast.AsyncFor, ast.While)):
                return None
            stmt = parent
        return None

    @property
    def ancestors(self) -> list[ast.AST]:
        """The nodes enclosing the visited one, outermost (the module) first. Built on demand
        from a parent table made once per file: few visits ever need more than `parent`."""
        out: list[ast.AST] = []
        up = self.parent_of(self.node)
        while up is not None:
            out.append(up)
            up = self.parent_of(up)
        out.reverse()
        return out

    def parent_of(self, node: ast.AST | None) -> ast.AST | None:
        """The node that holds `node` in the file's tree (None for the module itself)."""
        table = self._parents
        if table is None:
            table = self._parents = {ch: n for n in walk(self.tree) for ch in children(n)}
        return table.get(node) if node is not None else None

    def text(self, node: ast.AST) -> str:
        """The source text of a node, as `ast.get_source_segment` gives it, but with the file's
        lines split once (get_source_segment splits the whole file on every call)."""
        try:
            start, end = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
            col, end_col = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
        except AttributeError:
            return ast.unparse(node)
        if end is None or end_col is None:
            return ast.unparse(node)
        lines = self._ast_lines
        if lines is None:
            lines = self._ast_lines = [ln.encode() for ln in split_lines_keepends(self.source)]
        if not 0 <= start <= end < len(lines):
            return ast.unparse(node)
        if start == end:
            return lines[start][col:end_col].decode(errors="replace")
        parts = [lines[start][col:].decode(errors="replace"), *(ln.decode(errors="replace") for ln in lines[start + 1 : end]), lines[end][:end_col].decode(errors="replace")]
        return "".join(parts)

    def add(self, finding: Finding) -> None:
        """Record a finding; its span's columns, UTF-8 bytes as `ast` gives them, become characters."""
        line = finding.span.line
        span = finding.span.in_chars(self.lines)
        if span is not finding.span:
            finding = finding.refine(span=span)
        snippet = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        finding = finding.refine(snippet=snippet) if not finding.snippet else finding
        fn = self.function
        if fn is not None and fn.transformed and not fn.entry and not finding.chains and finding.path == self.path:
            if finding.code in xfile.NEEDS_ARRAY and not self._proved_across_files(finding, fn):
                return
            chains = self.analysis.chains(fn, line, finding.span.col, self.path, abstract=finding.code in self.abstract_codes)
            if chains:  # reached through calls from transformed code: say from where
                finding = finding.refine(chains=tuple((c[0], *(self._in_chars(fr) for fr in c[1:])) for c in chains))
        self.findings.append(finding)

    def _in_chars(self, fr: Frame) -> Frame:
        """A chain's call-site frame in this file, its `ast` byte column made a character column
        (the innermost frame is the finding's own, already converted)."""
        if fr.path != self.path or not 0 < fr.line <= len(self.lines):
            return fr
        col = char_col(self.lines[fr.line - 1], fr.col)
        return fr if col == fr.col else dataclasses.replace(fr, col=col)

    def _proved_across_files(self, finding: Finding, fn: FunctionInfo) -> bool:
        """A tracer leak in code only another file's call makes transformed stands only when the
        value is an array by its own code (`static.xfile.proved`)."""
        if not xfile.only_across_files(fn):
            return True
        s = finding.span
        node = next((n for n in walk(fn.node) if getattr(n, "lineno", None) == s.line and getattr(n, "col_offset", None) == s.col - 1 and getattr(n, "end_lineno", None) == (s.end_line or s.line) and getattr(n, "end_col_offset", -2) == (s.end_col or 0) - 1), None)
        if node is None:
            return False
        assigned: dict[str, list[ast.AST]] = {}
        for n in self.analysis.own_nodes(fn):
            if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and n.value is not None:
                for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                    if isinstance(t, ast.Name):
                        assigned.setdefault(t.id, []).append(n.value)
        seen: set[str] = set()

        def array(name: str) -> bool:
            """An array-annotated parameter, or a local assigned an array (`norm = (v * v).sum()`)."""
            if name in seen:
                return False
            seen.add(name)
            if name in assigned:
                return any(xfile.proved(v, self.names, array) for v in assigned[name])
            owner = self.analysis._param_owner(name, fn)
            return owner is not None and array_annotated(owner, name)

        return any(xfile.proved(v, self.names, array) for v in xfile.consumed(node, finding.code))


def _binds(stmt: ast.AST, name: str) -> bool:
    """Does `stmt` (anything under it, nested scopes included: an over-estimate) bind `name`?"""
    for n in ast.walk(stmt):
        if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, (ast.Store, ast.Del)):
            return True
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name:
            return True
        if isinstance(n, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name.split(".")[0]) == name for a in n.names):
            return True
        if isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names:
            return True
    return False
