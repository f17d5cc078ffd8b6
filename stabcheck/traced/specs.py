"""Abstract argument specs: `f32[8,2]`, `bool[2,1]`, `f32?[]` (a weak scalar), pytrees as JSON.

    parse("bf16[4, n]", dims={"n": 8})  -> Spec("bfloat16", (4, 8), weak=False)
    parse_tree('{"w": "f32[4,2]", "b": "f32[2]"}')  -> {"w": Spec(...), "b": Spec(...)}

Parsing imports no JAX (the CLI validates specs before starting a worker); `to_abstract` turns a
parsed tree into `jax.ShapeDtypeStruct`s in the worker.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

DTYPES: dict[str, str] = {
    "f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64",
    "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
    "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
    "bool": "bool", "c64": "complex64", "c128": "complex128",
}  # fmt: skip
SHORT: dict[str, str] = {v: k for k, v in DTYPES.items()}  # "float32" -> "f32"
_SPEC = re.compile(r"^\s*([a-z0-9]+)(\?)?\s*\[([^\]]*)\]\s*$")
_DIM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """A spec that does not parse; the message names it and the allowed forms."""


@dataclass(frozen=True, slots=True)
class Spec:
    dtype: str
    shape: tuple[int, ...]
    weak: bool = False

    def __str__(self) -> str:
        return f"{SHORT[self.dtype]}{'?' if self.weak else ''}[{','.join(map(str, self.shape))}]"


def parse(text: str, dims: dict[str, int] | None = None) -> Spec:
    m = _SPEC.match(text)
    if not m or m.group(1) not in DTYPES:
        raise SpecError(f"invalid argument spec {text!r}; expected dtype[shape] such as 'f32[8,2]', 'bool[2]' or 'f32?[]', with dtype one of: {', '.join(DTYPES)}")
    dtype, weak, body = DTYPES[m.group(1)], bool(m.group(2)), m.group(3).strip()
    shape: list[int] = []
    for part in [p.strip() for p in body.split(",")] if body else []:
        if part.isdigit():
            shape.append(int(part))
        elif _DIM.match(part):
            if dims is None or part not in dims:
                raise SpecError(f"invalid argument spec {text!r}: dimension `{part}` has no size; give it with --dim {part}=N")
            shape.append(int(dims[part]))
        else:
            raise SpecError(f"invalid argument spec {text!r}: `{part}` is not a dimension (a non-negative integer or a name given by --dim)")
    if weak and shape:
        raise SpecError(f"invalid argument spec {text!r}: only scalars can be weakly typed (`f32?[]`)")
    return Spec(dtype, tuple(shape), weak)


def parse_tree(text: str, dims: dict[str, int] | None = None) -> Any:
    """A spec, or a JSON pytree (objects, arrays) whose strings are specs and numbers Python scalars."""
    s = text.strip()
    if s[:1] in "{[":
        try:
            data = json.loads(s)
        except json.JSONDecodeError as e:
            raise SpecError(f"invalid pytree spec {text!r}: {e.msg} at column {e.colno}") from None
        return spec_tree(data, dims)
    return parse(s, dims)


def spec_tree(data: Any, dims: dict[str, int] | None) -> Any:
    if isinstance(data, dict):
        return {k: spec_tree(v, dims) for k, v in data.items()}
    if isinstance(data, list):
        return [spec_tree(v, dims) for v in data]
    if isinstance(data, str):
        return parse(data, dims)
    return data


def parse_static(items: list[str]) -> dict[int, Any]:
    """`--static 1=3` -> {1: 3}; the value is a Python literal, else a string."""
    out: dict[int, Any] = {}
    for item in items:
        pos, sep, value = item.partition("=")
        if not sep or not pos.strip().isdigit():
            raise SpecError(f"invalid value for `--static`: {item!r}; expected POSITION=VALUE such as '1=3' or '2=\"relu\"'")
        try:
            out[int(pos)] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[int(pos)] = value.strip()
    return out


def parse_dims(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _DIM.match(name.strip()) or not value.strip().isdigit():
            raise SpecError(f"invalid value for `--dim`: {item!r}; expected NAME=SIZE such as 'n=8'")
        out[name.strip()] = int(value)
    return out


def to_abstract(tree: Any) -> Any:
    """Specs -> `jax.ShapeDtypeStruct`s (imports JAX; call in the worker)."""
    # JAX: imported when this runs, never on import
    import jax
    import numpy as np  # NumPy: only where user code runs

    if isinstance(tree, Spec):
        dtype = jax.numpy.bfloat16 if tree.dtype == "bfloat16" else np.dtype(tree.dtype)
        return jax.ShapeDtypeStruct(tree.shape, dtype, weak_type=tree.weak)
    if isinstance(tree, dict):
        return {k: to_abstract(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_abstract(v) for v in tree]
    return tree


def to_json(tree: Any) -> Any:
    """A parsed tree back to the JSON form (for the worker payload)."""
    if isinstance(tree, Spec):
        return str(tree)
    if isinstance(tree, dict):
        return {k: to_json(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_json(v) for v in tree]
    return tree


# jaxtyping: `Float[Array, "n 2"]` -> Spec; dims by name from --dim (default 4)
_JT_DTYPE = {"Float": "float32", "Float32": "float32", "Float64": "float64", "Float16": "float16", "BFloat16": "bfloat16",
             "Int": "int32", "Int32": "int32", "Int64": "int64", "Int8": "int8", "UInt": "uint32", "UInt8": "uint8", "UInt32": "uint32",
             "Integer": "int32", "Bool": "bool", "Shaped": "float32", "Inexact": "float32", "Real": "float32", "Num": "float32",
             "Complex": "complex64", "Complex64": "complex64"}  # fmt: skip
_JT = re.compile(r"^\s*(?:\w+\.)*(\w+)\[\s*[\w.]+\s*,\s*['\"]([^'\"]*)['\"]\s*\]\s*$")
DEFAULT_DIM = 4


def from_jaxtyping(annotation: Any, dims: dict[str, int]) -> Spec | None:
    """A Spec for a jaxtyping annotation (object or string), or None when it is not one."""
    if isinstance(annotation, str):
        m = _JT.match(annotation)
        if not m or m.group(1) not in _JT_DTYPE:
            return None
        dtype, dim_str = _JT_DTYPE[m.group(1)], m.group(2)
    else:
        dim_str = getattr(annotation, "dim_str", None)
        if dim_str is None:
            return None
        kind = getattr(annotation, "__name__", "").split("[", 1)[0]
        dtype = _JT_DTYPE.get(kind, "float32")
    shape: list[int] = []
    for tok in dim_str.split():
        tok = tok.lstrip("#")
        if tok.startswith("*") or tok == "...":
            continue  # variadic: no axes
        if tok.isdigit():
            shape.append(int(tok))
        else:
            shape.append(int(dims.get(tok, DEFAULT_DIM)))
    return Spec(dtype, tuple(shape))
