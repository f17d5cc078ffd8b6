"""`pytest --stabcheck` sees every transformed call, not only jit traces (issue 17)."""

from __future__ import annotations

import pytest

pytest.importorskip("jax")


def _loss(p, x):
    return (p * x).sum() ** 2


def test_collector_emits_one_call_per_new_transform_and_signature() -> None:
    import jax
    import jax.numpy as jnp
    from jax._src import pjit

    from stabcheck.runtime._hook import Collector

    originals = (pjit._trace_for_jit, jax.grad, jax.vmap, jax.jvp)
    collector = Collector()
    calls = []
    collector.listeners.add(calls.append)
    assert collector.install()
    try:
        p, x = jnp.ones(3), jnp.ones(3)
        jax.grad(_loss)(p, x)
        jax.grad(_loss)(p + 1, x)  # the same signature: not told again
        jax.grad(_loss, argnums=1)(p, x)  # other options: told
        jax.vmap(_loss, in_axes=(0, None))(jnp.ones((2, 3)), x)
        jax.jvp(lambda q: _loss(q, x), (p,), (p,))
        inner = jax.grad(_loss)
        jax.jit(inner)(p, x)  # jit of grad: the jit layer (grad of this signature was told above)
        jnp.where(p > 0, 1.0, 2.0)  # JAX's own jit: not the user's
    finally:
        collector.uninstall()
    assert (pjit._trace_for_jit, jax.grad, jax.vmap, jax.jvp) == originals
    seen = [(c.transform, dict(c.options)) for c in calls]
    assert seen[:3] == [("grad", {}), ("grad", {"argnums": 1}), ("vmap", {"in_axes": (0, None)})]
    assert calls[3].options["tangents"][0] is p and calls[3].args == (p,)
    assert [c.transform for c in calls] == ["grad", "grad", "vmap", "jvp", "jit"]
    first = calls[0]
    assert first.fn is _loss and first.args[0] is p and first.site == (__file__, first.site[1])
    jit = calls[-1]
    assert jit.fn is inner and isinstance(jit.args[1], jax.Array) and jit.args[0] is p
    assert collector.errors == [] and collector.listeners.errors == []


def test_names_bound_before_install_are_rebound_and_restored() -> None:
    import sys
    import types

    import jax

    from stabcheck.runtime._hook import Collector

    mod = types.ModuleType("zc_user_mod")
    mod.__file__ = __file__  # a user module (the test's own file)
    mod.grad = jax.grad
    sys.modules["zc_user_mod"] = mod
    collector = Collector()
    calls = []
    collector.listeners.add(calls.append)
    try:
        assert collector.install()
        assert mod.grad is not jax._src.api.grad and mod.grad is jax.grad
        import jax.numpy as jnp

        mod.grad(_loss)(jnp.ones(2), jnp.ones(2))
    finally:
        collector.uninstall()
        del sys.modules["zc_user_mod"]
    assert mod.grad is jax._src.api.grad and jax.grad is jax._src.api.grad
    assert [c.transform for c in calls] == ["grad"]
