"""Real bugs from public issues (fixtures/realbugs/): each hazard fails under the installed JAX
with the error its issue reports, its near miss runs, and the traced stage files the failure
under the hazard's code at the marked line — never as stabcheck's own failure (STB902)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_jax

pytestmark = [pytest.mark.slow, requires_jax]

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "realbugs" / "misfiled_errors.py"
MARK = re.compile(r"#\s*bug:\s*(STB\d{3})")


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bugs():
    return _load(FIX, "_realbugs_misfiled")


def _expected(path: Path = FIX) -> dict[str, tuple[str, int]]:
    """Hazard function name -> (code, line) from the `# bug: STBnnn` markers."""
    out: dict[str, tuple[str, int]] = {}
    current = ""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("def "):
            current = line[4:].split("(")[0]
        m = MARK.search(line)
        if m:
            out[current] = (m.group(1), i)
    return out


EXPECTED = _expected()


def _call(entry):
    """Run an entry as its user does: under `jit` when that is the transform it names."""
    import jax

    fn = jax.jit(entry.fn) if "jit" in entry.transforms else entry.fn
    return fn(*entry.args)


def test_every_hazard_has_a_near_miss(bugs) -> None:
    entries = bugs.misfiled()
    assert len(EXPECTED) >= 9
    for name in EXPECTED:
        assert name in entries and f"{name}_ok" in entries, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hazard_really_fails_and_near_miss_runs(bugs, name) -> None:
    """The claim, observed: calling the entry as a user would raises; the `_ok` twin does not."""
    entries = bugs.misfiled()
    bad, ok = entries[name], entries[f"{name}_ok"]
    with pytest.raises((TypeError, ValueError, IndexError, OverflowError)):
        _call(bad)
    _call(ok)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_traced_stage_files_the_hazard_under_its_code(bugs, name) -> None:
    from stabcheck.traced.tracing import trace_task

    entries = bugs.misfiled()
    code, line = EXPECTED[name]
    found = {(d["code"], d["line"]) for d in trace_task(name, entries[name], {})["findings"]}
    assert found == {(code, line)}, found
    near = trace_task(f"{name}_ok", entries[f"{name}_ok"], {})["findings"]
    assert near == [], [(d["code"], d["line"], d["message"]) for d in near]


def test_error_table_knows_each_message_of_the_installed_jax(bugs) -> None:
    """The table is matched against JAX's wording: every hazard's exception maps to its code."""
    from stabcheck.traced.errors import code_of

    entries = bugs.misfiled()
    for name, (code, _line) in EXPECTED.items():
        try:
            _call(entries[name])
        except Exception as exc:  # noqa: BLE001 - each hazard raises its own JAX error
            assert code_of(exc)[0] == code, (name, type(exc).__name__, str(exc)[:200])
        else:
            pytest.fail(f"{name} did not raise")


NEAR = Path(__file__).resolve().parents[1] / "fixtures" / "realbugs" / "near_misses.py"


@pytest.fixture(scope="module")
def near():
    return _load(NEAR, "_realbugs_near")


def test_near_misses_run_under_jax_and_stay_silent(near) -> None:
    import jax

    from stabcheck.traced.tracing import trace_task

    for name, entry in near.quiet().items():
        jax.jit(entry.fn)(*entry.args)
        if "grad" in entry.transforms:
            jax.grad(entry.fn)(*entry.args)
        found = trace_task(name, entry, {})["findings"]
        assert found == [], (name, [(d["code"], d["line"], d["message"]) for d in found])


def test_weak_outputs_the_code_makes_are_reported_at_their_line(near) -> None:
    from stabcheck.traced.tracing import trace_task

    lines = NEAR.read_text().splitlines()
    for name, entry in near.loud().items():
        found = {(d["code"], d["line"]) for d in trace_task(name, entry, {})["findings"]}
        want = next(i for i, ln in enumerate(lines, 1) if f"def {name}(" in ln) + 1
        assert found == {("STB302", want)}, (name, found)
        assert "# loud: STB302" in lines[want - 1]


def test_stable_reports_a_literal_return_at_the_return_line(near) -> None:
    import warnings

    import jax

    import stabcheck

    one = stabcheck.stable(jax.jit(near.one))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one(near.V)
    got = [(w.lineno, str(w.message)[:6]) for w in caught if isinstance(w.message, stabcheck.StabilityWarning)]
    line = next(i for i, ln in enumerate(NEAR.read_text().splitlines(), 1) if "return 1.0" in ln)
    assert got == [(line, "STB302")], got


ZERO = Path(__file__).resolve().parents[1] / "fixtures" / "realbugs" / "zero_gradient.py"
ZERO_EXPECTED = _expected(ZERO)


@pytest.fixture(scope="module")
def zero():
    return _load(ZERO, "_realbugs_zero")


@pytest.mark.parametrize("name", sorted(ZERO_EXPECTED))
def test_zero_gradient_is_really_zero_and_reported_at_the_cut(zero, name) -> None:
    import jax
    import jax.numpy as jnp

    from stabcheck.traced.tracing import trace_task

    entries = zero.zero_grads()
    bad, ok = entries[name], entries[f"{name}_ok"]
    assert not jnp.any(jax.grad(bad.fn)(*bad.args)), "the hazard's gradient should be exactly zero"
    assert jnp.any(jax.grad(ok.fn)(*ok.args) != 0), "the near miss should have a gradient"
    found = {(d["code"], d["line"]) for d in trace_task(name, bad, {})["findings"]}
    assert found == {ZERO_EXPECTED[name]}, found
    assert trace_task(f"{name}_ok", ok, {})["findings"] == []


def test_a_constant_nonzero_gradient_is_not_a_zero_gradient(zero) -> None:
    from stabcheck.traced.tracing import trace_task

    assert trace_task("linear", zero.zero_grads()["linear"], {})["findings"] == []


TRUNC = Path(__file__).resolve().parents[1] / "fixtures" / "realbugs" / "truncated_dtypes.py"
TRUNC_EXPECTED = _expected(TRUNC)


@pytest.fixture(scope="module")
def trunc():
    return _load(TRUNC, "_realbugs_trunc")


@pytest.mark.parametrize("name", sorted(TRUNC_EXPECTED))
def test_a_truncated_dtype_request_is_reported_where_it_is_asked(trunc, name) -> None:
    """The claim, observed: the hazard asks for float64 and gets float32 (x64 off); the near miss
    gets what it asks for; the traced stage reports STB301 at the request and nothing for the twin."""
    import jax
    import jax.numpy as jnp

    from stabcheck.traced.tracing import trace_task

    assert not jax.config.jax_enable_x64
    entries = trunc.truncated()
    bad, ok = entries[name], entries[f"{name}_ok"]
    with pytest.warns(UserWarning, match="truncated to dtype float32"):
        assert jax.jit(bad.fn)(*bad.args).dtype == jnp.float32
    found = {(d["code"], d["line"]) for d in trace_task(name, bad, {})["findings"]}
    assert found == {TRUNC_EXPECTED[name]}, found
    assert trace_task(f"{name}_ok", ok, {})["findings"] == []


def test_a_none_scan_carry_is_found_statically_at_its_line() -> None:
    # the static STB204 for an initial carry of None (the JAX failure itself is proven by
    # test_hazard_really_fails_and_near_miss_runs on the same fixture)
    from stabcheck.api import check_source
    from stabcheck.config import Config

    found = {(f.code, f.line) for f in check_source(FIX.read_text(), str(FIX), Config()) if f.code == "STB204"}
    assert found == {EXPECTED["running_sum"]}, found


AD = Path(__file__).resolve().parents[1] / "fixtures" / "realbugs" / "ad_line.py"
AD_EXPECTED = _expected(AD)
# the hazard whose function is not the entry's (the entry is named after its loss or its caller)
AD_ENTRY = {"_log_normalizer_jvp": "cross_entropy", "_half_sin_jvp": "half_sin", "_np_sin_jvp": "np_sin", "_solver_jvp": "solver", "make_params": "scaled_square", "make_masked": "masked_loss"}


@pytest.fixture(scope="module")
def ad():
    return _load(AD, "_realbugs_ad_line")


def _ad_run(entry):  # type: ignore[no-untyped-def]
    """Run an entry as its issue did: `grad` of the loss, or a Hessian-vector product for "hvp"."""
    import jax
    import jax.numpy as jnp

    if "hvp" in entry.transforms:
        (x,) = entry.args
        return jax.jvp(jax.grad(entry.fn), (x,), (jnp.ones_like(x),))[1]
    return jax.grad(entry.fn)(*entry.args)


def _finite(tree) -> bool:  # type: ignore[no-untyped-def]
    import jax
    import jax.numpy as jnp

    return all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(tree))


@pytest.mark.parametrize("hazard", sorted(AD_EXPECTED))
def test_ad_line_hazard_really_fails_and_its_near_miss_runs(ad, hazard) -> None:
    """The claim, observed: the NaN hazards give a non-finite gradient (inf_mask a NaN already in
    the forward pass), the custom rules and the parameter leaves make JAX raise; every `_ok`
    twin gives finite gradients."""
    import jax

    entries = ad.ad_line()
    name = AD_ENTRY.get(hazard, hazard)
    bad, ok = entries[name], entries[f"{name}_ok"]
    code, _ = AD_EXPECTED[hazard]
    if code == "STB408":
        assert not _finite(_ad_run(bad))
        if name == "inf_mask":
            assert not _finite(jax.jit(bad.fn)(*bad.args))
    else:
        with pytest.raises({"STB405": TypeError, "STB407": ValueError, "STB402": TypeError}[code]):
            _ad_run(bad)
    assert _finite(_ad_run(ok))
    assert _finite(jax.jit(ok.fn)(*ok.args))


@pytest.mark.parametrize("hazard", sorted(AD_EXPECTED))
def test_ad_line_entries_find_the_hazard_where_it_is_fixed(ad, hazard) -> None:
    """`check --trace --confirm` on the entry (trace, then the real runs) reports the hazard at
    its marked line and nothing in the near miss. The int/bool parameter leaves are made in
    another function than the one differentiated (`make_params`): the entries, loaded from their
    factory as the CLI loads them, report them where that function makes the leaf, naming it."""
    from stabcheck.confirm.run import trace_confirm_task
    from stabcheck.traced.load import _call_factory

    entries = {k.split(":", 1)[1]: e for k, e in _call_factory(ad.ad_line, "ad_line").items()}
    name = AD_ENTRY.get(hazard, hazard)
    code, line = AD_EXPECTED[hazard]
    found = {(d["code"], d["line"]): d for d in trace_confirm_task(name, entries[name], {})["findings"] if d.get("status") != "refuted"}
    assert (code, line) in found, sorted(found)
    if code == "STB402":
        leaf = {"make_params": "params['d']", "make_masked": "params['mask']"}[hazard]
        assert leaf in found[(code, line)]["message"]
    near = [d for d in trace_confirm_task(f"{name}_ok", entries[f"{name}_ok"], {})["findings"] if d.get("status") != "refuted"]
    assert near == [], [(d["code"], d["line"], d["message"][:100]) for d in near]
