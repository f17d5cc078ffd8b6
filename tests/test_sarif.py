"""SARIF for GitHub code scanning in a monorepo: URIs from the repository root, invocations,
suppressed results, a result cap, fingerprints that survive reformatting, no paths of stabcheck."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stabcheck import reporters
from stabcheck.api import Options, run
from stabcheck.config import Config
from stabcheck.finding import Finding, Span
from stabcheck.reporters import sarif_

from .conftest import run_cli

SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
BRANCH = "import jax\n\n\n@jax.jit\ndef relu(x):\n    if x > 0:\n        return x\n    return -x\n"
LEAK = "import jax\nimport numpy as np\n\n\n@jax.jit\ndef f(x):\n    return x*np.float64(2.0) + x\n"


def _validate(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8"))).validate(doc)


def _sarif(findings: list[Finding], **kw: object) -> dict:
    doc = json.loads(reporters.get("sarif")(findings, reporters.Report(files=1, version="0.1.0", **kw)))  # type: ignore[arg-type]
    _validate(doc)
    return doc


@pytest.fixture
def monorepo(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    pkg = tmp_path / "packages" / "model"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text("[tool.stabcheck]\n")
    (pkg / "m.py").write_text(BRANCH.replace("    if x > 0:\n", "    if x > 0:\n") + "\n\n@jax.jit\ndef g(x):\n    if x > 1:  # noqa: STB101\n        return x\n    return x\n")
    return tmp_path


def test_uris_are_relative_to_the_repository_root(monorepo: Path) -> None:
    pkg = monorepo / "packages" / "model"
    proc = run_cli("check", ".", "--no-cache", "--no-types", "--output-format", "sarif", cwd=pkg)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    _validate(doc)
    run_ = doc["runs"][0]
    active = [r for r in run_["results"] if "suppressions" not in r]
    loc = active[0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "packages/model/m.py", "uriBaseId": "%SRCROOT%"}
    root_uri = run_["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert root_uri.startswith("file:///") and root_uri.endswith("/")
    assert (Path(root_uri[len("file://") :]) / loc["uri"]).is_file()  # resolves from the root
    inv = run_["invocations"][0]
    assert inv["executionSuccessful"] is True
    assert inv["workingDirectory"]["uri"].rstrip("/").endswith("/packages/model")
    # the `# noqa`'d finding is kept, suppressed in source; other formats do not show it
    (sup,) = [r for r in run_["results"] if "suppressions" in r]
    assert sup["suppressions"][0]["kind"] == "inSource" and "noqa" in sup["suppressions"][0]["justification"]
    plain = run_cli("check", ".", "--no-cache", "--no-types", "--output-format", "json", cwd=pkg)
    assert len(json.loads(plain.stdout)) == len(active) == 1


def test_baselined_findings_stay_as_external_suppressions(monorepo: Path) -> None:
    pkg = monorepo / "packages" / "model"
    first = run_cli("check", ".", "--no-cache", "--no-types", "--baseline", "bl.json", "--write-baseline", cwd=pkg)
    assert first.returncode == 0, first.stderr
    proc = run_cli("check", ".", "--no-cache", "--no-types", "--baseline", "bl.json", "--output-format", "sarif", cwd=pkg)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # exit codes unchanged: nothing new
    doc = json.loads(proc.stdout)
    _validate(doc)
    kinds = sorted(r["suppressions"][0]["kind"] for r in doc["runs"][0]["results"])
    assert kinds == ["external", "inSource"]
    assert doc["runs"][0]["properties"]["baselined"] == 1
    concise = run_cli("check", ".", "--no-cache", "--no-types", "--baseline", "bl.json", "--output-format", "concise", cwd=pkg)
    assert concise.stdout.splitlines() == ["All checks passed: 1 file checked; 1 finding hidden by the baseline."]


def test_notes_and_analysis_errors_are_tool_notifications() -> None:
    err = Finding("STB902", "analysis-error", "the worker died", "m.py", Span(1, 1))
    doc = _sarif([err], notes=("typed tier off",))
    inv = doc["runs"][0]["invocations"][0]
    assert inv["executionSuccessful"] is False
    levels = [(n["level"], n["message"]["text"]) for n in inv["toolExecutionNotifications"]]
    assert levels == [("note", "typed tier off"), ("error", "the worker died")]
    assert _sarif([])["runs"][0]["invocations"][0]["executionSuccessful"] is True


def test_results_are_capped_with_a_notification(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sarif_, "MAX_RESULTS", 3)
    many = [Finding("STB101", "branch-on-tracer", f"m{i}", "m.py", Span(i + 1, 1), detail=str(i)) for i in range(5)]
    doc = _sarif(many)
    assert len(doc["runs"][0]["results"]) == 3
    (note,) = [n for n in doc["runs"][0]["invocations"][0]["toolExecutionNotifications"] if n["level"] == "warning"]
    assert note["message"]["text"].startswith("2 results left out")
    monkeypatch.setattr(sarif_, "MAX_RESULTS", 25_000)
    monkeypatch.setattr(sarif_, "MAX_BYTES", 2_000)
    assert 0 < len(_sarif(many)["runs"][0]["results"]) < 5


def test_fingerprints_survive_reformatting(tmp_path: Path) -> None:
    def prints(text: str) -> list[str]:
        f = tmp_path / "m.py"
        f.write_text(text, encoding="utf-8")
        found = run([str(f)], Config(types=False), Options(cache=False, jobs=1)).findings
        assert found
        return [r["partialFingerprints"][sarif_.FINGERPRINT_KEY] for r in _sarif(found)["runs"][0]["results"]]

    assert prints(LEAK) == prints(LEAK.replace("x*np.float64(2.0) + x", "(\n        x * np.float64( 2.0 )\n        + x\n    )"))
    assert prints(BRANCH) == prints(BRANCH.replace("if x > 0:", "if (x>0):"))


def test_no_absolute_paths_of_stabcheck_in_evidence() -> None:
    own = str(Path(sarif_.__file__).resolve().parents[1])
    f = Finding("STB902", "analysis-error", "m", "m.py", Span(1, 1), evidence={"frames": [f"{own}{os.sep}traced{os.sep}tracing.py:12"], "where": own})
    text = json.dumps(_sarif([f])["runs"][0]["results"][0]["properties"]["evidence"])
    assert own not in text and "<stabcheck>/traced/tracing.py:12" in text
