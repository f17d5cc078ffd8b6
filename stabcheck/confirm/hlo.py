"""Which user line each operation of a lowered (StableHLO) program came from, and its types.

`sites(text)` parses `Lowered.as_text(debug_info=True)`: every op's `loc(#locN)` is resolved
through named and call-site locations to the innermost user frame. The confirm stage uses it to
check a dtype claim against what the compiled program really computes at that line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from stabcheck.traced.source import is_internal, is_library

_DEF = re.compile(r"^#(loc\d*) = loc\((.*)\)\s*$", re.M)
_FILE = re.compile(r'^"([^"]+)":(\d+):\d+')
_NAMED = re.compile(r'^"[^"]*"\(#(loc\d*)\)$')
_CALLSITE = re.compile(r"^callsite\(#(loc\d*) at #(loc\d*)\)$")
_OP = re.compile(r"=\s*(?:stablehlo|chlo|mhlo)\.(\w+).*?(?:->\s*\(?|:\s*)(tensor<[^>]*>)[^\n]*loc\(#(loc\d*)\)\s*$", re.M)


@dataclass(frozen=True, slots=True)
class OpSite:
    op: str
    result: str  # e.g. tensor<2xf64>
    file: str
    line: int

    @property
    def dtype(self) -> str:
        return self.result.rstrip(">").split("x")[-1].removeprefix("tensor<")


def sites(text: str) -> list[OpSite]:
    defs = {m.group(1): m.group(2).strip() for m in _DEF.finditer(text)}
    cache: dict[str, list[tuple[str, int]]] = {}

    def frames(ref: str, depth: int = 0) -> list[tuple[str, int]]:
        if ref in cache or depth > 64:
            return cache.get(ref, [])
        body = defs.get(ref, "")
        out: list[tuple[str, int]] = []
        if m := _FILE.match(body):
            out = [(m.group(1), int(m.group(2)))]
        elif m := _NAMED.match(body):
            out = frames(m.group(1), depth + 1)
        elif m := _CALLSITE.match(body):
            out = frames(m.group(1), depth + 1) + frames(m.group(2), depth + 1)
        cache[ref] = out
        return out

    out: list[OpSite] = []
    for m in _OP.finditer(text):
        user = [(f, ln) for f, ln in frames(m.group(3)) if not is_internal(f)]
        if user:
            out.append(OpSite(m.group(1), m.group(2), user[0][0], user[0][1]))
            if is_library(user[0][0]):
                # an op inside a library layer (`eqx.nn.Linear.__call__`) also runs at the
                # project line that called into the library, where a traced finding names it
                caller = next(((f, ln) for f, ln in user if not is_library(f)), None)
                if caller is not None:
                    out.append(OpSite(m.group(1), m.group(2), caller[0], caller[1]))
    return out


def at(all_sites: list[OpSite], path: str, line: int) -> list[OpSite]:
    want = os.path.realpath(path)
    return [s for s in all_sites if s.line == line and os.path.realpath(s.file) == want]
