"""Fuzzing the static stage: mutated real JAX source and arbitrary bytes never crash it, never hang
it, and identical input gives byte-identical output.

Mutations of the real JAX sources in the clone (fixtures, examples, the rules' own code): deleted
lines and spans, swapped tokens and lines, truncations, duplicated and re-indented lines, inserted
JAX fragments, deep nesting (parentheses, brackets, calls, operators, blocks), odd encodings (a
latin-1 or cp1252 file with and without its coding cookie, UTF-16 with its BOM, a UTF-8 BOM, a wrong
or unknown cookie), odd line endings (CRLF, CR, mixed per line, form feeds, vertical tabs, NUL
bytes, no final newline) and raw byte damage; plus hypothesis-generated fragments and bytes, and
whole trees of mutants (odd file names included) through discovery, reading and every reporter.

Budget: `STABCHECK_FUZZ_EXAMPLES` (default 600 hypothesis examples per test, plus EXAMPLES / 30
mutants per seed file in the seeded sweep); `make fuzz` runs 5000 and prints the figure.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import random
import time
import tokenize
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabcheck import api, reporters
from stabcheck.config import Config
from stabcheck.static import engine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("STABCHECK_FUZZ_EXAMPLES", "600"))
PER_FILE_LIMIT = 10.0  # seconds: a mutant that takes longer than this counts as a hang

SEED_DIRS = (ROOT / "fixtures", ROOT / "examples", ROOT / "stabcheck" / "rules")  # fixtures/scenarios included


def _seeds() -> list[bytes]:
    out = []
    for d in SEED_DIRS:
        for p in sorted(d.rglob("*.py")):
            data = p.read_bytes()
            if data.strip():
                out.append(data)
    return out


SEEDS = _seeds()
CONFIG = Config()
DISPATCHER = engine.Dispatcher(api.enabled_rules(CONFIG))


COUNT = {"inputs": 0, "seconds": 0.0, "failed": 0}  # what this session fuzzed: `make fuzz` prints the figure


def _check(data: bytes) -> str:
    """The static stage plus suppressions and the json reporter: the bytes a user would see."""
    start = time.perf_counter()
    res = engine.check_bytes(data, "mutant.py", CONFIG, DISPATCHER)
    findings = api.finalize({"mutant.py": res}, api.enabled_rules(CONFIG), CONFIG, ("static",))
    elapsed = time.perf_counter() - start
    COUNT["seconds"] += elapsed
    assert elapsed < PER_FILE_LIMIT, f"took {elapsed:.1f}s"
    for f in findings:
        assert f.path == "mutant.py" and f.line >= 1 and f.col >= 1
        assert f.code.startswith("STB") and f.message
    crashes = [f for f in findings if f.code == "STB902"]
    assert not crashes, crashes[0].message  # a rule or the analysis crashed on this input
    return reporters.get("json")(findings, reporters.Report())


def _assert_stable(data: bytes) -> None:
    COUNT["inputs"] += 1  # each input is checked twice (same output both times)
    try:
        first = _check(data)
        json.loads(first)
        assert _check(data) == first
    except AssertionError:
        COUNT["failed"] += 1  # hypothesis replays and shrinks a failure: counts attempts, not bugs
        raise


# -- mutations of real source -------------------------------------------------------------------
def _tokens(text: str) -> list[tokenize.TokenInfo]:
    try:
        return [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.string.strip()]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []


def mutate(data: bytes, rng: random.Random, steps: int) -> bytes:
    text = data.decode("utf-8", "replace")
    for _ in range(steps):
        lines = text.splitlines(keepends=True) or [""]
        op = rng.randrange(12)
        if op == 9:  # deep nesting around a random expression-ish span, or nested blocks
            text = _nest(text, rng)
            continue
        if op == 10:  # odd line endings, line by line
            text = "".join(ln.rstrip("\r\n") + rng.choice(["\n", "\r\n", "\r", "\f\n", "\x0b\n", "\x00\n", ""]) if ln.endswith(("\n", "\r")) else ln for ln in lines)
            continue
        if op == 11:  # no final newline / trailing whitespace / a lone backslash at the end
            text = text.rstrip("\n") + rng.choice(["", " ", "\\", "\t", "#"])
            continue
        if op == 0:  # delete a line
            del lines[rng.randrange(len(lines))]
            text = "".join(lines)
        elif op == 1:  # truncate
            text = text[: rng.randrange(len(text) + 1)]
        elif op == 2:  # swap two tokens
            toks = _tokens(text)
            if len(toks) >= 2:
                a, b = sorted(rng.sample(range(len(toks)), 2))
                ta, tb = toks[a], toks[b]
                if ta.start[0] != tb.start[0] and ta.start[0] == ta.end[0] and tb.start[0] == tb.end[0]:
                    la, lb = ta.start[0] - 1, tb.start[0] - 1
                    lines[la] = lines[la][: ta.start[1]] + tb.string + lines[la][ta.end[1] :]
                    lines[lb] = lines[lb][: tb.start[1]] + ta.string + lines[lb][tb.end[1] :]
                    text = "".join(lines)
        elif op == 3:  # duplicate a line
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif op == 4:  # re-indent a line
            i = rng.randrange(len(lines))
            lines[i] = rng.choice(["", "    ", "\t", "        "]) + lines[i].lstrip()
            text = "".join(lines)
        elif op == 5:  # insert a JAX-ish fragment
            frag = rng.choice(
                [
                    "if x > 0:\n", "return None\n", "@jax.jit\n", "lax.cond(p, f, g, x)\n", "x = jnp.where(m, x, 0.0)\n",
                    "# noqa: STB101\n", "for i in range(x.shape[0]):\n", "  # stabcheck: ignore[branch-on-tracer]\n",
                    "jax.grad(lambda x: x)(", ")", "x: float = np.float64(1)\n", "yield x\n", "async def f(x):\n",
                ]
            )
            pos = rng.randrange(len(text) + 1)
            text = text[:pos] + frag + text[pos:]
        elif op == 6:  # line endings
            text = text.replace("\n", rng.choice(["\r\n", "\r", "\n"]))
        elif op == 7:  # delete a span
            a = rng.randrange(len(text) + 1)
            text = text[:a] + text[a + rng.randrange(40) :]
        else:  # swap two lines
            if len(lines) >= 2:
                i, j = rng.sample(range(len(lines)), 2)
                lines[i], lines[j] = lines[j], lines[i]
                text = "".join(lines)
    out = _encode(text, rng) if rng.random() < 0.15 else text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:  # raw byte damage
        pos = rng.randrange(len(out) + 1)
        out = out[:pos] + bytes([rng.randrange(256)]) + out[pos:]
    return out


NESTERS = [("(", ")"), ("[", "]"), ("{", "}"), ("f(", ")"), ("-", ""), ("not ", ""), ("lambda: ", ""), ("x + (", ")"), ("jnp.where(m, ", ", 0)")]


def _nest(text: str, rng: random.Random) -> str:
    depth = rng.choice([5, 50, 200, 1000, 3000])
    lines = text.splitlines(keepends=True) or [""]
    i = rng.randrange(len(lines))
    if rng.random() < 0.3:  # nested blocks
        ind = " " * (len(lines[i]) - len(lines[i].lstrip()))
        block = "".join(f"{ind}{' ' * k}if x{k}:\n" for k in range(min(depth, 120))) + f"{ind}{' ' * min(depth, 120)}pass\n"
        lines.insert(i, block)
        return "".join(lines)
    line = lines[i]
    eq = line.find("= ")
    start = eq + 2 if eq >= 0 else len(line) - len(line.lstrip())
    end = len(line.rstrip("\r\n"))
    opener, closer = rng.choice(NESTERS)
    lines[i] = line[:start] + opener * depth + line[start:end] + closer * depth + line[end:]
    return "".join(lines)


def _encode(text: str, rng: random.Random) -> bytes:
    """The text in an odd encoding: with or without the cookie that declares it, or a wrong one."""
    how = rng.randrange(7)
    if how == 0:
        return text.encode("latin-1", "replace")  # no cookie: not UTF-8 where it has accents
    if how == 1:
        return b"# -*- coding: latin-1 -*-\n" + text.encode("latin-1", "replace")
    if how == 2:
        return b"# coding: cp1252\n" + text.encode("cp1252", "replace")
    if how == 3:
        return text.encode("utf-16")  # with its BOM
    if how == 4:
        return codecs.BOM_UTF8 + text.encode("utf-8", "surrogatepass")
    if how == 5:
        return b"# -*- coding: " + rng.choice([b"no-such-codec", b"utf-16", b"ascii", b"utf-8-sig", b"rot13", b"euc-jp"]) + b" -*-\n" + text.encode("utf-8", "surrogatepass")
    return codecs.BOM_UTF8 + b"# coding: latin-1\n" + text.encode("utf-8", "surrogatepass")  # BOM and cookie disagree


def mutate_ast(data: bytes, rng: random.Random, steps: int) -> bytes:
    """Mutations that keep the file parseable, so the analysis and the rules (not only the parser)
    see strange code: swap expressions, statements and function bodies, drop statements."""
    import ast

    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return data
    nodes = list(ast.walk(tree))
    exprs = [n for n in nodes if isinstance(n, ast.expr) and not isinstance(n, (ast.Starred, ast.Slice))]
    bodies = [n for n in nodes if isinstance(getattr(n, "body", None), list) and n.body]
    for _ in range(steps):
        op = rng.randrange(4)
        if op == 0 and len(exprs) >= 2:  # one expression replaced by another
            a, b = rng.sample(exprs, 2)
            for p in nodes:
                for f, v in ast.iter_fields(p):
                    if v is a:
                        setattr(p, f, b)
                    elif isinstance(v, list) and any(x is a for x in v):
                        v[:] = [b if x is a else x for x in v]
        elif op == 1 and bodies:  # drop a statement
            body = rng.choice(bodies).body
            if len(body) > 1:
                del body[rng.randrange(len(body))]
        elif op == 2 and len(bodies) >= 2:  # swap two statements between bodies
            b1, b2 = rng.sample(bodies, 2)
            i, j = rng.randrange(len(b1.body)), rng.randrange(len(b2.body))
            b1.body[i], b2.body[j] = b2.body[j], b1.body[i]
        elif op == 3 and bodies:  # move a return/if into another body
            stmt = rng.choice(rng.choice(bodies).body)
            rng.choice(bodies).body.insert(0, stmt)
    try:
        return ast.unparse(ast.fix_missing_locations(tree)).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError, AttributeError, TypeError):
        return data


def test_seed_corpus_is_real() -> None:
    assert len(SEEDS) >= 30
    assert sum(s.count(b"\n") for s in SEEDS) > 3000


def test_seeded_mutation_sweep() -> None:
    """Every seed file, mutated a few ways with a fixed RNG: thousands of inputs in `make fuzz`."""
    per_seed = max(2, EXAMPLES // 30)
    rng = random.Random(20261122)
    n = 0
    for seed in SEEDS:
        _assert_stable(seed)
        for _ in range(per_seed):
            mutant = mutate(seed, rng, rng.randrange(1, 6))
            try:
                _assert_stable(mutant)
            except AssertionError as e:  # pragma: no cover - shows the input that failed
                raise AssertionError(f"{e}\n--- input ---\n{mutant.decode('utf-8', 'replace')[:3000]}") from None
            n += 1
    assert n >= len(SEEDS) * 2


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(seed=st.sampled_from(SEEDS), rng_seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 12))
def test_hypothesis_mutations_of_real_source(seed: bytes, rng_seed: int, steps: int) -> None:
    _assert_stable(mutate(seed, random.Random(rng_seed), steps))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(seed=st.sampled_from(SEEDS), rng_seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 8))
def test_hypothesis_parseable_mutations_of_real_source(seed: bytes, rng_seed: int, steps: int) -> None:
    _assert_stable(mutate_ast(seed, random.Random(rng_seed), steps))


PIECES = st.sampled_from(
    [
        "import jax\n", "import jax.numpy as jnp\n", "from jax import lax, jit\n", "@jax.jit\n", "@partial(jax.jit, static_argnums=1)\n",
        "def f(x, n=3):\n", "    ", "if x > 0:\n", "while x:\n", "return x\n", "return None\n", "return x, x\n", "else:\n",
        "x = jnp.where(x > 0, jnp.sqrt(x), 0.)\n", "y = float(x)\n", "lax.scan(f, x, None, length=3)\n", "class M(nn.Module):\n",
        "for i in range(n):\n", "x = x[x > 0]\n", "jax.jit(f)(x)\n", "print(x)\n", "pass\n", "# noqa: STB101\n", "lambda x: x\n",
        "(", ")", "[", "]", ":", ",", "\t", "\n", "\\\n", '"""', "'", "#", "\x00", "\r", "é", "\ufeff",
    ]
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(PIECES, max_size=60))
def test_hypothesis_jaxish_fragments(pieces: list[str]) -> None:
    _assert_stable("".join(pieces).encode("utf-8"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.binary(max_size=400))
def test_hypothesis_arbitrary_bytes(data: bytes) -> None:
    _assert_stable(data)


@pytest.mark.parametrize("depth", [50, 200, 900, 3000])
def test_deep_nesting_of_every_kind(depth: int) -> None:
    for src in (
        "import jax\n@jax.jit\ndef f(x):\n    return " + "(" * depth + "x" + ")" * depth + "\n",
        "import jax\n@jax.jit\ndef f(x):\n    return x" + " + x" * depth + "\n",
        "import jax\n@jax.jit\ndef f(x):\n    return " + "-" * depth + "x\n",
        "import jax\n@jax.jit\ndef f(x):\n    return " + "[" * depth + "x" + "]" * depth + "\n",
        "import jax\n@jax.jit\ndef f(x):\n    return " + "f(" * depth + "x" + ")" * depth + "\n",
        "".join("    " * i + f"if x{i}:\n" for i in range(min(depth, 99))) + "    " * min(depth, 99) + "pass\n",
    ):
        res = engine.check_bytes(src.encode(), "deep.py", CONFIG, DISPATCHER)
        assert all(f.code in ("STB901", "STB902") or f.line >= 1 for f in res.findings)
        assert engine.check_bytes(src.encode(), "deep.py", CONFIG, DISPATCHER) == res


def test_mutant_trees_through_discovery_reading_and_every_reporter(tmp_path: Path) -> None:
    """Mutants written as files (odd names included) and checked like a user's tree, in parallel:
    every file is reported or checked, no STB902, every reporter renders the result as UTF-8."""
    rng = random.Random(20261201)
    n = max(40, EXAMPLES // 10)
    names = ["m{i}.py", "m {i}.py", "m{i}.pyi", "ünï{i}.py", "m{i}\u200b.py", "-m{i}.py"]
    written = 0
    for i in range(n):
        name = rng.choice(names).format(i=i)
        folder = tmp_path / rng.choice(["", "a", "a/b", ".hidden", "deep/" * 5])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(mutate(rng.choice(SEEDS), rng, rng.randrange(1, 8)))
        written += 1
    try:
        (tmp_path / os.fsdecode(b"bad\xff.py")).write_bytes(b"x = 1\n")
        written += 1
    except (OSError, UnicodeEncodeError):
        pass
    COUNT["inputs"] += written
    start = time.perf_counter()
    result = api.run([str(tmp_path)], CONFIG, api.Options(cache=False, jobs=2))
    COUNT["seconds"] += time.perf_counter() - start
    assert result.files == written
    assert not [f for f in result.findings if f.code == "STB902"], [f.message for f in result.findings if f.code == "STB902"][:3]
    for fmt in reporters.FORMATS:
        reporters.get(fmt)(result.findings, reporters.Report(files=result.files)).encode("utf-8")


def test_zz_fuzz_figure(capsys: pytest.CaptureFixture[str]) -> None:
    """Last in the file: the figure `make fuzz` reports (inputs checked here, 0 crashes, time)."""
    with capsys.disabled():
        print(f"\nfuzz: {COUNT['inputs']} inputs checked (each twice), {COUNT['failed']} failed, {COUNT['seconds']:.0f} s in the checker (STABCHECK_FUZZ_EXAMPLES={EXAMPLES})")
