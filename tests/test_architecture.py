"""The module layout: no import cycle in `stabcheck/`, and the arrows between its parts are exactly
the ones docs/architecture.md names.

Imports are read with `ast`, those inside functions included (they still tie the modules together)
and those under `if TYPE_CHECKING:` left out (they never run). `import a.b` and `from a import b`
(b a module) are edges to `a.b`, not to the package `a`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "stabcheck"
DOC = ROOT / "docs" / "architecture.md"

Edges = dict[str, dict[str, list[int]]]  # module -> imported module -> lines


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for stmt in node.body:
                ids |= {id(n) for n in ast.walk(stmt)}
    return ids


def imports(mods: dict[str, Path]) -> Edges:
    edges: Edges = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_bytes(), filename=str(path))
        skip = _type_checking_only(tree)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(name, {}).setdefault(target, []).append(node.lineno)
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _block(kind: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(rf"^```{kind}\n(.*?)^```", text, flags=re.S | re.M)
    assert len(found) == 1, f"docs/architecture.md needs exactly one ```{kind} block"
    return [ln.split("#")[0].strip() for ln in found[0].splitlines() if ln.split("#")[0].strip()]


def documented_parts() -> dict[str, str]:
    """Module prefix -> part, from the ```parts block (`part: prefix prefix ...`)."""
    out: dict[str, str] = {}
    for line in _block("parts"):
        part, _, prefixes = line.partition(":")
        for prefix in prefixes.split():
            out[prefix] = part.strip()
    return out


def documented_arrows() -> set[tuple[str, str]]:
    """From the ```arrows block: `a -> b, c` lines."""
    out: set[tuple[str, str]] = set()
    for line in _block("arrows"):
        src, _, dsts = line.partition("->")
        out |= {(src.strip(), d.strip()) for d in dsts.split(",") if d.strip()}
    return out


def part_of(module: str, prefixes: dict[str, str]) -> str | None:
    """The part of the longest matching prefix; the package itself (`stabcheck`) matches only
    `stabcheck/__init__.py`, so that a new top-level module must be placed in a part."""
    name = module
    while name:
        if name in prefixes and (name != "stabcheck" or module == "stabcheck"):
            return prefixes[name]
        name = name.rpartition(".")[0]
    return None


def real_arrows(edges: Edges, prefixes: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for a, targets in edges.items():
        for b, lines in targets.items():
            pa, pb = part_of(a, prefixes), part_of(b, prefixes)
            if pa and pb and pa != pb:
                out.setdefault((pa, pb), []).append(f"{a}:{lines[0]} imports {b}")
    return out


def test_no_import_cycle() -> None:
    edges = imports(modules())
    found = cycles(edges)
    shown = [" ; ".join(f"{a} -> {b} (line {edges[a][b][0]})" for a in comp for b in sorted(edges.get(a, ())) if b in comp) for comp in found]
    assert not found, "import cycles:\n" + "\n".join(shown)


def test_every_module_belongs_to_a_documented_part() -> None:
    prefixes = documented_parts()
    missing = [m for m in modules() if part_of(m, prefixes) is None]
    assert not missing, f"modules in no part of docs/architecture.md's ```parts block: {missing}"


def test_arrows_between_parts_are_the_documented_ones() -> None:
    prefixes = documented_parts()
    real = real_arrows(imports(modules()), prefixes)
    doc = documented_arrows()
    unknown = sorted({p for arrow in doc for p in arrow} - set(prefixes.values()))
    assert not unknown, f"arrows name parts the ```parts block does not define: {unknown}"
    undocumented = {arrow: why[:3] for arrow, why in sorted(real.items()) if arrow not in doc}
    absent = sorted(doc - set(real))
    assert not undocumented, "arrows in the code that docs/architecture.md does not name:\n" + "\n".join(f"{a} -> {b}: {'; '.join(w)}" for (a, b), w in undocumented.items())
    assert not absent, f"arrows docs/architecture.md names that no import makes: {absent}"


def test_parts_form_a_line() -> None:
    """No circle between parts either: each part builds only on the ones below it."""
    doc = documented_arrows()
    graph: Edges = {}
    for a, b in doc:
        graph.setdefault(a, {})[b] = [0]
    assert not cycles(graph), f"the parts' arrows make a circle: {cycles(graph)}"


def test_no_module_imports_a_private_name_of_another() -> None:
    """`from stabcheck.x import _y` and `x._y` reach into another module's internals; a shared
    helper is public (or moved to where it is shared)."""
    mods = modules()
    bad: list[str] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_bytes())
        aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("stabcheck"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in mods:
                        aliases.add(a.asname or a.name)
                    elif a.name.startswith("_") and not a.name.startswith("__") and node.module != name:
                        bad.append(f"{name}:{node.lineno} imports {node.module}.{a.name}")
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.asname and a.name.startswith("stabcheck")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    bad.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)
