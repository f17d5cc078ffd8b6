"""JUnit XML for CI test dashboards: one test case per checked file with findings, one failure each.

Files without findings are not listed by name (the reporter only sees findings); the suite's
`tests` attribute still counts every checked file, so a clean run shows N passing checks.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from stabcheck.finding import Finding
from stabcheck.reporters import Report, clean, status_label
from stabcheck.reporters._chains import full_lines as chain_lines


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: str) -> str:
    """User-derived text made visible (`clean`: no raw newline or control character from a file
    name), then anything XML 1.0 cannot carry (lone surrogates) replaced."""
    return _NOT_XML.sub("\ufffd", clean(text))


def render(findings: list[Finding], report: Report) -> str:
    by_path: dict[str, list[Finding]] = {}
    for f in findings:
        by_path.setdefault(f.path, []).append(f)
    failing = {p: [f for f in fs if f.status != "refuted"] for p, fs in by_path.items()}
    n_fail = sum(1 for fs in failing.values() if fs)
    total = len(by_path) + (1 if report.files > len(by_path) else 0)
    suites = ET.Element("testsuites", name="stabcheck", tests=str(total), failures=str(n_fail), errors="0")
    suite = ET.SubElement(suites, "testsuite", name="stabcheck", tests=str(total), failures=str(n_fail), errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="version", value=report.version or "0")
    if report.device:
        for k, v in sorted(report.device.items()):
            ET.SubElement(props, "property", name=f"device.{k}", value=_x(str(v)))
    for note in report.notes:  # e.g. the typed tier was turned off, a config key was ignored
        ET.SubElement(props, "property", name="note", value=_x(note))
    for path in sorted(by_path):
        case = ET.SubElement(suite, "testcase", classname="stabcheck", name=_x(path), file=_x(path))
        for f in by_path[path]:
            if f.status == "refuted":
                continue
            lines = [_x(f"{f.path}:{f.line}:{f.col}: {f.code} [{f.name}] {f.message}")]
            if f.function:
                lines.append(_x(f"  in {f.function}"))
            lines += [_x(f"  {line}") for line in chain_lines(f)]
            if f.help:
                lines.append(_x(f"  help: {f.help}"))
            fail = ET.SubElement(case, "failure", type=f.code, message=_x(f"line {f.line}: {f.code} [{f.name}] ({status_label(f)}) {f.message}"))
            fail.text = "\n".join(lines)
        refuted = [f for f in by_path[path] if f.status == "refuted"]
        if refuted:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(_x(f"{f.path}:{f.line}: {f.code} refuted by running the code: {f.message}") for f in refuted)
    if report.files > len(by_path):
        ET.SubElement(suite, "testcase", classname="stabcheck", name=f"{report.files - len(by_path)} other file(s) without findings")
    if report.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(_x(f"note: {n}") for n in report.notes)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
