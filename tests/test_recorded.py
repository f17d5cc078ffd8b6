"""Recorded signatures (`pytest --stabcheck-record`, `traced.recorded`): describe real values as
specs, rebuild them as abstract values, merge runs deterministically within bounds, refuse bad,
foreign and newer files with a clear message, and bind a signature to an entry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from stabcheck.runtime._calls import TransformedCall
from stabcheck.runtime._recorder import Recorder
from stabcheck.traced import recorded
from tests.conftest import requires_jax

pytestmark = requires_jax


class Pair(NamedTuple):
    w: Any
    b: Any


@dataclasses.dataclass(frozen=True)
class State:
    params: Any
    step: Any


def _register_state() -> None:
    import jax

    try:
        jax.tree_util.register_dataclass(State, data_fields=["params", "step"], meta_fields=[])
    except ValueError:  # registered already (the module is imported once per session)
        pass


def act(x: Any) -> Any:
    return x


def loss(w: Any, x: Any, kind: str = "l2", scale: float = 1.0) -> Any:
    return (w * x).sum() * scale


def test_describe_arrays_scalars_and_containers() -> None:
    import jax.numpy as jnp
    import numpy as np

    assert recorded.describe(jnp.ones((8, 2))) == "f32[8,2]"
    assert recorded.describe(jnp.float32(1.0)) == "f32[]"
    assert recorded.describe(jnp.asarray(1.0)) == "f32?[]"  # a weakly typed scalar stays weak
    import jax

    assert recorded.describe(np.zeros(3, np.int8)) == "i8[3]"
    assert recorded.describe(jnp.zeros(2, jnp.bfloat16)) == "bf16[2]"
    assert recorded.describe(jax.ShapeDtypeStruct((2,), jnp.bool_)) == "bool[2]"
    assert recorded.describe(3) == 3 and recorded.describe(2.5) == 2.5 and recorded.describe(True) is True and recorded.describe(None) is None
    assert recorded.describe("relu") == {"$str": "relu"}
    assert recorded.describe((1, [jnp.ones(2)])) == {"$tuple": [1, ["f32[2]"]]}
    assert recorded.describe({"b": jnp.ones(1), "a": 1}) == {"a": 1, "b": "f32[1]"}
    assert recorded.describe({"$x": 1}) == {"$dict": {"$x": 1}}
    assert recorded.describe(Pair(jnp.ones(2), None)) == {"$type": "tests.test_recorded:Pair", "fields": {"w": "f32[2]", "b": None}}
    assert recorded.describe(State(jnp.ones(2), 0)) == {"$type": "tests.test_recorded:State", "fields": {"params": "f32[2]", "step": 0}}
    assert recorded.describe(act) == {"$ref": "tests.test_recorded:act"}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (lambda x: x, "not importable by name"),
        (object(), "a value of type `object`"),
        ({1: 2}, "non-string keys"),
        (float("nan"), "non-finite"),
        ([[[[[[[[[[[[[[1]]]]]]]]]]]]]], "deeper than"),
        (list(range(300)), "more than 256"),
    ],
)
def test_describe_refuses_what_cannot_be_rebuilt(value: Any, why: str) -> None:
    with pytest.raises(recorded.Unrebuildable, match=why):
        recorded.describe(value)


def test_rebuild_gives_abstract_values_in_the_recorded_containers() -> None:
    import jax
    import jax.numpy as jnp

    _register_state()
    value = {"p": Pair(jnp.ones((3, 2)), jnp.zeros(2, jnp.int32)), "s": State(jnp.ones(4), 2), "t": (1.5, "x", None), "f": act}
    back = recorded.rebuild(json.loads(json.dumps(recorded.describe(value))))
    assert isinstance(back["p"], Pair) and back["p"].w == jax.ShapeDtypeStruct((3, 2), jnp.float32)
    assert back["p"].b.dtype == jnp.int32
    assert isinstance(back["s"], State) and back["s"].step == 2 and back["s"].params.shape == (4,)
    assert back["t"] == (1.5, "x", None) and back["f"] is act
    weak = recorded.rebuild("f32?[]")
    assert weak.weak_type and weak.shape == ()
    # the rebuilt pytree flattens like the recorded one
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(value)


def test_rebuild_an_equinox_module() -> None:
    eqx = pytest.importorskip("equinox")
    import jax
    import jax.numpy as jnp

    model = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    spec = recorded.describe(model)
    assert spec["$type"] == "equinox.nn._linear:Linear" and spec["fields"]["weight"] == "f32[2,3]"
    back = recorded.rebuild(spec)
    assert type(back) is eqx.nn.Linear
    out = jax.eval_shape(lambda m, x: m(x), back, jax.ShapeDtypeStruct((3,), jnp.float32))
    assert out.shape == (2,)


def test_signature_of_a_local_function_is_kept_out_with_a_reason() -> None:
    def inner(x: Any) -> Any:
        return x

    with pytest.raises(recorded.Unrebuildable, match="inside a function"):
        recorded.signature(inner, "jit", {}, (1,), {}, "t.py:1")


class _Scaler:
    def apply(self, x: Any) -> Any:
        return x

    @classmethod
    def make(cls, x: Any) -> Any:
        return x


def test_signature_of_a_method_bound_to_an_object_is_kept_out_with_a_reason() -> None:
    """`jax.jit(self._apply)` (jax-ml/jax#9672): the worker could import `_Scaler.apply` by name,
    but not the object it was bound to; replaying it unbound would fail for a missing `self`."""
    with pytest.raises(recorded.Unrebuildable, match="bound to a `_Scaler` object"):
        recorded.signature(_Scaler().apply, "jit", {}, (1,), {}, "t.py:1")
    name, _ = recorded.signature(_Scaler.make, "jit", {}, (1,), {}, "t.py:1")  # bound to the class: importable
    assert name.endswith(":_Scaler.make")


def _sig(n: int, site: str = "tests/t.py:1") -> dict[str, Any]:
    return {"transform": "jit", "options": {}, "args": [f"f32[{n}]"], "kwargs": {}, "site": site}


def _data(*sigs: dict[str, Any], name: str = "m:f") -> dict[str, Any]:
    d = recorded.empty()
    for s in sigs:
        recorded.add(d, name, "m.py", s)
    return d


def test_merge_keeps_earlier_runs_updates_sites_and_is_deterministic() -> None:
    old = _data(_sig(1), _sig(2))
    new = _data(_sig(2, "tests/t.py:9"), _sig(3))
    merged = recorded.merge(old, new)
    sigs = merged["functions"]["m:f"]["signatures"]
    assert [s["args"] for s in sigs] == [["f32[1]"], ["f32[2]"], ["f32[3]"]]
    assert sigs[1]["site"] == "tests/t.py:9"
    # the same signatures seen in another order give the same file, byte for byte
    assert recorded.dumps(recorded.merge(new, old)).replace("tests/t.py:9", "X").replace("tests/t.py:1", "X") == recorded.dumps(merged).replace("tests/t.py:9", "X").replace("tests/t.py:1", "X")
    assert recorded.dumps(recorded.merge(recorded.empty(), _data(_sig(3), _sig(1)))) == recorded.dumps(recorded.merge(recorded.empty(), _data(_sig(1), _sig(3))))


def test_merge_bounds_signatures_per_function() -> None:
    merged = recorded.merge(recorded.empty(), _data(*[_sig(n) for n in range(10)]))
    assert len(merged["functions"]["m:f"]["signatures"]) == recorded.MAX_PER_FUNCTION
    again = recorded.merge(merged, _data(*[_sig(n) for n in range(10, 20)]))
    assert len(again["functions"]["m:f"]["signatures"]) == recorded.MAX_PER_FUNCTION


def test_a_function_recorded_later_leaves_the_skipped_list() -> None:
    d = recorded.empty()
    recorded.skip(d, "m:f", "jit", "a value of type `object`", "t.py:3")
    merged = recorded.merge(d, _data(_sig(1)))
    assert merged["skipped"] == {} and "m:f" in merged["functions"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"version": 1, "functions": {}}', "is not a stabcheck recorded-signatures file"),
        ('{"format": "stabcheck-recorded", "version": 99, "functions": {}}', "has version 99; this stabcheck reads version 2"),
        ('{"format": "stabcheck-recorded", "version": 1, "functions": []}', "must be objects"),
        ('{"format": "stabcheck-recorded", "version": 1, "functions": {"m:f": {"signatures": [{"args": []}]}}}', "the record of `m:f` is malformed"),
        ('{"format": "stabcheck-recorded", "version": 1, "functions": {"nocolon": {"signatures": []}}}', "malformed"),
    ],
)
def test_bad_files_are_refused_with_the_file_named(text: str, message: str) -> None:
    with pytest.raises(recorded.RecordedError, match="`some/recorded.json`") as e:
        recorded.loads(text, "some/recorded.json")
    assert message in str(e.value)


def test_a_written_file_reads_back() -> None:
    data = recorded.merge(recorded.empty(), _data(_sig(1)))
    assert recorded.loads(recorded.dumps(data), "x") == data


def test_recorder_writes_merges_and_keeps_out_what_it_cannot_rebuild(tmp_path: Path) -> None:
    import jax.numpy as jnp

    (tmp_path / "pyproject.toml").write_text("")
    site = (str(tmp_path / "tests" / "test_a.py"), 7)
    r = Recorder(tmp_path)
    r(TransformedCall(loss, "jit", {"static_argnames": ("kind",)}, (jnp.ones(3), jnp.ones(3)), {"kind": "l1"}, site))
    r(TransformedCall(lambda x: x, "jit", {}, (jnp.ones(3),), {}, site))
    r(TransformedCall(act, "jit", {}, (object(),), {}, site))
    message = r.write()
    assert "recorded 1 signature of 1 function" in message and "2 not kept" in message
    data = recorded.read(str(tmp_path / ".stabcheck" / "recorded.json"))
    (sig,) = data["functions"]["tests.test_recorded:loss"]["signatures"]
    assert sig == {"transform": "jit", "options": {"static_argnames": ["kind"]}, "args": ["f32[3]", "f32[3]"], "kwargs": {"kind": {"$str": "l1"}}, "site": "tests/test_a.py:7"}
    assert "defined inside a function" in data["skipped"]["tests.test_recorded:test_recorder_writes_merges_and_keeps_out_what_it_cannot_rebuild.<locals>.<lambda>"]["reason"]
    assert "`object`" in data["skipped"]["tests.test_recorded:act"]["reason"]
    r2 = Recorder(tmp_path)
    r2(TransformedCall(loss, "grad", {}, (jnp.ones(2), jnp.ones(2)), {}, site))
    r2.write()
    data = recorded.read(str(tmp_path / ".stabcheck" / "recorded.json"))
    assert len(data["functions"]["tests.test_recorded:loss"]["signatures"]) == 2


def test_recorder_leaves_a_foreign_file_alone(tmp_path: Path) -> None:
    import jax.numpy as jnp

    (tmp_path / ".stabcheck").mkdir()
    (tmp_path / ".stabcheck" / "recorded.json").write_text('{"mine": true}')
    r = Recorder(tmp_path)
    r(TransformedCall(act, "jit", {}, (jnp.ones(3),), {}, ("t.py", 1)))
    with pytest.raises(recorded.RecordedError, match="not a stabcheck recorded-signatures file"):
        r.write()
    assert (tmp_path / ".stabcheck" / "recorded.json").read_text() == '{"mine": true}'


def test_entry_parts_bind_keywords_statics_and_vmap_axes() -> None:
    import jax

    sig = {"transform": "jit", "options": {"static_argnames": ["kind"]}, "args": ["f32[3]", "f32[3]"], "kwargs": {"kind": {"$str": "l1"}}}
    parts = recorded.entry_parts(loss, sig)
    assert parts["static_argnums"] == (2,) and parts["args"][2] == "l1" and parts["kwargs"] == {}
    assert parts["transforms"] == ("jit",)
    assert recorded.more_transforms(loss, parts) == ("jit", "grad", "hessian")
    # a keyword after a defaulted one: the default fills the gap, statically
    parts = recorded.entry_parts(loss, {"transform": "jit", "options": {}, "args": ["f32[3]", "f32[3]"], "kwargs": {"scale": "f32[]"}})
    assert parts["args"][2] == "l2" and 2 in parts["static_argnums"] and parts["args"][3].shape == ()
    parts = recorded.entry_parts(loss, {"transform": "vmap", "options": {"in_axes": [None, 1]}, "args": ["f32[3]", "f32[3,5]"], "kwargs": {}})
    assert parts["in_axes"] == (None, 1) and parts["args"][1] == jax.ShapeDtypeStruct((3,), "float32") and parts["transforms"] == ("jit", "vmap")
    parts = recorded.entry_parts(loss, {"transform": "grad", "options": {"argnums": [0, 1]}, "args": ["f32[3]", "f32[3]"], "kwargs": {}})
    assert parts["argnums"] == (0, 1) and parts["transforms"] == ("jit", "grad")
    parts = recorded.entry_parts(loss, {"transform": "filter_jit", "options": {}, "args": ["f32[3]", "f32[3]", {"$str": "l1"}, 2.0], "kwargs": {}})
    assert parts["static_argnums"] == (2, 3)


def _with_aux(w: Any) -> Any:
    import jax.numpy as jnp

    return jnp.sum(w * w), jnp.sqrt(w)  # the aux's sqrt: NaN on negatives, never differentiated


def test_has_aux_replays_the_first_output_only() -> None:
    import jax
    import jax.numpy as jnp

    sig = {"transform": "value_and_grad", "options": {"has_aux": True}, "args": ["f32[3]"], "kwargs": {}}
    fn = recorded.replayed_function(_with_aux, sig)
    assert fn.__wrapped__ is _with_aux and fn.__name__ == "_with_aux"
    w = jnp.array([-1.0, 0.0, 2.0])
    assert bool(jnp.isfinite(jax.grad(fn)(w)).all())  # as `value_and_grad(has_aux=True)` differentiates it
    assert not bool(jnp.isfinite(jax.grad(lambda v: sum(x.sum() for x in _with_aux(v)))(w)).all())  # summing the aux: a false NaN
    assert recorded.more_transforms(fn, recorded.entry_parts(_with_aux, sig)) == ("jit", "grad", "hessian")  # a scalar loss
    assert recorded.replayed_function(_with_aux, {**sig, "options": {}}) is _with_aux


def test_origin_names_the_test_line_and_the_added_transforms() -> None:
    sig = {"transform": "jit", "site": "tests/test_model.py:42"}
    assert recorded.origin(sig, ("jit", "grad", "hessian")) == "recorded from tests/test_model.py:42 (jit; grad, hessian added)"
    assert recorded.origin({"transform": "grad", "site": "t.py:1"}, ("jit", "grad")) == "recorded from t.py:1 (grad)"


def test_find_stops_at_the_project_root(tmp_path: Path) -> None:
    (tmp_path / ".stabcheck").mkdir()
    (tmp_path / ".stabcheck" / "recorded.json").write_text("{}")
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text("")
    assert recorded.find([str(tmp_path / "proj" / "src")]) is None
    (tmp_path / "proj" / ".stabcheck").mkdir()
    (tmp_path / "proj" / ".stabcheck" / "recorded.json").write_text("{}")
    assert recorded.find([str(tmp_path / "proj" / "src")]) == str(tmp_path / "proj" / ".stabcheck" / "recorded.json")


def test_recorder_unrolls_partials_and_skips_a_nested_transform(tmp_path: Path) -> None:
    import functools

    import jax.numpy as jnp

    r = Recorder(tmp_path)
    site = (str(tmp_path / "t.py"), 3)
    r(TransformedCall(functools.partial(loss, jnp.ones(3), kind="l1"), "vmap", {"in_axes": 0}, (jnp.ones((5, 3)),), {}, site))
    r(TransformedCall(functools.partial(loss, jnp.ones(3)), "grad", {"argnums": 0}, (jnp.ones(3),), {}, site))

    class Inner:  # what the plugin passes for `jit(grad(f))`: the inner transformed callable
        stabcheck_fn = loss

        def __call__(self, *a: Any) -> Any:
            return loss(*a)

    r(TransformedCall(Inner(), "jit", {}, (jnp.ones(3), jnp.ones(3)), {}, site))
    sigs = r.data["functions"]["tests.test_recorded:loss"]["signatures"]
    assert [(s["transform"], s["options"], s["args"], s["kwargs"]) for s in sigs] == [
        ("vmap", {"in_axes": [None, 0], "static_argnames": ["kind"]}, ["f32[3]", "f32[5,3]"], {"kind": {"$str": "l1"}}),
        ("grad", {"argnums": 1}, ["f32[3]", "f32[3]"], {}),
    ]
    parts = recorded.entry_parts(loss, sigs[0])
    assert parts["in_axes"] == (None, 0) and parts["args"][1].shape == (3,) and parts["static_argnums"] == (2,)


def test_recorded_targets_read_json_only_and_summarise_what_was_kept_out(tmp_path: Path) -> None:
    from stabcheck.config import Config
    from stabcheck.worker.stage import recorded_targets

    data = recorded.empty()
    recorded.add(data, "pkg.never_imported:f", "pkg/never_imported.py", _sig(3))
    for i in range(7):
        recorded.skip(data, f"t:<locals>.f{i}", "jit", "defined inside a function", f"t.py:{i}")
    (tmp_path / ".stabcheck").mkdir()
    path = tmp_path / ".stabcheck" / "recorded.json"
    path.write_text(recorded.dumps(data))
    targets, notes = recorded_targets([], Config(), str(path))
    assert targets == [{"target": "pkg.never_imported:f", "recorded": data["functions"]["pkg.never_imported:f"], "paths": [str(tmp_path), str(tmp_path / "src")]}]
    assert len(notes) == 6 and notes[-1].startswith("... and 2 more calls not kept")
    import sys

    assert "pkg.never_imported" not in sys.modules


def test_a_test_module_is_imported_as_pytest_imports_it(tmp_path: Path) -> None:
    from stabcheck.traced.load import pytest_module_name

    (tmp_path / "tests" / "unit").mkdir(parents=True)
    assert pytest_module_name(str(tmp_path / "tests" / "unit" / "test_a.py")) == (str(tmp_path / "tests" / "unit"), "test_a")
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "unit" / "__init__.py").write_text("")
    assert pytest_module_name(str(tmp_path / "tests" / "unit" / "test_a.py")) == (str(tmp_path), "tests.unit.test_a")


def test_compiled_signatures_are_kept_up_to_max_traces_plus_one() -> None:
    grads = [{**_sig(n), "transform": "grad"} for n in range(10)]
    data = _data(*[_sig(n) for n in range(30)], *grads, *[{**_sig(n), "transform": "filter_jit"} for n in range(3)])
    for max_traces, jit_kept in ((1, 4), (3, 4), (5, 6), (16, 17), (40, 17)):
        sigs = recorded.merge(recorded.empty(), data, recorded.compiled_limit(max_traces))["functions"]["m:f"]["signatures"]
        by = {t: sum(1 for s in sigs if s["transform"] == t) for t in ("jit", "grad", "filter_jit")}
        assert by == {"jit": jit_kept, "grad": recorded.MAX_PER_FUNCTION, "filter_jit": 3}, (max_traces, by)
    again = recorded.merge(recorded.merge(recorded.empty(), data, 6), data, 6)
    assert recorded.dumps(again) == recorded.dumps(recorded.merge(recorded.empty(), data, 6))  # deterministic


def test_recorder_keeps_max_traces_plus_one_compiled_signatures(tmp_path: Path) -> None:
    import jax.numpy as jnp

    rec = Recorder(tmp_path, max_traces=5)
    for n in range(1, 9):
        rec(TransformedCall(fn=loss, transform="jit", args=(jnp.ones(n), jnp.ones(n)), site=(str(tmp_path / "t.py"), n)))
    rec.write()
    data = recorded.read(str(tmp_path / recorded.DEFAULT_PATH))
    assert len(next(iter(data["functions"].values()))["signatures"]) == 6


@dataclasses.dataclass(frozen=True)
class Holder:
    scale: Any
    forward: Any  # a `jax.jit` object: a pytree leaf here (static to equinox)


def test_jit_objects_are_recorded_with_how_many_distinct_ones_a_signature_was_called_with(tmp_path: Path) -> None:
    """A `jax.jit(fk)` built per object: one signature, as many jit objects (each its own
    compile cache) as the tests built; the same object again is not counted twice. Rebuilding
    gives a new `jax.jit` object each time, as the tests had."""
    import jax
    import jax.numpy as jnp

    try:
        jax.tree_util.register_dataclass(Holder, data_fields=["scale", "forward"], meta_fields=[])
    except ValueError:
        pass
    rec = Recorder(tmp_path)
    site = (str(tmp_path / "t.py"), 1)
    shared = jax.jit(act)
    for _ in range(3):
        rec(TransformedCall(fn=loss, transform="filter_jit", args=(Holder(jnp.ones(3), jax.jit(act)), jnp.ones(3)), site=site))
    for _ in range(3):
        rec(TransformedCall(fn=loss, transform="filter_jit", args=(Holder(jnp.ones(2), shared), jnp.ones(2)), site=site))
    rec.write()
    sigs = recorded.read(str(tmp_path / recorded.DEFAULT_PATH))["functions"]["tests.test_recorded:loss"]["signatures"]
    per = {s["args"][1]: s.get("objects", 1) for s in sigs}
    assert per == {"f32[3]": 3, "f32[2]": 1}, sigs
    assert sigs[0]["args"][0]["fields"]["forward"] == {"$jit": "tests.test_recorded:act"}
    a, b = (recorded.rebuild(sigs[0]["args"][0]) for _ in range(2))
    assert recorded.is_jit_object(a.forward) and a.forward is not b.forward and a.forward.__wrapped__ is act


class Sgd(NamedTuple):
    update: Any


def sgd(lr: float) -> Sgd:
    def update(g: Any) -> Any:  # a closure: not importable
        return -lr * g

    return Sgd(update)


def fit_step(params: Any, optimizer: Any) -> Any:
    return params + optimizer.update(params)


def test_a_static_argument_that_cannot_be_rebuilt_is_kept_as_its_type_and_its_call_pattern(tmp_path: Path) -> None:
    """A static optimizer made of closures: the signature holds `{"$opaque": type}` and how many
    unequal ones the tests passed; the same one passed again is not counted; the same value as
    a traced argument is still kept out. Rebuilt, it is a stand-in equal only to itself."""
    import jax.numpy as jnp

    rec = Recorder(tmp_path)
    site = (str(tmp_path / "t.py"), 1)
    for _ in range(3):
        rec(TransformedCall(fn=fit_step, transform="jit", options={"static_argnums": (1,)}, args=(jnp.ones(3), sgd(0.1)), site=site))
    one = sgd(0.1)
    for _ in range(3):
        rec(TransformedCall(fn=fit_step, transform="jit", options={"static_argnums": (1,)}, args=(jnp.ones(2), one), site=site))
    rec(TransformedCall(fn=loss, transform="jit", args=(jnp.ones(3), sgd(0.1)), site=site))
    rec.write()
    data = recorded.read(str(tmp_path / recorded.DEFAULT_PATH))
    sigs = data["functions"]["tests.test_recorded:fit_step"]["signatures"]
    assert {s["args"][0]: s.get("objects", 1) for s in sigs} == {"f32[3]": 3, "f32[2]": 1}, sigs
    assert sigs[0]["args"][1] == {"$opaque": "tests.test_recorded:Sgd"}
    assert "tests.test_recorded:loss" in data["skipped"] and "tests.test_recorded:loss" not in data["functions"]
    a, b = recorded.rebuild(sigs[0]["args"][1]), recorded.rebuild(sigs[0]["args"][1])
    assert isinstance(a, recorded.StandIn) and a != b and a == a and hash(a) != hash(b)


def test_a_version_1_file_is_read_and_written_back_as_the_current_version() -> None:
    old = '{"format": "stabcheck-recorded", "version": 1, "functions": {"m:f": {"file": "m.py", "signatures": [{"transform": "jit", "options": {}, "args": ["f32[2]"], "kwargs": {}, "site": "t.py:3"}]}}, "skipped": {}}'
    data = recorded.loads(old, "old/recorded.json")
    assert data["version"] == recorded.VERSION == 2
    assert list(data["functions"]) == ["m:f"]
