"""What the server tells the editor, built from findings: diagnostics, hovers and code actions.

Uses lsprotocol's types but not pygls, and never the network or the user's code: the server
module wires these into requests.
"""

from __future__ import annotations

import functools
import io
import json
import pathlib
import re
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types as lsp

from stabcheck import registry, suppress
from stabcheck.api import check_source
from stabcheck.config import Config
from stabcheck.finding import Finding, Span
from stabcheck.server import _text
from stabcheck.server._text import Encoding

SOURCE = "stabcheck"
SHOW_DOCS = "stabcheck.showRuleDocs"
FIX_ALL_KIND = "source.fixAll.stabcheck"
RULES_DOC_URI = "https://github.com/stabcheck/stabcheck/blob/main/docs/rules.md"

_SEVERITY = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning, "info": lsp.DiagnosticSeverity.Information}
_STATUS = {"traced": "traced by --trace", "confirmed": "confirmed by --confirm"}


def docs_uri(code: str, name: str) -> str:
    """The rule's anchor in docs/rules.md (its headings are `## STB101 branch-on-tracer`)."""
    return f"{RULES_DOC_URI}#{code.lower()}-{name}"


@dataclass(slots=True)
class Snapshot:
    """One check of one document: the text it ran on and what it found, in the client's units."""

    uri: str
    version: int | None
    text: str
    lines: list[str]
    encoding: Encoding
    path: str  # as the findings carry it
    config: Config
    findings: list[Finding]
    diagnostics: list[lsp.Diagnostic]
    memos: dict[str, Any] = field(default_factory=dict)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """A value derived from this snapshot's text, computed once."""
        if key not in self.memos:
            self.memos[key] = compute()
        return self.memos[key]


def finding_range(f: Finding, lines: Sequence[str], encoding: Encoding) -> lsp.Range:
    """The finding's span in the client's units. A span without an end runs to the end of its line;
    one that would be empty (a finding at a line's end) covers the line's text instead."""
    start = _text.finding_position(lines, f.span.line, f.span.col, encoding)
    end_line = f.span.end_line or f.span.line
    end = _text.finding_position(lines, end_line, f.span.end_col if f.span.end_line is not None or f.span.end_col is not None else None, encoding)
    if end < start:
        end = start
    if end == start:
        text = lines[start[0]] if start[0] < len(lines) else ""
        indent = len(text) - len(text.lstrip())
        lo = _text.units(text[:indent], encoding)
        hi = _text.units(text, encoding)
        if start[1] >= hi and hi > lo:  # at the end of the line: the line's text
            start, end = (start[0], lo), (start[0], hi)
        elif start[1] < hi:
            end = (start[0], hi)
    return lsp.Range(lsp.Position(*start), lsp.Position(*end))


def diagnostic(f: Finding, snap_lines: Sequence[str], encoding: Encoding, uri: str, version: int | None, root: str = ".") -> lsp.Diagnostic:
    stage = _STATUS.get(f.stage, "")
    if f.status == "refuted":
        message = f"{f.name}: refuted by --confirm: {f.message}"
        severity = lsp.DiagnosticSeverity.Hint
    else:
        message = f"{f.name}: {f.message}" + (f" ({stage})" if stage else "")
        severity = _SEVERITY.get(f.severity, lsp.DiagnosticSeverity.Warning)
    if f.help:
        message += f"\nhelp: {f.help}"
    return lsp.Diagnostic(
        range=finding_range(f, snap_lines, encoding),
        message=message,
        severity=severity,
        code=f.code,
        code_description=lsp.CodeDescription(href=docs_uri(f.code, f.name)),
        source=SOURCE,
        tags=[lsp.DiagnosticTag.Unnecessary] if f.code == "STB900" else None,
        related_information=related(f, snap_lines, encoding, uri, root) or None,
        data=_data(f, version),
    )


def _data(f: Finding, version: int | None) -> dict[str, Any]:
    """What a client keeps with the diagnostic for the code actions: the finding's identity, the
    document version it was computed on, whether a fix may apply, and its own edits if it has any."""
    data: dict[str, Any] = {"name": f.name, "stage": f.stage, "status": f.status, "function": f.function, "version": version, "fixable": bool(f.fix) or f.code in _fixable_codes()}
    if f.fix is not None:
        data["fix"] = f.to_dict()["fix"]
    return data


def related(f: Finding, lines: Sequence[str], encoding: Encoding, uri: str, root: str = ".") -> list[lsp.DiagnosticRelatedInformation]:
    """The finding's instability chains (`Finding.chains`: per way a transform reaches the offending
    line, its frames from that line out to the transformed entry) as related locations, each step
    with what happens there. The offending line itself is the diagnostic's own range and is not
    repeated. A step in another file points at its line there (a relative path is taken from
    `root`, where the findings' paths start)."""
    out: list[lsp.DiagnosticRelatedInformation] = []
    chains = f.chains
    for n, chain in enumerate(chains):
        prefix = f"chain {n + 1}: " if len(chains) > 1 else ""
        for i, step in enumerate(chain):
            if (not step.path or step.path == f.path) and (step.line, step.col) == (f.span.line, f.span.col):
                continue  # the offending line: the diagnostic itself
            callee = chain[i - 1].function if i else ""
            note = f"`{callee}` is called here" if callee else "here"
            if step.function:
                note += f", in `{step.function}`"
            if step.via:
                note += f", which runs under `{step.via}`"
            where = _location(f, step.path, step.line, step.col, lines, encoding, uri, root)
            out.append(lsp.DiagnosticRelatedInformation(location=where, message=prefix + note))
    return out


def _location(f: Finding, path: str, line: int, col: int, lines: Sequence[str], encoding: Encoding, uri: str, root: str) -> lsp.Location:
    if not path or path == f.path:
        step = Finding(f.code, f.name, "", f.path, Span(line, col))
        return lsp.Location(uri=uri, range=finding_range(step, lines, encoding))

    p = pathlib.Path(path)  # another file: its text is not at hand, so the step points at its line
    if not p.is_absolute():
        p = pathlib.Path(root) / p
    start = lsp.Position(max(line - 1, 0), 0)
    return lsp.Location(uri=p.resolve().as_uri(), range=lsp.Range(start, start))


@functools.cache
def _fixable_codes() -> frozenset[str]:
    return frozenset(r.code for r in registry.all_rules() if r.fixable)


# -- hover ---------------------------------------------------------------------------------------
def hover(snap: Snapshot, position: lsp.Position) -> lsp.Hover | None:
    """The rule's "Why is this bad?" and the finding's evidence, for the findings under the cursor."""
    hits = [(f, d) for f, d in zip(snap.findings, snap.diagnostics) if _contains(d.range, position)]
    if not hits:
        return None
    parts = []
    for f, _ in hits:
        rule = registry.get(f.code)
        head = f"**{f.code} [{f.name}](<{docs_uri(f.code, f.name)}>)**: {f.message}"
        lines = [head]
        if f.stage != "static" or f.status != "suspected":
            lines.append(f"*stage*: {f.stage}, *status*: {f.status}")
        if f.help:
            lines.append(f"*help*: {f.help}")
        why = rule.section("Why is this bad?") if rule is not None else ""
        if why:
            lines.append(f"**Why is this bad?**\n\n{why}")
        chains = _chain_texts(f)
        if chains:
            lines.append("**How a transform reaches it**\n\n" + "\n".join(f"- {c}" for c in chains))
        if f.evidence:
            lines.append("**Evidence**\n\n" + "\n".join(f"- {k}: {_show(v)}" for k, v in f.evidence.items()))
        parts.append("\n\n".join(lines))
    rng = hits[0][1].range
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value="\n\n---\n\n".join(parts)), range=rng)


def _chain_texts(f: Finding) -> list[str]:
    """Each chain as one line, from the offending function out to the transformed entry:
    `helper` (m.py:4) <- `step` (m.py:10, under `jax.jit`)."""
    out = []
    for chain in f.chains:
        steps = []
        for fr in chain:
            via = f", under `{fr.via}`" if fr.via else ""
            steps.append(f"`{fr.function or '<module>'}` ({fr.path}:{fr.line}{via})")
        if steps:
            out.append(" <- ".join(steps))
    return out


def _show(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"`{text}`" if "`" not in text else text


def _contains(r: lsp.Range, p: lsp.Position) -> bool:
    return (r.start.line, r.start.character) <= (p.line, p.character) <= (r.end.line, r.end.character)


def _overlaps(a: lsp.Range, b: lsp.Range) -> bool:
    return (a.start.line, a.start.character) <= (b.end.line, b.end.character) and (b.start.line, b.start.character) <= (a.end.line, a.end.character)


# -- code actions --------------------------------------------------------------------------------
def code_actions(snap: Snapshot, request: lsp.Range, context: lsp.CodeActionContext, *, lazy: bool = False) -> list[lsp.CodeAction]:
    """For each finding in the range: its fix (where its rule has a fixer; safe fixes preferred), a
    `# noqa` suppression, and "show the rule's docs"; and "fix all" (`source.fixAll.stabcheck`).

    A fix costs a libcst parse of the whole file and a re-check (seconds on a large file), and
    editors ask for code actions at every cursor move: with `lazy` (the client resolves actions,
    `codeAction/resolve`) fixes are offered without their edit, computed by `resolve` when chosen;
    otherwise a fix is computed here (once per text), and "fix all" only when asked for by kind."""
    only = [str(k) for k in context.only or ()]
    wanted = _pick(snap, request, context)
    actions: list[lsp.CodeAction] = []
    want_quickfix = not only or any(lsp.CodeActionKind.QuickFix.startswith(k) for k in only)
    asked_fix_all = any(FIX_ALL_KIND.startswith(k) for k in only)
    table = _fixers()
    if want_quickfix:
        for f, d in wanted:
            if f.code not in table and not (f.fix and f.fix.edits):
                continue
            if lazy:
                rule = registry.get(f.code)
                fixable = (f.fix.applicability if f.fix else None) or (rule.fixable if rule else None) or "unsafe"
                data = {"uri": snap.uri, "version": snap.version, "fix": snap.findings.index(f)}
                actions.append(lsp.CodeAction(title=f"Fix {f.code} ({f.name})" + (" (unsafe)" if fixable == "unsafe" else ""), kind=lsp.CodeActionKind.QuickFix, diagnostics=[d], is_preferred=fixable == "safe", data=data))
                continue
            fix = snap.memo(f"fix:{snap.findings.index(f)}", functools.partial(fix_edit, snap, f))
            if fix is not None:
                title, applicability, edit = fix
                actions.append(lsp.CodeAction(title=f"Fix {f.code}: {title}" + (" (unsafe)" if applicability == "unsafe" else ""), kind=lsp.CodeActionKind.QuickFix, diagnostics=[d], is_preferred=applicability == "safe", edit=_workspace_edit(snap, [edit])))
        for f, d in wanted:
            if f.code == "STB900":
                edit = unused_suppression_edit(snap, f)
                if edit is not None:
                    actions.append(lsp.CodeAction(title=f"Remove the unused suppression of {f.detail}", kind=lsp.CodeActionKind.QuickFix, diagnostics=[d], is_preferred=True, edit=_workspace_edit(snap, [edit])))
        seen: set[tuple[str, int]] = set()
        for f, d in wanted:
            if (f.code, f.span.line) in seen or f.code in ("STB900", "STB901"):
                continue
            seen.add((f.code, f.span.line))
            edit = noqa_edit(snap, f)
            if edit is not None:
                actions.append(lsp.CodeAction(title=f"Suppress {f.code} on this line (# noqa: {f.code})", kind=lsp.CodeActionKind.QuickFix, diagnostics=[d], edit=_workspace_edit(snap, [edit])))
        for code in dict.fromkeys(f.code for f, _ in wanted):
            rule = registry.get(code)
            if rule is None:
                continue
            diags = [d for f, d in wanted if f.code == code]
            actions.append(lsp.CodeAction(title=f"Show documentation for {code} {rule.name}", kind=lsp.CodeActionKind.QuickFix, diagnostics=diags, command=lsp.Command(title=f"Show documentation for {code}", command=SHOW_DOCS, arguments=[code])))
    if (asked_fix_all or (lazy and not only and wanted)) and any(f.code in table for f in snap.findings):
        if lazy:
            actions.append(lsp.CodeAction(title="Fix all safe stabcheck findings", kind=FIX_ALL_KIND, data={"uri": snap.uri, "version": snap.version, "fixAll": True}))
        else:
            edit = snap.memo("fix-all", lambda: fix_all_edit(snap))
            if edit is not None:
                title, text_edit = edit
                actions.append(lsp.CodeAction(title=title, kind=FIX_ALL_KIND, edit=_workspace_edit(snap, [text_edit])))
    return actions


def resolve(snap: Snapshot, action: lsp.CodeAction) -> lsp.CodeAction:
    """Fill in the edit of a lazily offered fix (see `code_actions`). An action for another version
    of the document, or a fix that turns out not to apply, comes back without an edit and says why
    in its `disabled` reason."""
    data = action.data if isinstance(action.data, dict) else {}
    if data.get("version") != snap.version:
        action.disabled = lsp.CodeActionDisabled(reason="the file changed since this fix was offered")
        return action
    if data.get("fixAll"):
        edit = snap.memo("fix-all", lambda: fix_all_edit(snap))
        if edit is None:
            action.disabled = lsp.CodeActionDisabled(reason="no safe fix applies to this file")
            return action
        action.title, action.edit = edit[0], _workspace_edit(snap, [edit[1]])
        return action
    index = data.get("fix")
    if not isinstance(index, int) or not 0 <= index < len(snap.findings):
        action.disabled = lsp.CodeActionDisabled(reason="no such finding")
        return action
    fix = snap.memo(f"fix:{index}", lambda: fix_edit(snap, snap.findings[index]))
    if fix is None:
        action.disabled = lsp.CodeActionDisabled(reason="the fix does not apply to this code (it would not parse, or would not remove the finding)")
        return action
    action.edit = _workspace_edit(snap, [fix[2]])
    return action


def _pick(snap: Snapshot, request: lsp.Range, context: lsp.CodeActionContext) -> list[tuple[Finding, lsp.Diagnostic]]:
    """The findings the request is about: the client's diagnostics (ours) matched to the snapshot's
    findings, else every finding whose range overlaps the requested one."""
    ours = [d for d in context.diagnostics if d.source == SOURCE]
    pairs = list(zip(snap.findings, snap.diagnostics))
    if ours:
        picked = []
        for cd in ours:
            for f, d in pairs:
                if d.code == cd.code and d.range == cd.range and (f, d) not in picked:
                    picked.append((f, d))
                    break
        if picked:
            return picked
    return [(f, d) for f, d in pairs if _overlaps(d.range, request)]


def _workspace_edit(snap: Snapshot, edits: list[lsp.TextEdit]) -> lsp.WorkspaceEdit:
    return lsp.WorkspaceEdit(document_changes=[lsp.TextDocumentEdit(text_document=lsp.OptionalVersionedTextDocumentIdentifier(uri=snap.uri, version=snap.version), edits=edits)])


def _text_edit(snap: Snapshot, new_text: str) -> lsp.TextEdit:
    """The smallest edit that turns the snapshot's text into `new_text`."""
    start, end, replacement = _text.minimal_edit(snap.text, new_text)
    a = _text.position_at(snap.text, start, snap.encoding)
    b = _text.position_at(snap.text, end, snap.encoding)
    return lsp.TextEdit(range=lsp.Range(lsp.Position(*a), lsp.Position(*b)), new_text=replacement)


def _fixers() -> dict[str, Any]:
    from stabcheck.fix import fixers  # libcst (through stabcheck.fix): only when fixing

    return fixers()


def fix_edit(snap: Snapshot, f: Finding) -> tuple[str, str, lsp.TextEdit] | None:
    """The finding's fix as (title, applicability, edit), checked as `--fix` checks it: the rewrite
    parses and the finding is gone after it. None when no fix applies here."""

    if f.fix is not None and f.fix.edits:
        new = _apply_edits(snap, f)
        if new is not None:
            return (f.fix.description or "apply the suggested fix", f.fix.applicability, _text_edit(snap, new))
    fixer = _fixers().get(f.code)
    if fixer is None or f.stage != "static":
        return None
    from stabcheck.fix import (  # libcst (through stabcheck.fix): only when fixing
        finding_identity,
        fix_applicability,
        parses,
        try_fixer,
    )

    rw = try_fixer(fixer, snap.text, f)
    if rw is None or rw.source == snap.text or not parses(rw.source):
        return None
    ident = finding_identity(f)
    before = sum(1 for g in snap.findings if finding_identity(g) == ident)
    after = sum(1 for g in check_source(rw.source, snap.path, snap.config) if finding_identity(g) == ident)
    if after >= max(before, 1):
        return None
    applicability = fix_applicability(f.code, rw.applicability)
    return (rw.description or f"apply the {f.name} fix", applicability, _text_edit(snap, rw.source))


def _apply_edits(snap: Snapshot, f: Finding) -> str | None:
    """A finding's own `Fix.edits` (spans in the finding's columns) applied to the snapshot's text."""
    assert f.fix is not None
    offsets = []
    starts = [0]
    for line, brk in zip(snap.lines, _breaks(snap.text)):
        starts.append(starts[-1] + len(line) + brk)
    for e in f.fix.edits:
        s = e.span
        if not 1 <= s.line <= len(snap.lines):
            return None
        end_line = s.end_line or s.line
        if not 1 <= end_line <= len(snap.lines):
            return None
        a = starts[s.line - 1] + _text.to_index(snap.lines[s.line - 1], s.col - 1, _text.FINDING_COLUMNS)
        end_col = s.end_col if s.end_col is not None else s.col
        b = starts[end_line - 1] + _text.to_index(snap.lines[end_line - 1], end_col - 1, _text.FINDING_COLUMNS)
        offsets.append((a, max(a, b), e.replacement))
    text = snap.text
    for a, b, rep in sorted(offsets, reverse=True):
        text = text[:a] + rep + text[b:]
    return text


def _breaks(text: str) -> list[int]:
    """The length of the line break after each line (0 after the last)."""

    return [len(m.group(0)) for m in re.finditer(r"\r\n|\r|\n", text)] + [0]


def fix_all_edit(snap: Snapshot) -> tuple[str, lsp.TextEdit] | None:
    """Every safe fix of the document, as `stabcheck check --fix` applies them."""
    from stabcheck.fix import fix_source  # libcst (through stabcheck.fix): only when fixing

    result = fix_source(snap.text, snap.path, snap.config)
    if result.after == snap.text or not result.fixed:
        return None
    n = len(result.fixed)
    return (f"Fix all safe stabcheck findings ({n})", _text_edit(snap, result.after))


def noqa_edit(snap: Snapshot, f: Finding) -> lsp.TextEdit | None:
    """`# noqa: STBnnn` at the end of the finding's line (or its last line, when the first one
    cannot carry a comment: inside a string or before a backslash), or the code added to the
    `# noqa:` list already there."""

    lines = snap.lines
    endable = snap.memo("comment_lines", lambda: _comment_lines(snap.text))
    candidates = [n for n in dict.fromkeys((f.span.line, f.span.end_line or f.span.line)) if 1 <= n <= len(lines)]
    line_no = next((n for n in candidates if n in endable), None)
    if line_no is None:
        return None
    text = lines[line_no - 1]
    for s in snap.memo("suppressions", lambda: suppress.parse(snap.text)):
        if s.line == line_no and "noqa" in s.text.lower() and s.names:
            at = s.col - 1 + len(s.text)
            pos = lsp.Position(line_no - 1, _text.units(text[:at], snap.encoding))
            return lsp.TextEdit(range=lsp.Range(pos, pos), new_text=f", {f.code}")
    body = text.rstrip()
    start = lsp.Position(line_no - 1, _text.units(body, snap.encoding))
    end = lsp.Position(line_no - 1, _text.units(text, snap.encoding))
    return lsp.TextEdit(range=lsp.Range(start, end), new_text=f"  # noqa: {f.code}")


def unused_suppression_edit(snap: Snapshot, f: Finding) -> lsp.TextEdit | None:
    """For an STB900 finding: the name taken out of its `# noqa:` / `# stabcheck: ignore[...]` list,
    or the whole suppression when it was the only name (a comment that goes on after it keeps its
    `#`, so its text stays a comment)."""

    sup = next((x for x in snap.memo("suppressions", lambda: suppress.parse(snap.text)) if (x.line, x.col) == (f.span.line, f.span.col)), None)
    if sup is None or not 1 <= sup.line <= len(snap.lines) or not f.detail:
        return None
    line = snap.lines[sup.line - 1]
    start = sup.col - 1
    end = start + len(sup.text)
    if line[start:end] != sup.text:
        return None
    rest = [n for n in sup.names if n.lower() != f.detail.lower()]
    if len(rest) == len(sup.names):
        return None
    if rest:
        new = f"# noqa: {', '.join(rest)}" if sup.text.lstrip("#").strip().lower().startswith("noqa") else f"# stabcheck: ignore[{', '.join(rest)}]"
    elif line[end:].strip():
        new = "#"
    else:
        new = ""
        while start and line[start - 1] in " \t":
            start -= 1
    a = lsp.Position(sup.line - 1, _text.units(line[:start], snap.encoding))
    b = lsp.Position(sup.line - 1, _text.units(line[:end], snap.encoding))
    return lsp.TextEdit(range=lsp.Range(a, b), new_text=new)


def _comment_lines(text: str) -> set[int]:
    """Lines whose end is outside any string and not continued by a backslash: a comment fits."""
    out: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT):
                out.add(tok.start[0])
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return out
