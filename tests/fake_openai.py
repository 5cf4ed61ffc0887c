"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted replies, for tests.

The last user message steers the reply:
    "[429]" / "[500]"  fail that many times first (see `fail_times`), then answer; 429 sends Retry-After
    "[401]"            always 401
    "[malformed]"      answers text that is not JSON
    anything else      answers {"echo": <message>, "seed": <seed>, "i": <choice index>}
Supports `n`, `stream` (SSE with a usage chunk) and counts requests and peak concurrency.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self, fail_times: int = 1, delay_s: float = 0.0, retry_after: str = "0.05"):
        self.fail_times, self.delay_s, self.retry_after = fail_times, delay_s, retry_after
        self.requests = 0
        self.attempts: Counter = Counter()
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    server._reply(self, body)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _reply(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        msg = body["messages"][-1]["content"]
        with self._lock:
            self.attempts[msg] += 1
            attempt = self.attempts[msg]
        if "[401]" in msg:
            return self._error(h, 401, "invalid api key")
        for code in (429, 500):
            if f"[{code}]" in msg and attempt <= self.fail_times:
                return self._error(
                    h, code, f"scripted {code}", {"Retry-After": self.retry_after} if code == 429 else {}
                )
        n = int(body.get("n") or 1)
        texts = [
            "{not json" if "[malformed]" in msg else json.dumps({"echo": msg, "seed": body.get("seed"), "i": i})
            for i in range(n)
        ]
        usage = {
            "prompt_tokens": len(msg.split()),
            "completion_tokens": 5 * n,
            "total_tokens": len(msg.split()) + 5 * n,
        }
        if body.get("stream"):
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.end_headers()
            for i, t in enumerate(texts):
                for piece in (t[: len(t) // 2], t[len(t) // 2 :]):
                    chunk = {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": i, "delta": {"content": piece}, "finish_reason": None}],
                    }
                    h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    h.wfile.flush()
                end = {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}],
                }
                h.wfile.write(f"data: {json.dumps(end)}\n\n".encode())
            last = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body["model"],
                "choices": [],
                "usage": usage,
            }
            h.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
            return
        payload = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": usage,
        }
        self._send(h, 200, payload)

    def _error(self, h, code: int, message: str, headers: dict | None = None) -> None:
        self._send(h, code, {"error": {"message": message, "type": "scripted", "code": code}}, headers)

    @staticmethod
    def _send(h, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
