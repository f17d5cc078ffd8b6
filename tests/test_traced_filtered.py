"""Entries whose arguments hold fields JAX cannot trace (equinox Modules with a callable, an int,
a string) are traced as `eqx.filter_jit` runs them (issue 18, item 7): no STB505/STB102 for the
fields, the real hazards still found (fixtures/traced/module_fields.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_jax

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "traced" / "module_fields.py"


def _line(text: str) -> int:
    return FIX.read_text().splitlines().index(text) + 1


@requires_jax
def test_split_keeps_arrays_traced_and_the_rest_static() -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from stabcheck.traced.entries import Entry
    from stabcheck.traced.filtered import Filtered, filter_entry

    class M(eqx.Module):
        w: jax.Array
        act: object = jax.nn.relu
        depth: int = 2

        def __call__(self, x):
            for _ in range(self.depth):
                x = self.act(x @ self.w)
            return x

    def step(m, x):
        return m, jnp.sum(m(x))

    plain = Entry(lambda x, n: x * n, (jnp.ones(2), 3))
    assert filter_entry(plain) is plain  # numbers and arrays: traced as jax.jit traces them
    e = filter_entry(Entry(step, (M(jnp.eye(2)), jnp.ones(2)), state_argnums=(0,), calls=[(M(jnp.eye(2), depth=3), jnp.ones(2))]))
    assert isinstance(e.args[0], Filtered) and isinstance(e.calls[0][0], Filtered) and e.fn.__wrapped__ is step
    assert len(jax.tree_util.tree_leaves(e.args[0])) == 1  # only `w` is traced
    jaxpr = jax.make_jaxpr(e.fn)(*e.args)  # would raise on the callable leaf without the split
    out = jax.eval_shape(e.fn, *e.args)
    assert jax.tree_util.tree_structure(out[0]) == jax.tree_util.tree_structure(e.args[0])  # the state comes back split alike
    assert len(jaxpr.jaxpr.invars) == 2
    assert jax.tree_util.tree_structure(e.args[0]) != jax.tree_util.tree_structure(e.calls[0][0])  # depth 2 vs 3: a new compile key


@pytest.mark.slow
@requires_jax
def test_module_fields_are_static_and_real_hazards_still_found() -> None:
    cmd = [sys.executable, "-m", "stabcheck", "check", str(FIX), "--trace", "--confirm", "--no-cache", "--no-types", "--exit-zero", "--output-format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    found = {(d["code"], d["line"]) for d in data}
    # the retrace is placed at the static field that changed, and named
    assert found == {("STB101", _line("    if y.sum() > 0:  # a traced value: fails under any jit")), ("STB504", _line("    depth: int = 2"))}
    assert "static `model.depth` was 2, now 3" in next(d["message"] for d in data if d["code"] == "STB504")
