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


@pytest.mark.slow
def test_the_typed_tier_is_on_by_default_where_mypy_is_installed(type_cache: Path) -> None:
    m = markers()
    env = {k: v for k, v in os.environ.items() if k != "STABCHECK_TYPES"}
    args = ("check", str(FIXTURE), "--output-format", "json", "--cache-dir", str(type_cache), "--exit-zero")
    default = subprocess.run([sys.executable, "-m", "stabcheck", *args], env=env, capture_output=True, text=True, timeout=300)
    assert default.returncode == 0, default.stderr
    assert _json_lines(default.stdout) == m["typed"]
    (type_cache.parent / "off").mkdir(exist_ok=True)
    (type_cache.parent / "off" / "stabcheck.toml").write_text("types = false\n", encoding="utf-8")
    off = run_cli(*args, "--preview", "--config", str(type_cache.parent / "off" / "stabcheck.toml"), env={"STABCHECK_TYPES": "1"})
    assert {(f, n) for f, n, _ in _json_lines(off.stdout)} == {(f, n) for f, n, _ in m["near-miss"]} | UNTYPED_CROSS_FILE  # the config beats the environment


def _json_lines(out: str) -> set[tuple[str, int, str]]:
    data = json.loads(out)
    items = data if isinstance(data, list) else data.get("findings", [])
    return {(Path(d["path"]).name, d["line"], d["code"]) for d in items}


def test_the_default_follows_the_environment_then_whether_mypy_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from stabcheck.config import ConfigError

    for value, want in (("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False), ("off", False)):
        monkeypatch.setenv("STABCHECK_TYPES", value)
        assert typed.on_by_default() is want
    monkeypatch.setenv("STABCHECK_TYPES", "maybe")
    with pytest.raises(ConfigError, match="STABCHECK_TYPES"):
        typed.on_by_default()
    monkeypatch.delenv("STABCHECK_TYPES")
    assert typed.on_by_default() is True  # mypy is a dependency
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert typed.on_by_default() is False  # no mypy: untyped, and no note about it
    res = api.run([str(FIXTURE)], Config(preview=True), api.Options(cache=False, jobs=1))
    assert res.notes == [] and {(f, n) for f, n, _ in found(res)} == {(f, n) for f, n, _ in markers()["near-miss"]} | UNTYPED_CROSS_FILE


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
    proc = subprocess.run([sys.executable, "-c", script, str(FIXTURE)], capture_output=True, text=True, timeout=240)
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


def test_a_mypy_crash_degrades_to_untyped_with_one_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from stabcheck.static import _mypy_extract as mx

    def crash(*args: object, **kwargs: object) -> None:
        raise AssertionError("INTERNAL ERROR: deferral loop")

    monkeypatch.setattr(mx.build, "build", crash)
    src = tmp_path / "step.py"
    src.write_text("import jax\n\n@jax.jit\ndef step(x):\n    if x > 0:\n        return x\n    return -x\n", encoding="utf-8")
    res = typed_run([str(src)], tmp_path / "cache")
    assert [(f.code, f.line) for f in res.findings] == [("STB101", 5)]
    assert len(res.notes) == 1 and "mypy crashed: AssertionError" in res.notes[0]


@pytest.mark.slow
def test_an_unchanged_tree_reuses_the_facts_without_running_mypy(tmp_path: Path) -> None:
    """Warm: the same files, unchanged, in the same environment: facts and cross-file seeds come
    from the cache and mypy is not even imported; an edited file brings mypy back."""
    tree = tmp_path / "tree"
    shutil.copytree(FIXTURE, tree)
    cache = tmp_path / "cache"
    code = (
        "import sys, json\n"
        "from stabcheck import api\nfrom stabcheck.config import Config\n"
        f"res = api.run([{str(tree)!r}], Config(types=True), api.Options(jobs=1, cache_dir={str(cache)!r}))\n"
        "print(json.dumps({'found': sorted([f.path.rsplit('/', 1)[-1], f.line, f.code] for f in res.findings), 'mypy': 'mypy.build' in sys.modules}))\n"
    )

    def run() -> dict:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    cold = run()
    assert cold["mypy"] and {tuple(f) for f in cold["found"]} == markers()["typed"]
    warm = run()
    assert not warm["mypy"] and warm["found"] == cold["found"]
    (tree / "helpers.py").write_text((tree / "helpers.py").read_text() + "\n# edited\n")
    edited = run()
    assert edited["mypy"] and edited["found"] == cold["found"]
