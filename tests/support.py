"""Helpers the tests share (no test module imports another): the simulated endpoint started as a
real process, a cache that shares the converted embedded model, and a few real-looking rows."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from workbench.config import LLMConfig
from workbench.files import cache_dir
from workbench.llm import LLM, Request

ROOT = Path(__file__).resolve().parent.parent
SIMSERVER = ROOT / "benchmarks" / "simserver.py"

# The smoke run's command, as a user types it. Batches of 8 rows, so each LLM stage saves its
# answers several times: test_resume kills the same command between two batches and compares
# what it resumes to with this run.
SMOKE_RUN = ["run", str(ROOT / "configs" / "smoke.yaml"), "--set", "llm.batch_size=8"]


@contextmanager
def simserver(**opts):
    args = [sys.executable, str(SIMSERVER), "--max-seconds", "60"]
    for k, v in {"latency": 0.01, **opts}.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening "), proc.stderr.read()
        yield line.split()[1]
    finally:
        proc.kill()
        proc.wait()


def drop_weights(folder: Path) -> None:
    """Delete the model weights under a run fixture's folder (each merged student is 0.5 GB) once its
    module's tests are done: the suite's temporary folders peaked at 6.1 GB with every run's kept to
    the end. The notebooks, tables and reports stay for reading a failure."""
    for p in Path(folder).rglob("*.safetensors"):
        p.unlink()


def free_port() -> int:
    """A port nothing listens on, for a server that must come back at the same address (the cache
    keys an endpoint by its URL)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, server, log: Path, seconds: float = 120.0) -> None:
    """Return once `url` answers; fail with the end of the server's `log` when the server process
    exits first or `seconds` pass."""
    import pytest

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"{server.args[0]} exited: {Path(log).read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{url}: no answer in {seconds:g} s: {Path(log).read_text()[-2000:]}")
            time.sleep(0.5)


def stats(url: str, arrivals: bool = False, attempts: bool = False) -> dict:
    """The server's counters; `arrivals`: also each chat request's (seconds since the server
    started, prompt words, max_tokens x n); `attempts`: requests per last message."""
    query = "&".join(q for q, on in (("arrivals=1", arrivals), ("attempts=1", attempts)) if on)
    with urllib.request.urlopen(url + "/stats" + ("?" + query if query else ""), timeout=5) as r:
        return json.loads(r.read())


def llm_for(url: str, tmp_path, monkeypatch, **kw) -> LLM:
    monkeypatch.setenv("SIM_KEY", "sk-sim")
    cfg = LLMConfig(provider="openai", model="sim", base_url=url, api_key_env="SIM_KEY", **kw)
    return LLM(cfg, tmp_path / "cache")


def reqs(n: int, **kw) -> list[Request]:
    return [Request.chat(None, f"row {i}", max_tokens=8, seed=i, **kw) for i in range(n)]


def cache_with_models(path: Path) -> Path:
    """An empty call cache that shares the converted embedded model (and embeddings) of the tests'
    ."""
    path.mkdir(parents=True)
    for sub in ("models", "embeddings"):
        if (cache_dir() / sub).exists():
            (path / sub).symlink_to(cache_dir() / sub)
    return path


def prompt_rows(texts, labels):
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts, "label": labels}).assign(
        keep_prompts=True, reject_reason_prompts=None
    )


SEEDS = pd.DataFrame(
    {
        "id": ["s1", "s2", "s3", "s4"],
        "text": [
            "My new card still has not arrived in the post",
            "When will the card I ordered be delivered?",
            "I lost my card on the train yesterday",
            "Someone stole my wallet with my bank card in it",
        ],
        "label": ["card_arrival", "card_arrival", "lost_or_stolen_card", "lost_or_stolen_card"],
    }
)


# ---------------------------------------------------------------- the package's import graph


def modules(package: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = p.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, ast.AST]]:
    """(module imported, node) for every import of a package module in `path`, at any depth.
    `from pkg import sub` counts as importing pkg.sub when sub is a module, else pkg."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                if target in known and target != name:
                    out.append((target, node))
    return out


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def graph_of(package: Path) -> dict[str, set[str]]:
    known = modules(package)
    return {name: {m for m, _ in imports(name, path, known)} for name, path in known.items()}


# ---------------------------------------------------------------- offline pages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
REMOTE = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.I)
W3_NAMESPACES = re.compile(r"https?://www\.w3\.org/(?:1999/xhtml|1999/xlink|2000/svg|2000/xmlns/|XML/1998/namespace)")


def need_browser() -> None:
    """Skip where no Chromium is installed; fail instead under CI (.ci/run installs it and sets
    WORKBENCH_REQUIRE_BROWSER), so the browser checks cannot silently stop running."""
    import pytest

    if CHROMIUM is None:
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (WORKBENCH_REQUIRE_BROWSER) and not installed")
        pytest.skip("needs Chromium (Debian package chromium)")


def remote_references(html: str) -> list[str]:
    """Everything in a page that could reach the network: a remote address in the src/href/data of
    a script, link, img, iframe, source, embed or object; in inline script code (the XML namespace
    identifiers plotly.js creates SVG with excepted, and plotly.js's own bundle, which the same
    package pins, excepted); and in a CSS url() or @import."""
    import plotly.offline

    bundle = plotly.offline.get_plotlyjs()
    found = []
    for tag, attrs in re.findall(r"<(script|link|img|iframe|source|embed|object)\b([^>]*)>", html, re.I):
        for m in re.finditer(r"\b(?:src|href|data|srcset)\s*=\s*[\"']?([^\"' >]+)", attrs, re.I):
            if REMOTE.match(m.group(1)):
                found.append(f"<{tag}> {m.group(1)}")
    for code in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S | re.I):
        code = W3_NAMESPACES.sub("", code.replace(bundle, ""))
        found += [f"inline script: {u}" for u in re.findall(r"https?://[^\s\"'`)]{0,80}", code)]
    for style in re.findall(r"<style\b[^>]*>(.*?)</style>", html, re.S | re.I):
        found += [f"css: {u}" for u in re.findall(r"(?:url\(|@import\s+)[\"']?(https?://[^\"')\s]+)", style)]
    return found


def _blocker(seen: list[str]):
    def block(route, request) -> None:
        if request.url.startswith(("file:", "data:", "blob:", "about:")):
            route.continue_()
        else:
            seen.append(request.url)
            route.abort()

    return block


def browser_requests(pages: list[Path]) -> dict[str, list[str]]:
    """Per page, every request headless Chromium made for it that was not for a local file, with
    the network cut (each such request is aborted): a page that needs the network shows up here.
    Playwright drives Debian's Chromium; only the page's own requests count, not the browser's."""
    from playwright.sync_api import sync_playwright

    out: dict[str, list[str]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for page_path in pages:
            context = browser.new_context()
            seen: list[str] = []

            context.route("**/*", _blocker(seen))
            page = context.new_page()
            page.on("websocket", lambda ws, seen=seen: seen.append(ws.url))
            page.goto(page_path.as_uri(), wait_until="load", timeout=120_000)
            page.wait_for_timeout(1500)  # scripts that fetch after load (widget managers, mermaid)
            out[f"{page_path.parent.name}/{page_path.name}"] = sorted(set(seen))
            context.close()
        browser.close()
    return out


# ---------------------------------------------------------------- a provider, scripted byte by byte


@contextmanager
def provider(answer, host: str = "127.0.0.1"):
    """An HTTP server on `host` that behaves like a given provider: `answer(req)` gets each request
    (a dict: method, target, path, query, headers (lower-case names), body (parsed JSON or None))
    and returns the raw bytes to send back, or a list of (seconds to wait, bytes) pieces. Yields
    (base URL, the list of requests seen)."""
    import socketserver
    import threading
    import time
    import urllib.parse

    seen: list[dict] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (h := self.rfile.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                raw = self.rfile.read(int(headers.get("content-length", 0) or 0))
                u = urllib.parse.urlsplit(target)
                req = {"method": method, "target": target, "path": u.path, "query": dict(urllib.parse.parse_qsl(u.query)),
                       "headers": headers, "body": json.loads(raw) if raw else None}  # fmt: skip
                seen.append(req)
                out = answer(req)
                pieces = out if isinstance(out, list) else [(0, out)]
                for wait, piece in pieces:
                    time.sleep(wait)
                    self.wfile.write(piece)
                    self.wfile.flush()
                if method == "CONNECT" or b"Connection: close" in pieces[0][1]:
                    return

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket_family(host)

    with Server((host, 0), Handler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        port = srv.server_address[1]
        name = f"[{host}]" if ":" in host else host
        try:
            yield f"http://{name}:{port}/v1", seen
        finally:
            srv.shutdown()


def socket_family(host: str):
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def http_answer(obj, status: str = "200 OK", headers: dict | None = None, raw: bytes | None = None) -> bytes:
    """An HTTP/1.1 answer with a JSON (or `raw`) body and a Content-Length."""
    body = raw if raw is not None else json.dumps(obj).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    return (
        f"HTTP/1.1 {status}\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n" + body
    )


def completion(req: dict, texts: list[str] | None = None, finish: str = "stop", usage: dict | None = None) -> dict:
    """A chat.completion for `req`: one choice per text (default: one per n, echoing the seed)."""
    body = req["body"] or {}
    texts = texts if texts is not None else [f"answer seed {body.get('seed', 0) + i}" for i in range(body.get("n", 1))]
    return {
        "id": "x", "object": "chat.completion", "model": body.get("model"),
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                    for i, t in enumerate(texts)],
        "usage": usage if usage is not None else {"prompt_tokens": 5, "completion_tokens": 3 * len(texts)},
    }  # fmt: skip
