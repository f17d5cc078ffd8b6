"""Discovers the rules under `stabcheck.rules` and looks them up by code, slug or prefix."""

from __future__ import annotations

import functools
import importlib
import pkgutil

import stabcheck.rules as pkg
from stabcheck.rule import Rule


@functools.cache
def all_rules() -> tuple[type[Rule], ...]:
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
    found: dict[str, type[Rule]] = {}
    stack = list(Rule.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.code and cls.__module__.startswith(pkg.__name__ + "."):
            if cls.code in found and found[cls.code] is not cls:
                raise RuntimeError(f"two rules claim {cls.code}: {found[cls.code]} and {cls}")
            found[cls.code] = cls
    return tuple(sorted(found.values(), key=lambda r: r.code))


@functools.cache
def _index() -> dict[str, type[Rule]]:
    idx: dict[str, type[Rule]] = {}
    for r in all_rules():
        idx[r.code] = r
        idx[r.name] = r
    return idx


def get(code_or_slug: str) -> type[Rule] | None:
    return _index().get(code_or_slug.strip().upper() if code_or_slug.strip().upper().startswith("STB") else code_or_slug.strip().lower())


def matching(selector: str) -> list[type[Rule]]:
    """Rules that a selector names: a code (STB101), a prefix (STB1, STB), a slug, or ALL."""
    sel = selector.strip()
    if sel.upper() == "ALL":
        return list(all_rules())
    rule = get(sel)
    if rule is not None:
        return [rule]
    up = sel.upper()
    if up.startswith("STB"):
        return [r for r in all_rules() if r.code.startswith(up)]
    return []


def is_valid_selector(selector: str) -> bool:
    sel = selector.strip().upper()
    if sel == "ALL" or get(selector) is not None:
        return True
    return bool(sel.startswith("STB") and len(sel) <= 6 and sel[3:].isdigit() and matching(selector))
