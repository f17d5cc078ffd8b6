"""Calls across the checked files without mypy: a helper in one file, called with traced arguments
from transformed code in another, is analysed as transformed code, and its findings carry the
chain back to the caller.

It stays cheap: no file is parsed twice to find its callers. Each file's analysis *exports* the
calls its transformed functions make, with traced arguments, to names imported from one of the
checked modules (`modules`, the dotted names the checked files' paths give: `pkg/helpers.py` is
`helpers` and `pkg.helpers`; relative imports are resolved against the caller's path). After the
static pass, `seeds_for` turns the exports into *seeds* for the files they name, and only the
files whose seeds changed are checked again (`active(seeds)` around the check), to a fixpoint.
The cache keeps each file's exports and the seeds its findings were computed with, so a warm run
re-checks nothing.

Formats (JSON, cached): an export is `{"target": [base, part, ...], "pos": [int], "kw": [str],
"star": int | None, "abstract": bool, "chains": [[frame, ...]]}` where `base` is "" for an
absolute import (parts are the dotted name) or the directory a relative import starts from;
seeds are `{qualname: [{"pos", "kw", "star", "abstract", "chains"}]}`.
"""

from __future__ import annotations

import ast
import contextvars
import functools
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from stabcheck import _notebook
from stabcheck.finding import MAX_CHAINS, Frame

if TYPE_CHECKING:
    from stabcheck.static.context import FileContext

Seeds = dict[str, list[dict[str, Any]]]

_SEEDS: contextvars.ContextVar[Seeds | None] = contextvars.ContextVar("stabcheck_xfile_seeds", default=None)
_MODULES: frozenset[str] = frozenset()  # top-level names of the checked modules; empty: no exports
# project root -> its x64 fact: "on" where a file of the project turns `jax_enable_x64` on
# (`project_x64`), "named" where one only names the flag (`project_names_x64`)
_X64: Mapping[str, str] = {}
MAX_FRAMES = 12


def install(modules: Iterable[str], x64: Mapping[str, str] | None = None) -> None:
    """The dotted module names of the checked files, and the x64 fact of each project root
    (`project_root`) whose files turn x64 on or name it (`source_x64`), in this process and in
    static workers."""
    global _MODULES, _X64
    _MODULES = frozenset(modules)
    _X64 = dict(x64 or {})


def installed() -> frozenset[str]:
    return _MODULES


def installed_x64() -> dict[str, str]:
    return dict(_X64)


def x64_fact(path: str) -> str | None:
    """The x64 fact of `path`'s project: "on", "named" or None (`install`)."""
    return _X64.get(project_root(path)) if _X64 else None


def project_x64(path: str) -> bool:
    """Does a file of `path`'s project turn `jax_enable_x64` on (`enables_x64`)? Then its
    explicit float64 is intended (STB301). Per project, so that checking two projects in one run
    gives each the findings it has alone."""
    return x64_fact(path) == "on"


def project_names_x64(path: str) -> bool:
    """Does a file of `path`'s project turn x64 on, or name the flag at all (reads
    `jax.config.jax_enable_x64`, tells the user to set it, tests both precisions)? Then the project
    knows what x64 does to an explicit float64."""
    return x64_fact(path) is not None


_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def project_root(path: str) -> str:
    """The project a file belongs to: the nearest directory above it holding `pyproject.toml`,
    `setup.py`, `setup.cfg` or `.git`; without one, its import root (the first directory above
    it that is not a package: an unpacked wheel's top)."""
    return _root_of_dir(os.path.dirname(os.path.abspath(path)))


def is_project(root: str) -> bool:
    """Is `root` (a `project_root`) a project's own directory, marked by `pyproject.toml`,
    `setup.py`, `setup.cfg` or `.git`, rather than the import root of loose files?"""
    return any(os.path.exists(os.path.join(root, m)) for m in _MARKERS)


@functools.lru_cache(maxsize=4096)
def _root_of_dir(start: str) -> str:
    d = start
    while True:
        if is_project(d):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    d = start
    while os.path.exists(os.path.join(d, "__init__.py")) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    return d


def current() -> Seeds | None:
    return _SEEDS.get()


@contextmanager
def active(seeds: Seeds | None) -> Iterator[None]:
    token = _SEEDS.set(seeds or None)
    try:
        yield
    finally:
        _SEEDS.reset(token)


# -- the module map ----------------------------------------------------------------------------
def _parts(path: str) -> list[str]:
    p = path.replace("\\", "/")
    if p.endswith(".py"):
        p = p[:-3]
    elif p.endswith(".pyi"):
        p = p[:-4]
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if parts and parts[-1] == "__init__":
        parts.pop()
    return parts


def module_names(path: str) -> list[str]:
    """The dotted names a checked file may be imported as: the suffixes of its path (4 at most)."""
    parts = _parts(path)
    if not parts or not all(x.isidentifier() for x in parts[-1:]):
        return []
    out = []
    for i in range(len(parts) - 1, max(-1, len(parts) - 5), -1):
        tail = parts[i:]
        if not all(x.isidentifier() for x in tail):
            break
        out.append(".".join(tail))
    return out


class ModuleMap:
    """Dotted module name -> the checked files it may name; module path -> file."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, str] = {}
        for p in paths:
            if not p.endswith((".py", ".pyi")):
                continue
            for n in module_names(p):
                self.by_name.setdefault(n, []).append(p)
            self.by_stem.setdefault("/".join(_parts(p)) if not p.startswith("/") else "/" + "/".join(_parts(p)), p)

    def names(self) -> set[str]:
        return set(self.by_name)

    def resolve(self, target: list[str], caller: str) -> tuple[str, str] | None:
        """(file, qualname in it) of an export's target, or None when it is not a checked file."""
        base, parts = target[0], target[1:]
        for i in range(len(parts) - 1, 0 if base == "" else -1, -1):
            qual = ".".join(parts[i:])
            if base:
                stem = posixpath.normpath(posixpath.join(base, *parts[:i])) if i else posixpath.normpath(base)
                hit = self.by_stem.get(stem)
                if hit is not None:
                    return hit, qual
                continue
            files = self.by_name.get(".".join(parts[:i]))
            if files:
                return _nearest(files, caller), qual
        return None


def _nearest(files: list[str], caller: str) -> str:
    """Of several files a module name may mean, the one nearest the caller's directory."""
    if len(files) == 1:
        return files[0]
    here = posixpath.dirname(caller.replace("\\", "/")).split("/")

    def shared(p: str) -> int:
        there = posixpath.dirname(p.replace("\\", "/")).split("/")
        n = 0
        for a, b in zip(here, there):
            if a != b:
                break
            n += 1
        return n

    return sorted(files, key=lambda p: (-shared(p), p))[0]


# -- exports: in the worker that checks the calling file ---------------------------------------------
def _relative_aliases(ctx: FileContext) -> dict[str, tuple[str, list[str]]]:
    """`from .helpers import normalize` in `pkg/main.py`: normalize -> ("pkg/helpers", ["normalize"])."""
    out: dict[str, tuple[str, list[str]]] = {}
    here = posixpath.dirname(ctx.path.replace("\\", "/")) or "."
    for node in ctx.names.statements:
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = here
        for _ in range(node.level - 1):
            base = posixpath.normpath(posixpath.join(base, ".."))
        mod = node.module.split(".") if node.module else []
        for a in node.names:
            if a.name != "*":
                out[a.asname or a.name] = (posixpath.join(base, *mod) if mod else base, [a.name])
    return out


def _target(func: ast.AST, ctx: FileContext, relative: dict[str, tuple[str, list[str]]]) -> list[str] | None:
    q = ctx.names.qualname(func)
    if q is not None:
        parts = q.split(".")
        if len(parts) < 2 or not any(".".join(parts[:i]) in _MODULES for i in range(1, len(parts))):
            return None
        return ["", *parts]
    attrs: list[str] = []
    while isinstance(func, ast.Attribute):
        attrs.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name) and func.id in relative:
        base, first = relative[func.id]
        return [base, *first, *reversed(attrs)]
    return None


def exports(ctx: FileContext) -> list[dict[str, Any]]:
    """The calls this file's transformed functions make with traced arguments into other checked
    files, each with the chains that reach the call."""
    if not _MODULES:
        return []
    an = ctx.analysis
    relative: dict[str, tuple[str, list[str]]] | None = None
    out: list[dict[str, Any]] = []
    for info in an.functions.values():
        if not info.transformed:
            continue
        for node in an.own_nodes(info):
            if not isinstance(node, ast.Call) or isinstance(node.func, ast.Lambda):
                continue
            if ctx.names.transform_call(node) is not None or an.resolve(node.func, info) is not None:
                continue
            if relative is None:
                relative = _relative_aliases(ctx)
            target = _target(node.func, ctx, relative)
            if target is None:
                continue
            pos, star = [], None
            for i, a in enumerate(node.args):
                if isinstance(a, ast.Starred):
                    if an.is_traced(a.value, info):
                        star = i
                    break
                if an.is_traced(a, info):
                    pos.append(i)
            kw = sorted(k.arg for k in node.keywords if k.arg and an.is_traced(k.value, info))
            if not pos and not kw and star is None:
                continue
            # the arguments the caller's analysis proves traced arrays (issue 16): only those make
            # the callee's parameters proven; the rest are possibly traced
            proven = [i for i in pos if an.proves_traced(node.args[i], info)]
            proven += sorted(k.arg for k in node.keywords if k.arg in kw and an.proves_traced(k.value, info))
            line, col = node.lineno, node.col_offset + 1
            groups: dict[bool, tuple[tuple[Frame, ...], ...]]
            if info.entry:
                groups = {info.abstract: ((Frame(ctx.path, line, col, info.qualname, info.entry),),)}
            else:  # the chains that stage the code out, and the others (`grad` alone)
                staged = an.chains(info, line, col, ctx.path, abstract=True)
                rest = tuple(c for c in an.chains(info, line, col, ctx.path) if c not in staged)
                groups = {True: staged, False: rest} if staged or rest else {info.abstract: ((Frame(ctx.path, line, col, info.qualname),),)}
            for abstract, chains in groups.items():
                if chains:
                    out.append({"target": target, "pos": pos, "kw": kw, "star": star, "abstract": abstract, "proven": proven, "chains": [[fr.to_dict() for fr in c] for c in chains]})
    return out


# -- seeds: in the main process, between rounds ----------------------------------------------------
def seeds_for(exports_by_file: dict[str, list[dict[str, Any]]], modules: ModuleMap) -> dict[str, Seeds]:
    """Which defs of which checked file other files' transformed code calls with traced arguments."""
    seeds: dict[str, Seeds] = {}
    for caller in sorted(exports_by_file):
        for e in exports_by_file[caller]:
            where = modules.resolve(e["target"], caller)
            if where is None or where[0] == caller:
                continue
            path, qual = where
            chains = []
            for c in e["chains"]:
                if len(c) >= MAX_FRAMES or any(fr["path"] == path and fr["function"] == qual for fr in c):
                    continue  # a cycle through the callee, or too deep
                chains.append(c)
            seed = {"pos": e["pos"], "kw": e["kw"], "star": e["star"], "abstract": e["abstract"], "proven": e.get("proven", []), "chains": chains[:MAX_CHAINS]}
            bucket = seeds.setdefault(path, {}).setdefault(qual, [])
            if seed not in bucket:
                bucket.append(seed)
    return seeds


def frames(chain: list[dict[str, Any]]) -> tuple[Frame, ...]:
    return tuple(Frame.from_dict(fr) for fr in chain)


def traced_params(seed: dict[str, Any], params: list[str]) -> set[str]:
    out = {params[i] for i in seed["pos"] if 0 <= i < len(params)}
    if seed["star"] is not None and seed["star"] >= 0:
        out |= set(params[seed["star"] :])
    return out | {k for k in seed["kw"] if k in params}


def valid(extra: object) -> bool:
    """A cache entry's `xfile` part is data from disk: check its shape before it is used."""
    if not isinstance(extra, dict) or not isinstance(extra.get("exports"), list) or not isinstance(extra.get("seeds"), dict):
        return False
    calls = [*extra["exports"], *(s for v in extra["seeds"].values() if isinstance(v, list) for s in v)]
    if not all(isinstance(v, list) for v in extra["seeds"].values()):
        return False
    for e in calls:
        if not isinstance(e, dict) or not isinstance(e.get("pos"), list) or not all(_int(i) and i >= 0 for i in e["pos"]):
            return False
        if not isinstance(e.get("kw"), list) or not all(isinstance(k, str) for k in e["kw"]):
            return False
        if not (e.get("star") is None or (_int(e.get("star")) and e["star"] >= 0)) or not isinstance(e.get("abstract"), bool):
            return False
        if "target" in e and (not isinstance(e["target"], list) or not e["target"] or not all(isinstance(t, str) for t in e["target"])):
            return False
        if not isinstance(e.get("chains"), list):
            return False
        if not isinstance(e.get("proven", []), list) or not all((_int(i) and i >= 0) or isinstance(i, str) for i in e.get("proven", [])):
            return False
        for c in e["chains"]:
            if not isinstance(c, list) or not all(isinstance(fr, dict) and isinstance(fr.get("path"), str) and _int(fr.get("line")) and _int(fr.get("col")) and isinstance(fr.get("function"), str) and isinstance(fr.get("via"), str) for fr in c):
                return False
    return True


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- a project-level fact: x64 ---------------------------------------------------------------------
_FALSY: tuple[object, ...] = (False, 0, "0", "false", "False", "FALSE", "")


def _falsy(e: ast.AST) -> bool:
    return isinstance(e, ast.Constant) and e.value in _FALSY and not isinstance(e.value, float)


def _const(e: ast.AST) -> object:
    return e.value if isinstance(e, ast.Constant) else None


def enables_x64(tree: ast.AST) -> bool:
    """Does this code turn x64 on: `jax.config.update("jax_enable_x64", v)` (any alias of the
    config; `v` anything but a literal False), `jax.experimental.enable_x64()` /
    `numpyro.enable_x64()` (any `enable_x64(...)` call not given False), or the environment
    variable set in code (`os.environ["JAX_ENABLE_X64"] = "1"`, `os.environ.setdefault(...)`,
    `os.putenv(...)`)? Reading the flag (`jax.config.jax_enable_x64`) does not count."""
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            attr = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            args = n.args
            if attr == "update" and len(args) >= 2 and _const(args[0]) == "jax_enable_x64" and not _falsy(args[1]):
                return True
            if attr == "enable_x64" and not any(_falsy(a) for a in args[:1]) and not any(k.arg in ("new_val", "use_x64") and _falsy(k.value) for k in n.keywords):
                return True
            if attr in ("setdefault", "putenv") and len(args) >= 2 and _const(args[0]) == "JAX_ENABLE_X64" and not _falsy(args[1]):
                return True
        elif isinstance(n, ast.Assign) and not _falsy(n.value):
            if any(isinstance(t, ast.Subscript) and _const(t.slice) == "JAX_ENABLE_X64" for t in n.targets):
                return True
    return False


def names_x64(tree: ast.AST) -> bool:
    """Does this code name the x64 flag: a name, attribute, keyword or string (not a docstring or
    comment) spelling `x64` (`jax.config.jax_enable_x64`, `config.read("jax_enable_x64")`,
    `os.environ["JAX_ENABLE_X64"]`, `enable_x64`)?"""
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for n in ast.walk(tree):
        text = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else n.arg if isinstance(n, ast.keyword) else n.value if isinstance(n, ast.Constant) and id(n) not in docs else None
        if isinstance(text, str) and _X64_WORD.search(text):
            return True
    return False


# `x64` as a word of its own (`enable_x64`, `JAX_ENABLE_X64`, `x64`), not the end of `complex64`
_X64_WORD = re.compile(r"(?<![a-z0-9])x64", re.IGNORECASE)


def source_x64(data: bytes, notebook: bool = False) -> str | None:
    """A file's x64 fact from its bytes: "on" (`enables_x64`), "named" (`names_x64`, or it spells
    the flag and cannot be parsed), None. Cheap: only a file that spells it is parsed."""
    if b"x64" not in data and b"X64" not in data:
        return None
    try:
        if notebook:
            text = _notebook.cells(data).source
        else:
            text = data.decode("utf-8")
        tree = ast.parse(text)
        return "on" if enables_x64(tree) else "named" if names_x64(tree) else None
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # a file that cannot be read is reported by its own check
        return "named"


_CONFIGS = ("pyproject.toml", "setup.cfg", "tox.ini", "pytest.ini", ".env")
_X64_SET = re.compile(r"""JAX_ENABLE_X64["']?\s*[=:]\s*["']?(1|true|yes|on)\b""", re.IGNORECASE)


def config_x64(root: str) -> str | None:
    """The x64 fact of a project's configuration files (`_CONFIGS` at `root`): "on" where one sets
    `JAX_ENABLE_X64` to a true value (tox's `setenv`, pytest-env's `env`, a `.env` file), "named"
    where one only spells x64 in some other way."""
    fact = None
    for name in _CONFIGS:
        try:
            with open(os.path.join(root, name), "rb") as fh:
                text = fh.read(1 << 20).decode("utf-8", "replace")
        except OSError:
            continue
        if _X64_SET.search(text):
            return "on"
        if "x64" in text.lower():
            fact = "named"
    return fact


def merge_x64(facts: dict[str, str], root: str, fact: str | None) -> None:
    """Record `fact` for `root` in `facts`, "on" winning over "named"."""
    if fact is not None and facts.get(root) != "on":
        facts[root] = fact


# -- precision: what a seed alone may claim ------------------------------------------------------------
# A tracer-leak finding (STB101-104) in code that only another file's call makes transformed must
# rest on the value being an array by its own code, not on the untyped heuristics carried across
# the file boundary: library helpers handle concrete and traced values alike (`if pred:`,
# `count == 0`, `if filtering(path, value)`), and on optax and equinox nine in ten such findings
# were wrong before this guard. The typed tier applies the same rule with mypy's types.
NEEDS_ARRAY = frozenset({"STB101", "STB102", "STB103", "STB104"})
_ARRAY_MODULES = ("jax.numpy.", "jax.lax.", "jax.nn.", "jax.random.", "jax.scipy.")
_ARRAY_METHODS = frozenset({"sum", "mean", "max", "min", "any", "all", "prod", "std", "var", "argmax", "argmin", "dot", "astype", "reshape", "cumsum", "clip", "squeeze", "ravel", "flatten", "transpose", "round", "conj", "nonzero", "take"})


def only_across_files(info: Any) -> bool:
    """Is `info` transformed only because of other files' calls (seeds), directly or through the
    same-file callers and enclosing functions that those calls reach?"""
    seen: set[int] = set()

    def check(fi: Any) -> bool:
        if id(fi) in seen:
            return True
        seen.add(id(fi))
        if fi.entry or fi.transforms:
            return False
        reasons = [c for c, _ in fi.callers]
        if fi.parent is not None and fi.parent.transformed and not fi.external and not reasons:
            reasons = [fi.parent]
        if not reasons:
            return bool(fi.external)
        return all(check(r) for r in reasons)

    return bool(info.external or info.callers or info.parent) and check(info)


def proved(expr: ast.AST, names: Any, annotated: Any) -> bool:
    """Does `expr` show by its own code that it is an array: a `jnp`/`lax` call, an array method
    (`x.sum()`), a `@`, or a parameter annotated as an array (`annotated(name)`)?"""
    for n in ast.walk(expr):
        if isinstance(n, ast.Call):
            q = names.qualname(n.func)
            if q is not None and q.startswith(_ARRAY_MODULES):
                return True
            if isinstance(n.func, ast.Attribute) and n.func.attr in _ARRAY_METHODS and q is None:
                return True
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult):
            return True
        elif isinstance(n, ast.Name) and annotated(n.id):
            return True
    return False


def consumed(node: ast.AST, code: str) -> list[ast.AST]:
    """The values a finding at `node` is about: the tested expression (STB101), else what the
    reported node consumes (`float(x)`, `np.asarray(x)`, an index, an assigned value)."""
    if code == "STB101":
        return [node]
    if isinstance(node, ast.Call):
        return [*node.args, *(k.value for k in node.keywords)]
    if isinstance(node, ast.Subscript):
        return [node.slice]
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
        return [node.value]
    return [node]
