"""How every reporter words an instability chain (`Finding.chains`, innermost -> outermost).

A chain's first frame is the finding's own line; the frames after it are the calls that reach it,
the last one in the function a transform is applied to (`Frame.via`)."""

from __future__ import annotations

from stabcheck.finding import Chain, Finding, Frame
from stabcheck.reporters import clean


def frame_text(fr: Frame) -> str:
    """`update (main.py:10) under jax.jit`; names and paths made printable (`reporters.clean`)."""
    name = clean(fr.function or "<module>")
    return f"{name} ({clean(fr.path)}:{fr.line})" + (f" under {clean(fr.via)}" if fr.via else "")


def callers(chain: Chain) -> Chain:
    """The frames after the finding's own line."""
    return chain[1:]


def full_lines(f: Finding) -> list[str]:
    """One line per call, innermost first; the calls of one chain indent step by step:

        via scale (a.py:12)
          via other (a.py:22) under jax.jit
    """
    out = []
    for c in f.chains:
        for depth, fr in enumerate(callers(c)):
            out.append("  " * depth + f"via {frame_text(fr)}")
    return out


def outermost(f: Finding) -> Frame | None:
    """The transformed caller of the first chain (the shortest)."""
    return f.chains[0][-1] if f.chains and len(f.chains[0]) > 1 else None


def short(f: Finding) -> str:
    """`reached from update (main.py:10) under jax.jit (+1 more)`, or "" without a chain."""
    top = outermost(f)
    if top is None:
        return ""
    more = len(f.chains) - 1
    return f"reached from {frame_text(top)}" + (f" (+{more} more)" if more > 0 else "")


def as_json(f: Finding) -> list[list[dict[str, object]]]:
    return [[{k: clean(v) if isinstance(v, str) else v for k, v in fr.to_dict().items()} for fr in c] for c in f.chains]
