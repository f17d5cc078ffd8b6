"""Fuzzing the static stage: mutated real JAX source and arbitrary bytes never crash it, never hang
it, and identical input gives byte-identical output.

Budget: `STABCHECK_FUZZ_EXAMPLES` (default 600 hypothesis examples per test, plus 8 mutants per
seed file in the seeded sweep); `make fuzz` runs 5000.
"""

from __future__ import annotations

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


def _check(data: bytes) -> str:
    """The static stage plus suppressions and the json reporter: the bytes a user would see."""
    start = time.perf_counter()
    res = engine.check_bytes(data, "mutant.py", CONFIG, DISPATCHER)
    findings = api._finalize({"mutant.py": res}, api.enabled_rules(CONFIG), CONFIG, ("static",))
    elapsed = time.perf_counter() - start
    assert elapsed < PER_FILE_LIMIT, f"took {elapsed:.1f}s"
    for f in findings:
        assert f.path == "mutant.py" and f.line >= 1 and f.col >= 1
        assert f.code.startswith("STB") and f.message
    crashes = [f for f in findings if f.code == "STB902"]
    assert not crashes, crashes[0].message  # a rule or the analysis crashed on this input
    return reporters.get("json")(findings, reporters.Report())


def _assert_stable(data: bytes) -> None:
    first = _check(data)
    json.loads(first)
    assert _check(data) == first


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
        op = rng.randrange(9)
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
    out = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:  # raw byte damage
        pos = rng.randrange(len(out) + 1)
        out = out[:pos] + bytes([rng.randrange(256)]) + out[pos:]
    return out


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
