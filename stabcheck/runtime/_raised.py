"""A test that fails because JAX raised: the hazard's finding at the user's line (pytest plugin).

`finding_for(exc)` maps an exception that came out of JAX (a traceback frame inside the `jax`
package, or an exception class defined by JAX) through the one error table of the traced and
confirm stages (`stabcheck.traced.errors`) to its code, placed at the innermost user frame of
the traceback: what `check --trace` would say of the same call, without a traceback to read.
Errors the table does not know, or that JAX did not raise, give no finding (the test's own
failure report stands).
"""

from __future__ import annotations

import traceback
from dataclasses import replace

from stabcheck import registry
from stabcheck.finding import Finding, Span
from stabcheck.traced.checks import shown_path, source_line
from stabcheck.traced.errors import SLUGS, classify
from stabcheck.traced.source import Site


def _from_jax(exc: BaseException) -> bool:
    """Raised inside JAX: a JAX exception class, JAX's note on the frames it filtered out, or
    (with `JAX_TRACEBACK_FILTERING=off`) a frame of the jax package in the traceback."""
    if type(exc).__module__.split(".")[0] in ("jax", "jaxlib"):
        return True
    if any("JAX has removed its internal frames" in str(n) for n in getattr(exc, "__notes__", ())):
        return True
    e: BaseException | None = exc
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for fs in traceback.extract_tb(e.__traceback__):
            f = fs.filename.replace("\\", "/")
            if "/jax/" in f or "/jaxlib/" in f:
                return True
        e = e.__cause__ or e.__context__
    return False


def finding_for(exc: BaseException, test: str) -> Finding | None:
    """The finding for an exception a test raised, or None when it is not a known JAX hazard."""
    if not _from_jax(exc):
        return None
    failure = classify(exc)
    if failure.code == "STB902" or failure.path is None or failure.line is None:
        return None
    rule = registry.get(failure.code)
    name = rule.name if rule is not None else SLUGS.get(failure.code, failure.code.lower())
    return Finding(
        code=failure.code,
        name=name,
        message=f"JAX raised `{failure.kind}` here in test `{test}` ({failure.reason}): {failure.message[:200]}",
        help=f"`stabcheck explain {failure.code}` shows the pattern and its fix",
        path=shown_path(failure.path),
        span=Span(failure.line, 1),
        severity="error",
        stage="runtime",
        function=test,
        detail=f"{failure.kind}:{failure.reason}",
        evidence={"error": f"{failure.kind}: {failure.message[:300]}", "test": test},
        snippet=source_line(Site(failure.path, failure.line)),
        chains=tuple(tuple(replace(fr, path=shown_path(fr.path)) for fr in c) for c in failure.chains),  # up to the test
    )
