"""Issue 16: the false-alarm classes of R4, R5, R6, R7 and the development set D1, as near misses that the
static stage keeps silent by default and that run cleanly under JAX
(fixtures/static/precision_later_near_misses.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stabcheck.api import check_source
from stabcheck.config import Config
from tests.conftest import requires_jax

OK = Path(__file__).resolve().parents[1] / "fixtures" / "static" / "precision_later_near_misses.py"


def _found(source: str, config: Config | None = None) -> list[tuple[str, int]]:
    """(code, line) of each finding the static stage reports on `source` (default config)."""
    return [(f.code, f.line) for f in check_source(source, "m.py", config or Config())]


def test_near_misses_are_silent() -> None:
    assert [(f.line, f.code, f.message) for f in check_source(OK.read_text(encoding="utf-8"), str(OK), Config())] == []


_RUNNER = r"""
import importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
spec = importlib.util.spec_from_file_location("precision_later_near_misses", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
print(json.dumps(mod.run()))
"""


@pytest.mark.slow
@requires_jax
def test_near_misses_run_cleanly_under_jax() -> None:
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(OK)], capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["grad_e2g"] == 0.0  # finite at 0 (a NaN would show the masked singularity)
    assert out["grad_project_finite"] is True
    assert out["eval_shape_cached"] == [2.0, 2.0, 2.0]
    assert out["printed_values"] is True  # init ran the Module eagerly: values, not tracers
    assert all(abs(v - 2 * math.exp(-1)) < 1e-6 for v in out["damping"])  # order 8 unmapped: the Python `if` took its branch
    # compiled per configuration; the inner pmap inside one compile; the weak counter and each
    # trainer's loss compiled once
    # one program per agent: three traces, as many as a jit built once would make
    assert out["traces"] == {"update": 2, "transform": 1, "rollout": 1, "l2_loss": 1, "l1_loss": 1, "scan": 3, "fun": 2, "infer": 2}
    assert out["momentum"] == [2.71, 2.71] and out["velocities_cleared"] is True  # 0 -> 1 -> 1.9 -> 2.71; no tracer kept
    assert out["regret_sums"] == [4.0, 4.0, 4.0]  # the carry summed; the dead nonlocal never read
    assert out["aligned"] == 10.0  # the lax loop: the Python `while` of the debugging mode never traced
    assert out["grad_inv_contract"] == [[1.0, 1.0, 1.0]]  # finite at z = 0: s is clamped to eps
    assert out["grad_iou"] == [[0.0] * 4] * 2  # no gradient reaches a count of booleans, no NaN
    assert out["global_step"] == 5 * 4 * 8
    assert out["grad_normalize"] == [1.0, 1.0]  # the bwd rule's gradient, finite at 0
    assert out["quantized_zero_rows"] == [[0.0] * 3] * 2  # the kernel's masked 1 / 0 ran, no NaN
    assert out["attend"] == [1.0] * 4  # cp_size reached the body as the Python int 1
    assert out["grad_mean_logits"] == [1.0, 0.5, 0.0]  # finite where the count was 0: clamped to 1
    assert out["rescaled"] == [2.0, 2.0, 1.0, 1.0]  # traced scale: the cond; concrete: the `if`
    assert out["reset_dtype"] == "uint32"  # the scan's carry stayed uint32: no drift
    assert out["blocked_shape"] == [3, 2, 2, 5]  # `if n % k:` saw Python ints
    assert out["model_untouched"] == [1.0, 1.0, 1.0]  # the store landed on jit's copy
    assert out["prefill_keys"] == ["position"]  # `extra or {}` on None: the Python `or`
    assert out["host_calls"] == 6  # the host callback ran at every step of both calls
    assert out["grad_coverage"] == [0.0] * 8  # no gradient reaches a count of a mask: zeros, no NaN
    assert len(out["checked_jit"]) == 2 and all(abs(a - b) < 1e-6 for a, b in zip(out["checked_eager"], out["checked_jit"]))
    assert out["picked"] == [2.0, 4.0]  # int(index) ran on the loop's concrete value
    assert out["grad_rotkernel_outside"] == 0.0  # the rule's masked 1 / sqrt: no NaN in a first derivative
    assert out["ragged"] == [1.0, 0.5]  # the kernel's masked 1 / 0 ran
    assert out["grad_rope_finite"] is True  # the scale is a Python float: no NaN
    assert out["condensed"] == ["loss", "returned_episode"]  # `if key == ...` on the dict's Python keys
    assert out["grad_events"] == [0.0, 0.0] and out["per_event"] == 0.0  # the metric is never differentiated


def test_a_divisor_clamped_in_another_branch_or_by_zero_still_fires() -> None:
    # a slice of the divisor: silent only where the clamp binds it on the use's path, to a
    # positive constant
    base = "import jax.numpy as jnp\n\n\ndef f(s, n, c):\n{clamp}    return jnp.where(n[:2] > 0, s[:2] / n[:2], 0.0)\n"
    fired = lambda clamp: _found(base.format(clamp=clamp), Config(preview=True))  # noqa: E731
    assert fired("    n = jnp.maximum(n, 1e-6)\n") == []
    assert fired("    n = jnp.clip(n, min=1)\n") == []
    assert fired("    if c:\n        n = jnp.maximum(n, 1.0)\n") == [("STB401", 7)]  # not on every path
    assert fired("    n = jnp.maximum(n, 0.0)\n") == [("STB401", 6)]  # may still be 0


def test_a_host_callback_is_not_traced_but_a_function_called_in_the_trace_is() -> None:
    # the callback JAX runs on the host keeps its counter; the same counter in a function the
    # traced code calls itself is the hazard
    source = (
        "import jax\n\n\ndef make():\n    def run(x):\n        n = 0\n\n        def step(c, _):\n            def log(v):\n"
        "                nonlocal n\n                n += 1\n\n            {call}\n            return c + 1, None\n\n"
        "        return jax.lax.scan(step, x, None, 3)[0]\n\n    return run\n\n\nstep = jax.jit(make())\n"
    )
    found = lambda call: _found(source.format(call=call))  # noqa: E731
    assert found("jax.debug.callback(log, c)") == []
    assert found("log(c)") == [("STB104", 11)]


def test_a_comparison_after_a_tracer_exit_is_concrete_but_not_without_it() -> None:
    source = "import jax\n\n\n@jax.jit\ndef f(x, s):\n{guard}    if s > 0:\n        return x * s\n    return x\n"
    found = lambda guard: _found(source.format(guard=guard))  # noqa: E731
    assert found("    if isinstance(s, jax.core.Tracer):\n        return jax.lax.cond(s > 0, lambda: x * s, lambda: x)\n") == []
    assert found("    if isinstance(s, jax.core.Tracer):\n        x = x + 1\n") == [("STB101", 8)]  # no exit: still traced
    assert found("") == [("STB101", 6)]


def test_arguments_after_a_starred_tuple_bind_the_last_parameters() -> None:
    source = "import jax\nfrom jax import lax\n\n\ndef f(a, b, k):\n    if k > 1:\n        return a\n    return b\n\n\n@jax.jit\ndef g(xs, ys, t):\n    return lax.map(lambda x: f({args}), (xs, ys))\n"
    found = lambda args: _found(source.format(args=args))  # noqa: E731
    assert found("*x, 2") == []  # k is the Python int
    assert found("*x, t") == [("STB101", 6)]  # k is the traced t
    assert found("*x") == [("STB101", 6)]  # the tuple may fill k too: traced, as before


def test_a_store_on_self_is_a_leak_only_where_self_is_the_callers_object() -> None:
    source = "import jax\nfrom functools import partial\n\n\nclass M:\n    {dec}\n    def step(self, x):\n        self.last = x * 2\n        return x\n"
    found = lambda dec: _found(source.format(dec=dec))  # noqa: E731
    assert found("@jax.jit") == []  # self is flattened and rebuilt: a copy
    assert found("@partial(jax.jit, static_argnums=0)") == [("STB104", 8)]  # self is the object


def test_an_or_default_to_a_container_is_a_guess_but_an_array_test_is_not() -> None:
    source = "import jax\n\n\n@jax.jit\ndef f(x, extra):\n    extra = {expr}\n    return x, extra\n"
    found = lambda expr: _found(source.format(expr=expr))  # noqa: E731
    assert found("extra or {}") == []
    assert found("extra or x") == [("STB101", 6)]


def test_a_divisor_from_a_parameter_used_as_a_weight_still_fires() -> None:
    # a mask-like use of the parameter makes the division a guess; a weight is still differentiated
    source = "import jax.numpy as jnp\n\n\ndef f(s, t, b):\n    c = {use}\n    p = jnp.mean(b)\n    return jnp.where(p > 0, jnp.mean(c) / p, 0.0)\n\n\nimport jax\n\ng = jax.grad(f, argnums=(0, 2))\n"
    found = lambda use: _found(source.format(use=use))  # noqa: E731
    # (`s` reaches the output only through `s <= t`: STB410 says its gradient is zero, which it is)
    assert found("(s <= t) * b") == [("STB410", 5)]
    assert found("s * b") == [("STB401", 7)]
    # a float weight among what the divisor reads (MoE routing weights times a mask): proven
    weighted = source.replace("p = jnp.mean(b)", "p = jnp.mean(b * s)").format(use="(s <= t) * b")
    assert _found(weighted) == [("STB401", 7)]
    # what another function returns is its own value: `b = helper(s)` does not make `s` an input
    helper = source.replace("    c = {use}\n", "    if b is None:\n        b = make_mask(s, t)\n    c = {use}\n").format(use="(s <= t) * b")
    assert _found(helper) == []


def test_a_module_level_alias_names_what_it_is_bound_to() -> None:
    # maxtext binds `partial = functools.partial` once at the top, then `@partial(jax.custom_vjp,
    # ...)`: the primal is a custom_vjp (no STB401 in what only it and its fwd call), and
    # `jit = jax.jit` makes a jitted function (a tracer branch in it is a finding)
    source = (
        "import functools\nimport jax\nimport jax.numpy as jnp\n\npartial = functools.partial\njit = jax.jit\n\n\n"
        "@partial(jax.custom_vjp, nondiff_argnums=(1,))\ndef normalize(l, eps):\n    return l * jnp.where(l == 0.0, 0.0, 1.0 / l)\n\n\n"
        "normalize.defvjp(lambda l, eps: (normalize(l, eps), None), lambda eps, res, g: (g,))\n\n\n"
        "@jit\ndef relu(x):\n    if x > 0:\n        return x\n    return -x\n"
    )
    assert [(f.code, f.line) for f in check_source(source, "m.py", Config())] == [("STB101", 19)]
    rebound = source.replace("jit = jax.jit\n", "jit = jax.jit\njit = None\n")
    assert [f.code for f in check_source(rebound, "m.py", Config())] == []  # bound twice: not an alias


_COUNTER = """import jax
import jax.numpy as jnp


def test_jit_traces_once():
    n = 0

    @jax.jit
    def f(x):
        nonlocal n
        n += 1
        return x * 2

    f(jnp.ones(3))
    f(jnp.ones(3))
    assert n == 1
"""


def test_a_test_counting_its_traces_is_a_guess(tmp_path: Path) -> None:
    # treex's tests (R8) count traces on purpose; the same counter in library code still fires
    assert [(f.code, f.confidence) for f in check_source(_COUNTER, "tests/test_jit.py", Config(preview=True))] == [("STB104", "guess")]
    assert check_source(_COUNTER, "tests/test_jit.py", Config()) == []
    assert [(f.code, f.confidence) for f in check_source(_COUNTER, "pkg/model.py", Config())] == [("STB104", "proven")]


@pytest.mark.slow
@requires_jax
def test_the_counted_test_really_traces_once(tmp_path: Path) -> None:
    test = tmp_path / "test_jit.py"
    test.write_text(_COUNTER + "\n\ntest_jit_traces_once()\nprint('ok')\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(test)], capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_an_operand_the_transform_gives_an_array_and_a_metric_the_loss_reads_still_fire() -> None:
    # the local lambda called with a traced value; the where's value returned as the loss itself
    lam = "import jax\nimport jax.numpy as jnp\n\n\n@jax.jit\ndef f(x, c):\n    g = lambda s: jnp.where(s <= 1, 1.0, jnp.log(s))\n    return g({arg})\n\n\ndf = jax.grad(f)\n"
    assert _found(lam.format(arg="2.0")) == []  # a Python float: no gradient
    assert _found(lam.format(arg="x")) == [("STB401", 7)]
    assert _found(lam.format(arg="x * 2")) == [("STB401", 7)]
    assert _found(lam.format(arg="c.scale")) == []  # a field of an object: a guess, like every field
    aux = (
        "import jax\nimport jax.numpy as jnp\n\n\ndef loss_fn(w, x):\n    n = jnp.sum(x)\n    metrics = {{}}\n"
        "    {store}\n    return {ret}, metrics\n\n\ng = jax.grad(loss_fn, has_aux=True)\n"
    )
    entry = "metrics.update({'per': jnp.where(n > 0, w / n, 0.0)})"
    assert _found(aux.format(store=entry, ret="w.sum()")) == []
    assert _found(aux.format(store="per = jnp.where(n > 0, w / n, 0.0)", ret="per")) == [("STB401", 8)]
    assert _found(aux.format(store="per = jnp.where(n > 0, w / n, 0.0); metrics['per'] = per", ret="per")) == [("STB401", 8)]


def test_a_default_is_read_in_the_enclosing_scope_and_a_kept_jit_is_a_guess_but_a_used_one_is_not() -> None:
    # a default evaluated where the def runs: traced there only if the enclosing function is
    default = "import jax\n\n\n{dec}def f(x, i):\n    def g(v, k=int(i)):\n        return v * k\n    return g(x)\n"
    assert _found(default.format(dec="")) == []
    assert _found(default.format(dec="@jax.jit\n")) == [("STB102", 6)]
    loop = "import jax\n\n\ndef build(fns, x, out):\n    for fn in fns:\n        def fun(v):\n            return fn(v)\n        f = jax.jit(fun)\n        {use}\n"
    assert _found(loop.format(use="out.append(f)")) == []
    assert _found(loop.format(use="out.append(f(x))")) == [("STB501", 8)]


def test_a_check_under_disable_jit_is_concrete_but_one_under_another_flag_is_not() -> None:
    source = "import jax\nimport jax.numpy as jnp\n\n\n@jax.jit\ndef f(x):\n    if {flag}:\n        assert jnp.all(x > 0)\n    return x\n"
    assert _found(source.format(flag="jax.config.jax_disable_jit")) == []
    assert _found(source.format(flag="jax.config.jax_debug_nans")) == [("STB101", 8)]


def test_a_jit_stored_in_init_names_a_bound_method_only_when_it_is_one() -> None:
    # R15 (init2winit): `self.step = jax.jit(self.vmapped_step)` of a `jax.vmap` stored on the
    # object was called "the bound method"; it is an attribute holding a new function per object
    source = (
        "import jax\n\n\ndef _step(x):\n    return x + 1\n\n\nclass W:\n    def __init__(self):\n"
        "        self.vstep = jax.vmap(_step)\n        self.step = jax.jit(self.vstep)\n        self.apply = jax.jit(self._apply)\n\n"
        "    def _apply(self, x):\n        return x\n"
    )
    found = {f.line: f.message for f in check_source(source, "m.py", Config(preview=True)) if f.code == "STB501"}
    assert sorted(found) == [11, 12]
    assert "of `self.vstep` is built" in found[11] and "bound method" not in found[11]
    assert "of the bound method `self._apply` is built" in found[12]


def test_jitted_functions_a_comprehension_collects_are_kept_not_rebuilt() -> None:
    # swirl-dynamics (R16): one jitted inference function per model, built in a dict
    # comprehension in `__init__` and reused for every batch: a guess; a jit built and called in
    # each iteration of a comprehension is still proven
    kept = "import functools\nimport jax\n\n\nclass Evaluator:\n    def __init__(self, models, bench):\n        self.fns = {k: jax.jit(functools.partial(bench.run, m)) for k, m in models.items()}\n"
    assert _found(kept) == []
    assert [(f.code, f.confidence) for f in check_source(kept, "m.py", Config(preview=True))] == [("STB501", "guess")]
    assert _found("import jax\n\n\ndef same(x, n):\n    return [jax.jit(lambda v: v + 1)(x) for _ in range(n)]\n") == [("STB501", 5)]


def test_a_store_on_self_that_a_later_call_may_take_back_is_a_guess() -> None:
    # deepmind-research's kfac_ferminet_alpha (R16): `self.set_state(state)`, `self.velocities =
    # ...`, `return ..., self.pop_state()` (a base class in another module reads and clears the
    # fields): no tracer outlives the trace; a later call this module shows, which leaves the
    # attribute alone, does not excuse the store
    stateful = (
        "import jax\nfrom utils import Stateful\n\n\nclass Optimizer(Stateful):\n    def __init__(self):\n        self.jit_step = jax.jit(self._step)\n\n"
        "    def _step(self, params, state):\n        self.set_state(state)\n        self.velocities = self.velocities * 0.9 + params\n        return params, self.pop_state()\n"
    )
    assert _found(stateful) == []
    assert ("STB104", 11) in [(f.code, f.line) for f in check_source(stateful, "m.py", Config(preview=True))]
    clearing = stateful.replace("from utils import Stateful\n", "").replace("(Stateful)", "") + "\n    def pop_state(self):\n        out, self.velocities = self.velocities, None\n        return out\n"
    assert _found(clearing) == []
    leaky = stateful.replace("from utils import Stateful\n", "").replace("(Stateful)", "") + "\n    def pop_state(self):\n        return {}\n\n    def set_state(self, s):\n        pass\n"
    assert _found(leaky) == [("STB104", 10)]


def test_a_branch_chosen_by_a_mode_string_is_a_guess() -> None:
    # axlearn's CTC aligner (R16): `if loop == "lax": lax.while_loop(...)` / `elif loop ==
    # "python": while cond(state): ...` (a debugging mode); the jitted callers use the default
    source = (
        "import jax\nfrom jax import lax\n\n\ndef align(x, loop='lax'):\n    def cond(s):\n        return s < 10\n\n    def body(s):\n        return s + x\n\n"
        "    if loop == 'lax':\n        s = lax.while_loop(cond, body, x)\n    elif loop == 'python':\n        s = x\n        while cond(s):\n            s = body(s)\n    return s\n\n\n"
        "@jax.jit\ndef run(x):\n    return align(x{arg})\n"
    )
    assert _found(source.format(arg="")) == []
    assert [(f.code, f.line, f.confidence) for f in check_source(source.format(arg=""), "m.py", Config(preview=True))] == [("STB101", 16, "guess")]
    # which mode runs is a static configuration, as under `if validate:`: still a guess when a
    # caller chooses it (the analysis does not follow the caller's value into the branch)
    assert _found(source.format(arg=", loop='python'")) == []


def test_a_nonlocal_that_is_only_a_scan_carry_alias_is_a_guess() -> None:
    # open_spiel's meta-CFR (R17): the body takes `acc` from its carry before any read and the
    # caller rebinds it to the scan's result; a jitted body that reads the closure value and
    # keeps adding to it across calls (the same code base's RNN agent) is still proven
    alias = (
        "import jax\nimport numpy as np\n\n\ndef f(xs):\n    acc = np.zeros(3)\n\n    def body(carry, x):\n        nonlocal acc\n"
        "        acc, n = carry\n        acc += x\n        return (acc, n + 1), None\n\n    (acc, n), _ = jax.lax.scan(body, (acc, 0), xs)\n    return acc\n"
    )
    assert _found(alias) == []
    kept = alias.replace("    (acc, n), _ = jax.lax.scan(body, (acc, 0), xs)\n", "    _ = jax.lax.scan(body, (acc, 0), xs)\n")
    assert _found(kept) == [("STB104", 10), ("STB104", 11)]  # the outer name keeps the tracer
    leaky = (
        "import jax\nimport numpy as np\n\n\ndef f(xs, steps):\n    acc = np.zeros(3)\n\n    @jax.jit\n    def body(s, x):\n        nonlocal acc\n"
        "        acc = acc + x / (s + 1)\n        return acc.sum()\n\n    for s in range(steps):\n        body(s, xs)\n    return acc\n"
    )
    assert _found(leaky) == [("STB104", 11)]


def test_a_dict_key_is_a_python_value_but_its_value_is_traced() -> None:
    source = "import jax\n\n\n@jax.jit\ndef f(metric):\n    for key, val in metric.items():\n        if {test}:\n            return val\n    return 0.0\n"
    assert _found(source.format(test='key == "loss"')) == []
    assert _found(source.format(test="val > 0")) == [("STB101", 7)]
    keys = "import jax\n\n\n@jax.jit\ndef f(metric):\n    out = {}\n    for k in metric.keys():\n        if k.startswith('x'):\n            out[k] = metric[k]\n    return out\n"
    assert _found(keys) == []


def test_negative_static_argnums_count_from_the_end_of_the_positional_parameters() -> None:
    # R23 (DIffUCO): `static_argnums=(0, -1)` makes the last positional parameter static, whatever
    # keyword-only parameters follow; -2 leaves the last one traced
    src = """
from functools import partial
import jax

@partial(jax.jit, static_argnums=-1)
def pick(x, mode, *, scale=1.0):
    if mode == "train":
        return x * scale
    return x

@partial(jax.jit, static_argnums=-2)
def pick2(x, mode, y):
    if mode == "train":
        return x
    if y > 0:
        return x
    return -x
"""
    assert _found(src) == [("STB101", 15)]


def test_vmap_axes_bound_to_a_name_are_read_and_unknown_axes_prove_nothing() -> None:
    # R23 (momi3): `in_axes` built as `6 * [None]` then set by index leaves the other arguments
    # unmapped (Python ints stay ints); axes the source does not spell (a parameter) make what
    # the vmap traces unknown: a guess; a literal list that maps every argument still proves it
    src = """
import jax
import jax.numpy as jnp

def inner(nw, x):
    return jnp.arange(nw + 1).sum() * x

def outer(n, xs):
    axes = 2 * [None]
    axes[1] = 0
    return jax.vmap(inner, axes)(n, xs)

def inner2(nw, x):
    return jnp.arange(nw + 1).sum() * x

def outer2(n, xs, axes):
    return jax.vmap(inner2, axes)(n, xs)

def inner3(nw, x):
    return jnp.arange(nw + 1).sum() * x

def outer3(xs):
    return jax.vmap(inner3, [0, 0])(jnp.arange(3), xs)
"""
    assert _found(src) == [("STB102", 20)]
    assert ("STB102", 14) in _found(src, Config(preview=True))  # inner2: a guess
