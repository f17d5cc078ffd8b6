"""`make bench`, the language server part: how fast diagnostics follow an edit of a 2,000-line file.

    python benchmarks/server.py             # measure, print, and rewrite its section of docs/benchmarks.md
    python benchmarks/server.py --no-write  # measure and print only

An editor's view, end to end: `python -m stabcheck server` in a subprocess, JSON-RPC over its real
stdin/stdout. The client opens a 2,000-line file (the example and scenario modules, concatenated:
realistic JAX code, with findings) and then sends `didChange` edits one at a time (typing a comment
at the end of a line in the middle of the file, then deleting it), each time waiting for the
`publishDiagnostics` of that version. A change's latency is the time from sending it to receiving
its diagnostics, less the server's debounce (`DEBOUNCE`, the deliberate wait for the typist to
pause): what remains is the server's work per change (the incremental edit, the static stage on
the whole buffer, the conversion of every finding to a diagnostic, the JSON-RPC both ways).
Target: under 100 ms per change (the median; the 90th percentile is shown beside it).

Runs after `benchmarks/run.py`, which rewrites docs/benchmarks.md: this script replaces only the
part between its markers, appending it when the markers are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _doc import write_section  # benchmarks/_doc.py: the script's own folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stabcheck.server._server import DEBOUNCE  # noqa: E402

TARGET_MS = 100.0
LINES = 2000
BEGIN, END = "<!-- server-benchmark:begin -->", "<!-- server-benchmark:end -->"
SOURCES = sorted((ROOT / "examples").glob("*.py")) + sorted((ROOT / "fixtures" / "scenarios").glob("*.py"))


def corpus_file(lines: int = LINES) -> str:
    """Whole example/scenario modules, cycled until `lines` lines, then cut at the last top-level
    statement boundary before it and padded with comment lines to exactly `lines`."""
    texts = [p.read_text(encoding="utf-8").rstrip("\n") + "\n\n\n" for p in SOURCES]
    out: list[str] = []
    i = 0
    while len(out) < lines:
        chunk = texts[i % len(texts)].splitlines()
        if len(out) + len(chunk) > lines:
            break
        out += chunk
        i += 1
    out += [f"# padding {n}" for n in range(lines - len(out))]
    return "\n".join(out) + "\n"


class Client:
    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "stabcheck", "server"], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(os.environ["BENCH_SERVER_LOG"], "w") if os.environ.get("BENCH_SERVER_LOG") else subprocess.DEVNULL)
        self.next_id = 0

    def send(self, method: str, params: Any, *, request: bool = False) -> int | None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        rid = None
        if request:
            self.next_id += 1
            rid = msg["id"] = self.next_id
        body = json.dumps(msg).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()
        return rid

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        length = 0
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the server exited")
            if not line.strip():
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return json.loads(self.proc.stdout.read(length))

    def until(self, pred: Any) -> dict[str, Any]:
        while True:
            m = self.read()
            if pred(m):
                return m


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(changes: int = 40) -> dict[str, Any]:
    text = corpus_file()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big_module.py"
        path.write_text(text, encoding="utf-8")
        uri = path.as_uri()
        started = time.perf_counter()
        c = Client(Path(tmp))
        rid = c.send("initialize", {"processId": os.getpid(), "rootUri": Path(tmp).as_uri(), "capabilities": {}}, request=True)
        c.until(lambda m: m.get("id") == rid)
        c.send("initialized", {})
        ready = time.perf_counter()
        c.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})
        first = c.until(lambda m: m.get("method") == "textDocument/publishDiagnostics")
        opened = time.perf_counter()
        findings = len(first["params"]["diagnostics"])
        line = LINES // 2
        width = len(text.splitlines()[line])
        latencies = []
        cpu_start: float | None = None
        warmup = 4  # the first edits pay for lazy imports and caches: not counted
        for v in range(2, changes + warmup + 2):
            if v % 2 == 0:
                change = {"range": {"start": {"line": line, "character": width}, "end": {"line": line, "character": width}}, "text": "  # typing"}
            else:
                change = {"range": {"start": {"line": line, "character": width}, "end": {"line": line, "character": width + 10}}, "text": ""}
            if v == warmup + 2:
                cpu_start = cpu_seconds(c.proc.pid)
            t0 = time.perf_counter()
            c.send("textDocument/didChange", {"textDocument": {"uri": uri, "version": v}, "contentChanges": [change]})
            got = c.until(lambda m, v=v: m.get("method") == "textDocument/publishDiagnostics" and m["params"].get("version") == v)
            if v >= warmup + 2:
                latencies.append(time.perf_counter() - t0 - DEBOUNCE)
            assert len(got["params"]["diagnostics"]) == findings
        cpu_end = cpu_seconds(c.proc.pid)
        server_cpu_ms = (cpu_end - cpu_start) / changes * 1e3 if cpu_start is not None and cpu_end is not None else float("nan")
        rid = c.send("shutdown", None, request=True)
        c.until(lambda m: m.get("id") == rid)
        c.send("exit", None)
        status = c.proc.wait(timeout=60)
    ms = sorted(x * 1e3 for x in latencies)
    return {
        "check_cpu_ms": check_cpu_ms(text),
        "server_cpu_ms": server_cpu_ms,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "cores": os.cpu_count(),
        "lines": text.count("\n"),
        "findings": findings,
        "changes": changes,
        "start_ms": (ready - started) * 1e3,
        "open_ms": (opened - ready) * 1e3,
        "median_ms": statistics.median(ms),
        "p90_ms": ms[int(0.9 * (len(ms) - 1))],
        "max_ms": ms[-1],
        "debounce_ms": DEBOUNCE * 1e3,
        "exit_status": status,
    }


def check_cpu_ms(text: str, repeats: int = 15) -> float:
    """The static stage on the same buffer in this process, as the server runs it (CPU time, the
    median): the part of a change's latency that is stabcheck's own work."""
    from stabcheck import api
    from stabcheck.config import Config
    from stabcheck.server._server import findings_for
    from stabcheck.static.engine import Dispatcher

    cfg = Config(types=False)
    dispatcher = Dispatcher(api.enabled_rules(cfg))
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        with api.gc_tuned():
            findings_for(text, "big_module.py", None, cfg, dispatcher)
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def render(r: dict[str, Any]) -> str:
    if r["median_ms"] < TARGET_MS:
        met = "met"
    else:
        met = f"not met at a load of {r['load']:.1f} on {r['cores']} cores; the server's own work per change: {r['server_cpu_ms']:.0f} ms of CPU"
    return "\n".join(
        [
            BEGIN,
            "## Language server: diagnostics per change",
            "",
            "Written by `benchmarks/server.py` (run by `make bench` after `benchmarks/run.py`). An editor's view:",
            "`stabcheck server` in a subprocess, JSON-RPC over its stdio; a "
            f"{r['lines']:,}-line file of the example and scenario modules ({r['findings']} findings) is opened, then edited "
            f"{r['changes']} times (a comment typed at the end of a line in the middle, then deleted), each edit waiting for its "
            f"`publishDiagnostics`. Latency is from sending the change to receiving its diagnostics, less the "
            f"{r['debounce_ms']:.0f} ms debounce (the server's deliberate wait for a pause in typing).",
            "",
            "| measure | ms | target |",
            "|---|---:|---|",
            f"| per change, median | {r['median_ms']:.1f} | < {TARGET_MS:.0f} ms ({met}) |",
            f"| per change, 90th percentile | {r['p90_ms']:.1f} | |",
            f"| per change, slowest | {r['max_ms']:.1f} | |",
            f"| didOpen to first diagnostics | {r['open_ms']:.1f} | |",
            f"| server start to `initialize` answered | {r['start_ms']:.1f} | |",
            f"| the server's CPU time per change (all its work: protocol, edit, check, publish; mean) | {r['server_cpu_ms']:.1f} | |",
            f"| the static stage on that buffer, in process (CPU time, median) | {r['check_cpu_ms']:.1f} | |",
            "",
            f"The machine's load average during the run was {r['load']:.1f} on {r['cores']} cores. The latencies are wall-clock and grow",
            "with the load (a process that shares a core with others waits for its turn); the CPU times do not: on an idle core a",
            "change's latency is about the server's CPU time per change.",
            "",
            END,
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=40)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    result = measure(args.changes)
    section = render(result)
    print(section)
    if not args.no_write:
        write_section(Path(args.output), section, BEGIN, END)


if __name__ == "__main__":
    main()
