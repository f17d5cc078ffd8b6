"""A small physics module: a custom_vjp soft clip, a fixed-point iteration, a distance function.

  energy          uses `softclip`, a custom_vjp: reverse mode (grad, hessian = jacfwd of
                  jacrev) works, but forward mode (jvp, jacfwd) fails.
  power_iterate   runs a `lax.while_loop`: forward mode works, reverse mode (grad) fails.
  radius          `jnp.where(r2 > 0, jnp.sqrt(r2), 0.0)`: the value is fine, the gradient at a
                  point at the origin is NaN (0 * inf).
  radius_safe     the same with the input of sqrt guarded too (the "double where").
"""

import jax
import jax.numpy as jnp
from jax import lax

import stabcheck


@jax.custom_vjp
def softclip(x):
    return jnp.tanh(x)


def _softclip_fwd(x):
    y = jnp.tanh(x)
    return y, y


def _softclip_bwd(y, g):
    return (g * (1.0 - y**2),)


softclip.defvjp(_softclip_fwd, _softclip_bwd)


def energy(x):
    return jnp.sum(softclip(x) ** 2)


def power_iterate(x):
    def cond(carry):
        return carry[1] < 3.0

    def body(carry):
        v, i = carry
        return v * jnp.tanh(x), i + 1.0

    return jnp.sum(lax.while_loop(cond, body, (x, 0.0))[0])


def radius(p):
    r2 = jnp.sum(p**2, axis=-1)
    r = jnp.where(r2 > 0, jnp.sqrt(r2), 0.0)
    return jnp.sum(r)


def radius_safe(p):
    r2 = jnp.sum(p**2, axis=-1)
    safe = jnp.where(r2 > 0, r2, 1.0)
    return jnp.sum(jnp.where(r2 > 0, jnp.sqrt(safe), 0.0))


@stabcheck.entry
def solver_functions():
    x = jax.random.normal(jax.random.key(0), (32,))
    pts = jnp.concatenate([jnp.zeros((1, 3)), jax.random.normal(jax.random.key(1), (7, 3))])  # one at the origin
    return {
        "energy": stabcheck.Entry(energy, (x,), transforms=("grad", "hessian", "jacfwd")),
        "power_iterate": stabcheck.Entry(power_iterate, (x,), transforms=("jvp", "grad")),
        "radius": stabcheck.Entry(radius, (pts,), transforms=("jit", "grad")),
        "radius_safe": stabcheck.Entry(radius_safe, (pts,), transforms=("jit", "grad")),
    }
