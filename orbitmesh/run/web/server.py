"""The live map's HTTP server: static page, run metadata, a Server-Sent Events stream, control.

A small HTTP/1.1 server on the standard library's asyncio streams: the page needs four routes
and one event stream, which does not justify a web framework as a dependency. Everything the
page loads (script, style, coastlines) is served from ``static/`` in the package: nothing comes
from a CDN, so the page works offline.

Routes: ``/`` (the page), ``/static/<file>``, ``/api/meta`` (nodes, flows: static),
``/api/frame`` (the latest frame; ``?t=`` in replay), ``/api/events`` (SSE: one ``data:`` line of
frame JSON per tick), ``POST /api/control`` (a control-topic JSON command; 403 unless the server
was started with control enabled), ``/metrics`` when a metrics registry is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orbitmesh.errors import RunError

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_CLIENTS = 32
"""Event-stream clients at once (each costs one JSON write per tick)."""

Handler = Callable[[str, dict[str, list[str]], bytes], Awaitable[tuple[int, str, bytes]]]


def parse_listen(text: str | None, default_port: int = 0) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``HOST`` or None (127.0.0.1, a free port) -> (host, port)."""
    if not text:
        return "127.0.0.1", default_port
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise RunError(f"listen address {text!r}: expected HOST:PORT, e.g. "
                       "127.0.0.1:8080") from None
    if not 0 <= number <= 65535:
        raise RunError(f"listen address {text!r}: port {number} is outside 0..65535")
    return host, number


class EventHub:
    """Fan one frame out to every SSE client; a slow client drops frames, never the run."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes]] = set()
        self.latest: bytes | None = None
        self.sent = 0

    def publish(self, payload: bytes) -> None:
        """Send ``payload`` to every client (the oldest frame goes when a client lags)."""
        self.latest = payload
        for q in self.queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(payload)
        self.sent += 1

    def join(self) -> asyncio.Queue[bytes]:
        """A new client's queue, primed with the latest frame."""
        q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=2)
        if self.latest is not None:
            q.put_nowait(self.latest)
        self.queues.add(q)
        return q


class WebServer:
    """An async context manager serving the page; ``port`` is known once entered."""

    def __init__(self, host: str, port: int, *, meta: Callable[[], dict[str, Any]],
                 frame: Callable[[dict[str, list[str]]], bytes | None],
                 control: Callable[[bytes], Awaitable[str | None]] | None = None,
                 metrics: Callable[[], bytes] | None = None) -> None:
        self.host, self.port = host, port
        self.hub = EventHub()
        self._meta, self._frame, self._control, self._metrics = meta, frame, control, metrics
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self.requests: list[str] = []
        self._closing = False

    @property
    def url(self) -> str:
        """Where the page is."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def __aenter__(self) -> WebServer:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise RunError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}; choose "
                           "another HOST:PORT") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._closing = True
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._one(reader, writer)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Our own __aexit__ cancelled it: end quietly, since asyncio.streams reports a
            # handler task that ends cancelled as an unhandled error.
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the browser went away
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            return await _reply(writer, 431, "text/plain", b"headers too large\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return await _reply(writer, 400, "text/plain", b"bad request line\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            return await _reply(writer, 413, "text/plain", b"body too large\n")
        body = await reader.readexactly(length) if length else b""
        url = urlsplit(target)
        query = parse_qs(url.query)
        self.requests.append(f"{method} {url.path}")
        if method == "GET" and url.path == "/api/events":
            return await self._events(writer)
        status, kind, payload = await self._route(method, url.path, query, body)
        await _reply(writer, status, kind, payload)

    async def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes
                     ) -> tuple[int, str, bytes]:
        if method == "POST" and path == "/api/control":
            if self._control is None:
                return 403, "application/json", json.dumps({
                    "error": "fault injection from the page is off; start the run with "
                             "--web-control (or orbitmesh watch RUN --control)"}).encode()
            error = await self._control(body)
            return (400 if error else 200), "application/json", json.dumps(
                {"ok": not error, "error": error}).encode()
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics" and self._metrics is not None:
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
        if path == "/api/meta":
            return 200, "application/json", json.dumps(self._meta()).encode()
        if path == "/api/frame":
            frame = self._frame(query)
            return (200, "application/json", frame) if frame else (
                503, "application/json", b'{"error": "no tick yet"}')
        if path in ("/", "/index.html"):
            path = "/static/index.html"
        if path.startswith("/static/"):
            return _static(path.removeprefix("/static/"))
        return 404, "text/plain", b"not found\n"

    async def _events(self, writer: asyncio.StreamWriter) -> None:
        if len(self.hub.queues) >= MAX_CLIENTS:
            return await _reply(writer, 503, "text/plain", b"too many watchers\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-store\r\nConnection: keep-alive\r\n\r\nretry: 1000\n\n")
        await writer.drain()
        q = self.hub.join()
        try:
            while True:
                payload = await q.get()
                writer.write(b"data: " + payload + b"\n\n")
                await writer.drain()
        finally:
            self.hub.queues.discard(q)


def _static(name: str) -> tuple[int, str, bytes]:
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC.resolve()) or not path.is_file():
        return 404, "text/plain", b"not found\n"
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith(("javascript", "json")):
        kind += "; charset=utf-8"
    return 200, kind, path.read_bytes()


async def _reply(writer: asyncio.StreamWriter, status: int, kind: str, body: bytes) -> None:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              405: "Method Not Allowed", 413: "Payload Too Large", 431: "Headers Too Large",
              503: "Service Unavailable"}.get(status, "Error")
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: "
                 f"{len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                 + body)
    await writer.drain()
