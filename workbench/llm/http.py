"""A small HTTP/1.1 client on asyncio streams, for calling OpenAI-compatible endpoints.

Why not the `openai` SDK: on a 2-core machine the client's own CPU per request caps how busy it
can keep an endpoint. The SDK (httpx, pydantic models) spends 2–3 ms of CPU per call; this client
spends well under 0.5 ms (`benchmarks/endpoint.py` measures both against the same server). It
does only what the workbench needs: POST a JSON body over keep-alive connections (http or https),
read a Content-Length, chunked or until-close body, optionally piece by piece (streams).

Errors: `HTTPStatus` for a complete answer with a status >= 300 (a redirect is not followed: the
caller says which base_url to use), `Transport` for everything that left no answer (refused,
reset, closed early, timed out, unreadable headers, an answer over MAX_BODY). Whether to retry is
the caller's decision.

Also: query parameters on every request (base_url's own query string and `query`), header values
checked for line breaks, IPv6 hosts in brackets, 1xx interim answers skipped, 204/304 without a
body, gzip/deflate bodies decoded, and HTTP(S)_PROXY / NO_PROXY honoured as the SDK does
(absolute URLs through an http proxy, CONNECT tunnels for https).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable

_READ_LIMIT = 1 << 22  # the longest header block the parser accepts
MAX_BODY = 16 << 20  # the largest answer accepted: a chat completion is kilobytes; more is a wrong endpoint


class Transport(Exception):
    """No complete answer: the connection failed, closed early or timed out."""


class HTTPStatus(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body
        where = f" to {headers['location']}" if 300 <= status < 400 and headers.get("location") else ""
        super().__init__(f"HTTP {status}{where}: {error_message(body)}")


def is_html(body: bytes) -> bool:
    """An HTML page where JSON was expected: a proxy's error or login page, or a web site's."""
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head


def error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body as text."""
    if is_html(body):
        return "an HTML page, not the API's JSON (a proxy, a login page, or a base_url that is not the API's)"
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

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        timeout_s: float | None = None,
        query: dict[str, str] | None = None,
    ):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base_url {base_url!r}: expected http(s)://host[:port]/path")
        if u.username or u.password:
            raise ValueError("base_url carries a user name or password; put the key in llm.api_key_env's variable")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        self.prefix = u.path.rstrip("/")
        params = urllib.parse.parse_qsl(u.query, keep_blank_values=True) + list((query or {}).items())
        self.query = ("?" + urllib.parse.urlencode(params)) if params else ""
        self.timeout_s = timeout_s
        name = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal goes in brackets
        host = name if u.port is None else f"{name}:{self.port}"
        self.origin = f"{u.scheme}://{host}"
        for k, v in headers.items():
            if any(c in f"{k}{v}" for c in "\r\n\0") or ":" in k:
                raise ValueError(f"header {k!r}: a line break, NUL or colon would split the request")
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = (
            f"Host: {host}\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
            f"Accept-Encoding: gzip, deflate\r\nUser-Agent: workbench\r\n{extra}"
        ).encode("latin-1")
        # the proxy the environment names for this origin (HTTP(S)_PROXY, NO_PROXY), as httpx does
        self.proxy: urllib.parse.SplitResult | None = None
        proxy = urllib.request.getproxies().get(u.scheme)
        if proxy and not urllib.request.proxy_bypass(self.host):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if p.scheme != "http" or not p.hostname:
                raise ValueError(f"{u.scheme.upper()}_PROXY={proxy!r}: expected http://host:port")
            self.proxy = p
        self._idle: list[_Conn] = []
        self.opened = 0  # connections opened, for benchmarks and tests

    async def get(self, path: str) -> bytes:
        """GET prefix + path and return the answer's body (status < 400)."""
        return await self.post(path, b"", method=b"GET")

    async def post(
        self, path: str, body: bytes, on_piece: Callable[[bytes], None] | None = None, method: bytes = b"POST"
    ) -> bytes:
        """POST `body` to prefix + path and return the answer's body (status < 400).

        `on_piece`, when given, receives the body as it arrives (each chunk of a streamed answer)."""
        target = self.prefix + path + self.query
        if self.proxy is not None and self.ssl is None:  # through an http proxy: the absolute URL
            target = self.origin + target
        req = (
            method
            + b" "
            + target.encode()
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
        except (OSError, ValueError) as e:
            raise Transport(f"{type(e).__name__}: {e}") from None

    async def _send(self, req: bytes, on_piece) -> bytes:
        while True:
            conn, reused = await self._connection()
            keep = False
            try:
                status, headers, body, keep = await conn.exchange(req, on_piece)
            except _Stale:
                if not reused:
                    raise Transport("connection closed before any answer") from None
                continue  # an idle keep-alive connection the server had closed: once more on a new one
            finally:
                if keep:
                    self._idle.append(conn)
                else:
                    conn.close()
            if status >= 300:
                raise HTTPStatus(status, headers, body)
            return body

    async def _connection(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_running_loop()
        if self.proxy is None:
            _, conn = await loop.create_connection(
                _Conn, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
            )
        elif self.ssl is None:
            _, conn = await loop.create_connection(_Conn, self.proxy.hostname, self.proxy.port or 80)
        else:
            _, conn = await loop.create_connection(
                _Conn, sock=await self._tunnel(), ssl=self.ssl, server_hostname=self.host
            )
        self.opened += 1
        return conn, False

    async def _tunnel(self):
        """A socket to this origin through the proxy's CONNECT, ready for TLS."""
        p = self.proxy
        reader, writer = await asyncio.open_connection(p.hostname, p.port or 80)
        try:
            host = f"[{self.host}]" if ":" in self.host else self.host
            auth = ""
            if p.username:
                cred = base64.b64encode(
                    f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}".encode()
                )
                auth = f"Proxy-Authorization: Basic {cred.decode()}\r\n"
            writer.write(f"CONNECT {host}:{self.port} HTTP/1.1\r\nHost: {host}:{self.port}\r\n{auth}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b"?"
            if status != b"200":
                raise Transport(
                    f"the proxy {p.hostname}:{p.port} refused CONNECT {host}:{self.port} ({status.decode()})"
                )
            return writer.get_extra_info("socket").dup()
        finally:
            writer.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parses an answer as its bytes arrive (no stream objects: this
    is the per-request CPU that decides how busy a 2-core client can keep an endpoint)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.on_piece: Callable[[bytes], None] | None = None
        self.got_bytes = False
        self.state = "idle"  # head | length | chunked | close
        self.status = 0
        self.headers: dict[str, str] = {}
        self.need = 0
        self.pieces: list[bytes] = []
        self.size = 0
        self.decoder: zlib._Decompress | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if self.state == "close":  # the body was "until the connection closes"
            self._finish(bytes(self.buf), keep=False)
        elif not self.got_bytes:
            self.waiter.set_exception(_Stale())
        else:
            self.waiter.set_exception(Transport(f"connection closed mid-answer ({exc or 'by the server'})"))

    def exchange(self, req: bytes, on_piece) -> asyncio.Future:
        if self.closed:
            raise _Stale()
        self.waiter = asyncio.get_running_loop().create_future()
        self.on_piece, self.got_bytes, self.state = on_piece, False, "head"
        self.buf.clear()
        self.pieces = []
        self.size = 0
        self.decoder = None
        self.transport.write(req)
        return self.waiter

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection is not in a known state
            return
        self.got_bytes = True
        self.buf += data
        try:
            self._parse()
        except Exception as e:  # a malformed answer, or the caller's on_piece refusing a piece
            self.close()
            if not self.waiter.done():
                self.waiter.set_exception(e if isinstance(e, Transport) or not isinstance(e, ValueError) else
                                          Transport(f"unreadable answer: {e}"))  # fmt: skip

    def _parse(self) -> None:
        buf = self.buf
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _READ_LIMIT:
                    raise Transport("answer headers too long")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise Transport(f"not an HTTP answer: {lines[0][:80]!r}")
            self.status = int(parts[1])
            if 100 <= self.status < 200:  # 100 Continue, 103 Early Hints: the answer follows
                return self._parse()
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
            self.headers = headers
            enc = headers.get("content-encoding", "identity").lower()
            if enc in ("gzip", "x-gzip", "deflate"):
                self.decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
            elif enc != "identity":
                raise Transport(f"answer in an encoding this client does not read: {enc}")
            if self.status in (204, 304):  # never a body
                self._finish(b"", keep=headers.get("connection", "").lower() != "close")
                return
            if headers.get("transfer-encoding", "").lower() == "chunked":
                self.state, self.need = "chunked", -1
            elif "content-length" in headers:
                self.state, self.need = "length", int(headers["content-length"])
            else:
                self.state, self.need = "close", 0  # need: how much of buf on_piece has seen
        if self.state == "close":
            if len(buf) > MAX_BODY:
                raise Transport(f"answer larger than {MAX_BODY >> 20} MiB")
            if self.on_piece is not None and self.status < 300 and len(buf) > self.need:
                self._piece(bytes(buf[self.need :]))
                self.need = len(buf)
        elif self.state == "length":
            if self.need > MAX_BODY:
                raise Transport(f"answer of {self.need} bytes, larger than {MAX_BODY >> 20} MiB")
            if len(buf) >= self.need:
                body = bytes(buf[: self.need])
                del buf[: self.need]
                if self.on_piece is not None and self.status < 300:
                    self._piece(body)
                self._finish(body, keep=self.headers.get("connection", "").lower() != "close")
        elif self.state == "chunked":
            while True:
                if self.need < 0:  # at a chunk-size line
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        return
                    self.need = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                    del buf[: eol + 2]
                    if self.need == 0:
                        self.state = "trailer"
                        break
                if len(buf) < self.need + 2:
                    return
                piece = bytes(buf[: self.need])
                del buf[: self.need + 2]
                self.need = -1
                self.pieces.append(piece)
                self.size += len(piece)
                if self.size > MAX_BODY:
                    raise Transport(f"answer larger than {MAX_BODY >> 20} MiB")
                if self.on_piece is not None and self.status < 300:
                    self._piece(piece)
        if self.state == "trailer":  # no trailers are sent by the servers we talk to
            if buf.find(b"\r\n") >= 0:
                del buf[: buf.find(b"\r\n") + 2]
                self._finish(b"".join(self.pieces), keep=self.headers.get("connection", "").lower() != "close")

    def _piece(self, data: bytes) -> None:
        """Hand a piece of the body to on_piece, decoded."""
        if self.decoder is not None:
            data = self.decoder.decompress(data)
        if data:
            self.on_piece(data)

    def _finish(self, body: bytes, keep: bool) -> None:
        if self.decoder is not None:
            if self.on_piece is not None and self.status < 300:
                body = b""  # already decoded piece by piece
            else:
                try:
                    body = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, MAX_BODY + 1)
                    if len(body) > MAX_BODY:
                        raise zlib.error(f"larger than {MAX_BODY >> 20} MiB once decoded")
                except zlib.error as e:
                    self.close()
                    if self.waiter is not None and not self.waiter.done():
                        self.waiter.set_exception(Transport(f"unreadable compressed answer: {e}"))
                    return
        self.state = "idle"
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, self.headers, body, keep and not self.closed))


class _Stale(Exception):
    """A reused connection closed before a single byte of the answer."""
