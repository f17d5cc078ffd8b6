"""Shared pieces of the fixers: re-locating a finding's node with libcst, and small queries."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from stabcheck.finding import Applicability, Finding


@dataclass(frozen=True, slots=True)
class Rewrite:
    source: str
    applicability: Applicability | None = None  # None: the rule's declared `fixable`
    description: str = ""


@dataclass(slots=True)
class Located:
    """The parsed module (from the metadata wrapper: node identities are stable) and a node."""

    module: cst.Module
    node: cst.CSTNode
    positions: dict[cst.CSTNode, object]

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def start(self, node: cst.CSTNode) -> tuple[int, int]:
        r = self.positions[node]
        return (r.start.line, r.start.column)  # type: ignore[attr-defined]


class _Finder(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, line: int, col: int, end: tuple[int, int] | None, types: tuple[type[cst.CSTNode], ...]) -> None:
        self.want = (line, col)
        self.end = end
        self.types = types
        self.hits: list[cst.CSTNode] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, self.types):
            r = self.get_metadata(PositionProvider, node)
            if (r.start.line, r.start.column) == self.want and (self.end is None or (r.end.line, r.end.column) == self.end):
                self.hits.append(node)
        return True


def locate(source: str, finding: Finding, types: tuple[type[cst.CSTNode], ...]) -> Located | None:
    """The node of one of `types` spanning exactly the finding's span (outermost if several)."""
    wrapper = MetadataWrapper(cst.parse_module(source))
    positions = wrapper.resolve(PositionProvider)
    s = finding.span
    end = (s.end_line, s.end_col - 1) if s.end_line and s.end_col else None
    finder = _Finder(s.line, s.col - 1, end, types)
    wrapper.visit(finder)
    if not finder.hits and end is not None:  # a stage that only knows the start
        finder = _Finder(s.line, s.col - 1, None, types)
        wrapper.visit(finder)
    if not finder.hits:
        return None
    return Located(wrapper.module, finder.hits[0], dict(positions))


def replace(loc: Located, old: cst.CSTNode, new: cst.CSTNode) -> cst.Module:
    return loc.module.deep_replace(old, new)  # type: ignore[arg-type, return-value]


def expr(code: str) -> cst.BaseExpression:
    return cst.parse_expression(code)


def module_aliases(source: str) -> dict[str, str]:
    """Top-level import aliases: {"jnp": "jax.numpy", "jax": "jax", "lax": "jax.lax", ...}."""
    out: dict[str, str] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return out
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    out[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def cst_qualname(node: cst.BaseExpression, aliases: dict[str, str]) -> str | None:
    """`jnp.where` -> `jax.numpy.where` through the module's import `aliases`; None for a name
    that no import binds."""
    parts: list[str] = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if not isinstance(node, cst.Name):
        return None
    head = aliases.get(node.value)
    return None if head is None else ".".join([head, *reversed(parts)])


def spelling(source: str, qualname: str) -> str | None:
    """How this file spells `qualname` (`jax.numpy.float32` -> `jnp.float32`), or None."""
    aliases = module_aliases(source)
    best: str | None = None
    for alias, target in aliases.items():
        if qualname == target or qualname.startswith(target + "."):
            cand = alias + qualname[len(target) :]
            if best is None or len(cand) < len(best):
                best = cand
    return best


def with_import(module: cst.Module, statement: str) -> cst.Module:
    """Add `statement` (an import) after the last top-level import, or at the top."""
    body = list(module.body)
    last = -1
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and any(isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body):
            last = i
    if last == -1:  # after a docstring and `from __future__` imports
        last = 0 if body and _is_docstring(body[0]) else -1
    body.insert(last + 1, cst.parse_statement(statement + "\n"))
    return module.with_changes(body=body)


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))


def jnp_name(source: str) -> tuple[str, str | None]:
    """How to spell `jax.numpy` here, and the import to add when the file has none."""
    s = spelling(source, "jax.numpy")
    if s is not None:
        return s, None
    return "jnp", "import jax.numpy as jnp"
