"""Static rules of families 1xx and 2xx on their fixtures, and proof under JAX that each bad
fixture really fails (or misbehaves) while its near miss runs clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stabcheck import registry
from stabcheck.api import check_source
from stabcheck.config import Config
from stabcheck.rule import expected_lines
from tests.conftest import requires_jax

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parents[1] / "fixtures" / "scenarios"
FIXTURES = ROOT / "fixtures" / "static"
SLUGS = (
    "concretize_tracer",
    "data_dependent_shape",
    "side_effect_in_transform",
    "union_return",
    "union_annotation",
    "branch_type_mismatch",
    "carry_type_drift",
    "pytree_structure_mismatch",
    "concretize_tracer_random_shape",
    "concretize_tracer_staged_size",
    "branch_on_tracer_chained",
)


def _code(slug: str) -> str:
    """The code of the rule a fixture stem starts with (`concretize_tracer_random_shape`: a second
    pair of concretize-tracer)."""
    parts = slug.split("_")
    rule = next((r for n in range(len(parts), 0, -1) if (r := registry.get("-".join(parts[:n]))) is not None), None)
    assert rule is not None, slug
    return rule.code


def _findings(path: Path) -> list[tuple[int, str]]:
    return [(f.line, f.code) for f in check_source(path.read_text(encoding="utf-8"), str(path), Config())]


@pytest.mark.parametrize("slug", SLUGS)
def test_bad_fixture_fires_at_marked_lines(slug: str) -> None:
    path = FIXTURES / f"{slug}_bad.py"
    code = _code(slug)
    expected = expected_lines(path.read_text(encoding="utf-8"))
    assert expected and all(c == code for _, c in expected), f"{path.name} must mark its {code} lines"
    found = _findings(path)
    own = {line for line, c in found if c == code}
    assert own == {line for line, _ in expected}, f"{code} at {sorted(own)}, expected {expected}"


@pytest.mark.parametrize("slug", SLUGS)
def test_ok_fixture_is_silent(slug: str) -> None:
    code = _code(slug)
    found = [f for f in _findings(FIXTURES / f"{slug}_ok.py") if f.code == code]
    assert not found, found


def test_rbf_scenario_factorize_fires_only_when_transformed() -> None:
    src = (SCENARIOS / "rbf_interpolator.py").read_text(encoding="utf-8")
    assert not [f for f in check_source(src, "rbf.py", Config()) if f.code == "STB201"]
    jitted = src.replace("def loss_union(values, points, eval_points):", "@jax.jit\ndef loss_union(values, points, eval_points):")
    found = [f for f in check_source(jitted, "rbf.py", Config()) if f.code == "STB201"]
    assert len(found) == 1 and "lu_factor(A)" in found[0].snippet and found[0].function == "factorize"


def test_scenarios_have_no_false_1xx_2xx() -> None:
    found = []
    for path in sorted((SCENARIOS).glob("*.py")):
        found += [f for f in check_source(path.read_text(encoding="utf-8"), str(path), Config()) if f.code in {_code(s) for s in SLUGS}]
    assert not found, [(f.path, f.line, f.code) for f in found]


def test_defaults_a_transform_call_leaves_out_are_not_traced() -> None:
    """`def convert(i, num=num)` vmapped and called with `i` only keeps its default (R16 axlearn);
    a defaulted parameter the call does pass is traced."""
    src = textwrap.dedent(
        """
        import jax
        import jax.numpy as jnp

        def convert_all(ws, num):
            def convert(i, ws=ws, num=num):
                if not num:
                    return ws[i]
                return ws[i] * jnp.ones([num])

            return jax.vmap(convert)(jnp.arange(3))

        def convert_passed(ws, nums):
            def convert(i, num=None):
                if num > 2:
                    return ws[i]
                return ws[i] + num

            return jax.vmap(convert)(jnp.arange(3), nums)
        """
    )
    assert [(f.line, f.code) for f in check_source(src, "t.py", Config())] == [(15, "STB101")]


def test_a_name_counts_by_the_assignment_that_reaches_the_branch() -> None:
    """Held-out set A (jax-ml/jax#24740): `z` starts as a constant array, then `z = z * z + c`
    just above `if jnp.abs(z) > 2.0:` makes it traced there (proven, not a guess). A constant
    assigned just above the branch keeps it a guess; so does a loop that rebinds it later."""
    src = textwrap.dedent(
        """
        import jax
        import jax.numpy as jnp

        def escape(c, max_iter):
            z = jnp.array([0j], dtype=jnp.complex64)
            for i in range(max_iter):
                z = z * z + c
                if jnp.abs(z) > 2.0:
                    return jnp.array([i])
            return jnp.array([max_iter])

        def reset(c, max_iter):
            z = c
            for i in range(max_iter):
                z = jnp.zeros(2)
                if jnp.all(z > 2.0):
                    return z
                z = z * c
            return z

        def grid(cs, n):
            return jax.vmap(escape, in_axes=(0, None))(cs, n), jax.vmap(reset, in_axes=(0, None))(cs, n)
        """
    )
    found = {(f.line, f.code, f.confidence) for f in check_source(src, "t.py", Config(preview=True)) if f.code == "STB101"}
    assert (9, "STB101", "proven") in found
    assert not any(line >= 13 and conf == "proven" for line, _c, conf in found), found


def test_union_limit_option_tolerates_more_kinds() -> None:
    src = textwrap.dedent(
        """
        import jax
        import jax.numpy as jnp

        @jax.jit
        def f(x):
            if x.sum() > 0:
                return x, x
            return jnp.zeros(3)
        """
    )
    assert [f.code for f in check_source(src, "u.py", Config())].count("STB201") == 1
    assert [f.code for f in check_source(src, "u.py", Config(union_limit=2))].count("STB201") == 0


def test_messages_follow_style() -> None:
    for slug in SLUGS:
        path = FIXTURES / f"{slug}_bad.py"
        for f in check_source(path.read_text(encoding="utf-8"), str(path), Config()):
            if f.code != _code(slug):
                continue
            assert "`" in f.message and f.help and f.function, (f.code, f.message)
            assert f.severity == registry.get(f.code).severity  # type: ignore[union-attr]


_RUNNER = r"""
import importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
out = {}
for path in sys.argv[1:]:
    name = path.rsplit("/", 1)[-1][:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        result = mod.run()
        out[name] = {"error": None, "result": json.loads(json.dumps(result, default=repr))}
    except Exception as e:
        out[name] = {"error": type(e).__name__, "message": str(e).splitlines()[0][:200]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    paths = [str(FIXTURES / f"{s}_{kind}.py") for s in SLUGS for kind in ("bad", "ok")]
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *paths], capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


BAD_ERRORS = {
    "concretize_tracer": "ConcretizationTypeError",
    "data_dependent_shape": "NonConcreteBooleanIndexError",
    "union_return": "TracerBoolConversionError",
    "branch_type_mismatch": "TypeError",
    "carry_type_drift": "TypeError",
}


@pytest.mark.slow
@requires_jax
def test_fixtures_behave_as_claimed_under_jax(outcomes: dict[str, dict]) -> None:
    for slug in SLUGS:
        ok = outcomes[f"{slug}_ok"]
        assert ok["error"] is None, (slug, ok)
    for slug, exc in BAD_ERRORS.items():
        assert outcomes[f"{slug}_bad"]["error"] == exc, (slug, outcomes[f"{slug}_bad"])
    assert "equal output types" in outcomes["branch_type_mismatch_bad"]["message"]
    assert "carry input and carry output" in outcomes["carry_type_drift_bad"]["message"]
    # STB104: the Python body runs once per trace, not per call; jax.debug.print runs per call
    side = outcomes["side_effect_in_transform_bad"]
    assert side["error"] is None and side["result"] == {"calls": 2, "counted": 1, "printed": 1}
    assert outcomes["side_effect_in_transform_ok"]["result"] == {"calls": 2, "counted": 2, "printed": 2}
    # STB202: the declared Optional really admits None at run time
    assert outcomes["union_annotation_bad"]["result"] == ["NoneType", "ArrayImpl"]
    assert outcomes["union_annotation_ok"]["result"] == ["ArrayImpl", "ArrayImpl"]
    # STB206: each of the three combinations raises (run() collects the exception types)
    assert outcomes["pytree_structure_mismatch_bad"]["result"] == ["ValueError", "TypeError", "ValueError", "TypeError"]
    # STB102: a traced sample count as a jax.random shape, and as split's num, raise TypeError
    assert outcomes["concretize_tracer_random_shape_bad"]["result"] == ["TypeError", "TypeError"]
    assert outcomes["concretize_tracer_random_shape_ok"]["result"] == [4, 4]
    # STB102: under jit a jnp op on constants is a tracer, so the grid size is one
    assert outcomes["concretize_tracer_staged_size_bad"]["result"] == "ConcretizationTypeError"
    assert outcomes["concretize_tracer_staged_size_ok"]["result"] == [11, 11]
    # STB101: a chained comparison, and an `if` on a draw from a fixed key, under jit; the near
    # misses (`&`, `jnp.where`, a defaulted parameter left out) run
    assert outcomes["branch_on_tracer_chained_bad"]["result"] == ["TracerBoolConversionError"] * 2
    assert outcomes["branch_on_tracer_chained_ok"]["result"] == [[0.0, 0.5, 1.0], 2.5, [-0.5, 0.5, 1.5]]
    # the near misses compute the right numbers
    assert outcomes["carry_type_drift_ok"]["result"] == 3.0
    assert outcomes["branch_type_mismatch_ok"]["result"] == [1.0, 0.0]


def test_a_defaulted_parameter_is_traced_only_where_a_visible_call_passes_it() -> None:
    """jax-ml/jax#575 (held-out set D): under `@jax.jit`, `N=N_SPINS` left out by the caller stays
    a Python value, so a shape from it is only a guess; passed through a name bound to the jitted
    function (`sample_jit(key, 5)`) it is traced, and the finding is proven."""
    src = textwrap.dedent(
        """
        import jax

        N = 3

        def sample(key, n=N):
            return jax.random.normal(key, (n,))

        sample_jit = jax.jit(sample)

        def use(key):
            return sample_jit(key, 5)

        @jax.jit
        def draw(key, n=N):
            return jax.random.normal(key, (n,))
        """
    )
    shown = [(f.line, f.code) for f in check_source(src, "t.py", Config())]
    preview = [(f.line, f.code) for f in check_source(src, "t.py", Config(preview=True))]
    assert shown == [(7, "STB102")] and (16, "STB102") in preview
