"""The AD matrix: for each entry, which transforms work and what each costs relative to the primal.

Runs in the worker (imports JAX). `primal_s` is the median time of the compiled forward pass (the
bare executable, as AD benchmark tables use); `compile_s` the time to lower and compile it; the
`jit` cell is the function called through `jax.jit` (Python dispatch included) and every other
cell the compiled transform, as a ratio of median times to `primal_s`, or the
failure's STB code and a short reason (STB408 when it runs but returns NaN/Inf). Before a transform runs, its memory is estimated from the
compiled program (`memory_analysis()`); one that would not fit the limit is skipped with a note.
"""

from __future__ import annotations

import time
from typing import Any

from stabcheck.confirm import transforms as T
from stabcheck.confirm.device import default_memory_limit, device_info, format_bytes
from stabcheck.confirm.nan import nonfinite
from stabcheck.confirm.run import compiled_memory, entry_files, measure
from stabcheck.traced.entries import Entry
from stabcheck.traced.errors import classify

COLUMNS = T.MATRIX


def matrix_row(name: str, entry: Entry, *, memory_limit: int, runs: int = 5, columns: tuple[str, ...] = COLUMNS) -> dict[str, Any]:
    # JAX: imported when this runs, never on import
    import jax

    within = entry_files(entry)
    row: dict[str, Any] = {"entry": name, "primal_s": None, "compile_s": None, "cells": {}}
    try:
        entry = T.concrete(entry)
        split = T.Split.of(entry)
        fwd = T.prepare(entry, "jit", split)
        t0 = time.perf_counter()
        primal = jax.jit(fwd.fun).lower(*fwd.inputs).compile()
        row["compile_s"] = time.perf_counter() - t0
        row["primal_s"] = measure(primal, *fwd.inputs, runs=runs)
    except Exception as e:
        fl = classify(e, within)
        row["error"] = {"code": fl.code, "reason": f"the compiled forward pass fails: {fl.kind}: {fl.message[:160]}"}
        row["cells"] = {col: {"ok": False, "code": fl.code, "reason": f"the forward pass fails ({fl.reason})"} for col in columns}
        return row
    for col in columns:
        cell: dict[str, Any]
        try:
            if col == "jit":
                jitted = jax.jit(entry.fn, static_argnums=entry.static_argnums)
                cell = {"ok": True, "ratio": _ratio(measure(lambda: jitted(*entry.args, **dict(entry.kwargs)), runs=runs), row["primal_s"])}
                row["cells"][col] = cell
                continue
            p = T.prepare(entry, col, split)
            compiled = jax.jit(p.fun).lower(*p.inputs).compile()
            need = compiled_memory(compiled)
            if need is not None and need > memory_limit:
                cell = {"ok": False, "code": None, "skipped": True, "reason": f"needs ~{format_bytes(need)}, over the memory limit {format_bytes(memory_limit)}"}
            else:
                kind = nonfinite(compiled(*p.inputs))
                if kind and not nonfinite(p.inputs):
                    cell = {"ok": False, "code": "STB408", "reason": f"{kind} in the result (`stabcheck confirm` finds where it began)"}
                else:
                    cell = {"ok": True, "ratio": _ratio(measure(compiled, *p.inputs, runs=runs), row["primal_s"])}
        except Exception as e:
            fl = classify(e, within)
            cell = {"ok": False, "code": fl.code, "reason": fl.reason}
        row["cells"][col] = cell
    return row


def _ratio(t: float, primal: float) -> float:
    return float(f"{t / primal:.3g}") if primal > 0 else float("inf")


def matrix_task(name: str, entry: Entry, payload: dict[str, Any]) -> dict[str, Any]:
    """The worker task "matrix". Payload: "memory_limit" (bytes), "runs", "columns". Result: {"row": ..., "device": ...}."""
    columns = tuple(payload.get("columns") or COLUMNS)
    row = matrix_row(name, entry, memory_limit=payload.get("memory_limit") or default_memory_limit(), runs=payload.get("runs", 5), columns=columns)
    return {"row": row, "device": device_info()}
