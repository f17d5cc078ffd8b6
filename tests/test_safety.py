"""The static stage never runs the checked code and writes nothing outside its cache directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli

HOSTILE = {
    "writes.py": """
        import jax
        open({marker!r}, "w").write("imported")

        @jax.jit
        def f(x):
            if x > 0:
                return x
            return -x
        """,
    "connects.py": """
        import socket
        import jax
        socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"imported")

        @jax.jit
        def g(x):
            while x > 0:
                x = x - 1
            return x
        """,
    "exits.py": """
        import os
        import jax
        os._exit(3)

        @jax.jit
        def h(x):
            return float(x)
        """,
    "loops.py": """
        import jax
        while True:
            pass

        @jax.jit
        def k(x):
            if x.sum() > 0:
                return x
            return -x
        """,
    "pkg/__init__.py": """
        import sys
        sys.exit("imported pkg")
        """,
    "pkg/mod.py": """
        from . import nothing
        import jax
        exec("open({marker!r}, 'w')")
        eval("__import__('os')._exit(4)")
        """,
    "setup.py": """
        open({marker!r}, "w").write("setup ran")
        """,
    "conftest.py": """
        open({marker!r}, "w").write("conftest ran")
        """,
}


def _snapshot(root: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime)
    return out


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    yield srv
    srv.close()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_hostile_tree_is_reported_and_nothing_it_would_do_happens(tmp_path: Path, listener: socket.socket, jobs: str) -> None:
    import textwrap

    tree = tmp_path / "tree"
    marker = tmp_path / "outside" / "MARKER"
    marker.parent.mkdir()
    for name, src in HOSTILE.items():
        p = tree / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(src.format(marker=str(marker), port=listener.getsockname()[1])).lstrip())
    # enough copies that the parallel path (worker processes) is taken with --jobs 2
    for i in range(10):
        (tree / f"copy{i}.py").write_text((tree / "writes.py").read_text())
    home = tmp_path / "home"
    home.mkdir()
    cache = tmp_path / "cache"
    before = _snapshot(tmp_path)
    proc = run_cli("check", "tree", "--cache-dir", str(cache), "--jobs", jobs, "--output-format", "json", cwd=tmp_path, env={"HOME": str(home)}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    found = {(Path(r["path"]).name, r["code"]) for r in json.loads(proc.stdout)}
    assert {("writes.py", "STB101"), ("connects.py", "STB101"), ("exits.py", "STB102"), ("loops.py", "STB101")} <= found
    assert not marker.exists()
    with pytest.raises(BlockingIOError):
        listener.accept()
    after = _snapshot(tmp_path)
    changed = {k for k in after if after[k] != before.get(k)} | {k for k in before if k not in after}
    assert changed and all(k.startswith("cache/") for k in changed), changed
    assert list(home.iterdir()) == []


def _modules_after(args: list[str], cwd: Path) -> set[str]:
    """The modules loaded in a process that imports stabcheck and runs the CLI with `args`."""
    out = cwd / "modules.json"
    code = (
        "import sys, json\n"
        "import stabcheck\n"
        f"sys.argv = ['stabcheck', *{args!r}]\n"
        "from stabcheck.cli import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        f"json.dump(sorted(sys.modules), open({str(out)!r}, 'w'))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True, timeout=300)
    return set(json.loads(out.read_text()))


def test_import_stabcheck_imports_no_jax_libcst_or_mypy(tmp_path: Path) -> None:
    code = "import sys, stabcheck; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'libcst', 'mypy', 'numpy')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert proc.stdout.strip() == "[]"


def test_static_check_imports_no_jax_libcst_or_mypy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Untyped (the default, and `--no-types` as the pre-commit hook runs it), the static stage
    imports nothing heavy; with `--types` mypy runs in its own subprocess, never in this one."""
    monkeypatch.delenv("STABCHECK_TYPES", raising=False)
    (tmp_path / "a.py").write_text("import jax\n\n@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    return -x\n")
    for args in (["check", "a.py", "--no-cache", "--no-types"], ["check", ".", "--output-format", "sarif", "--no-types"], ["check", ".", "--jobs", "2", "--statistics", "--no-types"]):
        mods = _modules_after(args, tmp_path)
        heavy = sorted(m for m in mods if m.split(".")[0] in ("jax", "jaxlib", "libcst", "mypy"))
        assert heavy == [], (args, heavy)
        assert "stabcheck.static.engine" in mods  # the check did run
    monkeypatch.setenv("STABCHECK_TYPES", "0")
    assert not any(m.startswith("mypy") for m in _modules_after(["check", "a.py", "--no-cache"], tmp_path))
    monkeypatch.delenv("STABCHECK_TYPES")
    assert not any(m.startswith("mypy") for m in _modules_after(["check", "a.py", "--no-cache"], tmp_path))  # off by default
    mods = _modules_after(["check", "a.py", "--no-cache", "--types"], tmp_path)
    assert not any(m.split(".")[0] in ("jax", "jaxlib", "libcst", "mypy") for m in mods), mods
