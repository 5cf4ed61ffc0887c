"""A simulated OpenAI-compatible endpoint on 127.0.0.1, for benchmarks and fault tests.

    python benchmarks/simserver.py --latency 0.2 --concurrency 64 [--over-limit queue|429|slow]
        [--per-token 0.005] [--tokens 16] [--p500 0.05] [--p429 0.05] [--retry-after 1]
        [--p-timeout 0] [--p-reset 0] [--p-truncated 0] [--p-nonjson 0] [--p-slow 0]
        [--api-key KEY] [--models a,b] [--max-n 0] [--schedule 0:16,5:128]
        [--max-requests 100000] [--max-seconds 600] [--seed 0]

It prints `listening http://127.0.0.1:PORT/v1` and serves `POST /v1/chat/completions` (with `n`,
`stream` as server-sent events and `usage` blocks), `GET /v1/models` and `GET /v1/stats`
(counters as JSON; `?arrivals=1` adds each chat request's arrival time, prompt tokens and
max_tokens × n, for rate-limit tests).

The model is an endpoint that serves at most `concurrency` requests at once, each taking
`latency + per_token * completion tokens` seconds, so its hard limit is concurrency / latency
requests per second. Requests beyond the cap wait in a FIFO queue (`queue`) or are refused with
429 at once (`429`). Injected faults are decided per attempt from the request's messages, its
attempt number and the seed, so every client meets the same faults on the same rows; they cost
no serving time: HTTP 500, HTTP 429 with `Retry-After`, a hang (`p_timeout`: the request is held
for `hang` seconds, then its connection is closed without an answer), a reset (`p_reset`: the
connection is closed at once), a truncated answer (`p_truncated`: headers and half the body, then
the connection closes), a body that is not JSON (`p_nonjson`: status 200, an HTML error page), or
a slow answer (`p_slow`: streamed a few bytes at a time over `slow` seconds). Streams send the
first token after `latency` and the others `per_token` apart.

`over_limit: slow` is a self-hosted server (vLLM-like) that never refuses or queues: a request
started with `active` requests in flight takes `latency * max(1, active / concurrency)`, so
latency rises with load. `schedule` changes `concurrency` over time ("0:16,5:128": 16 from the
start, 128 after 5 seconds). `replies: echo` answers `{"echo": the last message, "seed", "i": the choice}` (text that is not JSON
for a message containing "[malformed]"), refuses "[401]" messages as a bad key and fails "[429]"
and "[500]" messages `fail_times` times first: scripted rows for unit tests. `replies: plausible` answers a JSON schema's request with an instance of it (of an enum, the value
the prompt's words point at), a request to rewrite a "Request: ..." line with that request, a
prompt with examples ("- " lines) with a variant of one, and other requests with a sentence of
the prompt's words (a reply, a summary), so a whole run of any task type can go through it; `inject` adds a text
(a script tag, PII, …) to the start of a share `p_inject` of those sentences. `api_key` answers 401 to
any other bearer key, `models` 404 to any
other model, `max_n` 400 to a larger `n`, as real endpoints do. `answered_again` in the stats
counts requests that arrived again after the same request (messages, seed, n) had been answered.

Bounded: it stops after `max_requests` requests or `max_seconds` seconds, whichever comes first,
so a benchmark or a test that dies never leaves it running. Only 127.0.0.1 is served.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import selectors
import sys
import time
import zlib
from dataclasses import dataclass


@dataclass
class SimConfig:
    latency: float = 0.2
    per_token: float = 0.0
    tokens: int = 16
    concurrency: int = 64
    over_limit: str = "queue"  # queue | 429 | slow
    p500: float = 0.0
    p429: float = 0.0
    retry_after: float = 1.0
    p_timeout: float = 0.0
    hang: float = 30.0
    p_reset: float = 0.0
    p_truncated: float = 0.0
    p_nonjson: float = 0.0
    p_slow: float = 0.0
    slow: float = 1.0
    api_key: str = ""
    models: str = ""
    max_n: int = 0
    schedule: str = ""
    replies: str = "words"  # words | plausible | echo
    fail_times: int = 1  # with replies echo: a message marked [429] or [500] fails its first fail_times attempts
    inject: str = ""  # with replies plausible: this text is added to a share p_inject of the text replies
    p_inject: float = 0.0
    batch_seconds: float = 1.0
    batch_expire: float = 0.0
    max_requests: int = 100_000
    max_seconds: float = 600.0
    seed: int = 0


def draw(seed: int, messages_json: str, attempt: int) -> float:
    """A number in [0, 1) fixed by the request's messages (as sorted-key JSON), its attempt number
    (1 for the first) and the seed: every client meets the same faults on the same rows."""
    return random.Random(zlib.crc32(f"{seed}|{attempt}|{messages_json}".encode())).random()


def fault(cfg: SimConfig, messages_json: str, attempt: int) -> str | None:
    """The fault injected into this attempt: "500", "429", "timeout", "reset", "truncated",
    "nonjson", "slow" or None."""
    r = draw(cfg.seed, messages_json, attempt)
    for name, p in (
        ("500", cfg.p500),
        ("429", cfg.p429),
        ("timeout", cfg.p_timeout),
        ("reset", cfg.p_reset),
        ("truncated", cfg.p_truncated),
        ("nonjson", cfg.p_nonjson),
        ("slow", cfg.p_slow),
    ):
        if r < p:
            return name
        r -= p
    return None


def _multipart_file(body: bytes, head: bytes) -> bytes:
    """The content of the `file` part of a multipart/form-data body."""
    ctype = next((ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-type:")), b"")
    if b"boundary=" not in ctype:
        raise ValueError("expected a multipart/form-data upload")
    boundary = b"--" + ctype.split(b"boundary=", 1)[1].strip().strip(b'"')
    for part in body.split(boundary):
        headers, _, content = part.partition(b"\r\n\r\n")
        if b'name="file"' in headers:
            return content[:-2] if content.endswith(b"\r\n") else content
    raise ValueError("no file part in the upload")


def _file_obj(fid: str, size: int, purpose: str) -> dict:
    return {"id": fid, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": f"{fid}.jsonl",
            "purpose": purpose, "status": "processed"}  # fmt: skip


_REASON = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 429: b"Too Many Requests",
           500: b"Internal Server Error", 503: b"Busy"}  # fmt: skip


def _schedule(text: str) -> list[tuple[float, int]]:
    """ "0:16,5:128" -> [(0.0, 16), (5.0, 128)]"""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        t, _, c = part.partition(":")
        out.append((float(t), int(c)))
    return sorted(out)


class Sim:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.sent: collections.Counter = collections.Counter()  # attempts per distinct messages
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.active = 0
        self.waiting: collections.deque = collections.deque()
        self.stats = collections.Counter()
        self.answered: set[str] = set()  # requests (messages, seed, n) that got an answer
        self.arrivals: list[tuple[float, int, int]] = []  # (seconds since start, prompt tokens, max_tokens * n)
        self.schedule = _schedule(cfg.schedule)
        self.peak = 0
        self.t0 = time.monotonic()
        self.stopped = asyncio.Event()
        self._words = [f"w{i}" for i in range(cfg.tokens)]

    # ------------------------------------------------------------------ requests

    def now(self) -> float:
        """When the current batch of socket events arrived (the loop's clock): a request's
        latency counts from there, not from when this process got round to reading it."""
        return _ArrivalSelector.last or asyncio.get_running_loop().time()

    def handle(self, conn: _Conn, method: bytes, path: bytes, body: bytes, head: bytes = b"") -> None:
        st = self.stats
        st["requests"] += 1
        if st["requests"] > self.cfg.max_requests:
            conn.send(503, {"error": {"message": "simserver: max_requests reached"}})
            self.stopped.set()
            return
        if method == b"GET" and b"/stats" in path:
            out = dict(st, peak_in_flight=self.peak, in_flight=self.active, waiting=len(self.waiting))
            if b"arrivals=1" in path:
                out["arrivals"] = self.arrivals
            if b"attempts=1" in path:  # attempts per last message: a test's scripted rows
                out["attempts"] = {str(json.loads(k)[-1].get("content")): v for k, v in self.sent.items()}
            return conn.send(200, out)
        if self.cfg.api_key and _bearer(head) != self.cfg.api_key:
            st["refused_401"] += 1
            return conn.send(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                             "code": "invalid_api_key"}})  # fmt: skip
        if method == b"GET" and path.rstrip(b"/").endswith(b"/models"):
            names = [m for m in self.cfg.models.split(",") if m] or ["sim"]
            return conn.send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in names]})
        if b"/files" in path or b"/batches" in path:
            return self._batch_api(conn, method, path.decode(), body, head)
        if method != b"POST" or not path.endswith(b"/chat/completions"):
            return conn.send(404, {"error": {"message": f"simserver: no route {method.decode()} {path.decode()}"}})
        try:
            req = json.loads(body)
            req["messages"]
        except (ValueError, KeyError, TypeError):
            st["bad_requests"] += 1
            return conn.send(400, {"error": {"message": "simserver: body is not a chat completion request"}})
        c = self.cfg
        if c.models and req.get("model") not in c.models.split(","):
            st["refused_404"] += 1
            return conn.send(404, {"error": {"message": f"The model `{req.get('model')}` does not exist.",
                                             "code": "model_not_found"}})  # fmt: skip
        n = int(req.get("n") or 1)
        if c.max_n and n > c.max_n:
            st["refused_400"] += 1
            return conn.send(400, {"error": {"message": f"n: must be at most {c.max_n}, got {n}", "param": "n"}})
        key = json.dumps(req["messages"], sort_keys=True)
        self.sent[key] += 1
        akey = f"{key}|{req.get('seed')}|{n}"
        if akey in self.answered:
            st["answered_again"] += 1
        prompt = sum(len(str(m.get("content", "")).split()) for m in req["messages"])
        self.arrivals.append((round(self.now() - self.t0, 4), prompt, int(req.get("max_tokens") or 0) * n))
        st["chat_requests"] += 1
        if c.replies == "echo" and self._scripted(conn, req, self.sent[key]):
            return
        f = fault(self.cfg, key, self.sent[key])
        if f == "500":
            st["injected_500"] += 1
            return conn.send(500, {"error": {"message": "simserver: injected 500", "type": "server_error"}})
        if f == "429":
            st["injected_429"] += 1
            return conn.send(429, {"error": {"message": "simserver: injected 429"}}, retry_after=c.retry_after)
        if f == "timeout":
            st["injected_timeout"] += 1
            asyncio.get_running_loop().call_later(c.hang, conn.abort)
            return
        if f == "reset":
            st["injected_reset"] += 1
            return conn.abort()
        if f == "nonjson":
            st["injected_nonjson"] += 1
            return conn.send_bytes(200, b"<html><body>502 Bad Gateway</body></html>", content_type=b"text/html")
        req["_fault"] = f  # truncated or slow: decided when the answer is sent
        req["_key"] = akey
        if c.over_limit == "slow" or self.active < self.capacity():
            return self._start(conn, req, self.now())
        if c.over_limit == "429":
            st["refused_429"] += 1
            return conn.send(429, {"error": {"message": "simserver: over capacity"}}, retry_after=c.retry_after)
        self.waiting.append((conn, req))

    def _scripted(self, conn: _Conn, req: dict, attempt: int) -> bool:
        """True when it answered: `replies: echo`'s last message steers the answer. "[401]" is always refused as a bad
        key; "[429]" (with Retry-After) and "[500]" fail the first `fail_times` attempts."""
        msg = str(req["messages"][-1].get("content", ""))
        if "[401]" in msg:
            self.stats["refused_401"] += 1
            conn.send(401, {"error": {"message": "invalid api key", "code": "invalid_api_key"}})
            return True
        for code in (429, 500):
            if f"[{code}]" in msg and attempt <= self.cfg.fail_times:
                self.stats[f"scripted_{code}"] += 1
                after = self.cfg.retry_after if code == 429 else None
                conn.send(code, {"error": {"message": f"scripted {code}", "code": code}}, retry_after=after)
                return True
        return False

    # ------------------------------------------------------------------ the batch API

    def _batch_api(self, conn: _Conn, method: bytes, path: str, body: bytes, head: bytes) -> None:
        """OpenAI's batch API, enough for the workbench: upload a JSONL file (multipart), create a
        batch of /v1/chat/completions lines, read its status, download its output and error files.
        A batch is done `batch_seconds` after it was created; a line whose draw falls below
        `batch_expire` is left undone, and the batch then ends `expired` with those lines in its
        error file (code batch_expired), as OpenAI reports them."""
        path = path.split("?", 1)[0].rstrip("/")
        parts = path.split("/")
        try:
            if method == b"POST" and path.endswith("/files"):
                data = _multipart_file(body, head)
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = data
                return conn.send(200, _file_obj(fid, len(data), "batch"))
            if method == b"GET" and parts[-1] == "content" and parts[-3] == "files":
                data = self.files.get(parts[-2])
                if data is None:
                    return conn.send(404, {"error": {"message": f"simserver: no file {parts[-2]}"}})
                return conn.send_bytes(200, data, content_type=b"application/octet-stream")
            if method == b"POST" and path.endswith("/batches"):
                req = json.loads(body)
                lines = self.files.get(req.get("input_file_id"))
                if lines is None:
                    return conn.send(400, {"error": {"message": "simserver: unknown input_file_id"}})
                bid = f"batch_{len(self.batches) + 1}"
                self.stats["batches_created"] += 1
                self.batches[bid] = {
                    "id": bid,
                    "object": "batch",
                    "endpoint": req.get("endpoint"),
                    "input_file_id": req["input_file_id"],
                    "completion_window": req.get("completion_window", "24h"),
                    "status": "in_progress",
                    "created_at": int(time.time()),
                    "output_file_id": None,
                    "error_file_id": None,
                    "request_counts": {"total": len(lines.splitlines()), "completed": 0, "failed": 0},
                }
                asyncio.get_running_loop().call_later(self.cfg.batch_seconds, self._finish_batch, bid)
                return conn.send(200, self.batches[bid])
            if method == b"GET" and parts[-2] == "batches":
                b = self.batches.get(parts[-1])
                if b is None:
                    return conn.send(404, {"error": {"message": f"simserver: no batch {parts[-1]}"}})
                return conn.send(200, b)
        except (ValueError, KeyError, IndexError) as e:
            return conn.send(400, {"error": {"message": f"simserver: bad batch request: {e}"}})
        return conn.send(404, {"error": {"message": f"simserver: no route {method.decode()} {path}"}})

    def _finish_batch(self, bid: str) -> None:
        b = self.batches[bid]
        out, err = [], []
        for line in self.files[b["input_file_id"]].decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            req = item["body"]
            key = json.dumps(req["messages"], sort_keys=True)
            self.sent[key] += 1
            if draw(self.cfg.seed, key, self.sent[key]) < self.cfg.batch_expire:
                error = {"code": "batch_expired", "message": "This request could not be executed before the window."}
                err.append({"id": f"req_{len(err)}", "custom_id": item["custom_id"], "response": None, "error": error})
                continue
            n, tokens = self._sizes(req)
            body = json.loads(self._answer(req, n, tokens))
            response = {"status_code": 200, "request_id": f"r{len(out)}", "body": body}
            out.append({"id": f"req_{len(out)}", "custom_id": item["custom_id"], "response": response, "error": None})
            self.stats["batch_answered"] += 1
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b[name] = fid
        b["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        b["status"] = "expired" if err else "completed"

    def capacity(self) -> int:
        """`concurrency`, or what `schedule` says it is by now."""
        c = self.cfg.concurrency
        if self.schedule:
            elapsed = time.monotonic() - self.t0
            for t, cap in self.schedule:
                if elapsed >= t:
                    c = cap
        return c

    def _sizes(self, req: dict) -> tuple[int, int]:
        """(choices, tokens per choice) of an answer: `n`, and `max_tokens` capped at `tokens`."""
        return int(req.get("n") or 1), max(1, min(self.cfg.tokens, int(req.get("max_tokens") or self.cfg.tokens)))

    def _start(self, conn: _Conn, req: dict, t0: float) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        n, tokens = self._sizes(req)
        latency = self.cfg.latency
        if self.cfg.over_limit == "slow":  # a shared accelerator: everyone in flight slows down
            latency *= max(1.0, self.active / self.capacity())
        loop = asyncio.get_running_loop()
        if req.get("stream"):
            # a scripted text is streamed whole, a word a step, as it is sent unstreamed
            if self.cfg.replies != "words":
                tokens = max(len(self._text(req, i, tokens).split(" ")) for i in range(n))
            conn.start_stream()
            loop.call_at(t0 + latency, self._stream_step, conn, req, n, tokens, 0)
        else:  # the answer is built now, so that sending it when due costs one write
            answer = self._answer(req, n, tokens)
            due = t0 + latency + self.cfg.per_token * tokens
            if req.get("_fault") == "truncated":
                loop.call_at(due, self._send_truncated, conn, answer)
            elif req.get("_fault") == "slow":
                loop.call_at(due, self._send_slowly, conn, answer, req["_key"])
            else:
                loop.call_at(due, self._send_answer, conn, answer, req["_key"])

    def _send_truncated(self, conn: _Conn, answer: bytes) -> None:
        self.stats["injected_truncated"] += 1
        self._done(asyncio.get_running_loop().time(), answered=False)
        if not conn.closed:
            conn.transport.write(_head(200, len(answer)) + answer[: len(answer) // 2])
            conn.transport.close()

    def _send_slowly(self, conn: _Conn, answer: bytes, key: str, sent: int = -1) -> None:
        """The answer a few bytes at a time, spread over `slow` seconds."""
        if conn.closed:
            return self._done(asyncio.get_running_loop().time(), answered=False)
        if sent < 0:
            self.stats["injected_slow"] += 1
            conn.transport.write(_head(200, len(answer)))
            sent = 0
        step = max(1, len(answer) // 10)
        conn.transport.write(answer[sent : sent + step])
        if sent + step >= len(answer):
            self.answered.add(key)
            return self._done(asyncio.get_running_loop().time())
        asyncio.get_running_loop().call_later(self.cfg.slow / 10, self._send_slowly, conn, answer, key, sent + step)

    def _done(self, t_end: float, answered: bool = True) -> None:
        self.active -= 1
        if answered:
            self.stats["answered"] += 1
        while self.waiting and self.active < self.capacity():
            conn, req = self.waiting.popleft()
            if not conn.closed:
                self._start(conn, req, t_end)  # a queued request starts when a slot frees

    def _usage(self, req: dict, n: int, tokens: int) -> dict:
        prompt = sum(len(str(m.get("content", "")).split()) for m in req["messages"])
        return {"prompt_tokens": prompt, "completion_tokens": n * tokens, "total_tokens": prompt + n * tokens}

    def _text(self, req: dict, i: int, tokens: int) -> str:
        if self.cfg.replies == "echo":  # JSON naming the message, seed and choice; "[malformed]": not JSON
            msg = str(req["messages"][-1].get("content", ""))
            return "{not json" if "[malformed]" in msg else json.dumps({"echo": msg, "seed": req.get("seed"), "i": i})
        if self.cfg.replies == "plausible":
            text = _plausible(req, i)
            key = f"{req.get('seed')}|{i}|{json.dumps(req['messages'], sort_keys=True)}"
            if self.cfg.inject and not req.get("response_format") and draw(self.cfg.seed, key, 0) < self.cfg.p_inject:
                text = f"{self.cfg.inject} {text}"  # first: a stage that keeps one sentence keeps it
            return text
        return f"seed {req.get('seed')} choice {i}: " + " ".join(self._words[: max(0, tokens - 4)])

    def _send_answer(self, conn: _Conn, answer: bytes, key: str) -> None:
        self._done(asyncio.get_running_loop().time(), answered=not conn.closed)
        if not conn.closed:
            self.answered.add(key)
        conn.send_bytes(200, answer)

    def _answer(self, req: dict, n: int, tokens: int) -> bytes:
        return json.dumps(
            {
                "id": "sim",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.get("model", "sim"),
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": self._text(req, i, tokens)},
                        "finish_reason": "stop",
                    }
                    for i in range(n)
                ],
                "usage": self._usage(req, n, tokens),
            }
        ).encode()

    def _stream_step(self, conn: _Conn, req: dict, n: int, tokens: int, step: int) -> None:
        """Token `step` of every choice; after the last, finish reasons, usage and [DONE]."""
        model = req.get("model", "sim")
        if conn.closed:
            return self._done(asyncio.get_running_loop().time(), answered=False)
        if step == tokens // 2 and req.get("_fault") == "truncated":  # half the tokens, then the line drops
            self.stats["injected_truncated"] += 1
            conn.transport.close()
            return self._done(asyncio.get_running_loop().time(), answered=False)
        for i in range(n):
            words = self._text(req, i, tokens).split(" ")
            piece = (" " if step else "") + words[step] if step < len(words) else ""
            delta = {"content": piece} if piece else {}
            finish = "stop" if step == tokens - 1 else None
            conn.event({"id": "sim", "object": "chat.completion.chunk", "model": model,
                        "choices": [{"index": i, "delta": delta, "finish_reason": finish}]})  # fmt: skip
        if step < tokens - 1:
            gap = self.cfg.slow / tokens if req.get("_fault") == "slow" else self.cfg.per_token
            if step == 0 and req.get("_fault") == "slow":
                self.stats["injected_slow"] += 1
            asyncio.get_running_loop().call_later(gap, self._stream_step, conn, req, n, tokens, step + 1)
            return
        if (req.get("stream_options") or {}).get("include_usage"):
            conn.event({"id": "sim", "object": "chat.completion.chunk", "model": model, "choices": [],
                        "usage": self._usage(req, n, tokens)})  # fmt: skip
        conn.end_stream()
        if not conn.closed:
            self.answered.add(req["_key"])
        self._done(asyncio.get_running_loop().time())


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: requests are read one after another."""

    def __init__(self, sim: Sim):
        self.sim = sim
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            i = head.lower().find(b"content-length:")
            length = 0
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            first = head.split(b"\r\n", 1)[0].split(b" ")
            self.sim.handle(self, first[0], first[1] if len(first) > 1 else b"/", body, head)

    def send(self, status: int, obj: dict, retry_after: float | None = None) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), retry_after)

    def send_bytes(
        self, status: int, data: bytes, retry_after: float | None = None, content_type: bytes = b"application/json"
    ) -> None:
        if not self.closed:
            self.transport.write(_head(status, len(data), retry_after, content_type) + data)

    def start_stream(self) -> None:
        if not self.closed:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )

    def event(self, obj: dict) -> None:
        self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def end_stream(self) -> None:
        self._chunk(b"data: [DONE]\n\n")
        if not self.closed:
            self.transport.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def abort(self) -> None:
        if not self.closed:
            self.transport.abort()


def _plausible(req: dict, i: int) -> str:
    """`replies: plausible`: an instance of the request's JSON schema when it sends one (numbers in
    range, strings of the prompt's words; of an enum, the value whose words, or whose numbered
    option line's words, the rest of the prompt shares most: a plausible label); for a request to
    rewrite the line that starts with "Request: ", that request with its words kept; for a prompt
    with examples ("- " lines), one of them with a quarter of its words left out and some of the
    examples' and topic's words added; else a sentence of 12 to 20 of the prompt's words; fixed by
    the messages, seed and choice. Enough for every stage of every task type to run end to end
    against the simulated endpoint, rows kept (tests of the endpoint path, not of quality)."""
    msgs = req.get("messages") or [{}]
    user = str(next((m.get("content", "") for m in reversed(msgs) if m.get("role") == "user"), ""))
    rnd = random.Random(zlib.crc32(f"{req.get('seed')}|{i}|{user}".encode()))
    shown = [ln[2:] for ln in user.splitlines() if ln.startswith("- ")]  # the prompt's examples
    topic = re.findall(r"^Topic: (.+)$", user, re.M)
    words = _words(" ".join(shown + topic) or user) or ["card", "account", "payment"]

    def phrase(k: int) -> str:
        return " ".join(rnd.choice(words) for _ in range(k))

    def pick(values: list):
        """The value the prompt's words point at: its own words, or those of the option line
        numbered with it, shared with the rest of the prompt; ties broken by the seed."""
        lines = user.splitlines()
        options = {
            str(v): next((ln.split(".", 1)[1] for ln in lines if ln.startswith(f"{v}.")), str(v)) for v in values
        }
        listed = {ln for ln in lines if any(ln.startswith(f"{v}.") for v in values)}
        rest = " ".join(ln for ln in lines if ln not in listed)
        for v in sorted(map(str, values), key=len, reverse=True):  # the values' own list is no evidence
            rest = rest.replace(v, " ")
        rest = set(_words(rest.replace("_", " ")))
        score = {str(v): len(set(_words(options[str(v)].replace("_", " "))) & rest) for v in values}
        top = max(score.values())
        return rnd.choice([v for v in values if score[str(v)] == top])

    def instance(schema: dict):
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return pick(schema["enum"])
        for alt in ("anyOf", "oneOf"):
            if alt in schema:
                return instance(schema[alt][0])
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if kind == "object":
            return {k: instance(v) for k, v in (schema.get("properties") or {}).items()}
        if kind == "array":
            return [instance(schema.get("items") or {}) for _ in range(max(1, schema.get("minItems", 1)))]
        if kind in ("integer", "number"):
            lo = schema.get("minimum", 1)
            hi = schema.get("maximum", lo + 4)
            return rnd.randint(int(lo), int(hi)) if kind == "integer" else round(rnd.uniform(lo, hi), 2)
        if kind == "boolean":
            return rnd.random() < 0.5
        return phrase(6)

    fmt = req.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return json.dumps(instance((fmt.get("json_schema") or {}).get("schema") or {}))
    rewrite = re.search(r"^Request: (.+)$", user, re.M)
    if rewrite:  # asked to rewrite a request: the same request, every word kept, politely put
        return f"{rnd.choice(['Please', 'Hi,', 'Hey,'])} {rewrite.group(1).strip()}"
    if shown:  # a text like the prompt's examples: one of them with a quarter of its words left out, some added
        out = [w for w in rnd.choice(shown).split() if rnd.random() > 0.25] or [phrase(1)]
        for _ in range(max(1, len(out) // 6)):
            out.insert(rnd.randrange(len(out) + 1), rnd.choice(words))
        return " ".join(out)
    return f"{phrase(rnd.randint(12, 20)).capitalize()}."


_COMMON = set(
    "that this with have what when will your from they them then there their been were would could "
    "should about into just some here also only very much more most than".split()
)


def _words(text: str) -> list[str]:
    """The content words of `text`: letters only, longer than three, lower case, common ones left out."""
    words = [w.strip(".,:;!?\"'()[]{}").lower() for w in text.split()]
    return [w for w in words if w.isalpha() and len(w) > 3 and w not in _COMMON]


def _head(
    status: int, length: int, retry_after: float | None = None, content_type: bytes = b"application/json"
) -> bytes:
    """The status line and headers of an answer whose body is `length` bytes."""
    extra = b"Retry-After: %g\r\n" % retry_after if retry_after is not None else b""
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status, _REASON.get(status, b"Error"), content_type, length, extra)  # fmt: skip


def _bearer(head: bytes) -> str:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"authorization":
            v = v.strip()
            return v[7:].decode("latin-1") if v.lower().startswith(b"bearer ") else ""
    return ""


class _ArrivalSelector(selectors.DefaultSelector):
    """Records when each wait for socket events returned."""

    last: float | None = None

    def select(self, timeout=None):
        events = super().select(timeout)
        _ArrivalSelector.last = time.monotonic()  # the clock asyncio's loop.time() reads
        return events


async def serve(cfg: SimConfig, port: int = 0, ready=None) -> Sim:
    sim = Sim(cfg)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(sim), "127.0.0.1", port, backlog=4096)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    if ready is not None:
        ready(url)
    try:
        await asyncio.wait_for(sim.stopped.wait(), cfg.max_seconds)
    except TimeoutError:
        pass
    server.close()
    return sim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/simserver.py", description=__doc__.split("\n\n")[0])
    d = SimConfig()
    for name, value in vars(d).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    ap.add_argument("--port", type=int, default=0)
    args = vars(ap.parse_args(argv))
    port = args.pop("port")
    cfg = SimConfig(**args)
    if cfg.over_limit not in ("queue", "429", "slow"):
        ap.error(f"--over-limit: expected queue, 429 or slow, got {cfg.over_limit!r}")
    try:
        _schedule(cfg.schedule)
    except ValueError:
        ap.error(f"--schedule: expected SECONDS:CONCURRENCY pairs like 0:16,5:128, got {cfg.schedule!r}")

    def ready(url: str) -> None:
        print(f"listening {url}", flush=True)

    try:  # uvloop, where installed (the `bench` extra), accepts and answers several times faster
        import uvloop  # optional: the benchmark's server runs without it

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.SelectorEventLoop(_ArrivalSelector())
    try:
        sim = loop.run_until_complete(serve(cfg, port, ready))
    finally:
        loop.close()
    print(json.dumps(dict(sim.stats, peak_in_flight=sim.peak)), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
