"""`stabcheck server`: the language server for editors (LSP over stdin/stdout; docs/editors.md).

Importing this module imports neither pygls nor the server: only running the command does.
"""

from __future__ import annotations

from stabcheck.cli._app import Exit, app, fail, guard


@app.command()
@guard
def server() -> None:
    """Run the language server (LSP over stdin/stdout) for editors; see docs/editors.md."""
    from stabcheck import server as lsp_server  # pygls: loaded only when the server runs

    if not lsp_server.available():
        fail(lsp_server.MISSING)
    raise Exit(lsp_server.serve())
