"""`stabcheck matrix`: which AD compositions work per entry, their cost, and the memory guard."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import SCENARIOS, requires_jax, run_cli

HIGHER = SCENARIOS / "higher_order.py"
COLUMNS = ["jit", "grad", "jvp", "jacfwd", "vmap", "hessian", "jacrev(jacrev)", "jacrev(jacfwd)"]
# the failures the scenario's docstring lists, and nothing else
EXPECTED = {
    "softclip_sum": {"jvp": "STB403", "jacfwd": "STB403", "jacrev(jacfwd)": "STB403"},
    "while_power_sum": {"grad": "STB404", "hessian": "STB404", "jacrev(jacrev)": "STB404", "jacrev(jacfwd)": "STB404"},
}

SAMPLE = {
    "device": {"platform": "cpu", "device_kind": "cpu", "jax": "0.10.2"},
    "rows": [
        {
            "entry": "softclip_sum",
            "primal_s": 1e-4,
            "compile_s": 0.07,
            "cells": {
                "grad": {"ok": True, "ratio": 1.9},
                "jvp": {"ok": False, "code": "STB403", "reason": "forward mode through custom_vjp"},
                "hessian": {"ok": False, "code": None, "skipped": True, "reason": "needs ~3.0 GiB, over the memory limit 1.0 MiB"},
            },
        }
    ],
}


@pytest.mark.slow
@requires_jax
def test_matrix_on_higher_order_scenario_fails_exactly_where_the_docstring_says():
    start = time.monotonic()
    r = run_cli("matrix", f"{HIGHER}:ENTRIES", "--output-format", "json", "--runs", "3")
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) <= {"device", "rows", "notes"} and data["device"]["platform"] == "cpu" and data["device"]["jax"]
    rows = {row["entry"]: row for row in data["rows"]}
    assert len(rows) == 11
    for name, row in rows.items():
        assert set(row) >= {"entry", "primal_s", "compile_s", "cells"}
        assert row["primal_s"] > 0 and row["compile_s"] > 0
        assert list(row["cells"]) == COLUMNS
        failures = {col: cell["code"] for col, cell in row["cells"].items() if not cell["ok"]}
        assert failures == EXPECTED.get(name, {}), name
        for col, cell in row["cells"].items():
            if cell["ok"]:
                assert set(cell) == {"ok", "ratio"} and cell["ratio"] > 0
            else:
                assert set(cell) == {"ok", "code", "reason"} and cell["reason"]
    assert elapsed < 120


@pytest.mark.slow
@requires_jax
def test_second_order_transform_over_the_memory_limit_is_skipped_with_a_note():
    import jax.numpy as jnp

    from stabcheck.confirm.matrix import matrix_row
    from stabcheck.traced.entries import Entry

    def sum_sin(x):
        return jnp.sum(jnp.sin(x))

    row = matrix_row("sum_sin", Entry(sum_sin, (jnp.ones(1000),)), memory_limit=1 << 20, runs=1)
    cells = row["cells"]
    for col in ("jit", "grad", "jvp", "vmap"):
        assert cells[col]["ok"], (col, cells[col])
    for col in ("hessian", "jacrev(jacrev)", "jacrev(jacfwd)"):  # a 1000 x 1000 float32 Hessian is 3.8 MiB
        assert cells[col]["skipped"] and "over the memory limit 1.0 MiB" in cells[col]["reason"]


@pytest.mark.slow
@requires_jax
def test_matrix_command_reports_skips_in_the_table(write):
    p = write(
        "big.py",
        """
        import jax.numpy as jnp

        def sum_sin(x):
            return jnp.sum(jnp.sin(x))

        ENTRIES = {"sum_sin": (sum_sin, (jnp.ones(2000),))}
        """,
    )
    r = run_cli("matrix", f"{p}:ENTRIES", "--memory-limit", "4MiB", "--runs", "1", "--columns", "grad,hessian")
    assert r.returncode == 0, r.stderr
    assert "skipped: memory" in r.stdout
    assert "note: sum_sin / hessian: skipped, needs ~" in r.stdout and "over the memory limit 4.0 MiB" in r.stdout
    assert "device: cpu" in r.stdout


def test_matrix_renders_table_markdown_and_json():
    from stabcheck.reporters import matrix_

    table = matrix_.render(SAMPLE, "table")
    assert "softclip_sum" in table and "1.9x" in table and "STB403" in table and "skipped: memory" in table
    assert "device: cpu, jax 0.10.2" in table
    assert "STB403: forward mode through custom_vjp" in table
    md = matrix_.render(SAMPLE, "markdown")
    assert md.splitlines()[0] == "| entry | primal | compile | `grad` | `jvp` | `hessian` |"
    assert "| softclip_sum | 100 µs | 70.0 ms | 1.9x | STB403 forward mode through custom_vjp | skipped: memory |" in md
    assert "device: cpu, jax 0.10.2" in md
    assert json.loads(matrix_.render(SAMPLE, "json")) == SAMPLE


def test_matrix_usage_errors_exit_2_without_traceback():
    r = run_cli("matrix", "x.py:E", "--output-format", "xml")
    assert r.returncode == 2 and "`--output-format`" in r.stderr and "table, markdown, json" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("matrix", "x.py:E", "--memory-limit", "lots")
    assert r.returncode == 2 and "--memory-limit" in r.stderr and "'4GiB'" in r.stderr
    r = run_cli("matrix", "x.py:E", "--columns", "grad,hess")
    assert r.returncode == 2 and "'hess'" in r.stderr


def test_memory_limit_parsing():
    from stabcheck.confirm.device import parse_memory_limit, total_memory

    assert parse_memory_limit("4GiB") == 4 << 30
    assert parse_memory_limit("512MB") == 512 * 1000**2
    assert parse_memory_limit("0.5") == total_memory() // 2
    assert parse_memory_limit("") is None
    with pytest.raises(ValueError, match="4GiB"):
        parse_memory_limit("4 parsecs")


def test_commands_import_no_jax():
    code = "import sys, stabcheck.cli, stabcheck.cli.confirm, stabcheck.reporters.matrix_; assert 'jax' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
