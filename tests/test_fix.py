"""`--fix`: every fix leaves code that parses and that the rule no longer flags, and under JAX the
fixed code really lost the hazard (finite gradients, one compile, no ValueError, float32)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from stabcheck import registry
from stabcheck.api import check_source
from stabcheck.config import Config
from stabcheck.fix import fix_source, fixers

from .conftest import requires_jax, run_cli


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _codes(source: str, code: str) -> int:
    return sum(f.code == code for f in check_source(source, "m.py", Config()))


# -- every fixable rule's own examples -------------------------------------------------------------
def _examples():
    for code in fixers():
        rule = registry.get(code)
        assert rule is not None, f"a fixer for {code}, which no rule has"
        for i, ex in enumerate(rule.INVALID):
            yield pytest.param(code, _src(ex), id=f"{code}-invalid{i}")


def test_every_fixer_belongs_to_a_rule_that_declares_it():
    for code in fixers():
        assert registry.get(code).fixable in ("safe", "unsafe"), f"{code} has a fixer but does not declare `fixable`"
    for rule in registry.all_rules():
        if rule.fixable:
            assert rule.code in fixers(), f"{rule.code} declares fixable={rule.fixable!r} but no fixer exists"


@pytest.mark.parametrize(("code", "source"), list(_examples()))
def test_fix_on_rule_examples_parses_and_is_silent(code: str, source: str):
    res = fix_source(source, "m.py", Config(), unsafe=True)
    ast.parse(res.after)
    assert _codes(res.after, code) == _codes(source, code) - sum(f.code == code for f in res.fixed)
    if res.fixed:
        assert res.after != source
    # the fixed form is stable: fixing again changes nothing
    assert fix_source(res.after, "m.py", Config(), unsafe=True).after == res.after


def test_each_fixer_fixes_at_least_one_example_of_its_rule():
    for code in fixers():
        rule = registry.get(code)
        fixed = sum(len(fix_source(_src(ex), "m.py", Config(), unsafe=True).fixed) for ex in rule.INVALID)
        assert fixed >= 1, f"no INVALID example of {code} could be fixed"


# -- the fixtures of this file: exact rewrites, proven under JAX -----------------------------------
NAN_WHERE = _src(
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    def safe_norm(x):
        sq = jnp.sum(x ** 2, axis=-1)
        return jnp.where(sq > 0, jnp.sqrt(sq), 0.0)

    def soft_radius(r):
        return jnp.where(r <= 0.0, 0.0, r ** 1.5)

    def inverse_mean(total, count):
        return lax.select(count != 0, total / count, jnp.zeros_like(total))

    # a derivative this module takes reaches all three (STB401 is proven only then)
    def loss(x, r, total, count):
        return safe_norm(x).sum() + soft_radius(r).sum() + inverse_mean(total, count).sum()

    loss_grad = jax.grad(loss, argnums=(0, 1, 2))
    """
)
NAN_WHERE_FIXED = _src(
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    def safe_norm(x):
        sq = jnp.sum(x ** 2, axis=-1)
        return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)

    def soft_radius(r):
        return jnp.where(r <= 0.0, 0.0, jnp.where(r <= 0.0, 1.0, r) ** 1.5)

    def inverse_mean(total, count):
        return lax.select(count != 0, total / lax.select(count != 0, count, jnp.ones_like(count)), jnp.zeros_like(total))

    # a derivative this module takes reaches all three (STB401 is proven only then)
    def loss(x, r, total, count):
        return safe_norm(x).sum() + soft_radius(r).sum() + inverse_mean(total, count).sum()

    loss_grad = jax.grad(loss, argnums=(0, 1, 2))
    """
)

JIT_LOOP = _src(
    """
    import jax
    from functools import partial

    TRACES = []

    def update(p, b, lr):
        TRACES.append(1)
        return p - lr * b

    def scale(x, factor):
        TRACES.append(1)
        return x * factor

    def train(params, batches, lr):
        for batch in batches:
            step = jax.jit(lambda p, b: update(p, b, lr))
            params = step(params, batch)
        return params

    def rescale(xs, factors):
        return [jax.jit(partial(scale, factor=f))(x) for x, f in zip(xs, factors)]

    def predict(w, x):
        @jax.jit
        def forward(v):
            TRACES.append(1)
            return w * v
        return forward(x)

    def serve(w, xs):
        return [predict(w, x) for x in xs]
    """
)
JIT_LOOP_FIXED = _src(
    """
    import jax
    from functools import partial

    TRACES = []

    def update(p, b, lr):
        TRACES.append(1)
        return p - lr * b

    def scale(x, factor):
        TRACES.append(1)
        return x * factor

    step = jax.jit(lambda p, b, *, lr: update(p, b, lr))

    def train(params, batches, lr):
        for batch in batches:
            params = step(params, batch, lr=lr)
        return params

    def rescale(xs, factors):
        return [jax.jit(scale)(x, factor=f) for x, f in zip(xs, factors)]

    @jax.jit
    def forward(v, *, w):
        TRACES.append(1)
        return w * v

    def predict(w, x):
        return forward(x, w=w)

    def serve(w, xs):
        return [predict(w, x) for x in xs]
    """
)

STATIC_LIST = _src(
    """
    from functools import partial
    import jax
    import jax.numpy as jnp

    @partial(jax.jit, static_argnames="features")
    def mlp(params, x, features):
        for w, n in zip(params, features):
            x = jax.nn.relu(x @ w[:, :n])
        return x

    def predict(params, x):
        return mlp(params, x, features=[4, 2])
    """
)

FLOAT64 = _src(
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    MASK64 = np.array([1.0, 0.0])[:, None]

    @jax.jit
    def normalize(x):
        x = x.astype(float)
        return x - x.mean()

    @jax.jit
    def couple(x):
        return MASK64 * x + jnp.zeros(2, dtype="float64")[:, None]
    """
)


def test_exact_rewrites():
    assert fix_source(NAN_WHERE, "m.py", Config()).after == NAN_WHERE_FIXED
    assert fix_source(JIT_LOOP, "m.py", Config(), unsafe=True).after == JIT_LOOP_FIXED
    assert "features=(4, 2))" in fix_source(STATIC_LIST, "m.py", Config()).after
    fixed = fix_source(FLOAT64, "m.py", Config(preview=True)).after  # `astype(float)` is a guess: --preview
    assert "x.astype(jnp.float32)" in fixed and "MASK64.astype(x.dtype) * x" in fixed and 'dtype=jnp.float32' in fixed
    assert _codes(fixed, "STB301") == 0 and "astype(float)" not in fixed


def test_jit_of_a_nested_def_moves_the_def():
    source = _src(
        """
        import jax


        def train(params, xs, lr):
            def step(p, x):
                return p - lr * x

            params = jax.jit(step, donate_argnums=0)(params, xs)
            return params, step(params, xs)


        def fit(params, batches, lr):
            for xs in batches:
                params, _ = train(params, xs, lr)
            return params
        """
    )
    assert fix_source(source, "m.py", Config(), unsafe=True).after == _src(
        """
        import jax


        def step(p, x, *, lr):
            return p - lr * x


        def train(params, xs, lr):
            params = jax.jit(step, donate_argnums=0)(params, xs, lr=lr)
            return params, step(params, xs, lr=lr)


        def fit(params, batches, lr):
            for xs in batches:
                params, _ = train(params, xs, lr)
            return params
        """
    )


def test_unsafe_fixes_need_the_flag():
    res = fix_source(JIT_LOOP, "m.py", Config(), unsafe=False)
    assert res.after == JIT_LOOP and res.needs_unsafe == 3
    arr = _src(
        """
        import jax
        import numpy as np

        def pool(x, window):
            return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID")

        z = jax.jit(pool, static_argnums=1)(np.ones((1, 4, 4, 1)), np.array([1, 2, 2, 1]))
        """
    )
    assert fix_source(arr, "m.py", Config()).after == arr  # array -> tuple changes the type: unsafe
    assert "(1, 2, 2, 1))" in fix_source(arr, "m.py", Config(), unsafe=True).after


NEAR_MISSES = {
    "dict static argument (no hashable equivalent)": _src(
        """
        import jax

        def apply(x, config):
            return x * config["scale"]

        apply_jit = jax.jit(apply, static_argnames="config")
        out = apply_jit(1.0, {"scale": 2.0})
        """
    ),
    "lambda closing over a nested function": _src(
        """
        import jax

        def train(params, batches):
            def loss(p, b):
                return (p * b).sum()
            for batch in batches:
                step = jax.jit(lambda p: jax.grad(loss)(p, batch))
                params = params - step(params)
            return params
        """
    ),
    "jitted name that escapes (is returned)": _src(
        """
        import jax

        def build(lr, xs):
            for x in xs:
                step = jax.jit(lambda p: p - lr * x)
                step(x)
            return step
        """
    ),
    "where whose hazard is the norm of a vector (the guard would change shapes)": _src(
        """
        import jax
        import jax.numpy as jnp

        def length(v):
            return jnp.where(jnp.sum(v * v, axis=-1) > 0, jnp.linalg.norm(v, axis=-1), 0.0)

        length_grad = jax.grad(lambda v: length(v).sum())
        """
    ),
}


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_patterns_without_a_mechanical_fix_are_left_alone(name: str):
    source = NEAR_MISSES[name]
    before = check_source(source, "m.py", Config())
    assert any(f.code in fixers() for f in before), f"the near miss should still be a finding: {name}"
    assert fix_source(source, "m.py", Config(), unsafe=True).after == source


def _run(source: str) -> dict:
    ns: dict = {"__name__": "fixture"}
    exec(compile(source, "fixture.py", "exec", dont_inherit=True), ns)  # not this file's `from __future__ import annotations`
    return ns


@pytest.mark.slow
@requires_jax
def test_fixed_code_loses_the_hazard_under_jax():
    import jax
    import jax.numpy as jnp
    import numpy as np

    # STB401: NaN gradients become finite, forward values unchanged
    old, new = _run(NAN_WHERE), _run(NAN_WHERE_FIXED)
    for name, args in (("safe_norm", (jnp.zeros(3),)), ("soft_radius", (jnp.float32(-1.0),)), ("inverse_mean", (jnp.float32(1.0), jnp.float32(0.0)))):
        assert bool(jnp.isnan(jax.grad(old[name])(*args)).any()), name
        assert bool(jnp.isfinite(jax.grad(new[name])(*args)).all()), name
    x = jnp.array([3.0, 4.0])
    assert float(new["safe_norm"](x)) == float(old["safe_norm"](x)) == 5.0
    assert float(new["inverse_mean"](jnp.float32(6.0), jnp.float32(3.0))) == 2.0

    # STB501: one trace instead of one per iteration, same results
    old, new = _run(JIT_LOOP), _run(JIT_LOOP_FIXED)
    batches = [jnp.full(2, float(i)) for i in range(4)]
    r_old, r_new = old["train"](jnp.ones(2), batches, 0.5), new["train"](jnp.ones(2), batches, 0.5)
    assert np.allclose(r_old, r_new)
    assert len(old["TRACES"]) == 4 and len(new["TRACES"]) == 1
    old["TRACES"].clear(), new["TRACES"].clear()
    xs = [jnp.ones(2) * i for i in range(3)]
    assert all(np.allclose(old["predict"](2.0, x), new["predict"](2.0, x)) for x in xs)
    assert len(old["TRACES"]) == 3 and len(new["TRACES"]) == 1

    # STB502: ValueError before, runs after
    old, new = _run(STATIC_LIST), _run(fix_source(STATIC_LIST, "m.py", Config()).after)
    params = [jnp.ones((4, 4)), jnp.ones((4, 4))]
    with pytest.raises(ValueError, match="Non-hashable static arguments"):
        old["predict"](params, jnp.ones(4))
    assert new["predict"](params, jnp.ones(4)).shape == (2,)

    # STB301: float64 with x64 on before, float32 after
    old, new = _run(FLOAT64), _run(fix_source(FLOAT64, "m.py", Config(preview=True)).after)
    with jax.enable_x64(True):
        x = jnp.arange(4.0, dtype=jnp.float32).reshape(2, 2)
        assert old["normalize"](x).dtype == jnp.float64 and new["normalize"](x).dtype == jnp.float32
        assert old["couple"](x).dtype == jnp.float64 and new["couple"](x).dtype == jnp.float32


# -- the command line ------------------------------------------------------------------------------
def test_cli_diff_fix_and_unsafe(tmp_path: Path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(NAN_WHERE, encoding="utf-8")
    b.write_text(JIT_LOOP, encoding="utf-8")
    diff = run_cli("check", ".", "--no-cache", "--diff", cwd=tmp_path)
    assert diff.returncode == 1, diff.stderr  # fixes are pending (as ruff's --diff)
    assert diff.stdout.startswith("--- a/a.py\n+++ b/a.py\n"), diff.stdout
    assert "+    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)" in diff.stdout
    assert "b.py" not in diff.stdout and diff.stdout.endswith("3 more fixes available with --unsafe-fixes.\n")
    assert (a.read_text(), b.read_text()) == (NAN_WHERE, JIT_LOOP), "--diff must not write"

    safe = run_cli("check", ".", "--no-cache", "--fix", cwd=tmp_path)
    assert safe.returncode == 1, safe.stderr  # the unsafe STB501 findings remain
    assert "fixed 3 findings in 1 file" in safe.stdout and "3 more fixes available with --unsafe-fixes" in safe.stdout
    assert "STB401" not in safe.stdout and safe.stdout.count("STB501 [jit-in-loop]") == 3
    assert a.read_text() == NAN_WHERE_FIXED and b.read_text() == JIT_LOOP

    unsafe = run_cli("check", ".", "--no-cache", "--fix", "--unsafe-fixes", cwd=tmp_path)
    assert unsafe.returncode == 0, unsafe.stdout + unsafe.stderr
    assert "fixed 3 findings in 1 file" in unsafe.stdout and "All checks passed" in unsafe.stdout
    assert b.read_text() == JIT_LOOP_FIXED


# -- the project's fixtures and the shared scenarios -------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
FIXTURE_FILES = sorted((ROOT / "fixtures").rglob("*.py"))  # the scenarios included (fixtures/scenarios)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fix_on_every_fixture_parses_and_is_silent(path: Path):
    source = path.read_text(encoding="utf-8")
    res = fix_source(source, path.name, Config(), unsafe=True)
    ast.parse(res.after)
    for code in fixers():
        assert _codes(res.after, code) == _codes(source, code) - sum(f.code == code for f in res.fixed)
    assert fix_source(res.after, path.name, Config(), unsafe=True).after == res.after


def _bad_with_fix() -> list[Path]:
    out = []
    for p in sorted((ROOT / "fixtures" / "static").glob("*_bad.py")):
        ok = p.with_name(p.name.replace("_bad.py", "_ok.py"))
        if ok.is_file() and fix_source(p.read_text(encoding="utf-8"), p.name, Config(), unsafe=True).fixed:
            out.append(p)
    return out


@pytest.mark.slow
@requires_jax
@pytest.mark.parametrize("bad", _bad_with_fix(), ids=lambda p: p.name)
def test_fixed_bad_fixture_behaves_like_its_ok_twin(bad: Path):
    """Each `*_bad.py` fixture's run() shows the failure; after --fix it returns what `*_ok.py` does."""
    ok = bad.with_name(bad.name.replace("_bad.py", "_ok.py"))
    fixed = fix_source(bad.read_text(encoding="utf-8"), bad.name, Config(), unsafe=True).after
    got_bad = _run(bad.read_text(encoding="utf-8"))["run"]()
    got_fixed = _run(fixed)["run"]()
    got_ok = _run(ok.read_text(encoding="utf-8"))["run"]()
    shared = set(got_fixed) & set(got_ok)
    assert shared, (got_fixed, got_ok)
    assert {k: got_fixed[k] for k in shared} == {k: got_ok[k] for k in shared}
    assert {k: got_bad.get(k) for k in shared} != {k: got_ok[k] for k in shared}, "the bad fixture should misbehave"


def test_fix_never_writes_through_a_symlink(tmp_path: Path):
    from stabcheck.fix import run_fixes

    target, link, plain = tmp_path / "target.py", tmp_path / "link.py", tmp_path / "plain.py"
    target.write_text(NAN_WHERE, encoding="utf-8")
    plain.write_text(NAN_WHERE, encoding="utf-8")
    link.symlink_to(target)
    findings = check_source(NAN_WHERE, str(link), Config()) + check_source(NAN_WHERE, str(plain), Config())
    out = run_fixes(findings, write=True)
    assert target.read_text() == NAN_WHERE and link.is_symlink(), "the link's target must be left alone"
    assert plain.read_text() == NAN_WHERE_FIXED, "the other file is still fixed"
    assert "refusing to write the fixed file" in out.text and "symbolic link" in out.text
    assert [r.path for r in out.changed] == [str(plain)]
