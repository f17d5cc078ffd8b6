"""The same tree gives byte-identical json and sarif with 1 and N jobs, cold and warm cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _tree(dst: Path) -> Path:
    """The repo's fixtures (the scenarios among them) and examples, and some broken files."""
    for src in (ROOT / "fixtures", ROOT / "examples"):
        if src.is_dir():
            shutil.copytree(src, dst / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "broken").mkdir()
    (dst / "broken" / "syntax.py").write_text("def f(:\n")
    (dst / "broken" / "latin1.py").write_bytes(b'x = "caf\xe9"\n')
    (dst / "broken" / "noqa.py").write_text("import jax\n\n@jax.jit\ndef f(x):\n    return x  # noqa: STB101\n")
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_output_is_byte_identical_across_jobs_and_cache(tmp_path: Path, fmt: str) -> None:
    tree = _tree(tmp_path / "tree")
    n_files = sum(1 for _ in tree.rglob("*.py"))
    assert n_files >= 20  # enough that --jobs 2 takes the parallel path

    def check(*args: str) -> str:
        proc = run_cli("check", "tree", "--exit-zero", "--output-format", fmt, *args, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    outputs = {
        "1 job, no cache": check("--jobs", "1", "--no-cache"),
        "2 jobs, no cache": check("--jobs", "2", "--no-cache"),
        "1 job, cold cache": check("--jobs", "1", "--cache-dir", "c1"),
        "1 job, warm cache": check("--jobs", "1", "--cache-dir", "c1"),
        "2 jobs, warm cache from 1 job": check("--jobs", "2", "--cache-dir", "c1"),
        "2 jobs, cold cache": check("--jobs", "2", "--cache-dir", "c2"),
        "2 jobs, warm cache": check("--jobs", "2", "--cache-dir", "c2"),
        "1 job, warm cache from 2 jobs": check("--jobs", "1", "--cache-dir", "c2"),
    }
    reference = outputs["1 job, no cache"]
    for label, out in outputs.items():
        assert out == reference, label
    data = json.loads(reference)
    results = data if fmt == "json" else data["runs"][0]["results"]
    assert len(results) >= 10  # the tree really has findings to order
    # warm runs really used the cache
    assert any((tmp_path / "c1").glob("static-*.json")) and any((tmp_path / "c2").glob("static-*.json"))
