"""A fix is "safe" only when it keeps behaviour, it is offered only when it removes the hazard, and
fixing converges: the patterns of issue 19, every fixture, and the command line's fix options."""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from pathlib import Path

import pytest

from stabcheck.config import Config
from stabcheck.fix import fix_source, fixers

from .conftest import requires_jax, run_cli

CFG = Config(types=False)
PREVIEW = Config(types=False, preview=True)  # guesses too: the projection's where is one
ROOT = Path(__file__).resolve().parents[1]


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _run(source: str) -> dict:
    """Execute `source` as a module (registered while it runs: dataclasses look their module up)."""
    import sys
    import types

    mod = types.ModuleType("stabcheck_fix_fixture")
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(source, "fixture.py", "exec"), mod.__dict__)
    finally:
        sys.modules.pop(mod.__name__, None)
    return mod.__dict__


NONSTRICT = _src(
    """
    import jax
    import jax.numpy as jnp

    def f(x):
        return jnp.where(x >= 0, jnp.sqrt(x), 0.0)

    df = jax.grad(f)
    """
)
STRICT = NONSTRICT.replace("x >= 0", "x > 0")
PROJECT = _src(
    """
    import jax.numpy as jnp


    def project(x, u, l, g):
        return jnp.where(g < 0, (x - u) / g, (x - l) / g)
    """
)
NESTED = _src(
    """
    import jax.numpy as jnp

    def f(a, b):
        inner = jnp.where(b > 0, jnp.log(b), 0.0)
        return jnp.where(a > 0, jnp.sqrt(a) * jnp.where(b > 0, jnp.log(b), 0.0), inner)

    def g(a):
        y = jnp.where(a > 0, jnp.sqrt(a), 0.0)
        y = y + jnp.where(a > 0, jnp.sqrt(a), 0.0)
        return y + jnp.where(a > 0, jnp.sqrt(a), 0.0)
    """
)
CONCAT = _src(
    """
    from functools import partial
    import jax
    import jax.numpy as jnp

    @partial(jax.jit, static_argnames="features")
    def widths(x, features):
        sizes = features + [1]
        return x * len(sizes)

    def predict(x):
        return widths(x, features=[4, 2])
    """
)
READ_ONLY = CONCAT.replace("sizes = features + [1]\n    return x * len(sizes)", "return x * sum(n for n in features) + len(features)")


def _wheres(source: str) -> int:
    return sum(isinstance(n, ast.Attribute) and n.attr == "where" for n in ast.walk(ast.parse(source)))


def test_no_fix_where_the_inner_where_would_not_make_the_gradient_finite() -> None:
    assert fix_source(NONSTRICT, "m.py", CFG).fixed == ()  # sqrt is selected at 0 itself
    assert [f.code for f in fix_source(STRICT, "m.py", CFG).fixed] == ["STB401"]


def test_fixing_converges_on_the_projection_pattern_and_on_nested_and_repeated_ones() -> None:
    for source in (PROJECT, NESTED):
        res = fix_source(source, "m.py", PREVIEW, unsafe=True)
        assert len(res.fixed) <= source.count("jnp.where(") + 1
        assert _wheres(res.after) <= 2 * _wheres(source)
        assert fix_source(res.after, "m.py", PREVIEW, unsafe=True).after == res.after  # a fixed point
    res = fix_source(PROJECT, "m.py", PREVIEW)
    assert res.after.count("jnp.where(g < 0, g, 1.0)") == 1 and len(res.fixed) == 1


def test_list_to_tuple_is_safe_only_when_the_function_only_reads_the_list() -> None:
    concat = fix_source(CONCAT, "m.py", CFG)
    assert concat.fixed == () and concat.needs_unsafe == 1  # `features + [1]` breaks on a tuple
    assert "features=(4, 2)" in fix_source(CONCAT, "m.py", CFG, unsafe=True).after
    assert [f.code for f in fix_source(READ_ONLY, "m.py", CFG).fixed] == ["STB502"]


def test_cli_fix_options(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(STRICT + "\n\n" + CONCAT.replace("import jax.numpy as jnp\n", ""), encoding="utf-8")
    concise = run_cli("check", "a.py", "--no-cache", "--no-types", "--output-format", "concise", cwd=tmp_path)
    lines = concise.stdout.splitlines()
    assert any(" STB401 [nan-gradient-where] [*] " in ln for ln in lines), concise.stdout
    assert any(" STB502 [unhashable-static-arg]" in ln for ln in lines)  # unsafe: no marker
    assert lines[-1] == "[*] 1 fixable with `--fix`."
    unsafe = run_cli("check", "a.py", "--no-cache", "--no-types", "--output-format", "concise", "--unsafe-fixes", cwd=tmp_path)
    assert unsafe.stdout.splitlines()[-1] == "[*] 2 fixable with `--fix --unsafe-fixes`."

    stats = run_cli("check", "a.py", "--no-cache", "--no-types", "--statistics", cwd=tmp_path)
    assert stats.returncode == 1 and stats.stdout.splitlines() == ["    1\tSTB401\t[*] nan-gradient-where", "    1\tSTB502\tunhashable-static-arg"]

    diff = run_cli("check", "a.py", "--no-cache", "--no-types", "--diff", "--unfixable", "STB4", cwd=tmp_path)
    assert diff.returncode == 0 and diff.stdout == "1 more fix available with --unsafe-fixes.\n"
    shown = run_cli("check", "a.py", "--no-cache", "--no-types", "--show-fixes", "--output-format", "concise", cwd=tmp_path)
    assert "Would fix 1 finding:\n- a.py:\n    1 × STB401 (nan-gradient-where)\n" in shown.stdout
    only = run_cli("check", "a.py", "--no-cache", "--no-types", "--fix-only", "--show-fixes", cwd=tmp_path)
    assert only.returncode == 0 and only.stdout == "Fixed 1 finding:\n- a.py:\n    1 × STB401 (nan-gradient-where)\n"
    assert "jnp.where(x > 0, x, 1.0)" in (tmp_path / "a.py").read_text()
    again = run_cli("check", "a.py", "--no-cache", "--no-types", "--fix-only", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == "1 more fix available with --unsafe-fixes.\n"


# -- under JAX: what "safe" promises ------------------------------------------------------------------
@pytest.mark.slow
@requires_jax
def test_the_patterns_under_jax() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    old, new = _run(STRICT)["f"], _run(fix_source(STRICT, "m.py", CFG).after)["f"]
    xs = jnp.array([0.0, 0.5, 2.0, -1.0])
    assert np.array_equal(old(xs), new(xs))
    assert bool(jnp.isnan(jax.grad(old)(0.0))) and float(jax.grad(new)(0.0)) == 0.0
    assert not bool(jnp.isfinite(jax.grad(_run(NONSTRICT)["f"])(0.0)))  # why no fix is offered there

    old, new = _run(PROJECT)["project"], _run(fix_source(PROJECT, "m.py", PREVIEW).after)["project"]
    for g in (-2.0, -0.5, 0.5, 3.0):
        assert float(old(1.0, 2.0, -1.0, g)) == float(new(1.0, 2.0, -1.0, g))
        assert float(jax.grad(old, 3)(1.0, 2.0, -1.0, g)) == float(jax.grad(new, 3)(1.0, 2.0, -1.0, g))

    old, new = _run(READ_ONLY)["predict"], _run(fix_source(READ_ONLY, "m.py", CFG).after)["predict"]
    with pytest.raises(ValueError):
        old(jnp.ones(2))
    assert np.array_equal(new(jnp.ones(2)), jnp.ones(2) * 8)
    with pytest.raises(TypeError):  # what the unsafe rewrite would do to CONCAT: why it is unsafe
        _run(fix_source(CONCAT, "m.py", CFG, unsafe=True).after)["predict"](jnp.ones(2))


_SHAPES = ((3,), (2, 5), (3, 4), (4, 2))
_VALUES = ((0.0, 2.0), (-1.0, 1.0), (1.5, 4.0))  # ranges: zeros included, signs mixed, positive


def _inputs(n: int):
    """Float32 arrays for `n` parameters (shapes and value ranges combined), extra ones scalars."""
    import numpy as np

    for shapes in itertools.product(_SHAPES, repeat=min(n, 2)):
        for lo, hi in _VALUES:
            arrays = tuple(np.linspace(lo, hi, int(np.prod(s)), dtype=np.float32).reshape(s) for s in shapes)
            yield arrays + tuple(np.float32(1.0) for _ in range(n - len(arrays)))


def _fixed_functions(before: str, after: str) -> list[str]:
    """Top-level functions whose source the fixes changed (not a fixture's `run()`, which reports
    the hazard itself: `test_fix.py` compares it with the `*_ok.py` twin)."""

    def bodies(src: str) -> dict[str, str]:
        return {n.name: ast.unparse(n) for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}

    old, new = bodies(before), bodies(after)
    return sorted(name for name in old.keys() & new.keys() if old[name] != new[name] and name != "run")


def _safe_fixture_files() -> list[Path]:
    out = []
    for p in sorted((ROOT / "fixtures").rglob("*.py")):
        if any(part in ("traced", "confirm", "runtime", "scenarios") for part in p.relative_to(ROOT / "fixtures").parts[:-1]):
            continue  # entries and worker fixtures: run by their own stages' tests
        if fix_source(p.read_text(encoding="utf-8"), p.name, CFG).fixed:
            out.append(p)
    return out


@pytest.mark.slow
@requires_jax
@pytest.mark.parametrize("path", _safe_fixture_files(), ids=lambda p: p.name)
def test_every_safe_fix_of_every_fixture_keeps_forward_values(path: Path) -> None:
    """Each function a safe fix changed returns the same values (x64 off, JAX's default) on every
    sample input where the original runs and returns finite values."""
    import jax
    import numpy as np

    before = path.read_text(encoding="utf-8")
    after = fix_source(before, path.name, CFG).after
    old_ns, new_ns = _run(before), _run(after)
    compared = 0
    for name in _fixed_functions(before, after):
        old, new = old_ns[name], new_ns[name]
        try:
            n = len(inspect.signature(old).parameters)
        except (TypeError, ValueError):
            continue
        for args in _inputs(n):
            try:
                want = jax.tree_util.tree_leaves(old(*args))
            except Exception:
                continue  # the original fails on these inputs (the hazard, or a shape it cannot take)
            if not all(np.all(np.isfinite(np.asarray(w))) for w in want if np.asarray(w).dtype.kind == "f"):
                continue
            got = jax.tree_util.tree_leaves(new(*args))
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, err_msg=f"{path.name}:{name}{tuple(a.tolist() for a in args)}")
            compared += 1
    assert set(fixers()), "no fixers"
    if not compared:
        pytest.skip(f"{path.name}: no changed function runs on the sample inputs")
