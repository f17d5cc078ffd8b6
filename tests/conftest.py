from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The typed tier is off by default; a developer's STABCHECK_TYPES=1 must not turn it on for the
# hundreds of throw-away trees the suite checks (a cold mypy run costs seconds). It runs untyped
# unless a test asks (tests/test_typed.py turns it on per run, and tests the default with this unset).
os.environ["STABCHECK_TYPES"] = "0"
# The cache (and its secret key) lives in the user's cache home by default: the suite keeps its own,
# so that no test writes to ~/.cache or reads what a real run left there.
if "STABCHECK_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["STABCHECK_CACHE_DIR"] = tempfile.mkdtemp(prefix="stabcheck-test-cache-")
    atexit.register(shutil.rmtree, os.environ["STABCHECK_CACHE_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "fixtures" / "scenarios"  # the workspace's shared/scenarios, copied: no test reads outside the clone
SCHEMAS = ROOT / "tests" / "data"  # the official SARIF 2.1.0 schema
FIXTURES = ROOT / "fixtures"


@pytest.fixture(autouse=True)
def _no_project_facts_from_an_earlier_test():
    """A run installs its project's facts process-wide (the checked modules, the x64 fact:
    `static.xfile.install`), for the `--fix` and the server that follow it. Each test starts from
    none, so a test's result does not depend on which test ran before it in the process (a
    `check_paths` of this repository, which names x64, silenced STB301's float64 request in
    tests/test_fix.py when tests/test_typed.py ran first)."""
    from stabcheck.static import xfile

    xfile.install((), {})
    yield


def have_jax() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


requires_jax = pytest.mark.skipif(not have_jax(), reason="JAX is not installed")


def run_cli(*args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `stabcheck` command in a subprocess, as a user would."""
    full_env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "stabcheck", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def write(tmp_path: Path):
    """write("name.py", source) -> Path, dedenting the source."""

    def _write(name: str, source: str | bytes) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            p.write_bytes(source)
        else:
            p.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
        return p

    return _write
