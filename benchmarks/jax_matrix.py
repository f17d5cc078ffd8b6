"""`make test-jax`: the traced, confirm and runtime tests against the oldest JAX stabcheck declares
and the newest on PyPI, each in a fresh virtual environment under .jax-matrix/.

    python benchmarks/jax_matrix.py                 # oldest declared + newest available
    python benchmarks/jax_matrix.py 0.4.30 0.10.2   # given versions

The oldest is read from pyproject.toml's `jax>=X` (the declared range must be the tested one);
the newest is asked of pip (`pip index versions jax`). Exit status 1 when any version fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_traced_worker.py", "tests/test_traced_checks.py", "tests/test_traced_specs.py", "tests/test_traced_scenarios.py", "tests/test_confirm.py", "tests/test_runtime.py", "tests/test_matrix.py", "tests/test_pytest_plugin.py", "tests/test_reliability.py"]
TOOLS = ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "jaxtyping>=0.2.30", "pyyaml>=6", "jsonschema>=4.20", "optax>=0.2", "equinox>=0.11"]


def declared_oldest() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'"jax>=([0-9.]+)', text)
    if m is None:
        raise SystemExit("pyproject.toml declares no `jax>=` lower bound")
    return m.group(1)


def newest() -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "jax"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^jax \(([^)]+)\)", out, re.M)
    if m is None:
        raise SystemExit(f"`pip index versions jax` said:\n{out}")
    return m.group(1)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_version(version: str) -> bool:
    venv = ROOT / ".jax-matrix" / version
    py = venv / "bin" / "python"
    start = time.monotonic()
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        # jax and jaxlib pinned together; numpy left to jaxlib's own constraint
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"jax=={version}", f"jaxlib=={version}", *TOOLS, "-e", str(ROOT)], check=True)
        (venv / ".installed").touch()
    installed = time.monotonic() - start
    got = subprocess.run([str(py), "-c", "import jax, jaxlib, numpy; print(jax.__version__, jaxlib.__version__, numpy.__version__)"], capture_output=True, text=True).stdout.strip()
    print(f"== jax {version}: venv ready in {installed:.0f}s ({got})", flush=True)
    tests = [t for t in TESTS if (ROOT / t).exists()]
    # SIGINT back to its default: a background job (`make test-jax &`) inherits it ignored, and the
    # Ctrl-C test would then wait for an interrupt that never comes
    rc = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, preexec_fn=_default_sigint).returncode
    print(f"== jax {version}: {'passed' if rc == 0 else f'FAILED (pytest exit {rc})'} in {time.monotonic() - start:.0f}s", flush=True)
    return rc == 0


def main(argv: list[str]) -> int:
    versions = argv or [declared_oldest(), newest()]
    results = {v: run_version(v) for v in dict.fromkeys(versions)}
    for v, ok in results.items():
        print(f"jax {v}: {'pass' if ok else 'FAIL'}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
