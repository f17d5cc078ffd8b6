"""Every rule's examples are its tests: VALID stays silent, INVALID fires on each marked line."""

from __future__ import annotations

import textwrap

import pytest

from stabcheck import registry
from stabcheck.api import check_source
from stabcheck.config import Config
from stabcheck.rule import expected_lines

RULES = registry.all_rules()
STATIC = [r for r in RULES if r.has_visitors() or r.INVALID or r.VALID]


def _cases(kind: str):
    for r in RULES:
        for i, ex in enumerate(getattr(r, kind)):
            yield pytest.param(r, ex, id=f"{r.code}-{r.name}-{kind.lower()}{i}")


@pytest.mark.parametrize(("rule", "example"), list(_cases("INVALID")))
def test_invalid_fires_on_marked_lines(rule, example):
    src = textwrap.dedent(example)
    expected = expected_lines(src)
    assert expected, f"{rule.code} INVALID example has no `# expect: STBnnn` marker"
    found = {(f.line, f.code) for f in check_source(src, "example.py", Config())}
    for line, code in expected:
        assert (line, code) in found, f"{rule.code} did not fire on line {line}:\n{src}\nfound: {sorted(found)}"
    own = {line for line, code in found if code == rule.code}
    assert own <= {line for line, _ in expected}, f"{rule.code} fired on unmarked lines {own}:\n{src}"


@pytest.mark.parametrize(("rule", "example"), list(_cases("VALID")))
def test_valid_is_silent(rule, example):
    src = textwrap.dedent(example)
    found = [f for f in check_source(src, "example.py", Config()) if f.code == rule.code]
    assert not found, f"{rule.code} fired on a VALID example: {[(f.line, f.message) for f in found]}\n{src}"


@pytest.mark.parametrize("rule", RULES, ids=[r.code for r in RULES])
def test_rule_is_documented(rule):
    assert rule.code.startswith("STB") and len(rule.code) == 6
    assert rule.name and rule.name == rule.name.lower() and " " not in rule.name
    for section in ("What it does", "Why is this bad?", "Example", "Use instead"):
        assert rule.section(section), f"{rule.code} docstring lacks '## {section}'"
    if rule.has_visitors():
        assert rule.INVALID and rule.VALID, f"{rule.code} is a static rule without VALID/INVALID examples"


def test_registry_lookup():
    assert registry.get("STB101").name == "branch-on-tracer"
    assert registry.get("branch-on-tracer").code == "STB101"
    assert registry.get("stb101").code == "STB101"
    assert {r.code for r in registry.matching("STB9")} >= {"STB900", "STB901", "STB902"}
    assert registry.matching("nope") == []
    assert len({r.name for r in RULES}) == len(RULES)
