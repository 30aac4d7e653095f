"""The proxy's HTTP/1.1 client to the upstream: kept-alive connections, streamed bodies, httptools parsing.

A general client (httpx) costs about a millisecond per request on a small machine, which is the
proxy's whole overhead budget; this one writes the request head in one piece, streams the body
(re-chunked when the client sent it chunked), and parses the answer with httptools (the parser
uvicorn uses), handing each part on as it arrives. Idle connections are reused; a request without a
body that finds its reused connection closed by the upstream is retried once on a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httptools

__all__ = ["UpstreamError", "UpstreamPool"]

_READ = 65536
StartFn = Callable[[int, list[tuple[bytes, bytes]]], Awaitable[None]]
BodyFn = Callable[[bytes], Awaitable[None]]


class UpstreamError(Exception):
    """The upstream could not be reached or broke off before answering."""


class _Parser:
    """httptools callbacks → a list of events, consumed after each feed."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.events: list[tuple[str, Any]] = []
        self.done = False
        self.keep_alive = False
        self.status = 0
        self.parser: Any = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # read here: after the message completes, httptools has reset them
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()
        self.events.append(("headers", None))

    def on_body(self, body: bytes) -> None:
        self.events.append(("body", bytes(body)))

    def on_message_complete(self) -> None:
        self.done = True
        self.events.append(("done", None))


class UpstreamPool:
    def __init__(self, host: str, port: int, *, max_idle: int = 100, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}".encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.max_idle = max_idle
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout

    async def close(self) -> None:
        while self._idle:
            _, w = self._idle.pop()
            w.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(self.host, self.port, limit=_READ * 4),
                                          self.connect_timeout)
        except (TimeoutError, OSError) as e:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {e}") from None

    async def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: AsyncIterator[bytes] | None, length: bytes | None, start: StartFn, send_body: BodyFn
                      ) -> None:
        """Send one request and hand the answer on: ``start(status, headers)`` then ``send_body`` per part.
        ``length``: the client's Content-Length (None with a body: chunked)."""
        head = [method.encode(), b" ", target, b" HTTP/1.1\r\nhost: ", self.host_header, b"\r\n"]
        for k, v in headers:
            head += [k, b": ", v, b"\r\n"]
        chunked = body is not None and length is None
        if length is not None:
            head += [b"content-length: ", length, b"\r\n"]
        elif chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        data = b"".join(head)
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await self._connect()
        try:
            await self._exchange(conn, method, data, body, chunked, start, send_body)
        except _Stale:
            conn[1].close()
            if body is not None:
                raise UpstreamError("the upstream closed a kept-alive connection") from None
            conn = await self._connect()
            await self._exchange(conn, method, data, None, False, start, send_body)

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], method: str, head: bytes,
                        body: AsyncIterator[bytes] | None, chunked: bool, start: StartFn, send_body: BodyFn) -> None:
        reader, writer = conn
        p = _Parser()
        parser = p.parser = httptools.HttpResponseParser(p)
        started = False
        reusable = False
        try:
            try:
                writer.write(head)
                if body is not None:
                    async for chunk in body:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await writer.drain()
                    if chunked:
                        writer.write(b"0\r\n\r\n")
            except OSError as e:
                if body is None:
                    raise _Stale from None
                raise UpstreamError(f"the upstream broke off while receiving the body: {e}") from None
            while True:
                try:
                    async with asyncio.timeout(self.read_timeout):   # no task per read, unlike wait_for
                        data = await reader.read(_READ)
                except (TimeoutError, OSError) as e:
                    raise UpstreamError(f"the upstream broke off: {e}") from None
                if not data:
                    if not started:
                        raise _Stale
                    if not p.done:           # an answer delimited by the connection's end
                        await send_body(b"")
                    return
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    raise UpstreamError("the upstream switched protocols on a plain request") from None
                except httptools.HttpParserError as e:
                    raise UpstreamError(f"the upstream's answer is not HTTP/1.1: {e}") from None
                for kind, value in p.events:
                    if kind == "headers":
                        started = True
                        await start(p.status, p.headers)
                        if method == "HEAD":
                            return
                    elif kind == "body":
                        await send_body(value)
                p.events.clear()
                if p.done:
                    reusable = p.keep_alive
                    return
        finally:
            # the parser holds p's callbacks and p the parser: drop the link so that both go with their last
            # reference, not in a garbage-collector pass (a cycle per request made those stall every request)
            p.parser = None
            if reusable and len(self._idle) < self.max_idle and not writer.is_closing():
                self._idle.append(conn)
            else:
                writer.close()


class _Stale(Exception):
    """The reused connection was closed by the upstream before any answer."""
