"""Micro-benchmark of `@stabcheck.stable`'s cache-hit overhead (called by `make bench`).

    >>> from stabcheck.runtime_bench import measure
    >>> measure()["ratio"]   # stable-wrapped jitted call / plain jitted call; target <= 1.2

Both functions are the same jitted function of a small float32 array; after a warm-up call each
is timed over `number` calls, `repeat` times, interleaved, and the best (minimum) per-call time
of each is kept, as `timeit` recommends.
"""

from __future__ import annotations

import time
from typing import Any

from stabcheck.runtime import stable

TARGET_RATIO = 1.2


def measure(*, size: int = 16, number: int = 500, repeat: int = 200) -> dict[str, Any]:
    """Per-call seconds of a plain jitted call and of the same call under `@stable`, and their ratio."""
    # JAX: imported when this runs, never on import
    import jax
    import jax.numpy as jnp  # JAX: only where user code runs

    def body(x: Any) -> Any:
        return x * 2.0 + 1.0

    plain = jax.jit(body)  # noqa: STB501 -- one compile per measurement is intended
    wrapped = stable(mode="warn")(jax.jit(body))
    x = jnp.ones(size, jnp.float32)
    jax.block_until_ready(plain(x))
    jax.block_until_ready(wrapped(x))
    best_plain = best_stable = float("inf")
    for _ in range(repeat):
        best_plain = min(best_plain, _time(plain, x, number))
        best_stable = min(best_stable, _time(wrapped, x, number))
    jax.block_until_ready(wrapped(x))
    ratio = best_stable / best_plain
    return {
        "name": "runtime-cache-hit",
        "plain_us": round(best_plain * 1e6, 3),
        "stable_us": round(best_stable * 1e6, 3),
        "overhead_us": round((best_stable - best_plain) * 1e6, 3),
        "ratio": round(ratio, 3),
        "target": TARGET_RATIO,
        "ok": ratio <= TARGET_RATIO,
        "size": size,
        "number": number,
        "repeat": repeat,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
    }


def _time(fn: Any, x: Any, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn(x)
    return (time.perf_counter() - t0) / number


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(measure(), indent=2))
