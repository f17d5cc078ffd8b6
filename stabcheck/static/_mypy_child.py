"""The typed tier's subprocess: mypy runs here, bounded, never in stabcheck's own process.

    python -m stabcheck.static._mypy_child REQUEST.json RESULT.json

`stabcheck.static.typed` writes the request (the files, mypy's cache directory, the facts it
already has, the memory bound), waits with a time bound, and reads the result. The memory bound
is applied here, before mypy is imported (RLIMIT_DATA: the heap and private mappings; RLIMIT_AS
would also count mypyc's and the interpreter's shared mappings), and core dumps are off: a mypy
that overflows its C stack on a 50,000-term boolean chain dies with SIGSEGV, which the parent
turns into one note. A CPU-time limit a little above the parent's time bound stops a mypy whose
parent died without killing it. This module imports only the standard library before the
bounds are set.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MEMORY_EXIT = 3  # the exit status that tells the parent the memory bound was hit


def _bound(memory: int | None, seconds: float | None = None) -> None:
    try:
        import resource  # POSIX only
    except ImportError:  # pragma: no cover - not on POSIX
        return
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    if seconds:  # a backstop if the parent dies (SIGKILL) and cannot enforce its time bound:
        try:  # CPU seconds never exceed wall seconds here (one thread), so it never fires first
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)
            cpu = int(seconds) + 10
            resource.setrlimit(resource.RLIMIT_CPU, (cpu if hard == resource.RLIM_INFINITY else min(cpu, hard), hard))
        except (ValueError, OSError, OverflowError):
            pass
    if memory:
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
            cap = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
        except (ValueError, OSError):
            pass


def _answer(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m stabcheck.static._mypy_child REQUEST.json RESULT.json\n")
        return 2
    request_path, result_path = argv
    with open(request_path, encoding="utf-8") as fh:
        request = json.load(fh)
    _bound(request.get("memory"), request.get("seconds"))
    try:
        from stabcheck.static import _mypy_extract as mx  # the typed tier's machinery: only when types are on

        out: dict[str, Any] = {"ok": True, **mx.analyse(request["files"], request["cache_dir"], request.get("old", {}))}
    except MemoryError:
        out = {"ok": False, "why": "memory"}
    except RecursionError:
        out = {"ok": False, "why": "crash", "message": "RecursionError"}
    except RuntimeError as e:
        if "can't start new thread" in str(e):  # a thread's stack is memory too
            out = {"ok": False, "why": "memory"}
        else:
            out = {"ok": False, "why": "crash", "message": f"RuntimeError: {e}"[:300]}
    except ImportError as e:
        out = {"ok": False, "why": "import", "message": f"{type(e).__name__}: {e}"[:300]}
    except Exception as e:
        if any(c.__name__ == "MypyUnavailable" for c in type(e).__mro__):  # and `Blocked`
            out = {"ok": False, "why": "mypy", "message": str(e)[:300]}
        else:
            out = {"ok": False, "why": "crash", "message": f"{type(e).__name__}: {e}"[:300]}
    try:
        _answer(result_path, out)
    except MemoryError:  # the bound hit again while writing the answer
        return MEMORY_EXIT
    return MEMORY_EXIT if out.get("why") == "memory" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
