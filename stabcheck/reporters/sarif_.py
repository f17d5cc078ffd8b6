"""SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

Rules carry their documentation (summary, "Why is this bad?", help in text and markdown, a link
to their `docs/rules.md` anchor). Results carry `partialFingerprints` computed from the code, the
qualified function, the culprit (`detail`, else the message without whitespace) and an occurrence
index, never the line number or the source line, so a finding keeps its identity when code above
it moves or the file is reformatted.

URIs are relative to the repository root (`%SRCROOT%`, given in `originalUriBaseIds`), so they
resolve wherever in a monorepo stabcheck ran. Findings hidden by `# noqa` or by the baseline stay,
with `suppressions` (`inSource`, `external`), so adopting a baseline does not close alerts as
fixed. `invocations` records the working directory, whether the analysis completed, and the run's
notes and analysis errors (STB902) as tool notifications. At most `MAX_RESULTS` results and about
`MAX_BYTES` of them are written (GitHub's limits); a notification says how many were left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stabcheck import registry
from stabcheck.docs import render_rule
from stabcheck.finding import Finding, Frame
from stabcheck.reporters import Report, clean, clean_tree, status_label
from stabcheck.reporters._chains import frame_text

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/stabcheck/stabcheck"
RULES_DOC_URI = INFORMATION_URI + "/blob/main/docs/rules.md"
FINGERPRINT_KEY = "stabcheck/v2"
MAX_RESULTS = 25_000  # GitHub code scanning rejects more results per run
MAX_BYTES = 9_000_000  # of results, under GitHub's 10 MB per upload (rules and the rest fit in the remainder)
_OWN_DIR = str(Path(__file__).resolve().parents[1])  # stabcheck's package directory
_WS = re.compile(r"\s+")

_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def help_uri(code: str, name: str) -> str:
    """The rule's anchor in docs/rules.md (headings are `## STB101 branch-on-tracer`)."""
    return f"{RULES_DOC_URI}#{code.lower()}-{name}"


def fingerprint(f: Finding) -> str:
    """A hash of what the finding is about, not where or how it is formatted: code, function and
    culprit (`detail`, else the message), with whitespace removed. No source line text."""
    raw = "\x1f".join((f.code, f.function, _WS.sub("", f.detail or f.message)))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def _rule_descriptor(code: str, name: str, severity: str) -> dict[str, Any]:
    desc: dict[str, Any] = {"id": code, "name": name, "helpUri": help_uri(code, name)}
    rule = registry.get(code)
    if rule is None:  # a code from a newer worker or a cached result: still describe it
        desc["shortDescription"] = {"text": name}
        desc["defaultConfiguration"] = {"level": _LEVEL.get(severity, "warning")}
        return desc
    why = rule.section("Why is this bad?") or rule.summary()
    desc["shortDescription"] = {"text": rule.summary()}
    desc["fullDescription"] = {"text": " ".join(why.split())}
    markdown = render_rule(rule)
    desc["help"] = {"text": rule.section("Use instead") or rule.summary(), "markdown": markdown}
    desc["defaultConfiguration"] = {"level": _LEVEL.get(rule.severity, "warning")}
    desc["properties"] = {"tags": [rule.family(), *rule.stages], "fixable": rule.fixable or "none"}
    return desc


def _result(f: Finding, index: int, print_: str, report: Report) -> dict[str, Any]:
    region: dict[str, Any] = {"startLine": max(1, f.line), "startColumn": max(1, f.col)}
    region["endLine"] = max(f.span.end_line or 1, region["startLine"])
    if f.span.end_col:
        end_col = f.span.end_col
        if region["endLine"] == region["startLine"]:
            end_col = max(end_col, region["startColumn"])
        region["endColumn"] = max(1, end_col)
    if f.snippet:
        region["snippet"] = {"text": clean(f.snippet)}
    text = clean(f.message + (f" help: {f.help}" if f.help else ""))
    props: dict[str, Any] = {"stage": f.stage, "status": f.status, "confirmation": status_label(f)}
    if f.function:
        props["function"] = clean(f.function)
    if f.detail:
        props["detail"] = clean(f.detail)
    if f.evidence:
        props["evidence"] = clean_tree(_scrub(json.loads(json.dumps(f.evidence, default=str))))
    level = "none" if f.status == "refuted" else _LEVEL.get(f.severity, "warning")
    result: dict[str, Any] = {
        "ruleId": f.code,
        "ruleIndex": index,
        "level": level,
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": _artifact(f.path, report), "region": region}}],
        "partialFingerprints": {FINGERPRINT_KEY: print_},
        "properties": props,
    }
    if f.status == "refuted":  # running the code showed the hazard does not happen
        result["kind"] = "pass"
    if f.chains:
        result.update(_chain_parts(f, region, report))
    return result


def _chain_parts(f: Finding, region: dict[str, Any], report: Report | None = None) -> dict[str, Any]:
    """The instability chains: every caller frame once in `relatedLocations` (ids from 1), and a
    `codeFlows` entry per chain whose one thread runs from the transformed entry (outermost) down
    to the finding's line, as code runs."""
    related: list[dict[str, Any]] = []
    ids: dict[tuple[str, int, int], int] = {}

    def physical(fr: Frame) -> dict[str, Any]:
        return {"artifactLocation": _artifact(fr.path, report), "region": {"startLine": max(1, fr.line), "startColumn": max(1, fr.col)}}

    flows = []
    for chain in f.chains:
        for fr in chain[1:]:
            key = (fr.path, fr.line, fr.col)
            if key not in ids:
                ids[key] = len(related) + 1
                related.append({"id": ids[key], "physicalLocation": physical(fr), "message": {"text": f"called from {frame_text(fr)}"}})
        steps = []
        for depth, fr in enumerate(reversed(chain)):
            where = {"physicalLocation": physical(fr) if depth < len(chain) - 1 else {"artifactLocation": _artifact(f.path, report), "region": region}}
            text = clean(f"{fr.function or '<module>'}" + (f" under {fr.via}" if fr.via else "") if depth < len(chain) - 1 else f"{f.code}: {f.message}")
            where["message"] = {"text": text}
            steps.append({"location": where, "nestingLevel": depth, "executionOrder": depth + 1})
        flows.append({"message": {"text": " <- ".join(frame_text(fr) for fr in chain)}, "threadFlows": [{"locations": steps}]})
    return {"relatedLocations": related, "codeFlows": flows}


def _fingerprints(findings: list[Finding]) -> list[str]:
    """One per finding; the second identical hazard in a file and function gets `:2`, and so on."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for f in findings:
        fp = fingerprint(f)
        n = seen[(f.path, fp)] = seen.get((f.path, fp), 0) + 1
        out.append(fp if n == 1 else f"{fp}:{n}")
    return out


def _artifact(path: str, report: Report | None = None) -> dict[str, str]:
    """Paths below the repository root are relative to %SRCROOT%; others are file URIs."""
    p = path.replace("\\", "/")
    if report is not None and report.root:
        full = os.path.normpath(os.path.join(report.cwd or os.getcwd(), path))
        rel = os.path.relpath(full, report.root)
        if rel.startswith(".."):
            return {"uri": _file_uri(full)}
        return {"uri": quote(rel.replace(os.sep, "/"), safe="/._-~"), "uriBaseId": "%SRCROOT%"}
    if os.path.isabs(path) or p.startswith("/"):
        return {"uri": _file_uri(p)}
    return {"uri": quote(p, safe="/._-~"), "uriBaseId": "%SRCROOT%"}


def _file_uri(path: str) -> str:
    p = path.replace("\\", "/")
    return "file://" + quote(p if p.startswith("/") else "/" + p, safe="/:._-~")


def _scrub(value: Any) -> Any:
    """Evidence without the absolute paths of stabcheck's own files (`<stabcheck>/...` instead)."""
    if isinstance(value, str):
        return value.replace(_OWN_DIR + os.sep, "<stabcheck>/").replace(_OWN_DIR, "<stabcheck>")
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def _suppression(kind: str, why: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    if why:
        out["justification"] = clean(why)
    return out


def _invocation(findings: list[Finding], report: Report, left_out: int) -> dict[str, Any]:
    """The run: where, whether every file and entry was analysed, and what it had to say."""
    notes: list[dict[str, Any]] = [{"level": "note", "message": {"text": clean(n)}} for n in report.notes]
    failed = [f for f in findings if f.code == "STB902"]
    for f in failed:
        notes.append(
            {
                "level": "error",
                "message": {"text": clean(f.message)},
                "descriptor": {"id": f.code},
                "locations": [{"physicalLocation": {"artifactLocation": _artifact(f.path, report), "region": {"startLine": max(1, f.line)}}}],
            }
        )
    if left_out:
        notes.append({"level": "warning", "message": {"text": f"{left_out} result{'s' * (left_out != 1)} left out of this file: GitHub code scanning accepts at most {MAX_RESULTS:,} results and 10 MB per upload; fix or baseline the most frequent rules, or narrow the run"}})
    inv: dict[str, Any] = {"executionSuccessful": not failed, "toolExecutionNotifications": notes}
    cwd = report.cwd or os.getcwd()
    inv["workingDirectory"] = {"uri": _file_uri(cwd.rstrip("/") + "/")}
    return inv


def render(findings: list[Finding], report: Report) -> str:
    entries: list[tuple[Finding, list[dict[str, Any]]]] = [(f, []) for f in findings]
    entries += [(f, [_suppression(kind, why)]) for f, kind, why in report.suppressed]
    rules: dict[str, int] = {}
    descriptors: list[dict[str, Any]] = []
    for f, _ in sorted(entries, key=lambda e: e[0].code):
        if f.code not in rules:
            rules[f.code] = len(descriptors)
            descriptors.append(_rule_descriptor(f.code, f.name, f.severity))
    results: list[dict[str, Any]] = []
    size = 0
    prints = _fingerprints([f for f, _ in entries])
    for (f, sups), fp in zip(entries, prints):
        if len(results) >= MAX_RESULTS:
            break
        res = _result(f, rules[f.code], fp, report)
        if sups:
            res["suppressions"] = sups
        size += len(json.dumps(res))
        if size > MAX_BYTES:
            break
        results.append(res)
    left_out = len(entries) - len(results)
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "stabcheck",
                "version": report.version or "0",
                "semanticVersion": report.version or "0",
                "informationUri": INFORMATION_URI,
                "rules": descriptors,
            }
        },
        "invocations": [_invocation(findings, report, left_out)],
        "originalUriBaseIds": {"%SRCROOT%": _srcroot(report)},
        "results": results,
        "columnKind": "unicodeCodePoints",
    }
    props: dict[str, Any] = {"filesChecked": report.files}
    if report.device:
        props["device"] = json.loads(json.dumps(report.device, default=str))
    if report.notes:  # e.g. the typed tier was turned off, a config key was ignored
        props["notes"] = [clean(n) for n in report.notes]
    if report.baselined:
        props["baselined"] = report.baselined
    run["properties"] = props
    doc = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2) + "\n"


def _srcroot(report: Report) -> dict[str, Any]:
    if report.root:
        return {"uri": _file_uri(report.root.rstrip("/") + "/"), "description": {"text": "the repository root"}}
    return {"description": {"text": "the directory stabcheck ran in"}}
