"""Find entries without importing anything: `@stabcheck.entry` factories (by `ast`) and config targets.

    targets = entry_targets(files, config)      # ["src/entries.py:train_step_entry", ...]

Runs in the stabcheck process, so it must never import JAX or the user's code.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from pathlib import Path

from stabcheck.config import Config
from stabcheck.static.names import Names

ENTRY_NAMES = frozenset({"stabcheck.entry", "stabcheck.traced.entries.entry", "stabcheck.traced.entry"})


def factories(source: str | bytes) -> list[str]:
    """Names of the module-level functions decorated with `@stabcheck.entry` (any alias)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    names = Names(tree)
    out: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                if names.qualname(dec) in ENTRY_NAMES:
                    out.append(node.name)
                    break
    return out


def entry_targets(files: Iterable[Path], config: Config) -> list[str]:
    """Targets for the checked files' factories, then the config's `entries` (paths made absolute
    against the config's directory), each once, in order."""
    out: list[str] = []
    for f in files:
        if f.suffix != ".py":
            continue
        try:
            data = f.read_bytes()
        except OSError:
            continue
        if b"entry" not in data:
            continue
        out += [f"{f}:{name}" for name in factories(data)]
    root = Path(config.root if config.source else ".")
    for t in config.entries:
        where, sep, attr = t.rpartition(":")
        if sep and (where.endswith(".py") or "/" in where) and not os.path.isabs(where):
            t = f"{root / where}:{attr}"
        elif not sep and t.endswith(".py") and not os.path.isabs(t):
            t = str(root / t)
        out.append(t)
    return list(dict.fromkeys(out))
