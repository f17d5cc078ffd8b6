"""The traced stage's parts that run without JAX: specs, static entry discovery, import hygiene."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stabcheck.config import Config
from stabcheck.traced import specs
from stabcheck.traced.discover import entry_targets, factories
from stabcheck.traced.load import split_target
from stabcheck.traced.specs import Spec, SpecError
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("f32[8,2]", Spec("float32", (8, 2))),
        ("bf16[4]", Spec("bfloat16", (4,))),
        ("bool[2, 1]", Spec("bool", (2, 1))),
        ("i64[]", Spec("int64", ())),
        ("u8[3]", Spec("uint8", (3,))),
        ("c64[2]", Spec("complex64", (2,))),
        ("f32?[]", Spec("float32", (), weak=True)),
        ("f16[n, 3]", Spec("float16", (8, 3))),
    ],
)
def test_spec_parses(text: str, expected: Spec) -> None:
    assert specs.parse(text, {"n": 8}) == expected


@pytest.mark.parametrize("text", ["f33[2]", "f32(2)", "f32[2,x]", "f32?[3]", "f32[-1]", ""])
def test_bad_spec_names_the_spec_and_the_allowed_forms(text: str) -> None:
    with pytest.raises(SpecError) as e:
        specs.parse(text)
    assert repr(text) in str(e.value)


def test_pytree_spec_from_json() -> None:
    tree = specs.parse_tree('{"w": "f32[4,2]", "b": ["f32[2]", 3]}')
    assert tree == {"w": Spec("float32", (4, 2)), "b": [Spec("float32", (2,)), 3]}
    assert specs.to_json(tree) == {"w": "f32[4,2]", "b": ["f32[2]", 3]}
    with pytest.raises(SpecError, match="invalid pytree spec"):
        specs.parse_tree('{"w": ')


def test_static_and_dims() -> None:
    assert specs.parse_static(["1=3", "2='relu'", "3=tanh"]) == {1: 3, 2: "relu", 3: "tanh"}
    assert specs.parse_dims(["n=8", "batch=2"]) == {"n": 8, "batch": 2}
    for bad in (["x=3"], ["3"]):
        with pytest.raises(SpecError, match="--static"):
            specs.parse_static(bad)
    with pytest.raises(SpecError, match="--dim"):
        specs.parse_dims(["n=eight"])


def test_jaxtyping_annotation_strings() -> None:
    assert specs.from_jaxtyping('Float[Array, "n 2"]', {"n": 8}) == Spec("float32", (8, 2))
    assert specs.from_jaxtyping("Bool[Array, 'batch']", {}) == Spec("bool", (specs.DEFAULT_DIM,))
    assert specs.from_jaxtyping('Int[Array, "*b 3"]', {}) == Spec("int32", (3,))
    assert specs.from_jaxtyping("int", {}) is None


def test_split_target() -> None:
    assert split_target("a/b.py:ENTRIES") == ("a/b.py", "ENTRIES")
    assert split_target("pkg.mod:fn") == ("pkg.mod", "fn")
    assert split_target("a/b.py") == ("a/b.py", None)
    assert split_target("C:/x/b.py") == ("C:/x/b.py", None)


def test_factories_found_statically_with_any_alias() -> None:
    src = textwrap.dedent(
        """
        import stabcheck
        import stabcheck as sc
        from stabcheck import entry
        from stabcheck import entry as mark

        @stabcheck.entry
        def a(): ...

        @sc.entry
        def b(): ...

        @entry
        def c(): ...

        @mark
        def d(): ...

        @other.entry
        def not_one(): ...

        def plain(): ...
        """
    )
    assert factories(src) == ["a", "b", "c", "d"]
    assert factories("def broken(:\n") == []


def test_entry_targets_from_files_and_config(tmp_path: Path) -> None:
    f = tmp_path / "entries.py"
    f.write_text("import stabcheck\n\n@stabcheck.entry\ndef train():\n    return None\n")
    (tmp_path / "other.py").write_text("x = 1\n")
    cfg = Config(entries=("models.py:ENTRIES", "pkg.mod:make"), root=str(tmp_path), source=str(tmp_path / "pyproject.toml"))
    got = entry_targets([f, tmp_path / "other.py"], cfg)
    assert got == [f"{f}:train", f"{tmp_path / 'models.py'}:ENTRIES", "pkg.mod:make"]


def test_static_and_cli_modules_do_not_import_jax() -> None:
    code = (
        "import sys, stabcheck, stabcheck.cli.trace, stabcheck.worker.stage, stabcheck.worker, "
        "stabcheck.traced.discover, stabcheck.traced.specs, stabcheck.traced.source, stabcheck.cli\n"
        "bad = [m for m in sys.modules if m == 'jax' or m.startswith('jax.') or m == 'libcst']\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_trace_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f(x):\n    return x\n")
    for args in (
        [f"{f}:f", "--arg", "f33[2]"],
        [f"{f}:f", "--transforms", "grad,warp"],
        [f"{f}:f", "--static", "one=1"],
        [f"{f}:f", "--output-format", "yaml"],
        [str(tmp_path / "missing.py") + ":f"],
        [f"{f}:f", "--memory-limit", "lots"],
        [f"{f}:nope"],  # a name the file does not define (found without importing it)
        ["no_such_module_for_stabcheck:f"],  # a module not on the path
    ):
        r = run_cli("trace", *args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("stabcheck: error:") and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_worker_rejects_unknown_tasks_and_progress_runs_without_a_terminal() -> None:
    from stabcheck.worker.progress import Progress
    from stabcheck.worker import TASKS, run_in_worker

    assert {"trace", "confirm", "matrix"} <= set(TASKS)
    with pytest.raises(ValueError, match="unknown worker task"):
        run_in_worker("nope", {})
    p = Progress(1)
    for e in ({"event": "loaded", "entries": ["a", "b"]}, {"event": "start", "entry": "a"}, {"event": "entry", "entry": "a"}):
        p.event(e)
    assert p.entries == 2 and p.done == 1
    p.close()
