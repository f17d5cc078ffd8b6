"""Checks on a traced program: walk every equation of a `ClosedJaxpr`, nested jaxprs included.

    findings = check_jaxpr(jax.make_jaxpr(step)(params, x), function="step")

Reports, at the user line that produced each equation (see `stabcheck.traced.source`):
STB301 float64-leak (where float64 work starts from float32/bf16 data), STB302 weak-type-output,
STB303 implicit-promotion (float widening or int->float caused by operand mixing), STB304
mask-promotion (a bool/int mask widening the data it multiplies or selects), STB305
rank-promotion (implicit rank broadcasting in an operator). One finding per (code, line).
Library internals (site-packages) are not reported, except where they are the only frame.
Cheap and importable on its own; it imports JAX only through the objects it is given.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from stabcheck import registry
from stabcheck.finding import Finding, Span
from stabcheck.traced.source import Site, chain, eqn_frames, function_site, internal_functions, return_site

ALL_CODES = frozenset({"STB301", "STB302", "STB303", "STB304", "STB305"})
_EXPLICIT_CAST = frozenset({"astype", "_astype", "asarray", "array", "convert_element_type", "__array__", "_convert_and_clip_integer"})
_EXPLICIT_BCAST = frozenset({"broadcast_to", "_broadcast_to", "expand_dims", "_getitem", "rewriting_take", "reshape", "atleast_1d", "atleast_2d", "atleast_3d", "broadcast_arrays", "_broadcast_arrays", "outer"})
_MIXING = frozenset({"mul", "add", "sub", "div", "max", "min", "pow", "atan2", "rem", "select_n", "dot_general", "add_any", "nextafter", "complex"})
_FLOAT_RANK = {"float16": 1, "bfloat16": 1, "float32": 2, "float64": 3}


def shown_path(file: str) -> str:
    """A path as findings show it: relative to the working directory when below it."""
    try:
        rel = os.path.relpath(file)
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    except ValueError:
        pass
    return file.replace(os.sep, "/")


def source_line(site: Site | None) -> str:
    """The text of a site's line, indentation kept (for `Finding.snippet`)."""
    return linecache.getline(site.file, site.line).rstrip("\n").rstrip() if site is not None else ""


def site_span(site: Site) -> Span:
    """A span for a site: its column when JAX recorded one, else the line's code (not its indent)."""
    text = source_line(site)
    if site.col > 1 or not text.strip():
        return Span(site.line, site.col)
    code = text.split("  #", 1)[0].rstrip() if "  #" in text else text
    return Span(site.line, len(text) - len(text.lstrip()) + 1, site.line, len(code) + 1)


def _dtype(v: Any) -> str:
    aval = getattr(v, "aval", None)
    return str(getattr(aval, "dtype", ""))


def _weak(v: Any) -> bool:
    return bool(getattr(getattr(v, "aval", None), "weak_type", False))


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(getattr(getattr(v, "aval", None), "shape", ()) or ())


def _is_float(d: str) -> bool:
    return d in _FLOAT_RANK


def _is_intlike(d: str) -> bool:
    return d == "bool" or d.startswith("int") or d.startswith("uint")


def _is_var(v: Any) -> bool:
    return type(v).__name__ == "Var" or (hasattr(v, "aval") and not hasattr(v, "val"))


def eqn_site(eqn: Any) -> Site | None:
    """The user line of an equation, or None when it comes from inside an installed library
    (optax's own arithmetic is not the user's promotion, even if the user called optax)."""
    frames = eqn_frames(eqn)
    if not frames or frames[0].library:
        return None
    return frames[0]


def sub_jaxprs(eqn: Any) -> Iterator[Any]:
    """The open jaxprs nested in an equation's params (pjit, scan, cond, while, custom rules, remat, shard_map)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns") and hasattr(item, "invars"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item, "consts") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def iter_eqns(jaxpr: Any) -> Iterator[Any]:
    """Every equation of an open jaxpr, nested ones included (depth first)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in sub_jaxprs(eqn):
            yield from iter_eqns(sub)


def first_cast_site(jaxpr: Any, dtype: str, primal: Any = None) -> Site | None:
    """The user line of the first `convert_element_type` to `dtype` in a gradient's jaxpr (nested
    ones included): where a gradient of another dtype than its parameter is made, or None when no
    user line casts to it. JAX records a custom VJP rule's equations at the line that called the
    custom function; given the `primal` jaxpr, such a cast is placed at the rule's `bwd` instead."""
    for eqn in iter_eqns(jaxpr):
        if eqn.primitive.name == "convert_element_type" and str(eqn.params.get("new_dtype")) == dtype:
            site = eqn_site(eqn)
            if site is not None:
                return _custom_bwd_at(primal, site) or site
    return None


def _custom_bwd_at(primal: Any, site: Site) -> Site | None:
    if primal is None:
        return None
    for eqn in iter_eqns(primal):
        if eqn.primitive.name == "custom_vjp_call" and eqn_site(eqn) == site:
            bwd = eqn.params.get("bwd")
            found = function_site(inspect.unwrap(getattr(bwd, "f", bwd)))
            if found is not None and not found.library:
                return found
    return None


# -- custom derivative rules: where their code is ---------------------------------------------
def custom_rule_def(eqn: Any) -> Site | None:
    """The `def` of the custom rule an equation calls: a `custom_vjp_call`'s bwd, or a
    `custom_jvp_call`'s jvp rule (JAX keeps that one only behind memoized thunks; its debug info
    names it, "f_jvp at FILE:LINE"). None for other equations or a rule in a library."""
    name = eqn.primitive.name
    if name == "custom_vjp_call":
        bwd = eqn.params.get("bwd")
        found = function_site(inspect.unwrap(getattr(bwd, "f", bwd)))
    elif name == "custom_jvp_call":
        fun = eqn.params.get("jvp_jaxpr_fun") or eqn.params.get("jvp_jaxpr_thunk")
        src = str(getattr(getattr(fun, "debug_info", None), "func_src_info", "") or "")
        head, sep, where = src.rpartition(" at ")
        file, _, line = where.rpartition(":")
        found = Site(file, int(line), 1, head) if sep and file and line.isdigit() else None
    else:
        return None
    return found if found is not None and not found.library and not found.file.startswith("<") else None


def custom_rule_defs(jaxpr: Any) -> list[Site]:
    """The `def` of every custom rule a program calls, nested programs included, in order."""
    out: list[Site] = []
    for eqn in iter_eqns(getattr(jaxpr, "jaxpr", jaxpr)):
        found = custom_rule_def(eqn)
        if found is not None and found not in out:
            out.append(found)
    return out


def rule_return_site(rule: Site) -> Site | None:
    """The first `return` of the function defined at `rule` (decorators included): the line that
    hands JAX a rule's outputs, where a wrong shape or dtype is fixed."""
    return return_site(rule.file, rule.line)


def in_custom_rule(site: Site | None, rules: Sequence[Site]) -> Site | None:
    """The frame of `site`'s call chain (itself or a caller) that runs inside one of the custom
    `rules`: where a rule reaches something autodiff cannot take (a host callback in a helper
    called from the rule is fixed in the rule)."""
    if site is None:
        return None
    spans = [(os.path.realpath(r.file), *_def_span(r)) for r in rules]
    for frame in (site, *site.outer):
        at = os.path.realpath(frame.file)
        if any(at == file and first <= frame.line <= last for file, first, last in spans):
            return frame
    return None


def _def_span(rule: Site) -> tuple[int, int]:
    text = "".join(linecache.getlines(rule.file))
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return (0, -1)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and min([node.lineno, *(d.lineno for d in node.decorator_list)]) <= rule.line <= node.lineno:
            return (rule.line, node.end_lineno or node.lineno)
    return (0, -1)


class _Walker:
    def __init__(self, function: str, codes: frozenset[str]) -> None:
        self.function = function
        self.codes = codes
        self.found: dict[tuple[str, str, int], Finding] = {}

    # -- reporting ----------------------------------------------------------------------------
    def add(self, code: str, site: Site | None, message: str, *, detail: str, evidence: dict[str, Any], help: str = "") -> None:
        if code not in self.codes or site is None or site.library:
            return

        rule = registry.get(code)
        if rule is None:
            return
        path = shown_path(site.file)
        key = (code, path, site.line)
        if key in self.found:
            return
        self.found[key] = rule.finding(
            path=path,
            span=site_span(site),
            message=message,
            help=help,
            function=self.function or site.function,
            detail=detail,
            evidence={**evidence, "user_function": site.function},
            stage="traced",
            snippet=source_line(site),
            chains=chain(site, shown_path),
        )

    # -- the walk -----------------------------------------------------------------------------
    def walk(self, jaxpr: Any, tainted: set[Any], literals: frozenset[Any] = frozenset()) -> bool:
        """Walk one open jaxpr; `tainted` holds float64 vars that come from a float64 leak,
        `literals` the inputs that the enclosing equation binds to a Python number (`f(x, 3)` of
        a `custom_vjp`/`jit` function: JAX passes `3` as a strong `int32`, but the user wrote a
        literal, and promoting it is not the operand mixing STB303 is about).
        Returns True when an output of this jaxpr is tainted."""
        consumers: dict[Any, list[Any]] = {}
        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if _is_var(v):
                    consumers.setdefault(v, []).append(eqn)
        producers = {o: eqn for eqn in jaxpr.eqns for o in eqn.outvars}
        mask_data: set[Any] = set()
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "convert_element_type":
                if not (_is_var(eqn.invars[0]) and eqn.invars[0] in literals and _is_intlike(_dtype(eqn.invars[0]))):
                    self._convert(eqn, consumers, tainted, mask_data)
            elif name == "dot_general":
                self._mixed_dot(eqn, tainted)
            elif name in ("mul", "select_n"):
                self._mask(eqn, producers, mask_data)
            elif name == "broadcast_in_dim":
                self._rank(eqn, consumers, producers)
            inner_tainted = False
            for sub in sub_jaxprs(eqn):
                pairs = list(zip(reversed(sub.invars), reversed(eqn.invars)))
                sub_taint = {sv for sv, ov in pairs if _is_var(ov) and ov in tainted}
                sub_literals = frozenset(sv for sv, ov in pairs if not _is_var(ov) or ov in literals)
                inner_tainted |= self.walk(sub, sub_taint, sub_literals)
            if inner_tainted or any(_is_var(v) and v in tainted for v in eqn.invars):
                tainted.update(o for o in eqn.outvars if _dtype(o) == "float64" and not _weak(o))
        return any(_is_var(v) and v in tainted for v in jaxpr.outvars)

    def _mixed_dot(self, eqn: Any, tainted: set[Any]) -> None:
        """`x @ w` with float32 `x` and float64 `w` (weights a library drew with the x64 default
        dtype): `jnp.matmul` hands `dot_general` both dtypes and a float64 result type, with no
        `convert_element_type` to see, and the product runs in float64 (equinox#1154)."""
        out = eqn.outvars[0]
        if _dtype(out) != "float64" or _weak(out) or len(eqn.invars) != 2:
            return
        dts = [_dtype(v) for v in eqn.invars]
        low = [v for v, d in zip(eqn.invars, dts) if _is_float(d) and d != "float64" and not _weak(v)]
        if not low or "float64" not in dts or any(_is_var(v) and v in tainted for v in eqn.invars):
            return  # float64 already flowing from the data: a consequence, not a start
        tainted.add(out)
        src = _dtype(low[0])
        # inside a library layer (`eqx.nn.Linear.__call__`): the user's call of it, where the data went in
        site = eqn_site(eqn) or next((f for f in eqn_frames(eqn) if not f.library), None)
        self.add(
            "STB301",
            site,
            f"`{src}{list(_shape(low[0]))}` data meets a float64 operand in a matrix product here, which runs in float64; every operation downstream runs in float64 (2-64x slower on accelerators, double memory)",
            help="make the other operand the data's dtype: build weights and constants with `dtype=x.dtype` (with x64 on, the default float is float64)",
            detail=f"{src}->float64",
            evidence={"from": src, "to": "float64", "shape": list(_shape(low[0])), "explicit": False, "primitive": "dot_general"},
        )

    def _convert(self, eqn: Any, consumers: dict[Any, list[Any]], tainted: set[Any], mask_data: set[Any]) -> None:
        src, dst = _dtype(eqn.invars[0]), _dtype(eqn.outvars[0])
        out = eqn.outvars[0]
        if _weak(out) or src == dst:
            return
        users = consumers.get(out, [])
        others = [v for u in users for v in u.invars if v is not out]
        widening = _is_float(src) and _is_float(dst) and _FLOAT_RANK[dst] > _FLOAT_RANK[src]
        if dst == "float64" and _is_float(src) and widening:
            if any(_is_var(v) and v in tainted for v in others):
                tainted.add(out)  # float64 already flowing: a consequence, not a start
                return
            tainted.add(out)
            site = eqn_site(eqn)
            explicit = bool(set(internal_functions(eqn)) & _EXPLICIT_CAST)
            what = "an explicit cast to float64" if explicit else "mixing it with a float64 operand (a NumPy float64 array, `dtype=float`, or `jnp.float64` value)"
            self.add(
                "STB301",
                site,
                f"`{src}{list(_shape(eqn.invars[0]))}` data is promoted to float64 here by {what}; every operation downstream runs in float64 (2-64x slower on accelerators, double memory)",
                help="build constants with the data's dtype (`x.dtype`) or as bool masks; avoid `dtype=float` and NumPy float64 arrays",
                detail=f"{src}->float64",
                evidence={"from": src, "to": "float64", "shape": list(_shape(eqn.invars[0])), "explicit": explicit, "primitive": "convert_element_type"},
            )
            return
        explicit = bool(set(internal_functions(eqn)) & _EXPLICIT_CAST)
        if _is_intlike(src) and _is_float(dst):
            mask_data.add(out)  # a mask made float, explicitly or not: STB304 looks at its users
        if explicit:
            return
        # `step / top` of integers is true division: Python, NumPy and JAX all give a float, so
        # an int made float for `div` is what the operator means, not a promotion by mixing
        mixing = [
            v
            for u in users
            if u.primitive.name in _MIXING and not (u.primitive.name == "div" and _is_intlike(src))
            for v in u.invars
            if v is not out and _dtype(v) == dst
        ]
        if not mixing:
            return
        if _is_intlike(src) and _is_float(dst):
            if src == "bool":
                return  # bool masks times data keep the data's dtype: the normal idiom; STB304 covers widening
        elif not widening:
            return
        self.add(
            "STB303",
            eqn_site(eqn),
            f"`{src}` operand is implicitly promoted to `{dst}` by mixing it with a `{dst}` operand; the operation runs in `{dst}`, not in the operand's own dtype",
            help=f"cast explicitly (`.astype(jnp.{dst})`) if `{dst}` is intended, or keep both operands in `{src}`",
            detail=f"{src}->{dst}",
            evidence={"from": src, "to": dst, "shape": list(_shape(eqn.invars[0])), "primitive": "convert_element_type"},
        )

    def _mask(self, eqn: Any, producers: dict[Any, Any], mask_data: set[Any]) -> None:
        """A bool/int mask (converted to float F) multiplied with or selecting data of a narrower float."""
        ins = [v for v in eqn.invars if _is_var(v)]
        masks = [v for v in ins if v in mask_data or (eqn.primitive.name == "select_n" and v is eqn.invars[0])]
        if not masks:
            return
        out_dtype = _dtype(eqn.outvars[0])
        for v in ins:
            if v in masks:
                continue
            prod = producers.get(v)
            if prod is None or prod.primitive.name != "convert_element_type":
                continue
            data_dtype = _dtype(prod.invars[0])
            if _is_float(data_dtype) and _is_float(out_dtype) and _FLOAT_RANK[out_dtype] > _FLOAT_RANK[data_dtype]:
                m = masks[0]
                mprod = producers.get(m)
                mask_dtype = _dtype(mprod.invars[0]) if mprod is not None and mprod.primitive.name == "convert_element_type" else _dtype(m)
                self.add(
                    "STB304",
                    eqn_site(eqn),
                    f"a `{mask_dtype}` mask turns `{data_dtype}` data into `{out_dtype}` here; the result and everything after it is computed in `{out_dtype}`",
                    help="select with `jnp.where(mask, x, 0)` on a bool mask, or cast the mask to `x.dtype`",
                    detail=f"{mask_dtype}*{data_dtype}->{out_dtype}",
                    evidence={"mask_dtype": mask_dtype, "data_dtype": data_dtype, "result_dtype": out_dtype, "primitive": eqn.primitive.name},
                )
                return

    def _rank(self, eqn: Any, consumers: dict[Any, list[Any]], producers: dict[Any, Any]) -> None:
        src, dst = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
        k = len(dst) - len(src)
        if not src or k < 1 or dst != (1,) * k + src:
            return
        if not _outer_broadcast(eqn, src, consumers, producers):
            return  # `x @ w + b`: the bias lines up with the data's trailing axes, as intended
        funcs = internal_functions(eqn)
        if set(funcs) & _EXPLICIT_BCAST:
            return
        # the function the user called must be the operator or ufunc itself, not a jnp routine
        # that broadcasts internally (funcs run from the primitive outwards to the user's call)
        called = funcs[-2:] if funcs and funcs[-1] == "op" else funcs[-1:]
        if not called or not (called[0] == "__call__" or called[0].startswith("_operator_")):
            return
        self.add(
            "STB305",
            eqn_site(eqn),
            f"a rank-{len(src)} operand of shape {list(src)} is implicitly broadcast to rank {len(dst)} here; the shapes only line up by NumPy's rank promotion, which hides transposed or missing axes and fails under `jax_numpy_rank_promotion='raise'`",
            help="make the broadcast explicit: index with `None` (`b[None, :]`) or use `jnp.broadcast_to`/`jnp.expand_dims`",
            detail=f"rank {len(src)}->{len(dst)}",
            evidence={"from_shape": list(src), "to_shape": list(dst), "primitive": "broadcast_in_dim"},
        )


def _origin_shape(v: Any, producers: dict[Any, Any]) -> tuple[int, ...]:
    """The shape of `v` before jnp's implicit broadcasting (broadcast_in_dim/reshape chains)."""
    seen = 0
    while _is_var(v) and seen < 8:
        prod = producers.get(v)
        if prod is None or prod.primitive.name not in ("broadcast_in_dim", "reshape"):
            break
        v = prod.invars[0]
        seen += 1
    return _shape(v)


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d) if isinstance(d, int) else 1
    return n


def _outer_broadcast(eqn: Any, src: tuple[int, ...], consumers: dict[Any, list[Any]], producers: dict[Any, Any]) -> bool:
    """The rank-promoted operand meets an operand whose size-1 axes also expand, so the result is
    bigger than either input: `(n,) - (n, 1) -> (n, n)`, the classic silent outer-product bug."""
    frontier = [eqn.outvars[0]]
    for _ in range(4):
        nxt = []
        for v in frontier:
            for user in consumers.get(v, []):
                if user.primitive.name in ("broadcast_in_dim", "reshape"):
                    nxt.extend(user.outvars)
                    continue
                if len(user.invars) != 2 or not user.outvars:
                    continue
                out = _shape(user.outvars[0])
                others = [_origin_shape(w, producers) for w in user.invars if w is not v]
                if others and _size(out) > _size(src) and all(_size(out) > _size(o) for o in others):
                    return True
        frontier = nxt
    return False


def check_jaxpr(
    closed_jaxpr: Any,
    *,
    function: str = "",
    in_paths: Sequence[str] = (),
    out_paths: Sequence[str] = (),
    codes: Iterable[str] | None = None,
    literal_site: Callable[[], Site | None] | None = None,
) -> list[Finding]:
    """Findings STB301-305 for one traced program, at the user lines of its equations.

    in_paths/out_paths name the flattened inputs/outputs (pytree key paths) for messages.
    codes: restrict to these codes (default: all five).
    literal_site: finds where the function returns a Python number (`return 1.0`), for a weak
    output that no equation produces (`source.literal_return_site`); called only then.
    """
    chosen = ALL_CODES if codes is None else frozenset(codes) & ALL_CODES
    w = _Walker(function, chosen)
    jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
    w.walk(jaxpr, set())
    if "STB302" in chosen:
        _weak_outputs(w, jaxpr, out_paths, literal_site)
    return sorted(w.found.values(), key=lambda f: f.sort_key)


def _weak_outputs(w: _Walker, jaxpr: Any, out_paths: Sequence[str], literal_site: Callable[[], Site | None] | None = None) -> None:
    producers = {o: eqn for eqn in iter_eqns(jaxpr) for o in eqn.outvars}
    for i, v in enumerate(jaxpr.outvars):
        if not _is_var(v) and _weak(v) and literal_site is not None:  # `return 1.0`: a literal output
            leaf = out_paths[i] if i < len(out_paths) else f"output {i}"
            _report_weak(w, literal_site(), leaf, _dtype(v))
            continue
        if not _is_var(v) or not _weak(v) or v in jaxpr.invars:
            continue
        eqn = producers.get(v)
        while eqn is not None and eqn.primitive.name in ("pjit", "jit", "closed_call", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call"):
            inner = next(sub_jaxprs(eqn), None)
            idx = list(eqn.outvars).index(v)
            if inner is None or idx >= len(inner.outvars) or not _is_var(inner.outvars[idx]):
                break
            v = inner.outvars[idx]
            eqn = {o: e for e in inner.eqns for o in e.outvars}.get(v)
        if eqn is None:
            continue
        leaf = out_paths[i] if i < len(out_paths) else f"output {i}"
        _report_weak(w, eqn_site(eqn), leaf, _dtype(v))


def _report_weak(w: _Walker, site: Site | None, leaf: str, dtype: str) -> None:
    w.add(
        "STB302",
        site,
        f"`{leaf}` is weakly typed (`{dtype}` from a Python scalar); its dtype will follow whatever it is combined with next, and a weak leaf in a loop carry or train state retraces when it becomes strong",
        help=f"make the value strongly typed: `jnp.asarray(value, dtype=jnp.{dtype})` or derive it from an input array",
        detail=leaf,
        evidence={"dtype": dtype, "weak_type": True, "leaf": leaf},
    )


# -- gradients that are zero by construction (STB410) -------------------------------------------
# primitives whose output carries no derivative of their inputs
_NONDIFF = frozenset({"lt", "gt", "le", "ge", "eq", "ne", "floor", "ceil", "round", "sign", "argmax", "argmin", "stop_gradient", "and", "or", "not", "xor", "is_finite", "population_count", "clz"})


def is_zero_constant(jaxpr: Any, v: Any) -> bool:
    """An output that is the constant 0 whatever the inputs: a zero literal, or a broadcast or
    cast of one (how `grad` returns a gradient no path reaches)."""
    producers = {o: eqn for eqn in jaxpr.eqns for o in eqn.outvars}
    for _ in range(8):
        if not _is_var(v):
            val = getattr(v, "val", None)
            try:
                return val is not None and not bool((val != 0).any() if hasattr(val, "any") else val != 0)
            except (TypeError, ValueError):
                return False
        eqn = producers.get(v)
        if eqn is None or eqn.primitive.name not in ("broadcast_in_dim", "convert_element_type", "reshape") or not eqn.invars:
            return False
        v = eqn.invars[0]
    return False


def depends(jaxpr: Any, start: set[Any]) -> set[Any]:
    """Vars of an open jaxpr that depend on `start` (an equation with a nested program: every
    output depends on every input)."""
    dep = set(start)
    for eqn in jaxpr.eqns:
        if any(_is_var(v) and v in dep for v in eqn.invars):
            dep.update(eqn.outvars)
    return dep


def truncated_dtype_text(asked: str, got: str, where: str = "") -> tuple[str, str]:
    """STB301's message and help where the code asks for `asked` (in the JAX function `where`)
    and JAX silently narrows it to `got` (`jax_enable_x64` off): the entries' trace (from JAX's
    warning) and `pytest --stabcheck` (from the request itself) say the same."""
    in_fn = f" in `{where}`" if where else ""
    return (
        f"`{asked}` requested explicitly here{in_fn} is silently truncated to `{got}` (`jax_enable_x64` is off): the result is not the dtype the code asks for",
        f"ask for `{got}` (or the input's dtype) explicitly, or enable `jax_enable_x64` if `{asked}` is really needed",
    )


ZERO_GRADIENT_HELP = "keep a differentiable path (a smooth surrogate such as `jax.nn.sigmoid(k * (a - b))` for a comparison, a straight-through estimator `x + lax.stop_gradient(round(x) - x)`), or differentiate the solution with `jax.custom_jvp`/implicit differentiation instead of through the bisection"


def zero_gradient_cut(primal: Any, grad: Any, grad_out: Any, invar: Any) -> list[Any]:
    """STB410's test, shared by entries and `pytest --stabcheck`: the gradient `grad_out` (an
    output of the open jaxpr `grad`) is the constant zero although an output of the open jaxpr
    `primal` uses its input `invar`; the equations down to the primitive that cuts the derivative
    (see `first_cut`), [] when there is no silent cut to report."""
    if not is_zero_constant(grad, grad_out):
        return []
    reached = depends(primal, {invar})
    if not any(v in reached for v in primal.outvars if not hasattr(v, "val")):  # Literals have `val`
        return []  # the output does not use this leaf at all: no silent cut to report
    return first_cut(primal, {invar})


def zero_gradient_message(leaf: str, cut: Any, transform: str = "grad") -> str:
    """STB410's message for the leaf `leaf` whose derivative the equation `cut` drops."""
    prim = cut.primitive.name
    what = "a comparison" if prim in ("lt", "gt", "le", "ge", "eq", "ne") else "a cast to an integer type" if prim == "convert_element_type" else f"`{prim}`"
    return f"`{leaf}` reaches the output only through {what} here, which has no derivative; `{transform}` returns exactly zero for it, silently, and training never moves it"


def first_cut(jaxpr: Any, start: set[Any]) -> list[Any]:
    """The first equation, nested programs included, that consumes a value depending on `start`
    through a primitive with no derivative (a comparison, rounding, a cast to an integer), with
    the equations that hold it, outermost first ([] when there is none). A primitive inside a
    library function (`jnp.round` is a small jitted program) is found inside its call."""
    dep = set(start)
    for eqn in jaxpr.eqns:
        hit = [v for v in eqn.invars if _is_var(v) and v in dep]
        if hit:
            name = eqn.primitive.name
            if name in _NONDIFF or (name == "convert_element_type" and _is_intlike(_dtype(eqn.outvars[0]))):
                return [eqn]
            for sub in sub_jaxprs(eqn):
                inner = {sv for sv, ov in zip(reversed(sub.invars), reversed(eqn.invars)) if _is_var(ov) and ov in dep}
                found = first_cut(sub, inner)
                if found:
                    return [eqn, *found]
            dep.update(eqn.outvars)
    return []
