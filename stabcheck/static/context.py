"""What a static rule sees of one file while the engine walks it."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from stabcheck.finding import Finding
from stabcheck.static.analysis import Analysis, FunctionInfo, TypeOracle
from stabcheck.static.names import Names
from stabcheck.static.typed import current as typed_current

if TYPE_CHECKING:
    from stabcheck.config import Config


class FileContext:
    """The parsed file, its names and traced-value analysis, and the walk's position."""

    def __init__(self, path: str, source: str, tree: ast.Module, config: Config) -> None:
        self.path = path
        self.source = source
        self.lines = source.splitlines()
        self.tree = tree
        self.config = config
        self.names = Names(tree)
        self.types: TypeOracle | None = typed_current()  # mypy's view when the typed tier is on
        self.analysis = Analysis(tree, self.names, self.types)
        self.findings: list[Finding] = []
        # maintained by the engine while walking
        self.ancestors: list[ast.AST] = []
        self.function: FunctionInfo | None = None
        self.loops: list[ast.AST] = []  # loops enclosing the node within the current function

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

    @property
    def parent(self) -> ast.AST | None:
        return self.ancestors[-1] if self.ancestors else None

    def text(self, node: ast.AST) -> str:
        """The source text of a node (falls back to ast.unparse)."""
        seg = ast.get_source_segment(self.source, node)
        return seg if seg is not None else ast.unparse(node)

    def add(self, finding: Finding) -> None:
        line = finding.span.line
        snippet = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        self.findings.append(finding.refine(snippet=snippet) if not finding.snippet else finding)
