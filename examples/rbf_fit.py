"""Fitting radial-basis-function weights, and differentiating the fit w.r.t. the data values.

  fit_loss_union  `factorize` looks at the matrix in Python (`if jnp.allclose(...)`) and returns
                  an array on one path and an (lu, pivots) tuple on the other: its return type
                  depends on the data, and under `jit` the `if` cannot even be evaluated.
  fit_loss        one factorization for every input: one return type, differentiable under jit.
"""

import jax
import jax.numpy as jnp
from jax.scipy.linalg import lu_factor, lu_solve

import stabcheck


def gram(points):
    d2 = jnp.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)
    return jnp.sqrt(d2 + 1.0) + 1e-6 * jnp.eye(points.shape[0])  # multiquadric kernel


def factorize(A):
    if jnp.allclose(A, jnp.diag(jnp.diag(A))):
        return jnp.diag(A)
    return lu_factor(A)


def solve(F, b):
    if isinstance(F, tuple):
        return lu_solve(F, b)
    return b / F


def fit_loss_union(values, points):
    weights = solve(factorize(gram(points)), values)
    return jnp.sum(weights**2)


def fit_loss(values, points):
    weights = lu_solve(lu_factor(gram(points)), values)
    return jnp.sum(weights**2)


@stabcheck.entry
def rbf_losses():
    points = jax.random.uniform(jax.random.key(0), (12, 2))
    values = jnp.sin(3.0 * points[:, 0])
    return {
        "fit_loss_union": stabcheck.Entry(fit_loss_union, (values, points), transforms=("jit", "grad")),
        "fit_loss": stabcheck.Entry(fit_loss, (values, points), transforms=("jit", "grad")),
    }
