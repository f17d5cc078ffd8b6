"""The typed tier's half of the union rules: what mypy says of a transformed function's returns.

`UnionAnnotation.typed_check` (STB202 on mypy's view of a declared return: aliases, `Optional`
however spelled) and `UnionReturn.typed_check` (STB201 on the inferred kinds of return
expressions: a helper's Optional result, a tuple from a call). The typed tier calls them after
its walk, with the file's `FileTypes`; both share one typed `Analysis` of the file.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from stabcheck.finding import Finding, Span
from stabcheck.rules.union._kinds import exits
from stabcheck.static.analysis import Analysis, FunctionInfo
from stabcheck.static.names import Names
from stabcheck.static.typed import FileTypes

if TYPE_CHECKING:
    from stabcheck.rule import Rule

_LAST: list[tuple[ast.Module, FileTypes, Analysis | None]] = []  # the last file's analysis, for the second check


def _analysis(tree: ast.Module, types: FileTypes) -> Analysis | None:
    if _LAST and _LAST[0][0] is tree and _LAST[0][1] is types:
        return _LAST[0][2]
    try:
        an: Analysis | None = Analysis(tree, Names(tree), types)
    except RecursionError:
        an = None
    _LAST[:] = [(tree, types, an)]
    return an


def _transformed_defs(an: Analysis) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, FunctionInfo]]:
    """The `def`s (not lambdas) the analysis knows to be transformed, with their facts."""
    for node, info in an.functions.items():
        if info.transformed and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, info


def declared_optional(rule: type[Rule], tree: ast.Module, data: bytes, path: str, types: FileTypes, statically_chosen: Callable[..., bool]) -> list[Finding]:
    """STB202: a transformed function whose declared return is `Optional` to mypy (a guess where
    `statically_chosen`, union_annotation's test, says a static fact picks the structure)."""
    an = _analysis(tree, types)
    if an is None:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    out: list[Finding] = []
    for node, info in _transformed_defs(an):
        declared, text = types.declared_return(info.qualname)
        # `Optional[...]`, however spelled: one call returns leaves, another None. Other unions
        # mypy sees (`Array | tuple[Array, Array]` picked by a static flag, a pytree alias whose
        # members are array and container types) are one structure per compiled call.
        if node.returns is not None and declared == "optional":
            shown = ast.get_source_segment(data.decode("utf-8", "replace"), node.returns) or ast.unparse(node.returns)
            why = "which admits `None`"
            out.append(
                rule.finding(
                    path=path,
                    span=Span.of(node.returns).in_chars(lines),
                    message=f"`{info.qualname}` is transformed but declares the return type `{shown}` (`{text}` to mypy), {why}; a compiled function has one output structure, and callers that branch on this one cannot be traced",
                    help="return one structure on every call (zeros instead of `None`), or split the function and annotate each precisely",
                    function=info.qualname,
                    detail=f"{info.qualname}->{shown}",
                    evidence={"stage": "typed", "declared": text},
                    snippet=_line(lines, node.returns),
                    confidence="guess" if statically_chosen(node, info, an, an.names, why) else "proven",
                )
            )
    return out


def inferred_unions(rule: type[Rule], tree: ast.Module, data: bytes, path: str, types: FileTypes) -> list[Finding]:
    """STB201: return expressions whose kinds, as mypy infers them, differ or are Optional."""
    an = _analysis(tree, types)
    if an is None:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    out: list[Finding] = []
    for node, info in _transformed_defs(an):
        kinds: list[tuple[ast.AST, str]] = []
        proven_guard: set[int] = set()  # exits under a test proven traced: the data picks the kind
        inferred: set[int] = set()  # exits whose kind only mypy knows (a call, a name), under a traced test
        for e in exits(node):
            k = _exit_kind(e.value, types)
            if k is not None:
                kinds.append((e.node, k))
                if any(an.proves_traced(g, info) for g in e.guards):
                    proven_guard.add(id(e.node))
                if isinstance(e.value, (ast.Call, ast.Name, ast.Attribute, ast.Subscript)) and any(an.is_traced(g, info) for g in e.guards):
                    inferred.add(id(e.node))
        distinct = {k for _, k in kinds}
        for at, k in kinds:
            # an Optional/union a helper returns; or kinds that differ by a traced test where one
            # side's kind is visible only to mypy (the syntactic STB201 sees the rest)
            if k == "optional" or (len(distinct) > 1 and k != _majority(kinds) and (id(at) in inferred or any(id(a) in inferred for a, _ in kinds))):
                what = {"optional": "an Optional value (`None` on some calls)", "union": "a union of different structures"}.get(k, _kind_text(k))
                others = sorted(_kind_text(x) for x in distinct if x != k)
                tail = f" while other paths return {', '.join(others)}" if others else ""
                out.append(
                    rule.finding(
                        path=path,
                        span=Span.of(at).in_chars(lines),
                        message=f"`{info.qualname}` returns {what} here according to mypy{tail}; a transformed function must return one structure, so `jit`/`grad` of it fail or retrace for some inputs",
                        help="return the same structure on every path (zeros or an empty array instead of `None`, one tuple arity)",
                        function=info.qualname,
                        detail=f"{info.qualname}:{k}",
                        evidence={"stage": "typed", "kinds": sorted(distinct)},
                        snippet=_line(lines, at),
                        # a helper's Optional, or kinds split by a static test (`a if a is not None
                        # else b`), are one structure per compiled call unless the data decides
                        confidence="proven" if id(at) in proven_guard else "guess",
                    )
                )
    return out


def _exit_kind(value: ast.expr | None, types: FileTypes) -> str | None:
    if value is None or (isinstance(value, ast.Constant) and value.value is None):
        return "none"
    if isinstance(value, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in value.elts):
        return f"tuple:{len(value.elts)}"
    k = types.kind(value)
    if k == "ndarray":
        return "array"  # the same structure: one leaf
    return k if k in ("array", "none", "optional", "union") or (k or "").startswith("tuple:") else None


def _majority(kinds: list[tuple[ast.AST, str]]) -> str:
    counts: dict[str, int] = {}
    for _, k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return max(counts, key=lambda k: (counts[k], k != "none"))


def _kind_text(k: str) -> str:
    if k == "none":
        return "`None`"
    if k == "array":
        return "an array"
    if k.startswith("tuple:"):
        return f"a {k[6:]}-tuple"
    return k


def _line(lines: list[str], node: ast.AST) -> str:
    n = getattr(node, "lineno", 0)
    return lines[n - 1] if 0 < n <= len(lines) else ""
