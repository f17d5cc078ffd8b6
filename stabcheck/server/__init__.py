"""`stabcheck server`: a Language Server Protocol server over stdio (pygls + lsprotocol).

Editors get the static stage's findings as they type, fixes and `# noqa` as code actions, and
the rule's "Why is this bad?" on hover; see docs/editors.md. pygls is an optional dependency
(`pip install 'stabcheck[server]'`): this module imports it only in `serve()`.
"""

from __future__ import annotations

import importlib.util

MISSING = "`stabcheck server` needs pygls and lsprotocol: pip install 'stabcheck[server]' (or: pip install 'pygls>=2,<3')"


def available() -> bool:
    try:
        return importlib.util.find_spec("pygls") is not None and importlib.util.find_spec("lsprotocol") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def serve() -> int:
    """Serve one client on stdin/stdout; the exit status (0 after `shutdown` then `exit`)."""
    from stabcheck.server._server import serve as _serve  # pygls: an optional dependency, loaded by serve() alone

    return _serve()


__all__ = ["MISSING", "available", "serve"]
