"""The CI reporters: SARIF (valid against the official 2.1.0 schema), markdown, JUnit, github."""

from __future__ import annotations

import json
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stabcheck import registry, reporters
from stabcheck.api import Options, __version__, run
from stabcheck.config import Config
from stabcheck.docs import rules_markdown
from stabcheck.finding import Finding, Span

from .conftest import run_cli

SCHEMAS = Path(__file__).resolve().parents[1] / "tests" / "data"
SCHEMA = SCHEMAS / "sarif-schema-2.1.0.json"
DEVICE = {"platform": "cpu", "device_kind": "cpu", "jax": "0.10.2"}


def _corpus(tmp_path: Path) -> list[Finding]:
    """Real findings: the project's fixtures (the scenarios among them) and every rule's INVALID examples."""
    for i, rule in enumerate(registry.all_rules()):
        for j, ex in enumerate(rule.INVALID):
            (tmp_path / f"{rule.code.lower()}_{j}.py").write_text(textwrap.dedent(ex).lstrip("\n"), encoding="utf-8")
    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    paths = [str(tmp_path), str(fixtures)]  # fixtures/scenarios included
    found = run(paths, Config(), Options(cache=False, jobs=1)).findings
    assert found, "no findings to render"
    return found


def _later_stages(f: Finding) -> list[Finding]:
    """The same finding as the traced and confirm stages refine it, with evidence."""
    return [
        f.refine(stage="traced", evidence={"jaxpr": "cond[branches=2] a:f32[]", "dtypes": ["float32", "float64"]}),
        f.refine(stage="confirmed", status="confirmed", path=f.path + "x", evidence={"error": "TracerBoolConversionError: <bool>\x01", "compiles": 3}),
        f.refine(stage="confirmed", status="refuted", path=f.path + "y"),
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Finding]:
    base = _corpus(tmp_path_factory.mktemp("corpus"))
    return sorted(base + _later_stages(base[0]), key=lambda f: f.sort_key)


def _render(fmt: str, findings: list[Finding], **kw) -> str:
    return reporters.get(fmt)(findings, reporters.Report(files=len({f.path for f in findings}) + 2, version=__version__, **kw))


# -- SARIF -------------------------------------------------------------------------------------
def test_sarif_of_fixtures_validates_against_the_official_schema(corpus):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    for findings in (corpus, []):
        doc = json.loads(_render("sarif", findings, device=DEVICE, notes=("a note",)))
        jsonschema.Draft7Validator(schema).validate(doc)


def test_sarif_rules_results_and_properties(corpus):
    doc = json.loads(_render("sarif", corpus, device=DEVICE))
    run_ = doc["runs"][0]
    driver = run_["tool"]["driver"]
    assert driver["version"] == __version__ and driver["informationUri"].startswith("https://")
    rules = driver["rules"]
    assert [r["id"] for r in rules] == sorted({f.code for f in corpus})
    for r in rules:
        rule = registry.get(r["id"])
        assert r["name"] == rule.name
        assert r["shortDescription"]["text"] == rule.summary()
        assert r["fullDescription"]["text"] and r["help"]["text"] and f"# {rule.code} {rule.name}" in r["help"]["markdown"]
    assert len(run_["results"]) == len(corpus)
    for res, f in zip(run_["results"], corpus):
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"] == f.code
        region = res["locations"][0]["physicalLocation"]["region"]
        assert (region["startLine"], region["startColumn"]) == (f.line, f.col)
        assert region["endLine"] >= region["startLine"]
        assert res["properties"]["stage"] == f.stage and res["properties"]["status"] == f.status
        assert res["message"]["text"].startswith(f.message)
    levels = {(r["properties"]["status"], r["level"]) for r in run_["results"]}
    assert ("refuted", "none") in levels and ("confirmed", "error") in levels
    confirmed = next(r for r in run_["results"] if r["properties"]["status"] == "confirmed")
    assert confirmed["properties"]["evidence"]["compiles"] == 3
    assert run_["properties"]["device"] == DEVICE


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_sarif_help_uris_point_at_rules_md_anchors(corpus):
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", rules_markdown(), re.M)}
    doc = json.loads(_render("sarif", corpus))
    for r in doc["runs"][0]["tool"]["driver"]["rules"]:
        page, anchor = r["helpUri"].split("#")
        assert page.endswith("docs/rules.md")
        assert anchor in anchors, r["helpUri"]


def test_sarif_fingerprints_survive_moving_code(tmp_path: Path):
    src = textwrap.dedent(
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def relu(x):
            if x > 0:
                return x
            return jnp.zeros_like(x)

        @jax.jit
        def clip(x):
            while x > 1:
                x = x / 2
            return x
        """
    ).lstrip()
    f = tmp_path / "m.py"

    def prints(text: str) -> list[tuple[str, int]]:
        f.write_text(text, encoding="utf-8")
        doc = json.loads(_render("sarif", run([str(f)], Config(), Options(cache=False, jobs=1)).findings))
        return [(r["partialFingerprints"]["stabcheck/v2"], r["locations"][0]["physicalLocation"]["region"]["startLine"]) for r in doc["runs"][0]["results"]]

    before = prints(src)
    after = prints("# a comment\n" * 10 + src)
    assert len(before) == 2 and len({fp for fp, _ in before}) == 2, "distinct findings need distinct fingerprints"
    assert [fp for fp, _ in before] == [fp for fp, _ in after]
    assert [line + 10 for _, line in before] == [line for _, line in after]


def test_sarif_absolute_paths_are_file_uris():
    f = Finding("STB101", "branch-on-tracer", "m", "/abs/dir with space/m.py", Span(3, 4))
    loc = json.loads(_render("sarif", [f]))["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "file:///abs/dir%20with%20space/m.py"}


# -- markdown ------------------------------------------------------------------------------------
def test_markdown_summary_table(corpus):
    text = _render("markdown", corpus, device=DEVICE)
    rows = [ln for ln in text.splitlines() if ln.startswith("| :")]
    assert len(rows) == len(corpus)
    for row in rows:  # pipes inside messages are escaped: every row has the header's 5 cells
        assert len(re.split(r"(?<!\\)\|", row)) == 7, row
    counted = len([f for f in corpus if f.status != "refuted"])
    assert f"**Found {counted} findings in" in text
    assert "Device: cpu" in text and "| confirmed |" in text and "| refuted |" in text


def test_markdown_clean_run():
    text = reporters.get("markdown")([], reporters.Report(files=4))
    assert "All checks passed: 4 files checked." in text and "| rule |" not in text


# -- JUnit ---------------------------------------------------------------------------------------
def test_junit_is_valid_xml_with_a_failure_per_finding(corpus):
    root = ET.fromstring(_render("junit", corpus, device=DEVICE))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    failures = suite.findall("testcase/failure")
    counted = [f for f in corpus if f.status != "refuted"]
    assert len(failures) == len(counted)
    assert {c.get("name") for c in cases if c.find("failure") is not None} == {f.path for f in counted}
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == len({f.path for f in counted})
    assert sorted(x.get("type") for x in failures) == sorted(f.code for f in counted)
    assert any("refuted" in (c.findtext("system-out") or "") for c in cases)


def test_junit_clean_run_has_a_passing_case():
    root = ET.fromstring(reporters.get("junit")([], reporters.Report(files=3)))
    (case,) = root.iter("testcase")
    assert case.find("failure") is None and root.get("failures") == "0"


# -- github --------------------------------------------------------------------------------------
def test_github_one_annotation_per_finding(corpus):
    lines = _render("github", corpus).splitlines()
    if len(corpus) > 10:  # past GitHub's 10 annotations per step, a last notice says so
        assert lines.pop().startswith("::notice title=stabcheck::stabcheck wrote ")
    assert len(lines) == len(corpus)
    for line, f in zip(lines, corpus):
        assert re.match(rf"::(error|warning|notice) file={re.escape(f.path)},line={f.line},col={f.col},", line), line
        assert "\n" not in line and f"title={f.code} {f.name}::" in line


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["sarif", "markdown", "junit"])
def test_cli_writes_each_format(tmp_path: Path, fmt: str):
    (tmp_path / "m.py").write_text("import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    return -x\n", encoding="utf-8")
    out = tmp_path / f"report.{fmt}"
    proc = run_cli("check", "m.py", "--no-cache", "--output-format", fmt, "--output-file", str(out), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert "STB101" in text
    if fmt == "sarif":
        assert json.loads(text)["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "m.py"
    elif fmt == "junit":
        assert ET.fromstring(text).find("testsuite/testcase/failure").get("type") == "STB101"


def test_sarif_identical_hazards_get_distinct_fingerprints():
    f = Finding("STB101", "branch-on-tracer", "m", "m.py", Span(3, 4), function="f", detail="x > 0", snippet="    if x > 0:")
    doc = json.loads(_render("sarif", [f, f.refine(span=Span(9, 4))]))
    prints = [r["partialFingerprints"]["stabcheck/v2"] for r in doc["runs"][0]["results"]]
    assert prints[1] == prints[0] + ":2"


def test_human_formats_print_the_run_notes():
    note = "typed tier off for this run: mypy stopped; the untyped analysis was used"
    for fmt in ("full", "concise"):
        text = reporters.get(fmt)([], reporters.Report(files=1, notes=(note,)))
        assert f"note: {note}" in text, fmt
        assert text.rstrip().endswith("1 file checked."), fmt
