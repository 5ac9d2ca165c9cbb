"""The gateway's upstream client (gateway/upstream_client.py) against small real servers on
loopback: keep-alive reuse, streaming both ways, and each failure as the retry logic needs it."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.upstream_client import (
    ConnectError,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    Timeouts,
    UpstreamClient,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FAST = Timeouts(connect=2, read=2, write=2, pool=0.3)


async def serve(handler: Handler) -> tuple[asyncio.Server, int, list[int]]:
    """A raw server; the list counts the connections it accepted."""
    connections: list[int] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """(head, body) of one request, the body de-chunked; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += chunk[:-2]
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def answer(body: bytes, status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%b\r\n%b" % (status, len(body), extra, body)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while (request := await read_request(reader)) is not None:
        head, body = request
        writer.write(answer(b"%d:%b" % (len(body), head.split(b" ")[0])))
        await writer.drain()


async def body_of(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def get(client: UpstreamClient, port: int, method: str = "GET", content: AsyncIterator[bytes] | None = None,
              headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    response = await client.send(method, "http", "127.0.0.1", port, b"/x", [(b"host", b"t"), *(headers or [])],
                                 content, FAST)
    return response.status_code, await response.aread()


async def test_keep_alive_reuses_one_connection_and_streams_request_bodies() -> None:
    server, port, connections = await serve(echo)
    client = UpstreamClient()
    try:
        assert await get(client, port) == (200, b"0:GET")
        # No length given: sent chunked; with one: sent as it is.
        assert await get(client, port, "POST", body_of([b"ab", b"", "한국어".encode()])) == (200, b"11:POST")
        assert await get(client, port, "PUT", body_of([b"abc"]), [(b"content-length", b"3")]) == (200, b"3:PUT")
        assert len(connections) == 1
    finally:
        await client.aclose()
        server.close()


async def test_large_chunked_answer_streams_in_pieces() -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(64):
            writer.write(b"%x\r\n%b\r\n" % (65536, b"x" * 65536))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    server, port, _ = await serve(big)
    client = UpstreamClient()
    try:
        response = await client.send("GET", "http", "127.0.0.1", port, b"/", [(b"host", b"t")], None, FAST)
        assert response.content_length() is None
        sizes = [len(chunk) async for chunk in response.aiter_raw()]
        assert sum(sizes) == 64 * 65536 and len(sizes) > 1
    finally:
        await client.aclose()
        server.close()


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()  # then closes: keep-alive ends on the server's side

    server, port, connections = await serve(one_shot)
    client = UpstreamClient()
    try:
        assert await get(client, port) == (200, b"ok")
        await asyncio.sleep(0.05)  # the close reaches the protocol
        assert await get(client, port) == (200, b"ok")
        assert len(connections) == 2
    finally:
        await client.aclose()
        server.close()


async def test_failures_say_whether_anything_was_sent() -> None:
    server, port, _ = await serve(echo)
    server.close()
    await server.wait_closed()
    client = UpstreamClient()
    with pytest.raises(ConnectError):
        await get(client, port)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await reader.read()

    for handler, error in ((silent, ReadTimeout), (hang_up, RemoteProtocolError), (garbage, RemoteProtocolError)):
        server, port, _ = await serve(handler)
        try:
            with pytest.raises(error):
                await get(client, port)
        finally:
            server.close()
    await client.aclose()


async def test_pool_limit_waits_then_times_out() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            await release.wait()
            writer.write(answer(b"done"))
            await writer.drain()

    server, port, connections = await serve(slow)
    client = UpstreamClient(max_per_target=1)
    try:
        first = asyncio.create_task(get(client, port))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolTimeout):
            await get(client, port)
        second = asyncio.create_task(get(client, port))
        await asyncio.sleep(0.05)
        release.set()
        assert await first == (200, b"done") and await second == (200, b"done")
        assert len(connections) == 1  # the waiter got the connection the first one freed
    finally:
        await client.aclose()
        server.close()


async def test_head_answers_end_at_the_headers() -> None:
    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        await writer.drain()
        await reader.read()

    server, port, _ = await serve(head)
    client = UpstreamClient()
    try:
        assert await asyncio.wait_for(get(client, port, "HEAD"), 2) == (200, b"")
    finally:
        await client.aclose()
        server.close()
