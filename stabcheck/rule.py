"""The Rule base: one hazard, one code, one slug, its docs and its examples.

A rule's docstring is its documentation, in ruff's sections (## What it does, ## Why is this bad?,
## Example, ## Use instead, ## Options). `VALID` and `INVALID` are source snippets that the test
suite runs through the static stage: every VALID is silent, and every INVALID fires with the
rule's code on each line that carries the marker comment `# expect: STBnnn`.

Static rules implement `visit_<AstNodeType>(node, ctx)` methods; the engine walks each file once
and calls them. A handler that only cares about some of those nodes says so with `@only(...)`
(inside transformed or staged-out code; calls to given callees) and the engine does not call it on
the others: most nodes of a large tree concern no rule, and the call is what costs. Rules found
only by later stages (traced, confirmed, runtime) declare those stages and have no visitors: the
catalogue, docs and codes stay in one place.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from stabcheck.finding import Chain, Confidence, Finding, Fix, Severity, Span, Stage

if TYPE_CHECKING:
    from stabcheck.static.context import FileContext

Scope = Literal["anywhere", "transformed", "abstract"]
_F = TypeVar("_F", bound=Callable[..., None])


def only(*, inside: Scope = "anywhere", callees: Iterable[str] | None = None) -> Callable[[_F], _F]:
    """Declare which nodes a `visit_<Type>` handler wants, so the engine skips the rest.

    `inside="transformed"`: only nodes in a function some transform applies to (`ctx.in_transform`);
    `inside="abstract"`: only where the transform stages the code out (`ctx.in_abstract`).
    `callees` (for `visit_Call`): only calls whose callee resolves to one of these qualified names
    (`ctx.qualname(node.func)`, e.g. `"jax.numpy.where"`). Both together: both must hold."""

    def mark(fn: _F) -> _F:
        fn.stabcheck_inside = inside  # type: ignore[attr-defined]
        fn.stabcheck_callees = frozenset(callees) if callees is not None else None  # type: ignore[attr-defined]
        return fn

    return mark


EXPECT_RE = re.compile(r"#\s*expect:\s*(STB\d{3})")

FAMILIES: dict[str, str] = {
    "1": "tracer leaks into Python",
    "2": "unstable return structure",
    "3": "dtype instability",
    "4": "AD hazards",
    "5": "recompilation",
    "9": "meta",
}


_TEST_FILE = re.compile(r"(^test_.*|.*_test|^conftest)\.py$")


def is_test_path(path: str) -> bool:
    """A file of a test suite, by pytest's conventions: `test_*.py`, `*_test.py`, `conftest.py`,
    or any file under a `tests`/`test` directory."""
    parts = re.split(r"[\\/]", path)
    return bool(_TEST_FILE.match(parts[-1])) or any(p in ("tests", "test") for p in parts[:-1])


def in_test_function(ctx: FileContext) -> bool:
    """Inside a test of a test file (`is_test_path`): a function (or one enclosing it) named
    `test*`/`_test*`, or a method of a `Test*` class. A problem class a test file defines for a
    library to solve (and differentiate) is not one."""
    if not is_test_path(ctx.path):
        return False
    s = ctx.function
    while s is not None:
        if s.name.lstrip("_").startswith("test") or (s.cls is not None and "Test" in s.cls.name):
            return True
        s = s.parent
    return False


class Rule:
    code: ClassVar[str] = ""
    name: ClassVar[str] = ""  # kebab-case slug naming the pattern
    severity: ClassVar[Severity] = "error"
    stages: ClassVar[tuple[Stage, ...]] = ("static",)
    fixable: ClassVar[str | None] = None  # "safe" | "unsafe" when --fix can repair it
    options: ClassVar[dict[str, Any]] = {}  # per-rule options and their defaults
    # the hazard costs time (a compile per call), not a wrong result: in test code, where calling
    # a function in each of its modes and compiling each variant is the point, it is a guess
    cost_only: ClassVar[bool] = False
    VALID: ClassVar[tuple[str, ...]] = ()
    INVALID: ClassVar[tuple[str, ...]] = ()

    # -- the typed tier ---------------------------------------------------------------
    @classmethod
    def typed_check(cls, tree: ast.Module, source: bytes, path: str, types: Any) -> list[Finding]:
        """Findings that need mypy's view of the whole file (`types`, a `static.typed.FileTypes`);
        the typed tier calls it after its walk, for the rules that override it."""
        return []

    @classmethod
    def has_typed_check(cls) -> bool:
        return cls.typed_check.__func__ is not Rule.typed_check.__func__  # type: ignore[attr-defined]

    # -- documentation -----------------------------------------------------------------
    @classmethod
    def doc(cls) -> str:
        return _cleandoc(cls.__doc__ or "")

    @classmethod
    def summary(cls) -> str:
        """The first sentence of 'What it does'."""
        text = cls.section("What it does") or cls.doc()
        first = text.strip().split("\n\n")[0].replace("\n", " ")
        return first.split(". ")[0].rstrip(".") + "."

    @classmethod
    def section(cls, title: str) -> str:
        doc = cls.doc()
        m = re.search(rf"^## {re.escape(title)}\s*\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
        return m.group(1).strip() if m else ""

    @classmethod
    def family(cls) -> str:
        return FAMILIES.get(cls.code[3:4], "other")

    @classmethod
    def has_visitors(cls) -> bool:
        return any(n.startswith("visit_") for n in dir(cls))

    # -- reporting ---------------------------------------------------------------------
    def report(
        self,
        ctx: FileContext,
        node: Any,
        message: str,
        *,
        help: str = "",
        detail: str = "",
        evidence: dict[str, Any] | None = None,
        fix: Fix | None = None,
        span: Span | None = None,
        function: str | None = None,
        confidence: Confidence = "proven",
        operands: tuple[ast.AST, ...] = (),
    ) -> None:
        """Report at `node` in the function being walked (or `function`, for a rule that judges a
        function other than the one it is visiting, such as a `lax` body or a nested def).

        `confidence` is how sure the rule is; `operands` are the expressions the finding claims
        are traced arrays: unless the analysis proves each of them traced (`ctx.proves_traced`),
        the finding is a guess. A guess is kept as a hypothesis (`--preview`, and the traced and
        confirm stages), never reported by default."""
        if confidence == "proven" and any(not ctx.proves_traced(op) for op in operands):
            confidence = "guess"
        if confidence == "proven" and operands and ctx.function is not None and id(node) in ctx.analysis.static_guarded(ctx.function):
            confidence = "guess"  # under `if validate:` / `if arg is None:`: a static configuration picks the path
        if confidence == "proven" and self.cost_only and is_test_path(ctx.path):
            confidence = "guess"
        ctx.add(
            self.finding(
                path=ctx.path,
                span=span or Span.of(node),
                message=message,
                help=help,
                function=ctx.function_name if function is None else function,
                detail=detail,
                evidence=evidence,
                fix=fix,
                confidence=confidence,
            )
        )

    @classmethod
    def finding(
        cls,
        *,
        path: str,
        span: Span,
        message: str,
        help: str = "",
        function: str = "",
        detail: str = "",
        evidence: dict[str, Any] | None = None,
        fix: Fix | None = None,
        stage: Stage = "static",
        status: str = "suspected",
        snippet: str = "",
        chains: tuple[Chain, ...] = (),
        confidence: Confidence = "proven",
    ) -> Finding:
        """Build a Finding of this rule; every stage creates findings through here."""
        return Finding(
            code=cls.code,
            name=cls.name,
            message=message,
            help=help or cls.default_help(),
            path=path,
            span=span,
            severity=cls.severity,
            stage=stage,
            status=status,  # type: ignore[arg-type]
            function=function,
            detail=detail,
            evidence=dict(evidence or {}),
            fix=fix,
            snippet=snippet,
            chains=chains,
            confidence=confidence,
        )

    @classmethod
    def default_help(cls) -> str:
        use = cls.section("Use instead")
        lines = [ln for ln in use.splitlines() if ln.strip() and not ln.startswith("```")]
        return lines[0].strip() if lines and not lines[0].startswith(" ") else ""


def _cleandoc(doc: str) -> str:
    """`inspect.cleandoc` without importing inspect (start-up time counts for pre-commit)."""
    lines = doc.expandtabs().split("\n")
    body = textwrap.dedent("\n".join(lines[1:])).split("\n")
    out = [lines[0].strip(), *body]
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


def expected_lines(example: str) -> list[tuple[int, str]]:
    """(line, code) pairs marked with `# expect: STBnnn` in an INVALID example."""
    out = []
    for i, line in enumerate(textwrap.dedent(example).splitlines(), start=1):
        for m in EXPECT_RE.finditer(line):
            out.append((i, m.group(1)))
    return out
