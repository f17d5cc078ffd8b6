"""`confirm.nan.nan_origin` steps into the bodies of `lax.scan`, `lax.while_loop` and `lax.cond`:
the first NaN/Inf made inside one is placed at the line inside the body (STB408), not at the
loop's call; a loop that makes none is silent. The functions live in fixtures/zeroconfig/zcmodel/loops.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import requires_jax

pytestmark = requires_jax

FILE = Path(__file__).resolve().parents[1] / "fixtures" / "zeroconfig" / "zcmodel" / "loops.py"


def _module():
    spec = importlib.util.spec_from_file_location("zc_loops", FILE)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def _line(text: str) -> int:
    return FILE.read_text().splitlines().index(text) + 1


def _run(fn, grad: bool):  # noqa: ANN001, ANN202 - while_loop has no reverse mode: called as is
    import jax

    return jax.grad(fn) if grad else fn


@pytest.mark.parametrize(
    ("name", "grad", "arg", "line", "primitive", "kind", "phase"),
    [
        ("discounted", True, [1.0, 0.0, 4.0], "        carry = carry * 0.9 + jnp.sqrt(r)", "div", "Inf", "forward"),  # d sqrt at 0
        ("log_steps", False, [2.5], "        return i + 1, jnp.log(v - 1.0)", "log", "NaN", "forward"),  # log(0.5 - 1) on the 2nd step
        ("branchy", False, [1.0], "    return lax.cond(x[0] > 0, lambda v: jnp.log(v - 5.0), jnp.sin, x).sum()", "log", "NaN", "forward"),
        ("reversed_scan", True, [1.0, 2.0, 0.0], "        return c + 1.0 / x, c", "div", "Inf", "forward"),  # the last element, met first
        ("amplify", True, [0.0, 0.0, 0.0], "        c = 1e20 * jnp.tanh(c + x)  # zero forward; its derivative 1e20 per step overflows backward", "mul", "Inf", "backward"),
    ],
)
def test_the_first_nonfinite_inside_a_body_is_placed_inside_it(name: str, grad: bool, arg: list[float], line: str, primitive: str, kind: str, phase: str) -> None:
    import jax.numpy as jnp

    from stabcheck.confirm.nan import nan_origin, nonfinite

    fn = _run(getattr(_module(), name), grad)
    x = jnp.array(arg)
    assert nonfinite(fn(x))  # it really fails under the installed JAX
    origin = nan_origin(fn, (x,))
    assert origin is not None
    assert (origin.path, origin.line, origin.primitive, origin.kind, origin.phase) == (str(FILE), _line(line), primitive, kind, phase)


@pytest.mark.parametrize(("name", "grad"), [("discounted_fixed", True), ("log_steps_fixed", False), ("branchy_fixed", True)])
def test_near_misses_make_no_nonfinite(name: str, grad: bool) -> None:
    import jax.numpy as jnp

    from stabcheck.confirm.nan import nan_origin, nonfinite

    fn = _run(getattr(_module(), name), grad)
    x = jnp.array([1.0, 0.0, 4.0])
    assert nonfinite(fn(x)) is None and nan_origin(fn, (x,)) is None
