"""Recompilation from objects (issue 18, item 3; item 7's retraces inside a training loop), on the
real-bug fixtures of fixtures/realbugs/recompile.py.

For every hazard: JAX really compiles again (counted with JAX's own monitoring events, or the
error it raises), the confirm stage reports the marked code at the marked line naming the field or
argument that changed, and `@stabcheck.stable` warns once per trace JAX made and never otherwise.
Every `*_ok` near miss compiles once and stays silent in both.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires_jax

pytestmark = [pytest.mark.slow, requires_jax]

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "realbugs" / "recompile.py"
LINES = FIX.read_text().splitlines()
MARK = re.compile(r"#\s*bug:\s*(STB\d{3})")


def _marked(text: str) -> tuple[str, int]:
    """(code, line) of the `# bug:` marker on the line containing `text`."""
    (i,) = [i for i, ln in enumerate(LINES, 1) if text in ln and MARK.search(ln)]
    return MARK.search(LINES[i - 1]).group(1), i  # type: ignore[union-attr]


# hazard entry -> (the marked line, the leaf or field the finding must name)
HAZARDS: dict[str, tuple[tuple[str, int], str]] = {
    "advance": (_marked("step: int"), "model.step"),
    "predict": (_marked("self.forward = jax.jit(fk)"), "model.forward"),
    "interpolate": (_marked("nodes: np.ndarray"), "grid.nodes"),
    "train_step": (_marked("def train_step"), "optimizer"),
    "shifted": (_marked("def shifted(x, alpha=None)"), "alpha"),
    "train": (_marked("def sgd_step"), "batch"),
    "rescale": (_marked("self.apply = jax.jit(self._apply)"), "Scaler._apply"),
}


def test_every_marker_is_a_tested_hazard() -> None:
    marked = {i for i, ln in enumerate(LINES, 1) if MARK.search(ln)}
    covered = {line for (_, line), _ in HAZARDS.values()} | {_marked("avg = state.avg_value")[1]}
    assert marked == covered


_LOADS = [0]


@pytest.fixture
def entries():
    """The fixture's entries from a fresh copy of the module: new jitted functions, so no
    compilation is served from an earlier test's cache."""
    _LOADS[0] += 1
    spec = importlib.util.spec_from_file_location(f"_realbugs_recompile_{_LOADS[0]}", FIX)
    assert spec and spec.loader
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m
    spec.loader.exec_module(m)
    return m.recompile()


class Compiles:
    """Backend compilations JAX reports while open (its own monitoring event)."""

    count = 0
    _listening = False

    def __enter__(self) -> Compiles:
        import jax

        if not Compiles._listening:

            def listen(event: str, duration: float, **kw: Any) -> None:
                if event == "/jax/core/compile/backend_compile_duration":
                    Compiles.count += 1

            jax.monitoring.register_event_duration_secs_listener(listen)
            Compiles._listening = True
        self.start = Compiles.count
        return self

    def __exit__(self, *exc: Any) -> None:
        self.n = Compiles.count - self.start


def _run(entry, fn=None) -> None:  # type: ignore[no-untyped-def]
    """Call the entry as its user does: the example arguments, each of `calls`, the state fed back."""
    import jax

    fn = fn or entry.fn
    for args in [entry.args, *(entry.calls or ())]:
        out = jax.block_until_ready(fn(*args))
    if entry.state_argnums:
        args = entry.args
        for _ in range(4):
            out = fn(*args)
            new = list(args)
            for k, i in enumerate(entry.state_argnums):
                new[i] = out[k]
            args = tuple(new)


@pytest.mark.parametrize("name", ["advance", "predict", "train_step", "shifted", "train", "plateau_step", "rescale"])
def test_the_hazard_really_compiles_again_and_its_near_miss_once(entries, name) -> None:
    bad, ok = entries[name], entries[f"{name}_ok"]
    with Compiles() as c:
        _run(bad)
    with Compiles() as d:
        _run(ok)
    assert c.n >= 2 and (name == "plateau_step" or c.n >= 4), (name, c.n)
    assert d.n <= 1, (name, d.n)


def test_an_array_in_a_static_field_fails_on_the_second_call(entries) -> None:
    import jax

    bad, ok = entries["interpolate"], entries["interpolate_ok"]
    f = jax.jit(bad.fn)
    f(*bad.args)
    with pytest.raises(ValueError, match="metadata fields"):
        f(*bad.calls[0])
    g = jax.jit(ok.fn)
    g(*ok.args), g(*ok.calls[0])


@pytest.mark.parametrize("name", sorted(HAZARDS))
def test_confirm_reports_the_hazard_at_the_line_to_fix_naming_what_changed(entries, name) -> None:
    from stabcheck.confirm.run import confirm_entry

    (code, line), leaf = HAZARDS[name]
    found = confirm_entry(name, entries[name], [])
    assert [(f.code, f.span.line, f.path.endswith("recompile.py")) for f in found] == [(code, line, True)], [(f.code, f.span.line, f.message) for f in found]
    assert found[0].detail == leaf and f"`{leaf}" in found[0].message, found[0].message
    if name == "rescale":
        assert "a bound method jitted once per `Scaler` object" in found[0].message
    assert confirm_entry(f"{name}_ok", entries[f"{name}_ok"], []) == []


def test_confirm_words_each_change_as_stable_does(entries) -> None:
    from stabcheck.confirm.run import confirm_entry

    def message(name: str) -> str:
        (f,) = confirm_entry(name, entries[name], [])
        return f.message

    assert "static `model.step` was 0, now 1" in message("advance")
    shifted = message("shifted")
    assert "`alpha` was None, now Python int" in shifted and "now float32[3]" in shifted
    assert "static `optimizer` is a new GradientTransformationExtraArgs object" in message("train_step")
    assert "static `model.forward` is a new `jax.jit` function object" in message("predict")
    train = message("train")
    assert "`sgd_step` was traced and compiled 5 times" in train and "`batch` was float32[3], now float32[4]" in train


def test_weak_state_drift_is_the_traced_stages_carry_drift_confirmed(entries) -> None:
    from stabcheck.confirm.run import confirm_entry
    from stabcheck.finding import Finding
    from stabcheck.traced.tracing import trace_task

    code, line = _marked("avg = state.avg_value")
    found = trace_task("plateau_step", entries["plateau_step"], {})["findings"]
    assert [(d["code"], d["line"]) for d in found] == [(code, line)]
    settled = confirm_entry("plateau_step", entries["plateau_step"], [Finding.from_dict(found[0])])
    assert [(f.code, f.status) for f in settled] == [(code, "confirmed")]
    assert trace_task("plateau_step_ok", entries["plateau_step_ok"], {})["findings"] == []


@pytest.mark.parametrize("name", ["advance", "predict", "train_step", "shifted", "plateau_step"])
def test_stable_warns_once_per_jax_trace_naming_the_leaf(entries, name) -> None:
    import stabcheck
    from stabcheck.runtime import StabilityWarning

    leaf = HAZARDS[name][1] if name in HAZARDS else "state.avg_value"
    for key in (name, f"{name}_ok"):
        entry = entries[key]
        fn = stabcheck.stable(mode="warn", select=["STB504"])(entry.fn)
        cache = entry.fn if hasattr(entry.fn, "_cache_size") else entry.fn._cached  # eqx.filter_jit's own jit
        before = cache._cache_size()  # JAX's count of the signatures it traced and compiled
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _run(entry, fn)
        traces = cache._cache_size() - before
        got = [str(w.message) for w in caught if issubclass(w.category, StabilityWarning)]
        assert len(got) == max(traces - 1, 0), (key, traces, got)
        if key == name:
            assert got and all(f"`{leaf}" in m for m in got), got


def test_a_loops_retraces_are_counted_after_the_traced_stage_ran(entries) -> None:
    """`check --trace --confirm` traces the entry first (filling JAX's trace cache for the step's
    signatures); the real run still compiles once per batch length, and is still counted."""
    from stabcheck.confirm.run import confirm_entry
    from stabcheck.traced.tracing import trace_task

    assert trace_task("train", entries["train"], {})["findings"] == []
    (f,) = confirm_entry("train", entries["train"], [])
    assert (f.code, f.span.line, f.detail) == ("STB504", _marked("def sgd_step")[1], "batch")


@pytest.mark.parametrize("name", ["advance", "predict"])
def test_entries_loaded_as_the_cli_loads_them_still_count_the_modules_retraces(name) -> None:
    """`check --trace --confirm` loads entries through `traced.load`, which splits a Module
    argument as `eqx.filter_jit` does (`traced.filtered`); the retraces of the entry's own
    `filter_jit` function are still counted and placed at the field."""
    from stabcheck.confirm.run import trace_confirm_task
    from stabcheck.traced import load

    entries = load.load_target({"target": f"{FIX}:recompile"})
    (code, line), leaf = HAZARDS[name]
    found = trace_confirm_task(f"recompile:{name}", entries[f"recompile:{name}"], {})["findings"]
    assert [(d["code"], d["line"]) for d in found if d["code"] == code] == [(code, line)], [(d["code"], d["line"], d["message"][:80]) for d in found]
    ok = trace_confirm_task(f"recompile:{name}_ok", entries[f"recompile:{name}_ok"], {})["findings"]
    assert [d for d in ok if d["code"] == code] == []
