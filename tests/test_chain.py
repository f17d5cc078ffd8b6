"""Instability chains (issue 20): a hazard in a helper names the transformed callers that reach it,
in the same file and across files, in every output format."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from stabcheck import reporters
from stabcheck._cache import _valid_finding
from stabcheck.api import Options, __version__, check_source, run
from stabcheck.config import Config
from stabcheck.finding import Finding, Frame, Span, merge

from .conftest import requires_jax, run_cli

SCHEMA = Path(__file__).resolve().parents[1] / "tests" / "data" / "sarif-schema-2.1.0.json"

HELPERS = """\
import jax.numpy as jnp


def normalize(x):
    if x.sum() > 0:
        return x / x.sum()
    return x
"""
MAIN = """\
import jax

from helpers import normalize


@jax.jit
def update(x):
    return normalize(x) + 1
"""
OTHER = """\
import jax

from .helpers import normalize


def step(p):
    y = p * 2
    return normalize(y)


fast_step = jax.jit(step)
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")


def _run(root: Path, **options) -> list[Finding]:
    return run([str(root)], Config(types=False), Options(jobs=1, **{"cache": False, **options})).findings


def _render(fmt: str, findings: list[Finding]) -> str:
    return reporters.get(fmt)(findings, reporters.Report(files=3, version=__version__))


def _where(chain) -> list[tuple[str, int, str, str]]:  # type: ignore[no-untyped-def]
    return [(Path(fr.path).name, fr.line, fr.function, fr.via) for fr in chain]


# -- static, one file ----------------------------------------------------------------------------
SAME_FILE = """\
import jax


def normalize(x):
    if x.sum() > 0:
        return x / x.sum()
    return x


def scale(y):
    return normalize(y) * 2


@jax.jit
def update(x):
    return normalize(x) + 1


@jax.jit
def other(z):
    return scale(z)


@jax.jit
def direct(x):
    if x > 0:
        return x
    return -x
"""


def test_a_helper_reached_from_two_jitted_functions_is_one_finding_with_two_chains():
    found = [f for f in check_source(SAME_FILE, "m.py") if f.code == "STB101"]
    helper = [f for f in found if f.function == "normalize"]
    assert len(helper) == 1 and helper[0].line == 5
    assert [_where(c) for c in helper[0].chains] == [
        [("m.py", 5, "normalize", ""), ("m.py", 16, "update", "jax.jit")],
        [("m.py", 5, "normalize", ""), ("m.py", 11, "scale", ""), ("m.py", 21, "other", "jax.jit")],
    ]
    # a hazard in the jitted function itself has no chain: its location says it all
    (direct,) = [f for f in found if f.function == "direct"]
    assert direct.chains == () and "chains" not in direct.to_dict()


def test_a_helper_called_without_traced_arguments_gets_no_chain_and_no_finding():
    src = SAME_FILE.replace("return normalize(x) + 1", "return normalize(3.0) + x").replace("return scale(z)", "return z")
    assert not [f for f in check_source(src, "m.py") if f.function == "normalize"]


# -- static, across files -------------------------------------------------------------------------------
def test_cross_file_chain_without_mypy_in_every_format(tmp_path: Path) -> None:
    _write(tmp_path, {"helpers.py": HELPERS, "main.py": MAIN, "other.py": OTHER})
    found = [f for f in _run(tmp_path) if f.code == "STB101"]
    assert len(found) == 1, found
    f = found[0]
    assert (Path(f.path).name, f.line, f.function) == ("helpers.py", 5, "normalize")
    assert sorted(_where(c)[1:] for c in f.chains) == [[("main.py", 8, "update", "jax.jit")], [("other.py", 8, "step", "jax.jit")]]

    full = _render("full", found)
    assert f"via update ({tmp_path / 'main.py'}:8) under jax.jit" in full
    assert f"via step ({tmp_path / 'other.py'}:8) under jax.jit" in full

    sarif = json.loads(_render("sarif", found))
    (result,) = sarif["runs"][0]["results"]
    related = {(Path(r["physicalLocation"]["artifactLocation"]["uri"]).name, r["physicalLocation"]["region"]["startLine"]) for r in result["relatedLocations"]}
    assert related == {("main.py", 8), ("other.py", 8)}
    assert len(result["codeFlows"]) == 2
    for flow in result["codeFlows"]:
        steps = flow["threadFlows"][0]["locations"]
        first, last = steps[0]["location"], steps[-1]["location"]
        assert Path(first["physicalLocation"]["artifactLocation"]["uri"]).name in ("main.py", "other.py")  # the entry runs first
        assert Path(last["physicalLocation"]["artifactLocation"]["uri"]).name == "helpers.py" and last["physicalLocation"]["region"]["startLine"] == 5
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8"))).validate(sarif)

    rows = json.loads(_render("json", found))
    assert [[fr["line"] for fr in c] for c in rows[0]["chains"]] == [[5, 8], [5, 8]]
    github = _render("github", found)
    assert "reached from update" in github and "main.py:8) under jax.jit (+1 more)" in github
    for fmt in ("concise", "markdown", "junit"):
        assert "update" in _render(fmt, found), fmt


def test_cross_file_without_a_transformed_caller_stays_silent(tmp_path: Path) -> None:
    _write(tmp_path, {"helpers.py": HELPERS, "main.py": MAIN.replace("@jax.jit\n", "")})
    assert not [f for f in _run(tmp_path) if f.code == "STB101"]


def test_a_cycle_across_files_settles(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "a.py": "import jax\nfrom b import g\n\n\ndef f(x):\n    if x > 0:\n        return g(x - 1)\n    return x\n\n\nentry = jax.jit(f)\n",
            "b.py": "from a import f\n\n\ndef g(y):\n    return f(y)\n",
        },
    )
    found = sorted((Path(f.path).name, f.line) for f in _run(tmp_path) if f.code == "STB101")
    assert found == [("a.py", 6)]


def test_a_warm_cache_checks_nothing_again_and_keeps_the_chains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stabcheck import api

    src = tmp_path / "src"
    _write(src, {"helpers.py": HELPERS, "main.py": MAIN})
    cache = tmp_path / "cache"
    cold = _run(src, cache=True, cache_dir=str(cache))
    assert [len(f.chains) for f in cold if f.code == "STB101"] == [1]
    calls: list[str] = []
    real = api._check_one

    def counting(r: str, shown: str, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(Path(shown).name)
        return real(r, shown, *a, **k)

    monkeypatch.setattr(api, "_check_one", counting)
    warm = _run(src, cache=True, cache_dir=str(cache))
    assert warm == cold and [f.chains for f in warm] == [f.chains for f in cold] and calls == []
    # the caller changes (no longer jitted): the helper is checked again and its finding goes
    (src / "main.py").write_text(MAIN.replace("@jax.jit\n", ""), encoding="utf-8")
    assert not [f for f in _run(src, cache=True, cache_dir=str(cache)) if f.code == "STB101"]
    assert sorted(calls) == ["helpers.py", "main.py"]


# -- the data type --------------------------------------------------------------------------------
def _finding(*chains: tuple[Frame, ...], stage: str = "static") -> Finding:
    return Finding("STB101", "branch-on-tracer", "m", "h.py", Span(5, 8), stage=stage, chains=chains)  # type: ignore[arg-type]


def test_chains_round_trip_and_merge_across_stages():
    a = (Frame("h.py", 5, 8, "normalize"), Frame("m.py", 8, 12, "update", "jax.jit"))
    b = (Frame("h.py", 5, 3, "normalize"), Frame("o.py", 9, 1, "step", "jax.grad"))
    f = _finding(a)
    assert Finding.from_dict(json.loads(json.dumps(f.to_dict()))) == f and Finding.from_dict(f.to_dict()).chains == (a,)
    merged = merge([f, _finding(b, (Frame("h.py", 5, 1, "normalize"), Frame("m.py", 8, 5, "update", "jax.jit")), stage="traced")])
    assert len(merged) == 1 and merged[0].stage == "traced"
    assert [_where(c)[1] for c in merged[0].chains] == [("m.py", 8, "update", "jax.jit"), ("o.py", 9, "step", "jax.grad")]  # the same path once


@pytest.mark.parametrize(
    "chains",
    [
        "x",
        [["x"]],
        [[{"path": "m.py", "line": "8", "col": 1, "function": "f", "via": ""}]],
        [[{"path": "m.py", "line": 8, "col": 1, "function": None, "via": ""}]],
        [[{"path": "m.py", "line": True, "col": 1, "function": "f", "via": ""}]],
    ],
)
def test_the_cache_rejects_malformed_chains(chains):
    d = _finding((Frame("h.py", 5, 8, "normalize"), Frame("m.py", 8, 12, "update", "jax.jit"))).to_dict()
    assert _valid_finding(d, "h.py")
    assert not _valid_finding({**d, "chains": chains}, "h.py")


# -- traced: the user frames from the entry down to the offending line ------------------------------
TRACED_HELPERS = """\
import jax.numpy as jnp


def mix(x, h):
    return x * 2 + h


def normalize(x):
    if x.sum() > 0:
        return x / x.sum()
    return x
"""
TRACED_MAIN = """\
import jax.numpy as jnp

import stabcheck
from helpers import mix, normalize


def update(x, h):
    y = mix(x, h)
    return y.sum()


def update2(x):
    return normalize(x)


def direct(x):
    if x.sum() > 0:
        return x
    return -x


@stabcheck.entry
def update_entry():
    return update, (jnp.ones(3, jnp.float32), jnp.ones(3, jnp.bfloat16))


@stabcheck.entry
def update2_entry():
    return update2, (jnp.ones(3, jnp.float32),)


@stabcheck.entry
def direct_entry():
    return direct, (jnp.ones(3, jnp.float32),)
"""


@requires_jax
def test_traced_findings_carry_the_user_frames_from_the_entry(tmp_path: Path) -> None:
    _write(tmp_path, {"helpers.py": TRACED_HELPERS, "main.py": TRACED_MAIN})
    proc = run_cli("check", ".", "--trace", "--no-cache", "--output-format", "json", "--select", "STB101,STB303", cwd=tmp_path)
    rows = {(r["path"], r["line"], r["code"]): r for r in json.loads(proc.stdout)}
    # the jaxpr equation's source info: mix's line, then update's call of mix
    promo = rows[("helpers.py", 5, "STB303")]
    assert [[(fr["path"], fr["line"], fr["function"]) for fr in c] for c in promo["chains"]] == [[("helpers.py", 5, "mix"), ("main.py", 8, "update")]]
    assert promo["chains"][0][-1]["via"] == "stabcheck entry `update_entry`"
    # the exception's traceback: normalize's `if`, then update's call of normalize
    branch = rows[("helpers.py", 9, "STB101")]
    assert [(fr["path"], fr["line"]) for fr in branch["chains"][0]] == [("helpers.py", 9), ("main.py", 13)]
    assert "chains" not in rows[("main.py", 17, "STB101")]  # in the entry's own function: no chain


# -- explain-finding ------------------------------------------------------------------------------------
def test_explain_finding_shows_every_chain_with_its_source_lines(tmp_path: Path) -> None:
    _write(tmp_path, {"helpers.py": HELPERS, "main.py": MAIN, "other.py": OTHER})
    proc = run_cli("explain-finding", "helpers.py:5", "--no-cache", "--no-types", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "STB101 [branch-on-tracer]" in out and "chain 1 of 2" in out and "chain 2 of 2" in out
    assert "main.py:8:12 in update, under jax.jit" in out and "8 | return normalize(x) + 1" in out
    assert "other.py:8:12 in step, under jax.jit" in out and "8 | return normalize(y)" in out
    assert "add --trace" in out  # static only: says how to see more
    as_json = run_cli("explain-finding", "helpers.py:5:8", "--code", "branch-on-tracer", "--output-format", "json", "--no-cache", "--no-types", cwd=tmp_path)
    (row,) = json.loads(as_json.stdout)
    assert row["code"] == "STB101" and len(row["chains"]) == 2


@pytest.mark.parametrize(
    ("location", "extra", "rc", "says"),
    [
        ("helpers.py:6", (), 1, "no finding at helpers.py:6; findings in this file: 5:8 STB101"),
        ("helpers.py:5", ("--code", "STB303"), 1, "no finding of STB303 at helpers.py:5"),
        ("helpers.py:5:30", (), 1, "no finding at helpers.py:5:30"),
        ("helpers.py:x", (), 2, "invalid LOCATION 'helpers.py:x'"),
        ("helpers.py:0", (), 2, "lines and columns start at 1"),
        ("missing.py:3", (), 2, "no such file: missing.py"),
    ],
)
def test_explain_finding_bad_or_empty_locations(tmp_path: Path, location: str, extra: tuple[str, ...], rc: int, says: str) -> None:
    _write(tmp_path, {"helpers.py": HELPERS, "main.py": MAIN})
    proc = run_cli("explain-finding", location, *extra, "--no-cache", "--no-types", cwd=tmp_path)
    assert proc.returncode == rc and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@requires_jax
def test_explain_finding_with_trace_shows_the_equations_at_the_line(tmp_path: Path) -> None:
    _write(tmp_path, {"helpers.py": TRACED_HELPERS, "main.py": TRACED_MAIN})
    proc = run_cli("explain-finding", "helpers.py:5", "--trace", "--no-cache", "--no-types", "--code", "STB303", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "helpers.py:5:" in proc.stdout and "main.py:8:" in proc.stdout and "under stabcheck entry `update_entry`" in proc.stdout
    assert "equations:" in proc.stdout and "convert_element_type" in proc.stdout


def test_across_files_a_tracer_leak_must_show_an_array_by_its_own_code(tmp_path: Path) -> None:
    """Library helpers handle concrete and traced values alike: `if count == 0:` on a bare parameter
    reached only through another file's call is not reported; `jnp`/array methods are."""
    helpers = """\
import jax.numpy as jnp


def check(count, flag):
    if count == 0:
        return 1
    if jnp.any(flag > 0):
        return 2
    return 3
"""
    caller = """\
import jax

from helpers import check


@jax.jit
def step(x, y):
    return check(x, y)
"""
    _write(tmp_path, {"helpers.py": helpers, "main.py": caller})
    assert sorted((Path(f.path).name, f.line) for f in _run(tmp_path) if f.code == "STB101") == [("helpers.py", 7)]
    # in one file, the same helper keeps the untyped heuristics (as before chains existed)
    one = helpers + "\n\n" + caller.replace("from helpers import check\n", "").replace("import jax\n", "import jax\n", 1)
    assert sorted(f.line for f in check_source(one, "m.py") if f.code == "STB101") == [5, 7]


def test_a_hazard_only_staged_out_code_has_names_only_the_jit_callers(tmp_path: Path) -> None:
    """`if x > 0` is fine under `grad` alone (values are concrete): STB101's chains end in `jit`."""
    src = SAME_FILE + "\n\ndef loss(w):\n    return normalize(w).sum()\n\n\nlossgrad = jax.grad(loss)\n"
    (f,) = [f for f in check_source(src, "m.py") if f.code == "STB101" and f.function == "normalize"]
    assert {c[-1].via for c in f.chains} == {"jax.jit"}
    _write(tmp_path, {"helpers.py": HELPERS, "main.py": MAIN, "other.py": OTHER.replace("fast_step = jax.jit(step)", "fast_step = jax.grad(step)")})
    (g,) = [g for g in _run(tmp_path) if g.code == "STB101"]
    assert [_where(c)[1:] for c in g.chains] == [[("main.py", 8, "update", "jax.jit")]]


@requires_jax
def test_confirmed_findings_carry_the_frames_of_the_run(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "nanh.py": "import jax.numpy as jnp\n\n\ndef safe_norm(x):\n    return jnp.where(x > 0, jnp.sqrt(x), 0.0)\n",
            "nanm.py": "import jax.numpy as jnp\nimport stabcheck\nfrom nanh import safe_norm\n\n\ndef loss(x):\n    return safe_norm(x).sum()\n\n\n"
            "@stabcheck.entry\ndef loss_entry():\n    return stabcheck.Entry(loss, (jnp.array([0.0, 1.0]),), transforms=(\"grad\",))\n",
        },
    )
    proc = run_cli("check", ".", "--confirm", "--no-cache", "--no-types", "--output-format", "json", "--select", "STB408", cwd=tmp_path)
    (row,) = [r for r in json.loads(proc.stdout) if r["code"] == "STB408"]
    assert (row["path"], row["line"], row["status"]) == ("nanh.py", 5, "confirmed")
    assert [[(fr["path"], fr["line"], fr["function"], fr["via"]) for fr in c] for c in row["chains"]] == [[("nanh.py", 5, "safe_norm", ""), ("nanm.py", 7, "loss", "stabcheck entry `loss_entry`")]]


@requires_jax
def test_runtime_warnings_name_the_offending_line_and_the_decorated_caller(tmp_path: Path) -> None:
    import importlib.util
    import warnings

    _write(tmp_path, {"rt_chain_mod.py": "import stabcheck\n\n\ndef mix(x, h):\n    return x * 2 + h\n\n\n@stabcheck.stable\ndef step(x, h):\n    return mix(x, h).sum()\n"})
    spec = importlib.util.spec_from_file_location("rt_chain_mod", tmp_path / "rt_chain_mod.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import jax.numpy as jnp

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod.step(jnp.ones(3, jnp.float32), jnp.ones(3, jnp.bfloat16))
    (w,) = [w for w in caught if getattr(w.message, "code", "") == "STB303"]
    f = w.message.finding  # type: ignore[union-attr]
    assert [(Path(fr.path).name, fr.line, fr.function, fr.via) for fr in f.chains[0]] == [("rt_chain_mod.py", 5, "mix", ""), ("rt_chain_mod.py", 10, "step", "@stabcheck.stable")]
    assert "rt_chain_mod.py:5)\n  via step (" in str(w.message) and "under @stabcheck.stable" in str(w.message)


@requires_jax
def test_a_jax_error_in_a_test_names_the_calls_down_to_the_culprit(tmp_path: Path) -> None:
    import importlib.util

    import jax

    from stabcheck.runtime._raised import finding_for

    _write(tmp_path, {"raised_chain_mod.py": "def helper(x):\n    if x > 0:\n        return x\n    return -x\n\n\ndef outer(x):\n    return helper(x) * 2\n"})
    spec = importlib.util.spec_from_file_location("raised_chain_mod", tmp_path / "raised_chain_mod.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(Exception) as info:
        jax.jit(mod.outer)(1.0)
    f = finding_for(info.value, "test_x")
    assert f is not None and f.code == "STB101" and f.line == 2
    assert [(Path(fr.path).name, fr.line, fr.function) for fr in f.chains[0][:2]] == [("raised_chain_mod.py", 2, "helper"), ("raised_chain_mod.py", 8, "outer")]


def test_a_result_cached_in_a_run_of_other_files_does_not_hide_a_cross_file_finding(tmp_path: Path) -> None:
    # the caller checked alone first (its call into helpers is no export: helpers is not checked),
    # then the project: the caller's cached result must not stand for the project run
    src = tmp_path / "src"
    _write(src, {"helpers.py": HELPERS, "main.py": MAIN})
    cache = tmp_path / "cache"
    assert not [f for f in _run(src / "main.py", cache=True, cache_dir=str(cache)) if f.code == "STB101"]
    assert [Path(f.path).name for f in _run(src, cache=True, cache_dir=str(cache)) if f.code == "STB101"] == ["helpers.py"]


@pytest.mark.parametrize(
    "extra",
    [
        None,
        "x",
        {"exports": [], "seeds": []},
        {"exports": [{"target": ["", "helpers", "f"], "pos": [-1], "kw": [], "star": None, "abstract": True, "chains": []}], "seeds": {}},
        {"exports": [], "seeds": {"f": [{"pos": [0], "kw": [1], "star": None, "abstract": True, "chains": []}]}},
        {"exports": [], "seeds": {"f": [{"pos": [0], "kw": [], "star": None, "abstract": "yes", "chains": []}]}},
        {"exports": [], "seeds": {"f": [{"pos": [0], "kw": [], "star": None, "abstract": True, "chains": [[{"path": 1}]]}]}},
    ],
)
def test_a_malformed_cross_file_cache_entry_is_a_miss(tmp_path: Path, extra: object) -> None:
    from stabcheck.static import xfile

    assert not xfile.valid(extra)
    src = tmp_path / "src"
    _write(src, {"helpers.py": HELPERS, "main.py": MAIN})
    cache = tmp_path / "cache"
    cold = _run(src, cache=True, cache_dir=str(cache))
    from stabcheck._cache import Cache

    (file,) = cache.glob("static-*.json")
    signed = Cache(cache, file.name[len("static-") : -len(".json")])  # rewritten under our own key
    assert len(signed.entries) == 2
    for entry in signed.entries.values():
        assert xfile.valid(entry["xfile"])
        entry["xfile"] = extra
    signed.dirty = True
    signed.save()
    assert all(e["xfile"] == extra for e in Cache(cache, signed.key).entries.values())
    assert _run(src, cache=True, cache_dir=str(cache)) == cold


@pytest.mark.parametrize(
    ("importing", "call"),
    [
        ("import pkg.helpers as h", "h.normalize(x)"),
        ("import pkg.helpers", "pkg.helpers.normalize(x)"),
        ("from pkg import helpers", "helpers.normalize(x)"),
        ("from . import helpers", "helpers.normalize(x)"),
        ("from .helpers import normalize as norm", "norm(x)"),
        ("from ..pkg.helpers import normalize", "normalize(x)"),
    ],
)
def test_every_spelling_of_a_cross_file_call(tmp_path: Path, importing: str, call: str) -> None:
    caller = f"import jax\n\n{importing}\n\n\n@jax.jit\ndef update(x):\n    return {call} + 1\n"
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/helpers.py": HELPERS, "pkg/main.py": caller})
    (f,) = [f for f in _run(tmp_path) if f.code == "STB101"]
    assert Path(f.path).name == "helpers.py" and [_where(c)[1:] for c in f.chains] == [[("main.py", 8, "update", "jax.jit")]]


def test_relative_imports_resolve_from_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    caller = "import jax\n\nfrom ..pkg.helpers import normalize\n\n\n@jax.jit\ndef update(x):\n    return normalize(x) + 1\n"
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/helpers.py": HELPERS, "pkg/main.py": caller})
    monkeypatch.chdir(tmp_path)
    found = run(["pkg"], Config(types=False), Options(jobs=1, cache=False)).findings
    assert [(f.path, f.line, [_where(c)[1:] for c in f.chains]) for f in found if f.code == "STB101"] == [("pkg/helpers.py", 5, [[("main.py", 8, "update", "jax.jit")]])]


@pytest.mark.parametrize("fmt", ["full", "concise", "github", "markdown", "junit", "json", "sarif"])
def test_chain_text_from_the_tree_is_printed_visibly(fmt: str) -> None:
    evil = Frame("ev\x1b[31mil\n.py", 8, 1, "up\u202edate", "jax.jit")
    f = _finding((Frame("h.py", 5, 8, "normalize"), evil))
    out = _render(fmt, [f])
    assert "\x1b" not in out and "\u202e" not in out and "ev\nil" not in out
    assert "up" in out
