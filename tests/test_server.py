"""`stabcheck server` driven as an editor drives it: JSON-RPC on the real stdio of a subprocess."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pygls")

from stabcheck.api import check_source  # noqa: E402
from stabcheck.config import Config  # noqa: E402

TIMEOUT = 300  # seconds: a busy machine is slow, never wrong
BRANCH = "import jax\n\n\n@jax.jit\ndef f(x):\n    if x > 0:\n        return x\n    return -x\n"
FIXED = BRANCH.replace("if x > 0:", "if True:")
FLOAT64 = "import jax\nimport jax.numpy as jnp\n\n\n@jax.jit\ndef f(x):\n    return x.astype(float) * 2\n"


class Client:
    """A minimal LSP client: Content-Length framing over the server's stdin/stdout."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "stabcheck", "server", *args], cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.held: list[dict[str, Any]] = []
        self.stderr: list[bytes] = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            headers: dict[str, str] = {}
            while True:
                line = out.readline()
                if not line:
                    self.inbox.put(None)
                    return
                if not line.strip():
                    break
                key, _, value = line.decode("ascii").partition(":")
                headers[key.strip().lower()] = value.strip()
            self.inbox.put(json.loads(out.read(int(headers["content-length"]))))

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        rid = self.next_id
        self.send({"id": rid, "method": method, "params": params})
        reply = self.wait(lambda m: m.get("id") == rid and "method" not in m)
        assert "error" not in reply, reply
        return reply.get("result")

    def wait(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for i, m in enumerate(self.held):
            if match(m):
                return self.held.pop(i)
        while True:
            try:
                m = self.inbox.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no such message from the server; held: {self.held}") from None
            if m is None:
                raise AssertionError("the server closed its stdout: " + b"".join(self.stderr).decode(errors="replace"))
            if match(m):
                return m
            self.held.append(m)

    def diagnostics(self, uri: str, version: int | None = None) -> list[dict[str, Any]]:
        m = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == uri and (version is None or m["params"].get("version") == version))
        return m["params"]["diagnostics"]

    def initialize(self, root: Path, encodings: list[str] | None = None, options: Any = None, capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
        caps: dict[str, Any] = dict(capabilities or {})
        if encodings is not None:
            caps["general"] = {"positionEncodings": encodings}
        result = self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": caps, "initializationOptions": options})
        self.notify("initialized", {})
        return result

    def open(self, path: Path, text: str, version: int = 1) -> str:
        uri = path.as_uri()
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": version, "text": text}})
        return uri

    def close(self) -> int:
        assert self.request("shutdown", None) is None
        self.notify("exit", None)
        return self.proc.wait(timeout=TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """stabcheck's per-user cache (where `check --trace` records its run for the server), private
    to each test, in this process and in the servers it starts."""
    cache = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("STABCHECK_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def client_at(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Client] = []

    def start(*args: str) -> Client:
        c = Client(tmp_path, *args)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def _units(s: str, encoding: str) -> int:
    return len(s.encode({"utf-8": "utf-8", "utf-16": "utf-16-le", "utf-32": "utf-32-le"}[encoding])) // {"utf-8": 1, "utf-16": 2, "utf-32": 4}[encoding]


def _index(line: str, units: int, encoding: str) -> int:
    """The character index of a position given in `encoding` code units (an independent decoder)."""
    codec, width = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2), "utf-32": ("utf-32-le", 4)}[encoding]
    return len(line.encode(codec)[: units * width].decode(codec))


def apply(text: str, edits: list[dict[str, Any]], encoding: str = "utf-16") -> str:
    """Apply LSP TextEdits as an editor does (no overlaps; applied from the end)."""
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)

    def offset(p: dict[str, int]) -> int:
        return starts[p["line"]] + _index(lines[p["line"]], p["character"], encoding)

    spans = sorted(((offset(e["range"]["start"]), offset(e["range"]["end"]), e["newText"]) for e in edits), reverse=True)
    for a, b, new in spans:
        text = text[:a] + new + text[b:]
    return text


def edits_of(action: dict[str, Any], uri: str) -> list[dict[str, Any]]:
    changes = action["edit"]["documentChanges"]
    assert [c["textDocument"]["uri"] for c in changes] == [uri]
    return changes[0]["edits"]


# -- the editor's round trip -----------------------------------------------------------------------
def test_open_diagnose_act_hover_fix_and_shutdown(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.py"
    path.write_text(BRANCH, encoding="utf-8")
    client = client_at()
    init = client.initialize(tmp_path)
    caps = init["capabilities"]
    assert caps["positionEncoding"] == "utf-16" and caps["hoverProvider"] and caps["codeActionProvider"]
    uri = client.open(path, BRANCH)

    (diag,) = client.diagnostics(uri, 1)
    line = BRANCH.splitlines()[5]
    col = line.index("x > 0")
    assert diag["code"] == "STB101" and diag["source"] == "stabcheck" and diag["severity"] == 1
    assert diag["range"] == {"start": {"line": 5, "character": col}, "end": {"line": 5, "character": col + len("x > 0")}}
    assert "branch-on-tracer" in diag["message"] and "`x > 0`" in diag["message"]
    assert diag["codeDescription"]["href"].endswith("docs/rules.md#stb101-branch-on-tracer")
    assert diag["data"] == {"name": "branch-on-tracer", "stage": "static", "status": "suspected", "function": "f", "version": 1, "fixable": False}

    actions = client.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": diag["range"], "context": {"diagnostics": [diag]}})
    titles = [a["title"] for a in actions]
    noqa = next(a for a in actions if "noqa" in a["title"])
    suppressed = apply(BRANCH, edits_of(noqa, uri))
    assert "    if x > 0:  # noqa: STB101\n" in suppressed
    assert not [f for f in check_source(suppressed, "model.py") if f.code == "STB101"]
    docs = next(a for a in actions if a["title"].startswith("Show documentation"))
    assert docs["command"]["command"] == "stabcheck.showRuleDocs" and docs["command"]["arguments"] == ["STB101"], titles

    hover = client.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": {"line": 5, "character": col + 2}})
    text = hover["contents"]["value"]
    assert "STB101" in text and "Why is this bad?" in text and "TracerBoolConversionError" in text
    assert client.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0}}) is None

    # an unsaved edit that removes the hazard: the diagnostic goes away (the file on disk is unchanged)
    start = {"line": 5, "character": col}
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"range": {"start": start, "end": {"line": 5, "character": col + 5}}, "text": "True"}]})
    assert client.diagnostics(uri, 2) == []
    assert path.read_text(encoding="utf-8") == BRANCH

    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert client.diagnostics(uri) == []
    assert client.close() == 0


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "resolved"])
def test_fix_action_rewrites_the_buffer_and_fix_all(tmp_path: Path, client_at, lazy: bool) -> None:  # type: ignore[no-untyped-def]
    client = client_at()
    caps = {"textDocument": {"codeAction": {"resolveSupport": {"properties": ["edit"]}}}} if lazy else None
    # `astype(float)` is a guess of the static stage (float64 only under x64): shown with preview
    assert client.initialize(tmp_path, capabilities=caps, options={"preview": True})["capabilities"]["codeActionProvider"]["resolveProvider"] is True
    uri = client.open(tmp_path / "cast.py", FLOAT64)
    diags = client.diagnostics(uri, 1)
    (diag,) = [d for d in diags if d["code"] == "STB301"]
    assert diag["data"]["fixable"] is True
    actions = client.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": diag["range"], "context": {"diagnostics": [diag]}})
    fix = next(a for a in actions if a["title"].startswith("Fix STB301"))
    assert fix["kind"] == "quickfix" and fix["isPreferred"] is True
    offered = fix
    if lazy:  # offered without its edit (libcst costs seconds on a large file); computed when chosen
        assert "edit" not in fix
        fix = client.request("codeAction/resolve", fix)
    fixed = apply(FLOAT64, edits_of(fix, uri))
    assert "x.astype(float)" not in fixed and not [f for f in check_source(fixed, "cast.py", Config(preview=True)) if f.code == "STB301"]
    compile(fixed, "cast.py", "exec")

    whole = client.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "context": {"diagnostics": [], "only": ["source.fixAll"]}})
    (fix_all,) = whole
    assert fix_all["kind"] == "source.fixAll.stabcheck"
    if lazy:
        fix_all = client.request("codeAction/resolve", fix_all)
    assert apply(FLOAT64, edits_of(fix_all, uri)) == fixed

    if lazy:  # an action offered for an older text is not applied to the new one
        client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": FLOAT64 + "# more\n"}]})
        stale = client.request("codeAction/resolve", offered)
        assert "edit" not in stale and "changed" in stale["disabled"]["reason"]
    assert client.close() == 0


def test_no_fix_offered_where_none_applies(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    client = client_at()
    client.initialize(tmp_path)
    uri = client.open(tmp_path / "m.py", BRANCH)
    (diag,) = client.diagnostics(uri, 1)
    actions = client.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": diag["range"], "context": {"diagnostics": [diag]}})
    assert not [a for a in actions if a["title"].startswith("Fix")]
    assert client.close() == 0


# -- positions --------------------------------------------------------------------------------------
UNICODE = 'import jax\n\n\n@jax.jit\ndef f(x):\n    if "é😀" and x > 0:\n        return x\n    return -x\n'


@pytest.mark.parametrize("offered,chosen", [(None, "utf-16"), (["utf-16"], "utf-16"), (["utf-8", "utf-16"], "utf-8"), (["utf-32"], "utf-32")])
def test_ranges_in_the_negotiated_encoding(tmp_path: Path, client_at, offered: list[str] | None, chosen: str) -> None:  # type: ignore[no-untyped-def]
    client = client_at()
    assert client.initialize(tmp_path, encodings=offered)["capabilities"]["positionEncoding"] == chosen
    uri = client.open(tmp_path / "u.py", UNICODE)
    (diag,) = client.diagnostics(uri, 1)
    line = UNICODE.splitlines()[5]
    col = line.index("x > 0")
    start = _units(line[:col], chosen)
    assert diag["range"] == {"start": {"line": 5, "character": start}, "end": {"line": 5, "character": start + 5}}
    if chosen == "utf-16":
        assert start == col + 1  # the emoji is two UTF-16 code units, `é` one
    # the noqa action lands at the end of that line, in the same units
    actions = client.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": diag["range"], "context": {"diagnostics": [diag]}})
    noqa = next(a for a in actions if "noqa" in a["title"])
    assert apply(UNICODE, edits_of(noqa, uri), chosen).splitlines()[5] == line + "  # noqa: STB101"
    # an edit sent in the negotiated units: replacing `x > 0` leaves no finding
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"range": diag["range"], "text": "True"}]})
    assert client.diagnostics(uri, 2) == []
    assert client.close() == 0


# -- configuration ------------------------------------------------------------------------------------
def test_project_config_and_client_settings(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    proj = tmp_path / "proj"
    (proj / "pkg").mkdir(parents=True)
    (proj / "pyproject.toml").write_text('[tool.stabcheck]\nignore = ["STB101"]\n', encoding="utf-8")
    both = BRANCH + "\n\n@jax.jit\ndef g(x):\n    return x.astype(jax.numpy.float64)\n"
    client = client_at()
    client.initialize(tmp_path, options={"settings": {"lint": {"ignore": ["STB301"]}}})
    ignored_by_project = client.open(proj / "pkg" / "a.py", both)
    assert client.diagnostics(ignored_by_project, 1) == []  # STB101 by the project, STB301 by the editor
    outside = client.open(tmp_path / "b.py", both)
    assert [d["code"] for d in client.diagnostics(outside, 1)] == ["STB101"]

    # an empty notification (what Neovim sends when nothing is configured) keeps the settings
    client.notify("workspace/didChangeConfiguration", {"settings": {}})
    assert client.request("textDocument/hover", {"textDocument": {"uri": outside}, "position": {"line": 0, "character": 0}}) is None
    # the client's settings change: everything checked again
    client.notify("workspace/didChangeConfiguration", {"settings": {"stabcheck": {"select": ["STB3"]}}})
    got = {}
    for _ in range(2):
        m = client.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics")
        got[m["params"]["uri"]] = [d["code"] for d in m["params"]["diagnostics"]]
    assert got == {ignored_by_project: ["STB301"], outside: ["STB301"]}
    assert client.close() == 0


def test_bad_settings_and_bad_config_are_reported_not_fatal(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "stabcheck.toml").write_text('select = ["NOPE1"]\n', encoding="utf-8")
    client = client_at()
    client.initialize(tmp_path, options={"select": ["STB999"], "colour": "blue"})
    logged = [client.wait(lambda m: m.get("method") == "window/logMessage")["params"]["message"] for _ in range(2)]
    assert any("STB999" in m for m in logged) and any("colour" in m for m in logged)
    uri = client.open(tmp_path / "m.py", BRANCH)
    shown = client.wait(lambda m: m.get("method") == "window/showMessage")["params"]
    assert shown["type"] == 1 and "NOPE1" in shown["message"] and "select" in shown["message"]
    assert [d["code"] for d in client.diagnostics(uri, 1)] == ["STB101"]  # the defaults, meanwhile
    assert client.close() == 0


# -- the last traced run --------------------------------------------------------------------------------
def test_findings_of_the_last_traced_run_while_the_file_is_unchanged(tmp_path: Path, client_at, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from stabcheck import _lastrun
    from stabcheck.config import Config
    from stabcheck.finding import Finding, Span

    source = "import jax\n\n\ndef g(x):\n    return x.sum()\n"
    path = tmp_path / "t.py"
    path.write_text(source, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 't'\n", encoding="utf-8")  # the project's root
    traced = Finding("STB302", "weak-type-output", "`g` returns a weakly typed float", "t.py", Span(5, 12, 5, 19), stage="traced")
    confirmed = Finding("STB406", "gradient-dtype-mismatch", "the gradient of `x` is float64", "t.py", Span(4, 1), stage="confirmed", status="confirmed")
    monkeypatch.chdir(tmp_path)
    assert _lastrun.record(["t.py"], Config(), [traced, confirmed], ("static", "traced", "confirm")) == ""
    assert _lastrun.location(tmp_path.resolve()).is_file() and not (tmp_path / ".stabcheck").exists()

    client = client_at()
    client.initialize(tmp_path)
    uri = client.open(path, source)
    diags = {d["code"]: d for d in client.diagnostics(uri, 1)}
    assert set(diags) == {"STB302", "STB406"}
    assert "(traced by --trace)" in diags["STB302"]["message"] and "(confirmed by --confirm)" in diags["STB406"]["message"]
    assert diags["STB302"]["range"] == {"start": {"line": 4, "character": 11}, "end": {"line": 4, "character": 18}}
    # an unsaved edit: the record no longer describes this text
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": source + "# edited\n"}]})
    assert client.diagnostics(uri, 2) == []
    assert client.close() == 0


@pytest.mark.slow
@pytest.mark.jax
def test_check_trace_records_the_run_for_the_server(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("jax")
    from .conftest import ROOT, run_cli

    source = (ROOT / "examples" / "rbf_fit.py").read_text(encoding="utf-8")
    (tmp_path / "rbf_fit.py").write_text(source, encoding="utf-8")
    proc = run_cli("check", "rbf_fit.py", "--trace", "--output-format", "json", cwd=tmp_path)
    traced = [(r["code"], r["line"]) for r in json.loads(proc.stdout) if r["stage"] == "traced"]
    assert traced, proc.stdout + proc.stderr
    client = client_at()
    client.initialize(tmp_path)
    uri = client.open(tmp_path / "rbf_fit.py", source)
    shown = [(d["code"], d["range"]["start"]["line"] + 1) for d in client.diagnostics(uri, 1) if "by --trace" in d["message"]]
    assert sorted(shown) == sorted(traced)
    assert client.close() == 0


# -- commands and lifecycle ---------------------------------------------------------------------------
def test_show_docs_command(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    client = client_at()
    client.initialize(tmp_path)
    client.request("workspace/executeCommand", {"command": "stabcheck.showRuleDocs", "arguments": ["STB101"]})
    shown = client.wait(lambda m: m.get("method") == "window/showMessage")["params"]["message"]
    assert "STB101 branch-on-tracer" in shown and "docs/rules.md#stb101-branch-on-tracer" in shown
    assert client.close() == 0

    client = client_at()
    client.initialize(tmp_path, capabilities={"window": {"showDocument": {"support": True}}})
    client.send({"id": 99, "method": "workspace/executeCommand", "params": {"command": "stabcheck.showRuleDocs", "arguments": ["STB101"]}})
    ask = client.wait(lambda m: m.get("method") == "window/showDocument")
    assert ask["params"]["uri"].endswith("#stb101-branch-on-tracer") and ask["params"]["external"] is True
    client.send({"id": ask["id"], "result": {"success": True}})
    client.wait(lambda m: m.get("id") == 99)
    assert client.close() == 0


def test_exit_without_shutdown_is_status_1(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    client = client_at()
    client.initialize(tmp_path)
    client.notify("exit", None)
    assert client.proc.wait(timeout=TIMEOUT) == 1


def test_missing_pygls_is_a_clear_error(tmp_path: Path) -> None:
    code = "import sys; sys.modules['pygls'] = None; sys.argv = ['stabcheck', 'server']; from stabcheck.cli import run; run()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'stabcheck[server]'" in proc.stderr


@pytest.mark.slow
def test_typed_tier_when_the_editor_turns_it_on(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("mypy")
    import shutil

    from .conftest import FIXTURES

    shutil.copytree(FIXTURES / "typed", tmp_path / "typed")
    path = tmp_path / "typed" / "model.py"
    source = path.read_text(encoding="utf-8")
    typed_line = next(i for i, line in enumerate(source.splitlines()) if "# typed: STB202" in line)
    client = client_at()
    client.initialize(tmp_path, options={"types": True})
    uri = client.open(path, source)
    untyped = client.diagnostics(uri, 1)  # at once, without waiting for mypy
    assert ("STB202", typed_line) not in {(d["code"], d["range"]["start"]["line"]) for d in untyped}
    typed = client.diagnostics(uri, 1)  # again when mypy is done
    assert ("STB202", typed_line) in {(d["code"], d["range"]["start"]["line"]) for d in typed}
    assert client.close() == 0


# -- the pieces, in process ------------------------------------------------------------------------------
def test_columns_convert_between_encodings() -> None:
    from stabcheck.server import _text

    line = 'a = "é😀"; b'
    cp = line.index("b")
    assert _text.units(line[:cp], "utf-8") == cp + 1 + 3
    assert _text.units(line[:cp], "utf-16") == cp + 1
    assert _text.convert(line, _text.units(line[:cp], "utf-8"), "utf-8", "utf-16") == cp + 1
    assert _text.to_index(line, cp + 1, "utf-16") == cp
    assert _text.to_index(line, 6, "utf-16") == _text.to_index(line, 7, "utf-16") == line.index("😀")  # inside the pair: its start
    assert _text.split_lines("a\r\nb\rc\nd\x0ce") == ["a", "b", "c", "d\x0ce"]
    assert _text.finding_position(["x"], 9, 1, "utf-16") == (0, 1)  # past the end: clamped


@pytest.mark.parametrize(
    "old,new",
    [("abc", "abXc"), ("a\r\nb", "a\nb"), ("x = 1\r\n", "x = 1  # noqa\r\n"), ("same", "same"), ("", "new"), ("é😀x", "é😀y")],
)
def test_minimal_edit_reproduces_the_new_text(old: str, new: str) -> None:
    from stabcheck.server import _text

    start, end, text = _text.minimal_edit(old, new)
    assert old[:start] + text + old[end:] == new
    assert not (0 < start < len(old) and old[start - 1 : start + 1] == "\r\n")


def test_settings_are_read_as_ruff_reads_them() -> None:
    from stabcheck.config import Config
    from stabcheck.server import _settings

    s = _settings.parse({"settings": {"lint": {"select": ["STB1"], "ignore": "STB104", "extendSelect": ["STB301"]}, "configurationPreference": "editorFirst"}})
    assert (s.select, s.ignore, s.extend_select, s.problems) == (("STB1",), ("STB104",), ("STB301",), ())
    project = Config(select=("STB3",), ignore=("STB302",), types=True, source="pyproject.toml")
    editor_first = _settings.effective(project, True, s)
    assert editor_first.select == ("STB1",) and editor_first.ignore == ("STB302", "STB104") and editor_first.types is True
    assert _settings.effective(project, True, _settings.parse({"configurationPreference": "filesystemFirst", "select": ["STB1"]})).select == ("STB3",)
    assert _settings.effective(project, True, _settings.parse({"configurationPreference": "editorOnly"})).select == ("ALL",)
    assert _settings.effective(Config(), False, _settings.Settings()).types is False  # off unless asked for
    bad = _settings.parse({"select": ["NOPE"], "types": "yes", "configurationPreference": "sometimes", "colour": 1})
    assert bad.select is None and bad.types is None and len(bad.problems) == 4
    assert _settings.parse(["not", "a", "mapping"]).problems


def test_a_chain_step_in_the_same_file_is_ranged_in_the_clients_units(tmp_path: Path) -> None:
    from stabcheck.finding import Finding, Frame, Span
    from stabcheck.server import _features, _text

    text = 'def g(x):\n    s = "é😀"; return helper(x)\n\n\ndef helper(x):\n    if x > 0:\n        return x\n'
    call = text.splitlines()[1]
    col = 1 + _text.units(call[: call.index("helper")], _text.FINDING_COLUMNS)  # findings' columns, whatever their unit
    chain = (Frame("m.py", 6, 8, "helper"), Frame("m.py", 2, col, "g", "jax.jit"))
    f = Finding("STB101", "branch-on-tracer", "`x > 0` is traced", "m.py", Span(6, 8, 6, 13), chains=(chain,))
    (step,) = _features.diagnostic(f, _text.split_lines(text), "utf-16", "file:///m.py", 1, str(tmp_path)).related_information
    assert step.location.uri == "file:///m.py" and step.message == "`helper` is called here, in `g`, which runs under `jax.jit`"
    assert (step.location.range.start.line, step.location.range.start.character) == (1, call.index("helper") + 1)  # 😀: two UTF-16 units


def test_the_run_record_is_never_written_through_a_symlink(tmp_path: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stabcheck import _lastrun
    from stabcheck.config import Config

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[tool.stabcheck]\n", encoding="utf-8")
    where = _lastrun.location(project).parent
    where.parent.mkdir(parents=True)
    where.symlink_to(elsewhere, target_is_directory=True)
    (project / "m.py").write_text("x = 1\n", encoding="utf-8")
    monkeypatch.chdir(project)
    note = _lastrun.record(["m.py"], Config(root=str(project), source=str(project / "pyproject.toml")), [], ("static", "traced"))
    assert "symbolic link" in note and list(elsewhere.iterdir()) == []


def test_a_record_inside_the_project_is_not_trusted(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    """A repository cannot plant findings (or "fixes") in the editor: only the user's own runs,
    recorded in the user's cache, are shown."""
    from stabcheck import _lastrun

    source = "x = 1\n"
    path = tmp_path / "m.py"
    path.write_text(source, encoding="utf-8")
    planted = {"version": 1, "root": str(tmp_path.resolve()), "stages": ["static", "traced"], "files": {str(path.resolve()): {"sha256": _lastrun.file_hash(source.encode()), "findings": [{"code": "STB101", "name": "branch-on-tracer", "message": "planted", "path": "m.py", "line": 1, "col": 1, "stage": "traced", "fix": {"description": "run this", "edits": [{"line": 1, "col": 1, "end_line": 1, "end_col": 1, "replacement": "import os; os.system('x')\n"}]}}]}}}
    for where in (tmp_path / ".stabcheck" / "last-run.json", tmp_path / ".stabcheck_cache" / "last-run.json"):
        where.parent.mkdir(exist_ok=True)
        where.write_text(json.dumps(planted), encoding="utf-8")
    client = client_at()
    client.initialize(tmp_path)
    uri = client.open(path, source)
    assert client.diagnostics(uri, 1) == []
    assert client.close() == 0


def test_the_server_never_runs_the_users_code(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    """An editor opens untrusted files: opening, editing, fixing and hovering never import them."""
    marker = tmp_path / "IMPORTED"
    source = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n" + FLOAT64
    path = tmp_path / "evil.py"
    path.write_text(source, encoding="utf-8")
    client = client_at()
    client.initialize(tmp_path, options={"preview": True})  # the `astype(float)` guess and its fix too
    uri = client.open(path, source)
    diags = client.diagnostics(uri, 1)
    client.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": diags[0]["range"], "context": {"diagnostics": diags, "only": ["quickfix", "source.fixAll"]}})
    client.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": diags[0]["range"]["start"]})
    client.notify("textDocument/didSave", {"textDocument": {"uri": uri}})
    assert client.close() == 0
    assert not marker.exists()


def test_the_cli_does_not_load_the_server_until_asked(tmp_path: Path) -> None:
    code = "import sys; sys.argv = ['stabcheck', '--help']\nfrom stabcheck.cli import run\ntry:\n    run()\nexcept SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('pygls', 'lsprotocol', 'jax')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.stdout.strip().splitlines()[-1] == "[]" and "server" in proc.stdout


@pytest.mark.parametrize(
    "line,after",
    [
        ("x = 1  # noqa: STB101", "x = 1"),
        ("x = 1  # noqa: STB101, E501", "x = 1  # noqa: E501"),
        ("x = 1  # stabcheck: ignore[branch-on-tracer]", "x = 1"),
        ("x = 1  # noqa: STB101 (kept for the old jax)", "x = 1  # (kept for the old jax)"),
    ],
)
def test_an_unused_suppression_is_removed_by_its_action(tmp_path: Path, client_at, line: str, after: str) -> None:  # type: ignore[no-untyped-def]
    source = f"import jax\n{line}\n"
    client = client_at()
    client.initialize(tmp_path)
    uri = client.open(tmp_path / "s.py", source)
    (diag,) = client.diagnostics(uri, 1)
    assert diag["code"] == "STB900" and diag["tags"] == [1]  # shown faded, as unnecessary code
    actions = client.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": diag["range"], "context": {"diagnostics": [diag]}})
    remove = next(a for a in actions if a["title"].startswith("Remove the unused suppression"))
    assert remove["isPreferred"] is True and not [a for a in actions if "noqa: STB900" in a["title"]]
    fixed = apply(source, edits_of(remove, uri))
    assert fixed.splitlines()[1] == after
    assert not [f for f in check_source(fixed, "s.py") if f.code == "STB900"]
    assert client.close() == 0


def test_chains_of_frames_become_related_locations(tmp_path: Path) -> None:
    """The shape of `Finding.chains`: frames from the offending line out to the transformed entry."""
    from stabcheck.finding import Finding, Frame, Span
    from stabcheck.server import _features, _text

    text = "def helper(x):\n    if x > 0:\n        return x\n    return -x\n"
    frames = (Frame("m.py", 2, 8, "helper"), Frame("model.py", 12, 12, "step", "jax.jit"))
    f = Finding("STB101", "branch-on-tracer", "`x > 0` is traced", "m.py", Span(2, 8, 2, 13), chains=(frames,))
    (step,) = _features.diagnostic(f, _text.split_lines(text), "utf-16", "file:///m.py", 1, str(tmp_path)).related_information
    assert step.location.uri == (tmp_path / "model.py").as_uri() and step.location.range.start.line == 11
    assert step.message == "`helper` is called here, in `step`, which runs under `jax.jit`"


def test_a_new_run_record_shows_in_open_files_when_the_client_reports_it(tmp_path: Path, own_cache: Path, client_at, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from stabcheck import _lastrun
    from stabcheck.config import Config
    from stabcheck.finding import Finding, Span

    source = "import jax\n\n\ndef g(x):\n    return x.sum()\n"
    path = tmp_path / "t.py"
    path.write_text(source, encoding="utf-8")
    client = client_at()
    client.initialize(tmp_path, capabilities={"workspace": {"didChangeWatchedFiles": {"dynamicRegistration": True, "relativePatternSupport": True}}})
    ask = client.wait(lambda m: m.get("method") == "client/registerCapability")
    (registration,) = ask["params"]["registrations"]
    assert registration["method"] == "workspace/didChangeWatchedFiles"
    patterns = [w["globPattern"] for w in registration["registerOptions"]["watchers"]]
    assert "**/pyproject.toml" in patterns
    assert {"baseUri": (own_cache / "projects").as_uri(), "pattern": "*/last-run.json"} in patterns
    client.send({"id": ask["id"], "result": None})
    uri = client.open(path, source)
    assert client.diagnostics(uri, 1) == []

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 't'\n", encoding="utf-8")  # the project's root
    monkeypatch.chdir(tmp_path)  # as `stabcheck check --trace` run here would record it
    traced = Finding("STB302", "weak-type-output", "`g` returns a weakly typed float", "t.py", Span(5, 12, 5, 19), stage="traced")
    assert _lastrun.record(["t.py"], Config(), [traced], ("static", "traced")) == ""
    client.notify("workspace/didChangeWatchedFiles", {"changes": [{"uri": _lastrun.location(tmp_path.resolve()).as_uri(), "type": 1}]})
    assert [d["code"] for d in client.diagnostics(uri, 1)] == ["STB302"]
    assert client.close() == 0


def test_a_helper_reached_from_jit_shows_its_chain(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    source = "import jax\n\n\ndef helper(x):\n    if x > 0:\n        return x\n    return -x\n\n\n@jax.jit\ndef step(x):\n    return helper(x) * 2\n"
    client = client_at()
    client.initialize(tmp_path)
    uri = client.open(tmp_path / "m.py", source)
    (diag,) = [d for d in client.diagnostics(uri, 1) if d["code"] == "STB101"]
    (step,) = diag["relatedInformation"]
    assert step["location"]["uri"] == uri and step["location"]["range"]["start"] == {"line": 11, "character": source.splitlines()[11].index("helper")}
    assert step["message"] == "`helper` is called here, in `step`, which runs under `jax.jit`"
    hover = client.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": diag["range"]["start"]})
    assert "`helper` (m.py:5) <- `step` (m.py:12, under `jax.jit`)" in hover["contents"]["value"]
    assert client.close() == 0


def test_project_facts_as_check_sees_them(tmp_path: Path, client_at) -> None:  # type: ignore[no-untyped-def]
    # x64 turned on by another file of the project makes an explicit float64 intended in the
    # editor as in `stabcheck check .`; a file only a newer Python parses is not a syntax error
    proj = tmp_path / "proj"
    (proj / "pkg").mkdir(parents=True)
    (proj / "pyproject.toml").write_text('[project]\nname = "proj"\n', encoding="utf-8")
    (proj / "pkg" / "__init__.py").write_text('import jax\njax.config.update("jax_enable_x64", True)\n', encoding="utf-8")
    wide = "import jax\nimport jax.numpy as jnp\n\n\n@jax.jit\ndef count(mask):\n    return jnp.sum(mask).astype(jnp.float64)\n"
    (proj / "pkg" / "model.py").write_text(wide, encoding="utf-8")
    (tmp_path / "alone.py").write_text(wide, encoding="utf-8")
    client = client_at()
    client.initialize(tmp_path)
    assert client.diagnostics(client.open(proj / "pkg" / "model.py", wide), 1) == []
    assert [d["code"] for d in client.diagnostics(client.open(tmp_path / "alone.py", wide), 1)] == ["STB301"]
    if sys.version_info < (3, 12):
        newer = "type Axis = int | tuple[int, ...]\n"
        (tmp_path / "new.py").write_text(newer, encoding="utf-8")
        assert client.diagnostics(client.open(tmp_path / "new.py", newer), 1) == []
    assert client.close() == 0
