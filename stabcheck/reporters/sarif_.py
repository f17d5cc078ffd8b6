"""SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

Rules carry their documentation (summary, "Why is this bad?", help in text and markdown, a link
to their `docs/rules.md` anchor). Results carry `partialFingerprints` computed from the code, the
qualified function and the culprit (`detail`, else the normalised source line), never the line
number, so a finding keeps its identity when code above it moves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from stabcheck import registry
from stabcheck.baseline import culprit
from stabcheck.docs import render_rule
from stabcheck.finding import Finding, Frame
from stabcheck.reporters import Report, clean, clean_tree, status_label
from stabcheck.reporters._chains import frame_text

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/stabcheck/stabcheck"
RULES_DOC_URI = INFORMATION_URI + "/blob/main/docs/rules.md"
FINGERPRINT_KEY = "stabcheck/v1"

_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def help_uri(code: str, name: str) -> str:
    """The rule's anchor in docs/rules.md (headings are `## STB101 branch-on-tracer`)."""
    return f"{RULES_DOC_URI}#{code.lower()}-{name}"


def fingerprint(f: Finding) -> str:
    """A hash of what the finding is about, not where: code, function, culprit and source text."""
    raw = "\x1f".join((f.code, f.function, culprit(f), " ".join(f.snippet.split())))
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


def _result(f: Finding, index: int, print_: str) -> dict[str, Any]:
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
        props["evidence"] = clean_tree(json.loads(json.dumps(f.evidence, default=str)))
    level = "none" if f.status == "refuted" else _LEVEL.get(f.severity, "warning")
    result: dict[str, Any] = {
        "ruleId": f.code,
        "ruleIndex": index,
        "level": level,
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": _artifact(f.path), "region": region}}],
        "partialFingerprints": {FINGERPRINT_KEY: print_},
        "properties": props,
    }
    if f.status == "refuted":  # running the code showed the hazard does not happen
        result["kind"] = "pass"
    if f.chains:
        result.update(_chain_parts(f, region))
    return result


def _chain_parts(f: Finding, region: dict[str, Any]) -> dict[str, Any]:
    """The instability chains: every caller frame once in `relatedLocations` (ids from 1), and a
    `codeFlows` entry per chain whose one thread runs from the transformed entry (outermost) down
    to the finding's line, as code runs."""
    related: list[dict[str, Any]] = []
    ids: dict[tuple[str, int, int], int] = {}

    def physical(fr: Frame) -> dict[str, Any]:
        return {"artifactLocation": _artifact(fr.path), "region": {"startLine": max(1, fr.line), "startColumn": max(1, fr.col)}}

    flows = []
    for chain in f.chains:
        for fr in chain[1:]:
            key = (fr.path, fr.line, fr.col)
            if key not in ids:
                ids[key] = len(related) + 1
                related.append({"id": ids[key], "physicalLocation": physical(fr), "message": {"text": f"called from {frame_text(fr)}"}})
        steps = []
        for depth, fr in enumerate(reversed(chain)):
            where = {"physicalLocation": physical(fr) if depth < len(chain) - 1 else {"artifactLocation": _artifact(f.path), "region": region}}
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


def _artifact(path: str) -> dict[str, str]:
    """Relative paths (the usual case) are relative to %SRCROOT%; absolute ones are file URIs."""
    p = path.replace("\\", "/")
    if PurePath(path).is_absolute():
        return {"uri": "file://" + quote(p if p.startswith("/") else "/" + p, safe="/:._-~")}
    return {"uri": quote(p, safe="/._-~"), "uriBaseId": "%SRCROOT%"}


def render(findings: list[Finding], report: Report) -> str:
    rules: dict[str, int] = {}
    descriptors: list[dict[str, Any]] = []
    for f in sorted(findings, key=lambda f: f.code):
        if f.code not in rules:
            rules[f.code] = len(descriptors)
            descriptors.append(_rule_descriptor(f.code, f.name, f.severity))
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
        "originalUriBaseIds": {"%SRCROOT%": {"description": {"text": "the directory stabcheck ran in"}}},
        "results": [_result(f, rules[f.code], fp) for f, fp in zip(findings, _fingerprints(findings))],
        "columnKind": "unicodeCodePoints",
    }
    props: dict[str, Any] = {"filesChecked": report.files}
    if report.device:
        props["device"] = json.loads(json.dumps(report.device, default=str))
    if report.notes:  # e.g. the typed tier was turned off, a config key was ignored
        props["notes"] = [clean(n) for n in report.notes]
        run["invocations"] = [
            {
                "executionSuccessful": True,
                "toolExecutionNotifications": [{"level": "note", "message": {"text": clean(n)}} for n in report.notes],
            }
        ]
    run["properties"] = props
    doc = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2) + "\n"
