"""A small HTTP/1.1 client on asyncio streams, for calling OpenAI-compatible endpoints.

Why not the `openai` SDK: on a 2-core machine the client's own CPU per request caps how busy it
can keep an endpoint. The SDK (httpx, pydantic models) spends 2–3 ms of CPU per call; this client
spends well under 0.5 ms (`benchmarks/endpoint.py` measures both against the same server). It
does only what the workbench needs: POST a JSON body over keep-alive connections (http or https),
read a Content-Length, chunked or until-close body, optionally piece by piece (streams).

Errors: `HTTPStatus` for a complete answer with a status >= 400, `Transport` for everything
that left no answer (refused, reset, closed early, timed out, unreadable headers). Whether to
retry is the caller's decision.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import Callable

_READ_LIMIT = 1 << 22  # the longest header block or chunk-size line the reader accepts


class Transport(Exception):
    """No complete answer: the connection failed, closed early or timed out."""


class HTTPStatus(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body
        super().__init__(f"HTTP {status}: {error_message(body)}")


def error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body as text."""
    try:
        obj = json.loads(body)
        err = obj.get("error") if isinstance(obj, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
        if msg:
            return str(msg)
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip()
    return (text[:200] + "…") if len(text) > 200 else text or "(empty body)"


class Pool:
    """Keep-alive connections to one origin; at most as many as requests in flight at once."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float | None = None):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base_url {base_url!r}: expected http(s)://host[:port]/path")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        self.prefix = u.path.rstrip("/")
        self.timeout_s = timeout_s
        host = self.host if u.port is None else f"{self.host}:{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = (
            f"Host: {host}\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
            f"User-Agent: workbench\r\n{extra}"
        ).encode("latin-1")
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0  # connections opened, for benchmarks and tests

    async def post(self, path: str, body: bytes, on_piece: Callable[[bytes], None] | None = None) -> bytes:
        """POST `body` to prefix + path and return the answer's body (status < 400).

        `on_piece`, when given, receives the body as it arrives (each chunk of a streamed answer)."""
        req = (
            b"POST "
            + (self.prefix + path).encode()
            + b" HTTP/1.1\r\n"
            + self._head
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        try:
            if self.timeout_s is None:  # the caller enforces its own deadline
                return await self._send(req, on_piece)
            async with asyncio.timeout(self.timeout_s):
                return await self._send(req, on_piece)
        except TimeoutError:
            raise Transport(f"timed out after {self.timeout_s:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise Transport(f"{type(e).__name__}: {e}") from None

    async def _send(self, req: bytes, on_piece) -> bytes:
        while True:
            conn, reused = await self._connection()
            try:
                return await self._exchange(conn, req, on_piece)
            except _Stale:
                if not reused:
                    raise Transport("connection closed before any answer") from None
                # an idle keep-alive connection the server had closed: once more on a new one

    async def _connection(self) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], bool]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return (reader, writer), True
            writer.close()
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl, limit=_READ_LIMIT, server_hostname=self.host if self.ssl else None
        )
        self.opened += 1
        return (reader, writer), False

    async def _exchange(self, conn, req: bytes, on_piece) -> bytes:
        reader, writer = conn
        keep = False
        try:
            writer.write(req)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise _Stale() from None
                raise
            lines = head[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise Transport(f"not an HTTP answer: {lines[0][:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
            if headers.get("transfer-encoding", "").lower() == "chunked":
                pieces = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")  # no trailers are sent by the servers we talk to
                        break
                    piece = (await reader.readexactly(size + 2))[:-2]
                    pieces.append(piece)
                    if on_piece is not None and status < 400:
                        on_piece(piece)
                body = b"".join(pieces)
                keep = True
            elif "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
                if on_piece is not None and status < 400:
                    on_piece(body)
                keep = True
            else:
                body = await reader.read()
                if on_piece is not None and status < 400:
                    on_piece(body)
            if headers.get("connection", "").lower() == "close":
                keep = False
            if status >= 400:
                raise HTTPStatus(status, headers, body)
            return body
        finally:
            if keep:
                self._idle.append(conn)
            else:
                conn[1].close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            try:
                await writer.wait_closed()
            except OSError:
                pass


class _Stale(Exception):
    """A reused connection closed before a single byte of the answer."""
