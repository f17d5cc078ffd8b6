"""`stabcheck server`: the language server, on pygls.

On `didOpen` (at once) and `didChange` (debounced by `DEBOUNCE` seconds, on the unsaved buffer)
the static stage checks the buffer's text with the config of the file's project and the client's
settings; the findings go out as `publishDiagnostics`. Findings of the last `--trace/--confirm`
run (`stabcheck._lastrun`) join them while the buffer is byte-for-byte the file that run checked.
Nothing here imports or runs the user's code: an editor opens untrusted files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from stabcheck import _lastrun, api, registry
from stabcheck._cache import cache_home
from stabcheck.config import Config, ConfigError, UsageError, distrust, find_config, load_config
from stabcheck.finding import Finding
from stabcheck.rule import Rule
from stabcheck.server import _features, _settings, _text
from stabcheck.server._features import Snapshot
from stabcheck.static import xfile
from stabcheck.static.engine import Dispatcher, check_bytes

DEBOUNCE = 0.15  # seconds of quiet after the last keystroke before a buffer is checked
log = logging.getLogger("stabcheck.server")


class StabcheckServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("stabcheck", api.__version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.settings = _settings.Settings()
        self.snapshots: dict[str, Snapshot] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self._configs: dict[tuple[str, int, int], Config] = {}
        self._dispatchers: dict[tuple[str, ...], Dispatcher] = {}
        self._reported: set[str] = set()
        self._typed: dict[str, tuple[str, Any]] = {}  # path -> (sha256 of the saved bytes, FileTypes or None)
        self._typing: set[tuple[str, str]] = set()  # (path, sha256) being typed now
        self._facts: dict[str, dict[str, str]] = {}  # project root -> its facts (`api.project_facts`)
        self.shutdown_requested = False
        # fixes (libcst) and the typed tier (mypy) take seconds: their own threads, so that they
        # never hold up pygls's pool, which also reads the client's messages
        self.work = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stabcheck")

    # -- settings and config -------------------------------------------------------------------
    def apply_settings(self, raw: Any) -> None:
        self.settings = _settings.parse(raw)
        for problem in self.settings.problems:
            self.window_log_message(lsp.LogMessageParams(type=lsp.MessageType.Warning, message=f"stabcheck: {problem}"))

    def config_for(self, path: Path | None) -> Config:
        """The project's config for this file (cached while the config file is unchanged), with the
        client's settings applied. A broken config file is reported once and the defaults used."""
        root = Path(self.workspace.root_path) if self.workspace.root_path else None
        try:
            found, base = self._project_config(path, root)
        except (ConfigError, UsageError) as e:
            self._report_once(f"stabcheck: {e}; using the default settings for this file until it is fixed", lsp.MessageType.Error)
            found = None
            base = replace(Config(), root=str(path.parent if path is not None else root or "."))
        return _settings.effective(base, found is not None, self.settings)

    def _project_config(self, path: Path | None, root: Path | None) -> tuple[Path | None, Config]:

        if self.settings.preference == "editorOnly":
            return None, Config()
        start = path if path is not None else root
        if start is None:
            return None, Config()
        found = find_config(start)
        if found is None:
            return None, Config()
        try:
            st = found.stat()
            key = (str(found), st.st_mtime_ns, st.st_size)
        except OSError:
            return found, distrust(load_config(found))
        cfg = self._configs.get(key)
        if cfg is None:
            cfg = distrust(load_config(found))  # as `check` reads a discovered config (the server runs no stage anyway)
            self._configs = {k: v for k, v in self._configs.items() if k[0] != key[0]}
            self._configs[key] = cfg
        return found, cfg

    def _report_once(self, message: str, kind: lsp.MessageType) -> None:
        if message in self._reported:
            return
        self._reported.add(message)
        self.window_show_message(lsp.ShowMessageParams(type=kind, message=message))

    def dispatcher(self, rules: tuple[type[Rule], ...]) -> Dispatcher:
        """One Dispatcher per set of enabled rules, built once."""
        key = tuple(r.code for r in rules)
        d = self._dispatchers.get(key)
        if d is None:
            d = self._dispatchers[key] = Dispatcher(rules)
        return d

    @property
    def encoding(self) -> _text.Encoding:
        enc = str(self.workspace.position_encoding or "utf-16")
        return enc if enc in ("utf-8", "utf-16", "utf-32") else "utf-16"  # type: ignore[return-value]

    # -- checking ------------------------------------------------------------------------------
    def check(self, uri: str) -> Snapshot | None:
        """Check the document's current text and publish its diagnostics."""
        self.timers.pop(uri, None)
        doc = self.document(uri)
        if doc is None:  # closed meanwhile
            return None
        if doc.language_id not in (None, "", "python") and not uri.endswith((".py", ".pyi")):
            return None  # a client that sends every file it opens: not ours to check
        started, cpu = time.perf_counter(), time.process_time()
        snap = self.snapshot(uri, doc.source, doc.version, _fs_path(uri))
        self.snapshots[uri] = snap
        checked = time.perf_counter()
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, version=doc.version, diagnostics=snap.diagnostics))
        log.debug("checked %s v%s: %.1f ms (%.1f ms CPU), published in %.1f ms: %d findings", uri, doc.version, (checked - started) * 1e3, (time.process_time() - cpu) * 1e3, (time.perf_counter() - checked) * 1e3, len(snap.findings))
        return snap

    def snapshot(self, uri: str, text: str, version: int | None, path: Path | None) -> Snapshot:
        config = self.config_for(path)
        shown = _shown_path(path, config, uri)
        types = self.types_for(uri, path, text, config) if config.types and path is not None else None
        if path is not None:  # the project's x64 fact, as `check .` takes it (one scan per project, kept until a save)
            key = xfile.project_root(str(path))
            if key not in self._facts:
                self._facts[key] = api.project_facts(str(path), config, with_itself=True)
            api.install_project_facts(self._facts[key])
        with api.gc_tuned():  # as `check` runs: big short-lived trees, few collections
            findings = findings_for(text, shown, path, config, self.dispatcher(api.enabled_rules(config)), types)
        lines = _text.split_lines(text)
        enc = self.encoding
        root = config.root if config.source else os.getcwd()
        diagnostics = [_features.diagnostic(f, lines, enc, uri, version, root) for f in findings]
        return Snapshot(uri, version, text, lines, enc, shown, config, findings, diagnostics)

    def document(self, uri: str) -> Any:
        """The open document (pygls keys them by unquoted URI), or None."""

        docs = self.workspace.text_documents
        return docs.get(uri) or docs.get(unquote(uri))

    def current(self, uri: str) -> Snapshot | None:
        """The snapshot of the document's current text, checking it now if a check is pending."""
        snap = self.snapshots.get(uri)
        doc = self.document(uri)
        if doc is None:
            return None
        if snap is None or snap.version != doc.version or snap.text != doc.source:
            t = self.timers.pop(uri, None)
            if t is not None:
                t.cancel()
            snap = self.check(uri)
        return snap

    WATCHED = ("**/pyproject.toml", "**/stabcheck.toml")

    def watch_files(self) -> None:
        """Ask the client to report changes of config files and of the traced runs' records
        (`workspace/didChangeWatchedFiles`), where it can be asked: a finished `check --trace`
        then shows in the open files, and a config edited outside the editor applies at once. The
        records are outside the workspace (`_lastrun`): watched where the client takes patterns
        relative to a base folder."""

        ws = self.client_capabilities.workspace
        watched = getattr(ws, "did_change_watched_files", None) if ws else None
        if not getattr(watched, "dynamic_registration", False):
            return
        watchers = [lsp.FileSystemWatcher(glob_pattern=g) for g in self.WATCHED]
        if getattr(watched, "relative_pattern_support", False):
            records = cache_home() / "projects"
            watchers.append(lsp.FileSystemWatcher(glob_pattern=lsp.RelativePattern(base_uri=records.absolute().as_uri(), pattern=f"*/{_lastrun.FILENAME}")))
        options = lsp.DidChangeWatchedFilesRegistrationOptions(watchers=watchers)
        self.client_register_capability(lsp.RegistrationParams(registrations=[lsp.Registration(id="stabcheck-watched-files", method=lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES, register_options=options)]))

    def resolves_edits(self) -> bool:
        """Does the client resolve a code action's `edit` lazily (`codeAction/resolve`)?"""
        action = getattr(self.client_capabilities.text_document, "code_action", None) if self.client_capabilities.text_document else None
        support = getattr(action, "resolve_support", None)
        return bool(support and "edit" in (support.properties or ()))

    def types_for(self, uri: str, path: Path, text: str, config: Config) -> Any:
        """The typed tier's facts for this exact text, or None. mypy reads files, not buffers, and
        its facts are keyed by source positions: they apply only while the buffer is the saved
        file. When they are missing for that content, mypy runs in a background thread and the
        document is checked again when it is done; the untyped findings show meanwhile."""

        data = text.encode("utf-8", "surrogatepass")
        digest = _lastrun.file_hash(data)
        key = str(path)
        have = self._typed.get(key)
        if have is not None and have[0] == digest:
            return have[1]
        try:
            if path.read_bytes() != data:
                return None
        except OSError:
            return None
        if (key, digest) in self._typing:
            return None
        self._typing.add((key, digest))
        loop = asyncio.get_running_loop()
        # the project's cache directory, in a part of its own: mypy's facts are kept per set of
        # checked files, and one file's would replace those of `check`'s whole-tree runs
        cache_root = _lastrun.location(_lastrun.project_root([str(path)], config)).parent / "server"

        def run() -> tuple[Any, list[str]]:
            from stabcheck.static import typed  # the typed tier's machinery: only when types are on

            prepared = typed.prepare([path], cache_root)
            return prepared.files.get(os.path.abspath(path)), prepared.notes

        def done(fut: Any) -> None:
            self._typing.discard((key, digest))
            try:
                types, notes = fut.result()
            except Exception as e:  # mypy crashed: the untyped findings stand
                types, notes = None, [f"the typed tier failed on {path}: {type(e).__name__}: {e}"]
            for note in notes:
                self.window_log_message(lsp.LogMessageParams(type=lsp.MessageType.Info, message=f"stabcheck: {note}"))
            self._typed[key] = (digest, types)
            if types is not None and self.document(uri) is not None:
                self.schedule(uri, 0)

        future = self.work.submit(run)
        future.add_done_callback(lambda fut: loop.call_soon_threadsafe(done, fut))
        return None

    def schedule(self, uri: str, delay: float) -> None:
        old = self.timers.pop(uri, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self.timers[uri] = loop.call_later(delay, self._safe_check, uri)

    def _safe_check(self, uri: str) -> None:
        try:
            self.check(uri)
        except Exception as e:  # a bug of ours must not take the editor's server down
            log.exception("checking %s failed", uri)
            self._report_once(f"stabcheck: internal error while checking {uri}: {type(e).__name__}: {e}", lsp.MessageType.Error)

    def recheck_all(self) -> None:
        for uri in list(self.workspace.text_documents):
            self._safe_check(uri)


def findings_for(text: str, shown: str, path: Path | None, config: Config, dispatcher: Dispatcher, types: Any = None) -> list[Finding]:
    """The static stage on the buffer (refined by the typed tier's `types` when given: facts of
    exactly this text), plus the last traced/confirmed run's findings for this file when the buffer
    is still what that run checked; suppressions and the config applied as `stabcheck check`
    applies them."""

    rules = api.enabled_rules(config)
    data = text.encode("utf-8", "surrogatepass")
    result = check_bytes(data, shown, config, dispatcher)
    if api.take_newer_syntax({shown: result}):  # valid Python of a newer interpreter: not checked, as `check` says
        log.info("%s needs a newer Python than %d.%d to parse: not checked", shown, *sys.version_info[:2])
        return []
    stages: tuple[str, ...] = ("static",)
    if types is not None:
        from stabcheck.static import typed  # the typed tier's machinery: only when types are on

        result = typed.refine(data, shown, config, dispatcher, types, result)
    if path is not None:
        later = _lastrun.lookup(path, data)
        if later:
            result.findings.extend(replace(f, path=shown) for f in later)
            stages = ("static", "traced", "confirm")
    return api.finalize({shown: result}, rules, config, stages)


def _fs_path(uri: str) -> Path | None:
    if not uri.startswith("file:"):
        return None
    from pygls.uris import to_fs_path  # pygls: an optional dependency, only in the server

    p = to_fs_path(uri)
    return Path(p) if p else None


def _shown_path(path: Path | None, config: Config, uri: str) -> str:
    """The path findings carry: relative to the config's directory when below it (so
    per-file-ignores match as on the command line), else absolute; the URI for unsaved buffers."""
    if path is None:
        return uri
    base = Path(config.root).resolve() if config.source else None
    if base is not None:
        try:
            return path.resolve().relative_to(base).as_posix()
        except ValueError:
            pass
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return Path(rel).as_posix()
    except ValueError:
        pass
    return path.as_posix()


def build() -> StabcheckServer:
    server = StabcheckServer()

    @server.feature(lsp.INITIALIZE)
    def initialize(ls: StabcheckServer, params: lsp.InitializeParams) -> None:
        ls.apply_settings(params.initialization_options)

    @server.feature(lsp.INITIALIZED)
    def initialized(ls: StabcheckServer, params: lsp.InitializedParams) -> None:
        ls.watch_files()

    @server.feature(lsp.SHUTDOWN)
    def shutdown(ls: StabcheckServer, *args: Any) -> None:
        ls.shutdown_requested = True
        for t in ls.timers.values():
            t.cancel()
        ls.timers.clear()
        ls.work.shutdown(wait=False, cancel_futures=True)  # queued fixes and mypy runs: dropped

    @server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: StabcheckServer, params: lsp.DidChangeConfigurationParams) -> None:
        # Neovim and others send `{}` when the user configured nothing for this server: that
        # keeps the settings given at start-up rather than resetting them
        if params.settings:
            ls.apply_settings(params.settings)
            ls.recheck_all()

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: StabcheckServer, params: lsp.DidOpenTextDocumentParams) -> None:
        ls._safe_check(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: StabcheckServer, params: lsp.DidChangeTextDocumentParams) -> None:
        ls.schedule(params.text_document.uri, DEBOUNCE)

    @server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: StabcheckServer, params: lsp.DidSaveTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = ls.document(uri)
        if doc is not None and "x64" in doc.source.lower():  # it may turn x64 on or off for its project
            ls._facts.clear()
            ls.recheck_all()
        elif uri.endswith((".toml",)):
            ls._configs.clear()
            ls.recheck_all()
        elif doc is not None:
            ls.schedule(uri, 0)  # a saved file may now match the last traced run's record

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: StabcheckServer, params: lsp.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        t = ls.timers.pop(uri, None)
        if t is not None:
            t.cancel()
        ls.snapshots.pop(uri, None)
        ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[]))

    @server.feature(lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def did_change_watched(ls: StabcheckServer, params: lsp.DidChangeWatchedFilesParams) -> None:
        ls._configs.clear()
        ls._facts.clear()
        ls.recheck_all()

    @server.feature(lsp.TEXT_DOCUMENT_HOVER)
    def hover(ls: StabcheckServer, params: lsp.HoverParams) -> lsp.Hover | None:
        snap = ls.current(params.text_document.uri)
        return None if snap is None else _features.hover(snap, params.position)

    @server.feature(lsp.TEXT_DOCUMENT_CODE_ACTION, lsp.CodeActionOptions(code_action_kinds=[lsp.CodeActionKind.QuickFix, lsp.CodeActionKind.SourceFixAll, _features.FIX_ALL_KIND], resolve_provider=True))
    async def code_action(ls: StabcheckServer, params: lsp.CodeActionParams) -> list[lsp.CodeAction] | None:
        snap = ls.current(params.text_document.uri)
        if snap is None:
            return None
        lazy = ls.resolves_edits()
        # fixes run libcst (seconds on a large file): off the event loop, so diagnostics keep flowing
        actions = await asyncio.get_running_loop().run_in_executor(ls.work, lambda: _features.code_actions(snap, params.range, params.context, lazy=lazy))
        return actions or None

    @server.feature(lsp.CODE_ACTION_RESOLVE)
    async def resolve_code_action(ls: StabcheckServer, action: lsp.CodeAction) -> lsp.CodeAction:
        uri = action.data.get("uri") if isinstance(action.data, dict) else None
        snap = ls.current(uri) if isinstance(uri, str) else None
        if snap is None:
            action.disabled = lsp.CodeActionDisabled(reason="the file is not open")
            return action
        return await asyncio.get_running_loop().run_in_executor(ls.work, lambda: _features.resolve(snap, action))

    @server.command(_features.SHOW_DOCS)
    def show_docs(ls: StabcheckServer, *args: Any) -> None:

        code = _first_string(args)
        rule = registry.get(code) if code else None
        if rule is None:
            ls.window_show_message(lsp.ShowMessageParams(type=lsp.MessageType.Error, message=f"stabcheck: no rule {code!r}"))
            return
        uri = _features.docs_uri(rule.code, rule.name)
        supported = bool(getattr(getattr(ls.client_capabilities.window, "show_document", None), "support", False)) if ls.client_capabilities.window else False
        if supported:
            ls.window_show_document(lsp.ShowDocumentParams(uri=uri, external=True))
        else:
            ls.window_show_message(lsp.ShowMessageParams(type=lsp.MessageType.Info, message=f"{rule.code} {rule.name}: {rule.summary()} See {uri} or run `stabcheck explain {rule.code}`."))

    return server


def _first_string(args: Any) -> str:
    """The first string among a command's arguments (clients nest them differently)."""
    stack = list(args)
    while stack:
        a = stack.pop(0)
        if isinstance(a, str):
            return a
        if isinstance(a, (list, tuple)):
            stack[:0] = list(a)
    return ""


def serve() -> int:
    """Run the server on stdin/stdout until the client says `exit`; 0 after a `shutdown`, else 1."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(levelname)s %(message)s")
    if os.environ.get("STABCHECK_DEBUG"):
        log.setLevel(logging.DEBUG)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing may print into the protocol stream
    server = build()
    server.start_io(stdin, stdout)
    return 0 if server.shutdown_requested else 1


__all__ = ["DEBOUNCE", "StabcheckServer", "build", "findings_for", "serve"]
