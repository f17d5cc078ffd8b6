"""`stabcheck server`: the language server for editors (LSP over stdin/stdout; docs/editors.md).

Importing this module imports neither pygls nor the server: only running the command does.
"""

from __future__ import annotations

from typing import Any

import typer


def register(app: typer.Typer, helpers: dict[str, Any]) -> None:
    guard, fail, Exit = (helpers[k] for k in ("guard", "fail", "Exit"))

    @app.command()
    @guard
    def server() -> None:
        """Run the language server (LSP over stdin/stdout) for editors; see docs/editors.md."""
        from stabcheck import server as lsp_server

        if not lsp_server.available():
            fail(lsp_server.MISSING)
        raise Exit(lsp_server.serve())
