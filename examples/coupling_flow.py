"""A checkerboard coupling layer (as in RealNVP flows) trained with a compiled SGD step.

Two versions of the same layer:

  step_f64_mask  the mask is a NumPy float64 array; with `jax_enable_x64` on (as in many
                 scientific codebases), `MASK64 * x` pulls the whole layer into float64
                 although the parameters and the data are float32.
  step           the mask is a bool array used through `jnp.where`: dtype-stable and
                 differentiable. stabcheck should stay silent about it.
"""

import jax
import jax.numpy as jnp
import numpy as np

import stabcheck

MASK = jnp.array([True, False, True, False])[:, None]  # bool, shape (4, 1)
MASK64 = np.array([1.0, 0.0, 1.0, 0.0])[:, None]  # NumPy float64: the bug


def init(key):
    k1, k2 = jax.random.split(key)
    return {
        "w": 0.1 * jax.random.normal(k1, (4, 4), jnp.float32),
        "b": jnp.zeros((4, 1), jnp.float32),
    }


def couple_f64(params, x):
    frozen = MASK64 * x
    shift = jnp.tanh(params["w"] @ frozen + params["b"])
    return frozen + (1 - MASK64) * (x + shift)


def couple(params, x):
    frozen = jnp.where(MASK, x, jnp.zeros_like(x))
    shift = jnp.tanh(params["w"] @ frozen + params["b"])
    return jnp.where(MASK, x, x + shift)


def make_step(layer, lr=1e-2):
    def loss(params, x):
        return jnp.mean((layer(params, x) - 0.5 * x) ** 2)

    @jax.jit
    def step(params, x):
        value, grads = jax.value_and_grad(loss)(params, x)
        params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return params, value

    return step


step_f64_mask = make_step(couple_f64)
step = make_step(couple)


@stabcheck.entry
def flow_steps():
    params = init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 16), jnp.float32)
    return {
        "step_f64_mask": stabcheck.Entry(step_f64_mask, (params, x), transforms=("call",), jax_config={"jax_enable_x64": True}),
        "step": stabcheck.Entry(step, (params, x), state_argnums=(0,), transforms=("call",)),
    }
