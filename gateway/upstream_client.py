"""A lean pooled HTTP/1.1 client for the gateway's upstream traffic (asyncio protocol +
httptools' C parser), in place of httpx's general-purpose client.

Why: profiled at concurrency 32, a good part of the gateway's time went to httpx/httpcore's
pool (each request scanned every pooled connection and polled its socket) and to anyio's stream
layer. Here a connection is an `asyncio.Protocol`: the event loop tells it when the peer closes
(no polling), idle connections wait in a LIFO stack per target, and the response is parsed in C.

What it keeps: request and response bodies stream both ways (a request body without a length
goes out chunked; a response body is handed on as it arrives, with back-pressure on the
socket), mutual TLS to upstreams (the context given), per-request connect/read/write/pool
timeouts. Errors say whether anything of the request was sent (`ConnectError`,
`ConnectTimeout` and `PoolTimeout`: nothing was; `ReadTimeout`, `WriteTimeout`,
`RemoteProtocolError`: possibly), which is what decides whether a retry is safe.
"""
from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools

HIGH_WATER = 256 * 1024  # buffered response bytes before the socket is paused


class TransportError(Exception):
    """Talking to the upstream failed."""


class ConnectError(TransportError):
    """No connection (refused, reset during the handshake, TLS refused): nothing was sent."""


class TimeoutException(TransportError):
    pass


class ConnectTimeout(TimeoutException, ConnectError):
    pass


class PoolTimeout(TimeoutException):
    """Every connection to the target stayed busy: nothing was sent."""


class ReadTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class RemoteProtocolError(TransportError):
    """The connection broke or the answer was not HTTP after (part of) the request was sent."""


@dataclass(frozen=True)
class Timeouts:
    connect: float | None = 5.0
    read: float | None = 60.0
    write: float | None = 60.0
    pool: float | None = 5.0


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: Exception | None = None
        self.idle_since = 0.0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.paused_reading = False
        self._wake: asyncio.Event = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"the upstream's answer is not valid HTTP: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(RemoteProtocolError(f"the upstream closed the connection{f': {exc}' if exc else ''}"))
        self._writable.set()
        self._wake.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ------------------------------------------------------------ httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an interim answer (we never ask for 100-continue): wait for the real one
            self.headers = []
            return
        self.headers_done = True
        self._wake.set()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()
        self._wake.set()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake.set()

    # ------------------------------------------------------------ used by the client
    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._wake.set()

    def usable(self, now: float, expiry: float) -> bool:
        return not self.closed and self.error is None and now - self.idle_since < expiry

    def reset(self) -> None:
        self.status, self.headers, self.headers_done, self.complete = 0, [], False, False
        self.chunks.clear()
        self.buffered = 0

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.closed or self.transport is None:
            raise self.error or RemoteProtocolError("the upstream closed the connection")
        self.transport.write(data)
        if not self._writable.is_set():
            try:
                await asyncio.wait_for(self._writable.wait(), timeout)
            except TimeoutError:
                raise WriteTimeout("writing the request to the upstream timed out") from None
            if self.closed:
                raise self.error or RemoteProtocolError("the upstream closed the connection")

    async def wait(self, timeout: float | None) -> None:
        """Until something new arrived (headers, a chunk, the end, an error)."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            raise ReadTimeout("the upstream did not answer in time") from None

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused_reading and self.buffered <= HIGH_WATER // 4 and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """An upstream's answer: status and raw headers at once, the body as it arrives."""

    def __init__(self, client: UpstreamClient, key: tuple[str, str, int], conn: _Connection,
                 read_timeout: float | None, head: bool) -> None:
        self.status_code = conn.status
        self.raw_headers = conn.headers
        self._client, self._key, self._conn = client, key, conn
        self._read_timeout = read_timeout
        self._head = head
        self._released = False

    def content_length(self) -> int | None:
        for name, value in self.raw_headers:
            if name.lower() == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            if not self._head:
                while True:
                    while conn.chunks:
                        yield conn.take()
                    if conn.complete:
                        break
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(self._read_timeout)
        finally:
            await self.aclose()

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        # A HEAD answer may announce a length the parser would wait for: never reuse its connection.
        reusable = conn.complete and conn.keep_alive and not conn.closed and not self._head and not conn.chunks
        self._client._release(self._key, conn, reusable)


class UpstreamClient:
    """Pooled keep-alive connections per (scheme, host, port), at most `max_per_target` each."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_per_target: int = 512,
                 keepalive_expiry: float = 2.0) -> None:
        self.ssl_context = ssl_context
        self.max_per_target = max_per_target
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: dict[tuple[str, str, int], int] = {}
        self._waiting: dict[tuple[str, str, int], collections.deque[asyncio.Future[None]]] = {}
        self._all: set[_Connection] = set()

    async def _connect(self, key: tuple[str, str, int], timeout: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self.ssl_context or ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, host, port, ssl=context,
                                       server_hostname=host.strip("[]") if context else None), timeout)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def _acquire(self, key: tuple[str, str, int], timeouts: Timeouts) -> tuple[_Connection, bool]:
        """A connection to `key` and whether it was reused."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.keepalive_expiry):
                conn.reset()
                return conn, True
            self._discard(key, conn)
        if self._open.get(key, 0) >= self.max_per_target:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, collections.deque()).append(turn)
            try:
                await asyncio.wait_for(turn, timeouts.pool)
            except TimeoutError:
                raise PoolTimeout(f"no free connection to {key[1]}:{key[2]}") from None
            return await self._acquire(key, timeouts)
        self._open[key] = self._open.get(key, 0) + 1
        try:
            return await self._connect(key, timeouts.connect), False
        except BaseException:
            self._open[key] -= 1
            self._notify(key)
            raise

    def _discard(self, key: tuple[str, str, int], conn: _Connection) -> None:
        conn.close()
        self._all.discard(conn)
        self._open[key] = self._open.get(key, 1) - 1
        self._notify(key)

    def _notify(self, key: tuple[str, str, int]) -> None:
        """Gives the next waiter for `key` its turn (a connection came free or closed)."""
        waiting = self._waiting.get(key)
        while waiting:
            turn = waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _release(self, key: tuple[str, str, int], conn: _Connection, reusable: bool) -> None:
        if reusable:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(key, []).append(conn)
            self._notify(key)
        else:
            self._discard(key, conn)

    async def send(self, method: str, scheme: str, host: str, port: int, target: bytes,
                   headers: list[tuple[bytes, bytes]], content: AsyncIterator[bytes] | None,
                   timeouts: Timeouts) -> Response:
        """Sends the request and returns once the response headers are in. `headers` go out as
        given (the caller sets Host); a `content` without a Content-Length header goes chunked."""
        key = (scheme, host, port)
        conn, _ = await self._acquire(key, timeouts)
        try:
            chunked = content is not None and not any(k.lower() == b"content-length" for k, _ in headers)
            head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
            for name, value in headers:
                head += [name, b": ", value, b"\r\n"]
            if chunked:
                head.append(b"transfer-encoding: chunked\r\n")
            head.append(b"\r\n")
            await conn.write(b"".join(head), timeouts.write)
            if content is not None:
                async for chunk in content:
                    if not chunk:
                        continue
                    if chunked:
                        await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk), timeouts.write)
                    else:
                        await conn.write(chunk, timeouts.write)
                if chunked:
                    await conn.write(b"0\r\n\r\n", timeouts.write)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(timeouts.read)
        except BaseException:
            self._discard(key, conn)
            raise
        return Response(self, key, conn, timeouts.read, head=method == "HEAD")

    async def get(self, scheme: str, host: str, port: int, path: str, headers: dict[str, str],
                  timeout: float | None) -> int:
        """A small GET (health probes): the status, the body read and dropped."""
        hdrs = [(b"host", f"{host}:{port}".encode("latin-1"))]
        hdrs += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        timeouts = Timeouts(connect=timeout, read=timeout, write=timeout, pool=timeout)
        response = await self.send("GET", scheme, host, port, path.encode("latin-1"), hdrs, None, timeouts)
        await response.aread()
        return response.status_code

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._open.clear()
