"""Helpers the tests share (no test module imports another): the simulated endpoint started as a
real process, the tiny random model, runs of the `workbench` command against them bounded by
their progress, the test-split audit, a cache that shares the converted embedded model, and a few
real-looking rows."""

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

# The API key the simulated endpoint wants, planted in the environment of the runs against it
# (test_shared_run looks for it in every file they leave), and the hostile text it adds to a third
# of its plain-text answers: a script tag, an image with onerror, a javascript: link, an e-mail
# address and a phone number.
KEY_ENV, KEY = "WB_SHARED_KEY", "sk-planted-7f3a9c1e5b2d4f60a8e7c9b1d3f5a7c9"
EMAIL, PHONE = "jane.doe.planted@example.com", "+44 7700 900123"
HOSTILE = (
    "<script>document.title='PWNED-SCRIPT'</script> "
    "<img src=x onerror=\"document.title='PWNED-IMG'\"> "
    "<a href=\"javascript:document.title='PWNED-LINK'\">click</a> "
    f"write to {EMAIL} or call {PHONE}"
)


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


def tiny_model(folder: Path) -> Path:
    """A Llama with random weights (2 layers, hidden size 64, grouped-query attention) and the
    embedded SmolLM2's own tokenizer and chat template, saved as a model folder; built offline in
    a few seconds (no download: the tokenizer comes from the installed GGUF). It goes through every
    path the embedded model does (the decode loop with its shared prefix and fast Llama forward,
    grammars, first-token scores, the trl trainers) at a fraction of the cost; its words are noise,
    so it carries the plumbing, never a test of what a model says."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.llm import embedded_gguf

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=end,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = end
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@contextmanager
def shared_simserver():
    """The one simulated endpoint of the session's endpoint runs (the smoke run, two runs at once,
    a third from the cache, kill-and-resume and the per-task-type runs): plausible answers for
    every request, the planted key required, the hostile text in a third of the plain answers.
    Its latency lets a kill land between two saves of a stage's answers."""
    with simserver(replies="plausible", api_key=KEY, inject=HOSTILE, p_inject=0.33, latency=0.05,
                   max_seconds=4 * 3600) as url:  # fmt: skip
        yield url


# The tiny model's roles: a juror beside the endpoint (its ratings, repeated digits, do not parse,
# so the endpoint's keep the rows; its label votes go through the grammar), the critic, the refusal
# judge and the namer. The structured runs keep the endpoint in every role (its answers to the
# critic's, namer's and refusal judge's requests are what those paths read), and the tools run's
# judge is the endpoint alone: test_tools_run checks that every judgment parses.
TINY_ROLES = ["roles.judge=[llm, tiny]", "roles.critic=tiny", "roles.refusal_judge=tiny", "roles.namer=tiny"]
STRUCTURED = ("tools", "extraction")


def endpoint_run(config: Path, runs_dir: Path, url: str, tiny: Path, task_type: str = "classification") -> list[str]:
    """`workbench run` of `config` as a user types it, against the simulated endpoint at `url` (the
    generator: 00's preview, 01's inputs, 02's candidates, streamed so their time to first token is
    measured; and a judge), with the tiny model as the causal student and, but for structured
    tasks, as a local model in batches of 8 rows (a stage saves its answers several times) in
    TINY_ROLES. The endpoint's words carry rows through every gate; the tiny model carries the
    local decode loop, grammars, first-token scores and the trl trainers."""
    local = f"{{provider: local, model: '{tiny}', dtype: float32, batch_size: 8}}"
    roles = [] if task_type in STRUCTURED else [f"models.tiny={local}", *TINY_ROLES]
    pairs = ["llm.provider=openai", f"llm.base_url={url}", "llm.model=sim", f"llm.api_key_env={KEY_ENV}",
             "llm.stream=true", *roles, f"train.model={tiny}"]  # fmt: skip
    return [sys.executable, "-m", "workbench.cli", "run", str(config), "--runs-dir", str(runs_dir), *sets(*pairs)]


def run_config(tmp: Path, config: Path, url: str, tiny: Path, task_type: str = "classification",
               more: list[str] = (), env: dict | None = None) -> tuple[Path, str]:  # fmt: skip
    """`endpoint_run` of `config` (`more`: further --set arguments) into `tmp`/runs, to its end:
    the run folder and what the command printed. `env`: the run's environment, by default
    `endpoint_env` with a cache of its own in `tmp`."""
    runs = tmp / "runs"
    env = env if env is not None else endpoint_env(cache_with_models(tmp / "cache"))
    cmd = endpoint_run(config, runs, url, tiny, task_type) + list(more)
    code, output = run_bounded(cmd, env, tmp / "run.log", watch=(runs,))
    assert code == 0, output[-4000:]
    (run,) = [p for p in runs.glob("*/*") if p.is_dir()]
    return run, output


def endpoint_env(cache: Path, **more: str) -> dict:
    """The environment of a run against the simulated endpoint: its key, a cache of its own."""
    return dict(os.environ, **{KEY_ENV: KEY}, WORKBENCH_CACHE=str(cache), HF_HUB_OFFLINE="1", **more)


# Loaded by every Python process of a run (the CLI and each stage's kernel) through PYTHONPATH:
# records which stage opened a file of a real test split (a dataset's test.csv, SNIPS'
# validate_*.json), stages announcing themselves in open_stage.
AUDIT = """
import os, sys
_stage = [None]
def _hook(event, args):
    if event == "workbench.stage":
        _stage[0] = args[0]
    elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        name = os.path.basename(path)
        if name == "test.csv" or (name.startswith("validate_") and name.endswith(".json")):
            with open(os.environ["WORKBENCH_AUDIT_LOG"], "a") as f:
                f.write(f"{os.getpid()}\\t{_stage[0]}\\t{path}\\n")
sys.addaudithook(_hook)
"""


def audited(env: dict, folder: Path) -> tuple[dict, Path]:
    """`env` with the audit hook (AUDIT) loaded by every process, and the log it writes: one line
    (pid, stage, path) per opening of a test-split file."""
    folder.mkdir(parents=True)
    (folder / "sitecustomize.py").write_text(AUDIT)
    env = dict(env, WORKBENCH_AUDIT_LOG=str(folder / "opens.tsv"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    return env, folder / "opens.tsv"


QUIET_S = 600  # a run that writes nothing for this long has hung


def newest_change(*folders: Path) -> float:
    """The latest modification time of any file under `folders` (0 when there is none); files
    renamed or removed while it looks (a run's temporary files) are passed over."""
    latest = 0.0
    for folder in folders:
        for top, _, files in os.walk(folder):  # os.walk skips a folder that vanishes under it
            for name in files:
                try:
                    latest = max(latest, os.stat(os.path.join(top, name)).st_mtime)
                except FileNotFoundError:
                    pass
    return latest


def run_bounded(cmd: list[str], env: dict, log: Path, watch: tuple[Path, ...] = (), quiet_s: float = QUIET_S,
                proc: subprocess.Popen | None = None) -> tuple[int, str]:  # fmt: skip
    """Run `cmd` (or wait for `proc`, started with its output in `log`), its output in `log`, for as
    long as it makes progress: it fails only when neither `log` nor any file under `watch` (the run
    folders: papermill saves a stage's notebook after every cell) has changed for `quiet_s` seconds,
    however busy the machine is. Returns (exit status, output)."""
    import pytest

    if proc is None:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    last, seen = time.monotonic(), None
    while proc.poll() is None:
        time.sleep(1.0)
        now = (log.stat().st_size if log.exists() else 0, newest_change(*watch))
        if now != seen:
            last, seen = time.monotonic(), now
        elif time.monotonic() - last > quiet_s:
            proc.kill()
            proc.wait()
            pytest.fail(f"no progress for {quiet_s:g} s (no output, no file changed): {' '.join(cmd)}\n"
                        f"{log.read_text(errors='replace')[-3000:]}")  # fmt: skip
    return proc.returncode, log.read_text(errors="replace")


def sets(*pairs: str) -> list[str]:
    """`--set` arguments of the `workbench` command, one per `field=value`."""
    return [x for pair in pairs for x in ("--set", pair)]


def notebook_source(executed: Path) -> Path:
    """The notebook of the checkout a run's executed stage notebook was made from: the one of the
    task type's folder (notebooks/<type>/) or of notebooks/ whose code cells it runs, the
    parameters papermill injected aside."""
    import nbformat

    def code(path: Path) -> list[str]:
        nb = nbformat.read(path, as_version=4)
        return [
            c.source
            for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
        ]

    ran = code(executed)
    found = [p for p in sorted((ROOT / "notebooks").rglob(executed.name)) if code(p) == ran]
    assert len(found) == 1, f"{executed.name}: made from {found}"
    return found[0]


def drop_weights(folder: Path) -> None:
    """Delete the model weights under a run fixture's folder once its tests are done (a merged
    student of the tiny model is 16 MB, of the embedded one 0.5 GB): the notebooks, tables and
    reports stay for reading a failure."""
    for p in Path(folder).rglob("*.safetensors"):
        p.unlink()


def free_port() -> int:
    """A port nothing listens on, for a server that must come back at the same address (the cache
    keys an endpoint by its URL)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, server, log: Path, quiet_s: float = QUIET_S) -> None:
    """Return once `url` answers; fail with the end of the server's `log` when the server process
    exits first, or when its log has not changed for `quiet_s` seconds (a hung start, however slow
    the machine)."""
    import pytest

    last, size = time.monotonic(), -1
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"{server.args[0]} exited: {Path(log).read_text()[-2000:]}")
            now = Path(log).stat().st_size if Path(log).exists() else 0
            if now != size:
                last, size = time.monotonic(), now
            elif time.monotonic() - last > quiet_s:
                pytest.fail(f"{url}: no answer and no log line in {quiet_s:g} s: {Path(log).read_text()[-2000:]}")
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


def browse(pages: list[Path]) -> dict[str, dict]:
    """Each page opened in headless Chromium with the network cut (each request not for a local
    file is aborted and recorded), by "folder/name": the requests it made (a page that needs the
    network shows up here; only the page's own, not the browser's), and, once its scripts have run,
    its title and its DOM. Playwright drives Debian's Chromium."""
    from playwright.sync_api import sync_playwright

    out: dict[str, dict] = {}
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
            key = f"{page_path.parent.name}/{page_path.name}"
            out[key] = {"requests": sorted(set(seen)), "title": page.title(), "dom": page.content()}
            context.close()
        browser.close()
    return out


def browser_requests(pages: list[Path]) -> dict[str, list[str]]:
    """Per page, the requests `browse` saw it make with the network cut."""
    return {k: v["requests"] for k, v in browse(pages).items()}


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
