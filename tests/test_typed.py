"""The typed tier (issue 7): mypy's types make the static rules precise and follow calls across files.

`fixtures/typed/` marks each finding that needs types with `# typed: STBnnn` and each line the
untyped analysis gets wrong with `# near-miss`; `# silent:` marks code only types reach.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stabcheck import api
from stabcheck.config import Config
from stabcheck.static import typed
from stabcheck.static.analysis import Analysis
from stabcheck.static.names import Names
from tests.conftest import requires_jax, run_cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures" / "typed"
MARK = re.compile(r"#\s*(typed: (STB\d{3})|near-miss|silent:)")


def markers() -> dict[str, set[tuple[str, int, str]]]:
    out: dict[str, set[tuple[str, int, str]]] = {"typed": set(), "near-miss": set(), "silent": set()}
    for f in sorted(FIXTURE.glob("*.py")):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            m = MARK.search(line)
            if m is None or line.lstrip().startswith(("#", '"', "Each")):
                continue
            if m.group(2):
                out["typed"].add((f.name, i, m.group(2)))
            else:
                out["near-miss" if m.group(1) == "near-miss" else "silent"].add((f.name, i, ""))
    return out


def found(result: api.Result) -> set[tuple[str, int, str]]:
    return {(Path(f.path).name, f.line, f.code) for f in result.findings}


@pytest.fixture(scope="session")
def type_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the session: jax is analysed once (cold), every later test is warm."""
    return tmp_path_factory.mktemp("stabcheck-cache")


def typed_run(paths: list[str], cache: Path, types: bool = True) -> api.Result:
    return api.run(paths, Config(types=types), api.Options(jobs=1, cache_dir=str(cache)))


# -- fast: the contract without mypy ----------------------------------------------------------------
def test_fixture_has_five_findings_and_five_near_misses() -> None:
    m = markers()
    assert len(m["typed"]) >= 5 and len(m["near-miss"]) >= 5
    assert {c for _, _, c in m["typed"]} >= {"STB101", "STB201", "STB202"}


def test_untyped_flags_the_near_misses_and_misses_the_typed_findings() -> None:
    m = markers()
    # without types the near-misses' operands (a helper's result, an alias-annotated argument)
    # are not proven traced: silent by default, kept as guesses for --preview
    res = api.run([str(FIXTURE)], Config(types=False), api.Options(cache=False, jobs=1))
    assert not {(f, n) for f, n, _ in found(res)} & {(f, n) for f, n, _ in m["near-miss"]}
    res = api.run([str(FIXTURE)], Config(types=False, preview=True), api.Options(cache=False, jobs=1))
    lines = {(f, n) for f, n, _ in found(res)}
    assert lines == {(f, n) for f, n, _ in m["near-miss"]} | UNTYPED_CROSS_FILE
    assert not lines & ({(f, n) for f, n, _ in m["typed"]} - UNTYPED_CROSS_FILE)


# a plain `from helpers import normalize` called from jitted code: found without mypy too, by the
# untyped cross-file index (`static.xfile`, issue 20)
UNTYPED_CROSS_FILE = {("helpers.py", 19)}


class _Oracle:
    """A hand-written type oracle: what the analysis hook expects from the typed tier."""

    def __init__(self, static_calls: set[str], params: dict[tuple[str, str], str], callees: dict[str, str]) -> None:
        self.static_calls, self.params, self.callees = static_calls, params, callees

    def kind(self, expr: ast.AST) -> str | None:
        return "static" if isinstance(expr, ast.Call) and self.is_static_call(expr) else None

    def is_static_call(self, call: ast.Call) -> bool:
        return ast.unparse(call) in self.static_calls

    def callee(self, callee: ast.AST) -> str | None:
        return self.callees.get(ast.unparse(callee))

    def param_kind(self, function: str, param: str) -> str | None:
        return self.params.get((function, param))

    def seed_items(self):  # type: ignore[no-untyped-def]
        return iter([("helper", frozenset({"v"}), True)])


def test_analysis_hook_uses_the_oracle() -> None:
    src = textwrap.dedent(
        """
        import jax
        def helper(v):
            return v
        class Net:
            def run(self, h):
                return h
        NET = Net()
        @jax.jit
        def f(x, flag: Mask, k: Count):
            n = count(x)
            y = NET.run(x)
            return n, y
        """
    )
    tree = ast.parse(src)
    oracle = _Oracle({"count(x)"}, {("f", "flag"): "array", ("f", "k"): "static"}, {"NET.run": "Net.run"})
    an = Analysis(tree, Names(tree), oracle)
    f = next(i for i in an.functions.values() if i.qualname == "f")
    run = next(i for i in an.functions.values() if i.qualname == "Net.run")
    helper = next(i for i in an.functions.values() if i.qualname == "helper")
    assert "n" not in f.traced and "y" in f.traced  # a static call; a resolved method
    assert "k" in f.static_params  # `k: Count` where Count = int
    assert an.is_traced_array(ast.Name("flag"), f)  # declared an Array through an alias
    assert run.transformed and run.traced_params == {"h"}
    assert helper.transformed and helper.abstract and helper.traced_params == {"v"}  # seeded
    plain = Analysis(tree, Names(tree))
    pf = next(i for i in plain.functions.values() if i.qualname == "f")
    assert "n" in pf.traced and not next(i for i in plain.functions.values() if i.qualname == "Net.run").transformed


def test_importing_stabcheck_imports_neither_mypy_nor_jax() -> None:
    code = "import sys, stabcheck, stabcheck.static.context, stabcheck.static.typed; print('mypy' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# -- slow: mypy for real ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_types_report_the_typed_findings_and_silence_the_near_misses(type_cache: Path) -> None:
    m = markers()
    res = typed_run([str(FIXTURE)], type_cache)
    assert found(res) == m["typed"], res.notes
    assert all(f.evidence.get("stage") == "typed" for f in res.findings if (Path(f.path).name, f.line) not in UNTYPED_CROSS_FILE)
    assert not res.notes


@pytest.mark.slow
def test_warm_run_rechecks_nothing_and_costs_a_fraction(type_cache: Path) -> None:
    files = sorted(FIXTURE.glob("*.py"))
    first = typed.prepare(files, type_cache)  # warm after the test above, cold when run alone
    warm = typed.prepare(files, type_cache)
    assert warm.rechecked == 0
    assert set(warm.files) == {str(f) for f in files}
    assert {k: v.digest() for k, v in warm.files.items()} == {k: v.digest() for k, v in first.files.items()}
    assert warm.seconds < 2.0


@pytest.mark.slow
def test_an_edited_helper_changes_the_verdict_in_its_caller(type_cache: Path, tmp_path: Path) -> None:
    tree = tmp_path / "proj"
    shutil.copytree(FIXTURE, tree)
    assert ("model.py", 100, "STB101") not in found(typed_run([str(tree)], type_cache))
    helpers = tree / "helpers.py"
    helpers.write_text(helpers.read_text(encoding="utf-8").replace("def num_blocks(x: jax.Array) -> int:\n    return x.shape[0] // 2", "def num_blocks(x: jax.Array) -> jax.Array:\n    return jnp.sum(x > 0)"), encoding="utf-8")
    after = api.run([str(tree)], Config(types=True, preview=True), api.Options(jobs=1, cache_dir=str(type_cache)))
    # `if n > 1` on an Array from another module: kept as a hypothesis (the helper's result is not
    # proven traced), shown with --preview
    assert ("model.py", 100, "STB101") in found(after)
    hit = next(f for f in after.findings if f.line == 100)
    assert hit.evidence.get("stage") != "typed"  # the untyped analysis flags it too


@pytest.mark.slow
def test_cli_types_flag(type_cache: Path) -> None:
    m = markers()
    on = run_cli("check", str(FIXTURE), "--types", "--output-format", "json", "--cache-dir", str(type_cache), "--exit-zero")
    off = run_cli("check", str(FIXTURE), "--no-types", "--preview", "--output-format", "json", "--cache-dir", str(type_cache), "--exit-zero")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr

    def lines(out: str) -> set[tuple[str, int, str]]:
        data = json.loads(out)
        items = data if isinstance(data, list) else data.get("findings", [])
        return {(Path(d["path"]).name, d["line"], d["code"]) for d in items}

    assert lines(on.stdout) == m["typed"]
    assert {(f, n) for f, n, _ in lines(off.stdout)} == {(f, n) for f, n, _ in m["near-miss"]} | UNTYPED_CROSS_FILE


def test_the_typed_tier_is_off_by_default(tmp_path: Path) -> None:
    """No flag, no config, no STABCHECK_TYPES: the untyped verdicts, and mypy never started
    (its cache is not even created)."""
    m = markers()
    env = {k: v for k, v in os.environ.items() if k not in ("STABCHECK_TYPES", "STABCHECK_CACHE_DIR")}
    env["HOME"] = str(tmp_path / "home")
    env.pop("XDG_CACHE_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "stabcheck", "check", str(FIXTURE), "--preview", "--output-format", "json", "--cache-dir", str(tmp_path / "cache"), "--exit-zero"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {(f, n) for f, n, _ in _json_lines(proc.stdout)} == {(f, n) for f, n, _ in m["near-miss"]} | UNTYPED_CROSS_FILE
    assert not (tmp_path / "cache" / "typed").exists() and not (tmp_path / "home" / ".cache" / "stabcheck" / "typed").exists()
    res = api.run([str(FIXTURE)], Config(preview=True), api.Options(cache=False, jobs=1))  # the library too
    assert res.notes == [] and {(f, n) for f, n, _ in found(res)} == {(f, n) for f, n, _ in m["near-miss"]} | UNTYPED_CROSS_FILE


@pytest.mark.slow
def test_flag_config_and_environment_turn_it_on_in_that_order(type_cache: Path, tmp_path: Path) -> None:
    m = markers()
    args = ("check", str(FIXTURE), "--output-format", "json", "--cache-dir", str(type_cache), "--exit-zero")
    on_cfg, off_cfg = tmp_path / "on" / "stabcheck.toml", tmp_path / "off" / "stabcheck.toml"
    on_cfg.parent.mkdir()
    off_cfg.parent.mkdir()
    on_cfg.write_text("types = true\n", encoding="utf-8")
    off_cfg.write_text("types = false\n", encoding="utf-8")
    near = {(f, n) for f, n, _ in m["near-miss"]} | UNTYPED_CROSS_FILE

    def lines(*extra: str, env: dict[str, str] | None = None) -> set[tuple[str, int, str]]:
        proc = run_cli(*args, *extra, env={"STABCHECK_TYPES": "", **(env or {})})
        assert proc.returncode == 0, proc.stderr
        return _json_lines(proc.stdout)

    assert lines("--types") == m["typed"]
    assert lines("--config", str(on_cfg)) == m["typed"]
    assert lines(env={"STABCHECK_TYPES": "1"}) == m["typed"]
    assert {(f, n) for f, n, _ in lines("--preview", "--config", str(off_cfg), env={"STABCHECK_TYPES": "1"})} == near  # config beats the environment
    assert {(f, n) for f, n, _ in lines("--preview", "--no-types", "--config", str(on_cfg))} == near  # the flag beats the config
    assert lines("--types", "--config", str(off_cfg)) == m["typed"]


def _json_lines(out: str) -> set[tuple[str, int, str]]:
    data = json.loads(out)
    items = data if isinstance(data, list) else data.get("findings", [])
    return {(Path(d["path"]).name, d["line"], d["code"]) for d in items if d["code"] != "note"}  # notes are rows too


def test_the_default_follows_the_environment_else_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from stabcheck.config import ConfigError

    for value, want in (("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False), ("off", False), ("", False)):
        monkeypatch.setenv("STABCHECK_TYPES", value)
        assert typed.on_by_default() is want
    monkeypatch.setenv("STABCHECK_TYPES", "maybe")
    with pytest.raises(ConfigError, match="STABCHECK_TYPES"):
        typed.on_by_default()
    monkeypatch.delenv("STABCHECK_TYPES")
    assert typed.on_by_default() is False  # mypy is installed, and still off


def test_a_bad_environment_value_is_a_usage_error() -> None:
    proc = run_cli("check", str(FIXTURE), env={"STABCHECK_TYPES": "maybe"})
    assert proc.returncode == 2 and "STABCHECK_TYPES" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_stub_that_does_not_parse_degrades_to_untyped_with_one_note(type_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "weird.pyi").write_text("def broken(:\n", encoding="utf-8")
    (tmp_path / "step.py").write_text(
        textwrap.dedent(
            """
            import jax
            import weird

            @jax.jit
            def step(x):
                if x.sum() > 0:
                    return x
                return -x
            """
        ),
        encoding="utf-8",
    )
    res = typed_run([str(tmp_path / "step.py")], type_cache)
    assert [(f.code, f.line) for f in res.findings] == [("STB101", 7)]
    assert len(res.notes) == 1 and "typed tier off" in res.notes[0] and "untyped" in res.notes[0]


@pytest.mark.slow
def test_measure_reports_cold_and_warm(tmp_path: Path) -> None:
    (tmp_path / "small.py").write_text("def f(n: int) -> int:\n    return n + 1\n", encoding="utf-8")
    out = typed.measure([tmp_path / "small.py"], Config(), api.enabled_rules(Config()))
    assert out["files"] == 1 and out["typed_files"] == 1
    assert out["typed_cold_s"] > 0 and out["rechecked_warm"] == 0
    assert out["warm_over_cold"] is not None and out["warm_over_cold"] < 1


@pytest.mark.slow
@requires_jax
def test_fixtures_fail_and_pass_under_jax_as_marked() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        sys.path.insert(0, sys.argv[1])
        import jax, jax.numpy as jnp
        import model
        out = {}
        def run(name, fn):
            try:
                jax.block_until_ready(fn())
                out[name] = "ok"
            except Exception as e:
                out[name] = type(e).__name__
        x = jnp.arange(1.0, 9.0)
        run("project", lambda: model.project(x))
        run("forward", lambda: model.forward(x.reshape(2, 4)))
        run("gate", lambda: model.gate(x, jnp.array(True)))
        run("gate_expr", lambda: model.gate_expr(x, jnp.array(True)))
        run("total", lambda: model.total(x))
        run("masked_total", lambda: jax.grad(lambda v: model.masked_total(v, jnp.ones(8), reduce=False))(x))
        run("scaled", lambda: jax.grad(lambda v: model.scaled(v))(x))
        for n in ("blocks", "flatten_batch", "row_sums", "padded", "head_sum"):
            run(n, lambda n=n: getattr(model, n)(x))
            run(n + "_2d", lambda n=n: getattr(model, n)(x.reshape(2, 4)))
        run("width", lambda: jax.jit(lambda h: jnp.zeros(model.MODEL.encoder.width(h)))(x))
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(FIXTURE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: out[k] for k in ("project", "forward", "gate", "gate_expr")} == dict.fromkeys(("project", "forward", "gate", "gate_expr"), "TracerBoolConversionError")
    assert out["masked_total"] == "TypeError" and out["scaled"] == "TypeError"  # grad of a None output
    # masked_total and scaled return None by their caller's choice (a static flag, a None
    # argument): one structure per compiled call, so the static stage only guesses there
    clean = {k: v for k, v in out.items() if k not in ("project", "forward", "gate", "gate_expr", "masked_total", "scaled")}
    assert set(clean.values()) == {"ok"}, clean


@pytest.mark.slow
def test_callees_look_through_jit_partial_and_bound_methods(type_cache: Path, tmp_path: Path) -> None:
    src = tmp_path / "wrapped.py"
    src.write_text(
        textwrap.dedent(
            """
            from functools import partial
            import jax
            import jax.numpy as jnp

            def _step(x):
                return x + 1

            step = jax.jit(_step)

            @partial(jax.jit, static_argnums=1)
            def pair(x: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
                return x, x * n

            class Head:
                def __call__(self, h: jax.Array) -> jax.Array:
                    return h

            HEAD = Head()

            def use(x: jax.Array):
                a = step(x)
                b = pair(x, 2)
                c = HEAD(x)
                return jnp.sum(x), a, b, c
            """
        ),
        encoding="utf-8",
    )
    ft = typed.prepare([src], type_cache).files[str(src)]
    tree = ast.parse(src.read_text(encoding="utf-8"))
    use = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "use")
    calls = {ast.unparse(c.func): c for c in ast.walk(use) if isinstance(c, ast.Call)}
    assert ft.callee(calls["step"].func) == "_step"  # `step = jax.jit(_step)`
    assert ft.callee(calls["pair"].func) == "pair"  # through `@partial(jax.jit, ...)`
    assert ft.callee(calls["HEAD"].func) == "Head.__call__"  # an instance's __call__
    assert ft.kind(calls["pair"]) == "tuple:2"  # the declared return mypy's JitWrapped lost
    assert ft.kind(calls["jnp.sum"]) == "array"  # jax's own annotations
    assert ft.param_kind("pair", "n") == "static" and ft.param_kind("pair", "x") == "array"


@pytest.mark.slow
def test_jaxtyping_alias_parameter_is_an_array(type_cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("jaxtyping")
    src = tmp_path / "flags.py"
    src.write_text(
        textwrap.dedent(
            """
            import jax
            from jaxtyping import Array, Bool, Float

            Flags = Bool[Array, "b"]

            @jax.jit
            def pick(x: Float[Array, "b"], keep: Flags, n: int):
                if n > 0 and keep:
                    return x
                return -x
            """
        ),
        encoding="utf-8",
    )
    assert typed_run([str(src)], type_cache, types=False).findings == []  # `Flags` says nothing to ast
    res = typed_run([str(src)], type_cache)
    assert [(f.code, f.line, f.detail, f.evidence.get("stage")) for f in res.findings] == [("STB101", 9, "keep", "typed")]


STEP = "import jax\n\n@jax.jit\ndef step(x):\n    if x > 0:\n        return x\n    return -x\n"


def _bounded_tree(tmp_path: Path, config: str = "") -> Path:
    tree = tmp_path / "proj"
    tree.mkdir()
    (tree / "step.py").write_text(STEP, encoding="utf-8")
    (tree / "stabcheck.toml").write_text(config, encoding="utf-8")
    return tree


FORMATS_WITH_NOTES = ("full", "concise", "json", "sarif", "github", "junit", "markdown")


def _assert_one_note_everywhere(tree: Path, cache: Path, needle: str) -> None:
    """Every output format carries the one note (json: a row whose code is "note"), the untyped
    STB101 is kept, and mypy's temporary files are gone."""
    tmp = cache.parent / "tmp"
    tmp.mkdir()
    for fmt in FORMATS_WITH_NOTES:
        proc = run_cli("check", str(tree / "step.py"), "--types", "--output-format", fmt, "--cache-dir", str(cache), "--config", str(tree / "stabcheck.toml"), cwd=tree, env={"TMPDIR": str(tmp)})
        assert proc.returncode == 1, proc.stderr
        shown = proc.stdout
        # one note; sarif and junit carry it in two places (a notification / system-out, and the run's properties)
        assert shown.count(needle) == (2 if fmt in ("sarif", "junit") else 1), (fmt, shown, proc.stderr)
        assert "STB101" in proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp.iterdir()) == []


@pytest.mark.slow
def test_a_mypy_crash_keeps_the_untyped_findings_with_one_note(tmp_path: Path) -> None:
    """A 50,000-term boolean chain is valid Python (`ast` parses it) and overflows mypy's stack:
    its process dies with SIGSEGV; stabcheck reports one note and the untyped findings."""
    tree = _bounded_tree(tmp_path)
    (tree / "chain.py").write_text("def f(a):\n    return " + " and ".join(["a"] * 50_000) + "\n", encoding="utf-8")
    res = api.run([str(tree)], Config(types=True), api.Options(jobs=1, cache_dir=str(tmp_path / "cache")))
    assert [(Path(f.path).name, f.code, f.line) for f in res.findings] == [("step.py", "STB101", 5)]
    assert len(res.notes) == 1 and "typed tier off for this run: mypy crashed" in res.notes[0], res.notes
    proc = run_cli("check", str(tree), "--types", "--output-format", "github", "--cache-dir", str(tmp_path / "cache"), cwd=tree)
    assert proc.returncode == 1 and proc.stdout.count("mypy crashed") == 1 and "STB101" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_mypy_timeout_keeps_the_untyped_findings_with_one_note_in_every_format(tmp_path: Path) -> None:
    tree = _bounded_tree(tmp_path, "types-timeout = 0.001\n")  # no Python process starts that fast
    _assert_one_note_everywhere(tree, tmp_path / "cache", "ran past its time bound (0.001 s")


@pytest.mark.slow
def test_the_memory_bound_stops_mypy_with_one_note(tmp_path: Path) -> None:
    tree = _bounded_tree(tmp_path, 'types-memory-limit = "40MiB"\n')  # importing mypy alone needs more
    proc = run_cli("check", str(tree / "step.py"), "--types", "--output-format", "concise", "--cache-dir", str(tmp_path / "cache"), "--config", str(tree / "stabcheck.toml"), cwd=tree)
    assert proc.returncode == 1 and "STB101" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("note: typed tier off for this run: mypy ran out of its memory bound (40MiB") == 1, proc.stdout


def test_a_bound_that_stopped_mypy_is_not_paid_again_on_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout costs the whole bound (5 minutes by default): on the same files, at the same or a
    tighter bound, the next run gives the note at once; an edit or a looser bound retries."""
    tree = _bounded_tree(tmp_path)
    starts: list[int] = []
    real = typed._child
    monkeypatch.setattr(typed, "_child", lambda *a: starts.append(1) or real(*a))

    def run(seconds: float) -> list[str]:
        return typed.prepare([tree / "step.py"], tmp_path / "cache", bounds=typed.Bounds(timeout=seconds)).notes

    assert len(starts) == 0
    first = run(0.001)
    assert len(starts) == 1 and len(first) == 1 and "time bound (0.001 s" in first[0] and "was stopped" in first[0]
    again = run(0.001)
    assert len(starts) == 1 and len(again) == 1 and "time bound (0.001 s" in again[0] and "earlier run" in again[0]
    assert "was stopped" in run(0.002)[0] and len(starts) == 2  # a looser bound: tried again
    (tree / "step.py").write_text(STEP + "# edited\n", encoding="utf-8")
    assert "was stopped" in run(0.001)[0] and len(starts) == 3  # other files: tried again


def test_bad_bounds_are_config_errors(tmp_path: Path) -> None:
    for text in ("types-timeout = 0", "types-timeout = nan", "types-timeout = -1", 'types-memory-limit = "lots"', "types-memory-limit = true"):
        (tmp_path / "stabcheck.toml").write_text(text + "\n", encoding="utf-8")
        (tmp_path / "a.py").write_text("x = 1\n", encoding="utf-8")
        proc = run_cli("check", str(tmp_path / "a.py"), "--config", str(tmp_path / "stabcheck.toml"))
        assert proc.returncode == 2 and text.split(" =")[0] in proc.stderr and "Traceback" not in proc.stderr, (text, proc.stderr)


@pytest.mark.slow
def test_a_relative_import_leaves_only_its_file_out(type_cache: Path, tmp_path: Path) -> None:
    """`from . import x` in a file outside a package stops mypy for every file; that file is left
    out of mypy's run (one note naming it), and the others keep their types."""
    tree = tmp_path / "proj"
    shutil.copytree(FIXTURE, tree)
    (tree / "loose.py").write_text("from . import helpers\n\nx = 1\n", encoding="utf-8")
    (tree / "broken.py").write_text("def f(:\n", encoding="utf-8")  # STB901, and never given to mypy
    res = typed_run([str(tree)], type_cache)
    want = {*markers()["typed"], ("broken.py", 1, "STB901")}
    assert found(res) == want, res.notes
    assert len(res.notes) == 1 and "loose.py" in res.notes[0] and "left out of mypy's run" in res.notes[0], res.notes
    again = typed_run([str(tree)], type_cache)  # warm: the same verdicts and the same note
    assert found(again) == want and again.notes == res.notes


@pytest.mark.slow
def test_a_repository_mypy_plugin_is_never_imported(type_cache: Path, tmp_path: Path) -> None:
    """mypy runs with stabcheck's options: a checked repository's mypy.ini, setup.cfg and
    pyproject `[tool.mypy]` (plugins = code mypy would import) are not read, and a `mypy.py` in
    the working directory does not shadow mypy in its subprocess."""
    tree = _bounded_tree(tmp_path)
    marker = tmp_path / "PLUGIN-RAN"
    (tree / "evil_plugin.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\ndef plugin(version):\n    raise SystemExit(3)\n", encoding="utf-8")
    (tree / "mypy.ini").write_text("[mypy]\nplugins = evil_plugin\n", encoding="utf-8")
    (tree / "setup.cfg").write_text("[mypy]\nplugins = evil_plugin\n", encoding="utf-8")
    (tree / "pyproject.toml").write_text('[tool.mypy]\nplugins = ["evil_plugin"]\n', encoding="utf-8")
    (tree / "mypy.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('shadowed')\n", encoding="utf-8")
    proc = run_cli("check", "step.py", "--types", "--output-format", "json", "--cache-dir", str(type_cache), "--exit-zero", cwd=tree)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert _json_lines(proc.stdout) == {("step.py", 5, "STB101")} and "note:" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_the_cache_is_shared_by_projects_in_the_user_cache_dir(tmp_path: Path) -> None:
    """With no --cache-dir the typed cache lives in ~/.cache/stabcheck/typed, keyed by the
    environment: a second project reuses what the first one's run analysed of jax."""
    home = tmp_path / "home"
    env = {"HOME": str(home), "STABCHECK_CACHE_DIR": "", "XDG_CACHE_HOME": "", "STABCHECK_TYPES": ""}
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "step.py").write_text(STEP, encoding="utf-8")
    first = run_cli("check", "step.py", "--types", "--no-cache", "--output-format", "concise", cwd=a, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    # --no-cache: a temporary typed cache, removed; nothing under HOME
    assert not (home / ".cache" / "stabcheck" / "typed").exists(), first.stdout
    first = run_cli("check", "step.py", "--types", "--output-format", "concise", cwd=a, env=env)
    assert first.returncode == 1 and "note:" not in first.stdout, first.stdout + first.stderr
    envs = list((home / ".cache" / "stabcheck" / "typed").glob("env-*"))
    assert len(envs) == 1
    metas = {p: p.stat().st_mtime_ns for p in (envs[0] / "mypy").rglob("jax/*.meta*")}
    assert len(metas) > 10  # jax's own modules, analysed once
    second = run_cli("check", "step.py", "--types", "--output-format", "concise", cwd=b, env=env)
    assert second.returncode == 1 and "STB101" in second.stdout and "note:" not in second.stdout, second.stdout + second.stderr
    assert list((home / ".cache" / "stabcheck" / "typed").glob("env-*")) == envs
    assert {p: p.stat().st_mtime_ns for p in metas} == metas  # not re-analysed, not rewritten
    assert len(list(envs[0].glob("facts-*.json"))) == 2  # one facts file per project
    c = tmp_path / "c"  # a third project, in this process: mypy analyses its one module, nothing of jax
    c.mkdir()
    (c / "step.py").write_text(STEP, encoding="utf-8")
    third = typed.prepare([c / "step.py"], home / ".cache" / "stabcheck" / "typed")
    assert not third.notes and set(third.files) == {str(c / "step.py")} and third.rechecked == 1
    assert third.analysed < 10, third.analysed  # its module at most; a first run analyses hundreds (jax)


@pytest.mark.slow
def test_a_progress_line_on_a_terminal_only(type_cache: Path, tmp_path: Path) -> None:
    import pty

    tree = _bounded_tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "STABCHECK_TYPES")}
    cache = type_cache

    def stderr_of(tty: bool, ci: bool) -> str:
        (tree / "step.py").write_text(STEP + f"# {tty} {ci}\n", encoding="utf-8")  # mypy has work to do
        cmd = [sys.executable, "-m", "stabcheck", "check", "step.py", "--types", "--cache-dir", str(cache), "--exit-zero"]
        run_env = {**env, **({"CI": "true"} if ci else {})}
        if not tty:
            return subprocess.run(cmd, cwd=tree, env=run_env, capture_output=True, text=True, timeout=300).stderr
        master, slave = pty.openpty()
        try:
            proc = subprocess.run(cmd, cwd=tree, env=run_env, stdout=subprocess.DEVNULL, stderr=slave, timeout=300)
            os.close(slave)
            data = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(master)
        assert proc.returncode == 0
        return data.decode("utf-8", "replace")

    assert "stabcheck: typed tier: running mypy on 1 file" in stderr_of(tty=True, ci=False)
    assert "running mypy" not in stderr_of(tty=False, ci=False)
    assert "running mypy" not in stderr_of(tty=True, ci=True)


@pytest.mark.slow
def test_an_unchanged_tree_reuses_the_facts_without_running_mypy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm: the same files, unchanged, in the same environment: facts and cross-file seeds come
    from the cache and mypy's process is not even started; an edited file brings it back."""
    tree = tmp_path / "tree"
    shutil.copytree(FIXTURE, tree)
    cache = tmp_path / "cache"
    starts: list[int] = []
    real = typed._child
    monkeypatch.setattr(typed, "_child", lambda *a: starts.append(1) or real(*a))

    def run() -> list[tuple[str, int, str]]:
        res = typed_run([str(tree)], cache)
        assert not res.notes
        return sorted(found(res))

    cold = run()
    assert len(starts) == 1 and set(cold) == markers()["typed"]
    assert run() == cold and len(starts) == 1
    (tree / "helpers.py").write_text((tree / "helpers.py").read_text() + "\n# edited\n")
    assert run() == cold and len(starts) == 2


def test_the_hooks_and_the_demo_never_start_mypy() -> None:
    """Both pre-commit hooks pass `--no-types` (it beats `types = true` and STABCHECK_TYPES), and
    so does `make demo`: none of them pays mypy's first run."""
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert {h["id"] for h in hooks} == {"stabcheck", "stabcheck-trace"}
    assert all("--no-types" in str(h["entry"]).split() for h in hooks)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    demo = makefile[makefile.index("\ndemo:") :].split("\n\n")[0]
    checks = [ln for ln in demo.splitlines() if "stabcheck check" in ln]
    assert checks and all("--no-types" in ln.split() for ln in checks)


@pytest.mark.slow
def test_a_planted_or_edited_facts_file_is_ignored(type_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Facts files carry an HMAC under the per-user key, like every stabcheck cache file: one that
    was edited (or planted, without the key) is not trusted, and mypy runs again."""
    src = tmp_path / "proj" / "step.py"
    src.parent.mkdir()
    src.write_text(STEP, encoding="utf-8")
    starts: list[int] = []
    real = typed._child
    monkeypatch.setattr(typed, "_child", lambda *a: starts.append(1) or real(*a))
    first = typed.prepare([src], type_cache / "typed")
    assert str(src) in first.files and len(starts) == 1
    typed.prepare([src], type_cache / "typed")
    assert len(starts) == 1  # authentic facts: mypy not started
    facts = [p for p in (type_cache / "typed").glob("env-*/facts-*.json") if str(src).encode() in p.read_bytes()]
    assert len(facts) == 1
    raw = facts[0].read_bytes()
    facts[0].write_bytes(raw + b" ")  # still valid JSON, but the MAC no longer matches
    again = typed.prepare([src], type_cache / "typed")
    assert len(starts) == 2 and again.files[str(src)].digest() == first.files[str(src)].digest()


# -- a file's typed findings do not depend on what else is in the run (issue 16) -----------------
RUNS = ROOT / "fixtures" / "typed_runs"


@pytest.mark.slow
def test_a_files_typed_findings_do_not_depend_on_what_else_is_in_the_run(type_cache: Path) -> None:
    """`beta.ops` (library b) imports `alpha.core` (library a, not installed) and calls it under
    jit. Checked beside library a, mypy used to resolve that import to the checked file, and the
    cross-file seed made `alpha/core.py` report what checking library a alone never showed. Each
    file is checked alone, with its library, and with both libraries: its types (the oracle's
    digest) are the same in every run, and its findings are the same whether its library is
    checked alone or beside the other (a file checked without its callers cannot see what they
    pass it: `alpha.model.step` jits `normalize`, so `core.py`'s STB101 needs `model.py`)."""
    liba = sorted((RUNS / "liba").rglob("*.py"))
    libb = sorted((RUNS / "libb").rglob("*.py"))
    targets = [RUNS / "liba" / "alpha" / "core.py", RUNS / "liba" / "alpha" / "model.py", RUNS / "libb" / "beta" / "ops.py"]
    runs = [[t] for t in targets] + [liba, libb, liba + libb]
    digests: dict[str, set[str]] = {}
    findings: dict[str, set[frozenset[tuple[int, str, str]]]] = {}
    for paths in runs:
        prepared = typed.prepare(paths, type_cache / "typed")
        assert not prepared.notes
        res = api.run([str(p) for p in paths], Config(types=True, preview=True), api.Options(jobs=1, cache_dir=str(type_cache)))
        for t in targets:
            if t not in paths:
                continue
            digests.setdefault(t.name, set()).add(prepared.files[str(t)].digest())
            if len(paths) > 1:  # its whole library is in the run
                findings.setdefault(t.name, set()).add(frozenset((f.line, f.code, f.confidence) for f in res.findings if Path(f.path).resolve() == t))
    assert all(len(v) == 1 for v in digests.values()), digests
    assert all(len(v) == 1 for v in findings.values()), findings
    assert findings["core.py"] == {frozenset({(9, "STB101", "proven")})}  # from alpha.model.step's jit; no seed from library b's caller
    assert findings["ops.py"] == {frozenset({(12, "STB101", "guess")})}  # `alpha` unresolved, alone or not: `count(x)` unproven
    assert findings["model.py"] == {frozenset()}  # `count` declared `-> int` in its sibling module, checked or not


# -- one mypy process per import root: a root mypy cannot take costs only its own types ------------
GOOD_ROOTS = {
    "typed": sorted(FIXTURE.glob("*.py")),  # five findings only types make
    "liba": sorted((RUNS / "liba").rglob("*.py")),
    "libb": sorted((RUNS / "libb").rglob("*.py")),
}
BAD_ROOT = [RUNS / "libc" / "gamma" / "__init__.py", RUNS / "libc" / "gamma" / "step.py"]  # imports odd.py: mypy stops


def _by_root(paths: list[Path], cache: Path, config: Config | None = None) -> tuple[dict[str, frozenset[tuple[str, int, str, str, str | None]]], list[str], dict[str, str]]:
    """One `--types` run: each root's findings (file, line, code, confidence, stage), the notes,
    and each typed file's oracle digest."""
    cfg = config or Config(types=True, preview=True)
    res = api.run([str(p) for p in paths], cfg, api.Options(jobs=1, cache_dir=str(cache)))
    roots = {**{k: v for k, v in GOOD_ROOTS.items()}, "libc": BAD_ROOT}
    out = {}
    for name, files in roots.items():
        if files[0] in paths:
            mine = {str(f.resolve()) for f in files}
            out[name] = frozenset((Path(f.path).name, f.line, f.code, f.confidence, f.evidence.get("stage")) for f in res.findings if str(Path(f.path).resolve()) in mine)
    bounds = typed.Bounds(timeout=cfg.types_timeout, memory=typed.memory_bytes(cfg.types_memory_limit), memory_text=cfg.types_memory_limit)
    digests = {p: t.digest() for p, t in typed.prepare(paths, cache / "typed", bounds=bounds).files.items()}  # the cached facts of the run above
    return out, list(res.notes), digests


def test_import_root_is_mypys_base_directory(tmp_path: Path) -> None:
    """The checking process groups files by import root without importing mypy; the grouping is
    mypy's own (`SourceFinder.crawl_up`, stabcheck's options) on every layout, and a directory
    mypy refuses (an `__init__.py` in a directory that is no package name) is a root of its own."""
    pytest.importorskip("mypy")
    from mypy.find_sources import InvalidSourceList, SourceFinder
    from mypy.fscache import FileSystemCache

    from stabcheck.static._mypy_extract import options

    layout = [
        "loose.py",
        "app/run.py",  # a directory of scripts: its own root
        "app/sub/x.py",
        "lib/pkg/__init__.py",
        "lib/pkg/mod.py",
        "lib/pkg/sub/__init__.py",
        "lib/pkg/sub/deep.py",
        "lib/pkg/nsdir/inner.py",  # a namespace directory inside a package
        "lib/pkg/bad-name/tool.py",  # not an identifier, no __init__: the crawl stops below it
        "stubs/thing-stubs/__init__.pyi",
        "stubs/thing-stubs/api.pyi",
        "odd/bad-pkg/__init__.py",  # an __init__.py where no package name can be: mypy refuses
        "odd/bad-pkg/m.py",
    ]
    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n", encoding="utf-8")
    finder = SourceFinder(FileSystemCache(), options(tmp_path / "cache", preserve_asts=False))
    memo: dict[str, str | None] = {}
    for rel in layout:
        path = str(tmp_path / rel)
        try:
            _, base = finder.crawl_up(path)
        except InvalidSourceList:
            assert typed.import_root(path, memo) == str(tmp_path / "odd" / "bad-pkg"), rel
            continue
        assert typed.import_root(path, memo) == base == typed.import_root(path), rel
    assert {r for r, _ in typed.groups({str(tmp_path / rel): None for rel in layout})} == {
        str(tmp_path), str(tmp_path / "app"), str(tmp_path / "app" / "sub"), str(tmp_path / "lib"), str(tmp_path / "lib" / "pkg" / "bad-name"), str(tmp_path / "stubs"), str(tmp_path / "odd" / "bad-pkg")
    }


@pytest.mark.slow
def test_a_root_mypy_stops_on_costs_only_that_roots_types(type_cache: Path) -> None:
    """`libc` makes mypy stop (a blocking error in a module it imports). Checked beside the good
    roots it gets one note naming it and its untyped findings; every good root keeps exactly the
    findings (typed ones included) and the types it has when checked alone: roots A and B alone,
    then all together, a root's findings identical in each run (issue 16)."""
    alone = {name: _by_root(files, type_cache) for name, files in GOOD_ROOTS.items()}
    for name, (found_, notes, _) in alone.items():
        assert not notes, (name, notes)
    assert {(f, n, c) for f, n, c, *_ in alone["typed"][0]["typed"]} >= markers()["typed"]  # the typed tier was on (and --preview adds guesses)
    assert any(stage == "typed" for *_, stage in alone["typed"][0]["typed"])
    bad, bad_notes, bad_digests = _by_root(BAD_ROOT, type_cache)
    assert bad["libc"] == {("step.py", 11, "STB101", "proven", None)} and bad_digests == {}
    assert len(bad_notes) == 1 and bad_notes[0].startswith("typed tier off for this run: mypy stopped") and "odd.py" in bad_notes[0], bad_notes
    everything = [p for files in GOOD_ROOTS.values() for p in files] + BAD_ROOT
    together, notes, digests = _by_root(everything, type_cache)
    assert len(notes) == 1 and "typed tier off for the import root `" in notes[0] and "libc` (2 files): mypy stopped" in notes[0] and "odd.py" in notes[0], notes
    assert together["libc"] == bad["libc"]
    for name, (found_, _, typed_digests) in alone.items():
        assert together[name] == found_[name], name
        assert {p: d for p, d in digests.items() if p in typed_digests} == typed_digests, name
    assert set(digests) == {p for _, _, d in alone.values() for p in d}  # libc alone has no types
    pair, pair_notes, _ = _by_root(GOOD_ROOTS["typed"] + GOOD_ROOTS["liba"], type_cache)  # A + B, no bad root
    assert not pair_notes and pair == {"typed": alone["typed"][0]["typed"], "liba": alone["liba"][0]["liba"]}


@pytest.mark.slow
def test_a_root_over_the_memory_bound_costs_only_that_roots_types(type_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory bound holds per root: each root's mypy runs in a process of its own under it.
    A 40,000-line root needs more than 300 MiB; the typed fixture (mypy's cache warm) needs less
    than 200: with that bound, only the large root loses its types, with one note naming it, and
    the small root's findings are those it has alone and unbounded."""
    big = tmp_path / "big" / "heavy"
    big.mkdir(parents=True)
    (big / "__init__.py").write_text("", encoding="utf-8")
    (big / "gen.py").write_text("import jax.numpy as jnp\n\n" + "".join(f"x{i} = jnp.zeros(3) + {i}\n" for i in range(40_000)), encoding="utf-8")
    reference, notes, _ = _by_root(GOOD_ROOTS["typed"], type_cache)  # warms mypy's cache for these files
    assert not notes
    starts: list[int] = []
    real = typed._child
    monkeypatch.setattr(typed, "_child", lambda *a: starts.append(1) or real(*a))
    small = Config(types=True, preview=True, types_memory_limit="300MiB")
    res = api.run([str(p) for p in [*GOOD_ROOTS["typed"], big / "__init__.py", big / "gen.py"]], small, api.Options(jobs=1, cache_dir=str(type_cache)))
    assert len(starts) == 2  # a run of its own (another project's facts): both roots' mypy ran, under the bound
    mine = {str(p) for p in GOOD_ROOTS["typed"]}
    assert frozenset((Path(f.path).name, f.line, f.code, f.confidence, f.evidence.get("stage")) for f in res.findings if f.path in mine or str(Path(f.path).resolve()) in mine) == reference["typed"]
    assert len(res.notes) == 1 and "typed tier off for the import root `" in res.notes[0] and "big` (2 files): mypy ran out of its memory bound (300MiB" in res.notes[0], res.notes
    again = api.run([str(p) for p in [*GOOD_ROOTS["typed"], big / "__init__.py", big / "gen.py"]], small, api.Options(jobs=1, cache_dir=str(type_cache)))
    assert len(starts) == 2 and "earlier run" in again.notes[0] and len(again.notes) == 1  # remembered per root: neither mypy starts


@pytest.mark.slow
def test_mypy_runs_in_the_roots_directory_whatever_the_working_directory(type_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mypy puts its working directory on its search path. Started above a directory of scripts
    (`app/run.py` importing `app.util`), it found `app/util.py` both as `util` (its root's module)
    and as `app.util` (through the working directory) and stopped (jax-fem's applications). Each
    root's mypy runs in the root's directory: the same types wherever stabcheck is started."""
    app = tmp_path / "x" / "app"
    app.mkdir(parents=True)
    (app / "util.py").write_text("def scale(v):\n    return v * 2\n", encoding="utf-8")
    (app / "run.py").write_text("import jax\nfrom app import util\n\n\n@jax.jit\ndef step(x):\n    if x > 0:\n        return util.scale(x)\n    return -x\n", encoding="utf-8")
    digests = set()
    for cwd in (tmp_path / "x", app, tmp_path):
        monkeypatch.chdir(cwd)
        (app / "run.py").write_text((app / "run.py").read_text(encoding="utf-8") + f"# from {cwd.name}\n", encoding="utf-8")  # mypy has work to do
        prepared = typed.prepare([app / "run.py", app / "util.py"], type_cache / "typed")
        assert not prepared.notes and set(prepared.files) == {str(app / "run.py"), str(app / "util.py")}, (cwd, prepared.notes)
        digests.add(tuple(sorted((p, t.digest()) for p, t in prepared.files.items())))
    assert len(digests) == 1
