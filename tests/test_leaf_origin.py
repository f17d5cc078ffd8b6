"""Where an int/bool leaf given to `grad` is made (issue 18): `traced.source.leaf_origin`, the
one search the entries, `pytest --stabcheck` and the replay share. No JAX needed: it reads the
source and follows the user's calls through the module's globals."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

from stabcheck.traced.source import leaf_origin

SOURCE = '''
import numpy as jnp

def make_params():
    return {
        "c": jnp.float32(2.0),
        "d": 1,
    }

def make_params_ok():
    return {"c": jnp.float32(2.0), "d": jnp.float32(1.0)}

def make_masked():
    w = jnp.ones(3)
    mask = jnp.array([True, False, True])
    return {"w": w, "mask": mask}

def make_state():
    s = {}
    s["count"] = 0
    return s

def factory():
    return [make_params(), make_params_ok(), make_masked(), make_state()]

def two_counters():
    first = {"n": 1}
    second = {"n": 2}
    return [first, second]
'''


def _module(tmp_path: Path):
    path = tmp_path / "leafmod.py"
    path.write_text(textwrap.dedent(SOURCE))
    spec = importlib.util.spec_from_file_location("leafmod", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["leafmod"] = module
    spec.loader.exec_module(module)
    return path, module


def _line(path: Path, text: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if text in ln)


def test_the_int_literal_given_to_the_key_two_calls_away(tmp_path: Path) -> None:
    path, m = _module(tmp_path)
    start = m.factory.__code__
    got = leaf_origin("params['d']", "int32", str(path), start.co_firstlineno, vars(m))
    # make_params_ok gives "d" a float: not the place
    assert got is not None and (got.line, got.function) == (_line(path, '"d": 1'), "make_params")


def test_a_name_given_to_the_key_is_followed_to_its_assignment(tmp_path: Path) -> None:
    path, m = _module(tmp_path)
    got = leaf_origin("params['mask']", "bool", str(path), m.factory.__code__.co_firstlineno, vars(m))
    assert got is not None and got.line == _line(path, "mask = jnp.array")


def test_a_keyed_store_and_an_attribute_path(tmp_path: Path) -> None:
    path, m = _module(tmp_path)
    got = leaf_origin("state['count']", "int32", str(path), m.factory.__code__.co_firstlineno, vars(m))
    assert got is not None and got.line == _line(path, 's["count"] = 0')
    assert leaf_origin("state.count", "int32", str(path), m.factory.__code__.co_firstlineno, vars(m)) is not None


def test_no_place_or_two_places_give_none(tmp_path: Path) -> None:
    path, m = _module(tmp_path)
    start = m.factory.__code__.co_firstlineno
    assert leaf_origin("params['w']", "int32", str(path), start, vars(m)) is None  # only a float is given to "w"
    assert leaf_origin("params['x']", "int32", str(path), start, vars(m)) is None  # no such key
    assert leaf_origin("p['n']", "int32", str(path), m.two_counters.__code__.co_firstlineno, vars(m)) is None  # two
    assert leaf_origin("params", "int32", str(path), start, vars(m)) is None  # no key to look for
    # the calls are followed only through the namespace given
    assert leaf_origin("params['d']", "int32", str(path), start, {}) is None
