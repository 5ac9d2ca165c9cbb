"""The gateway's front door answers a request it cannot parse with problem+json (gateway/bad_request.py),
over a real socket to a real uvicorn server with the gateway's protocol class."""
from __future__ import annotations

import asyncio
import json
import socket

import uvicorn
from fastapi import FastAPI

from gateway.bad_request import ProblemHttpToolsProtocol


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)   # the server closes after answering
    writer.close()
    return data


async def test_raw_korean_in_the_url_gets_problem_json_and_a_good_request_still_works() -> None:
    app = FastAPI()

    @app.get("/api/v1/search")
    async def search(q: str) -> dict[str, str]:
        return {"q": q}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", http=ProblemHttpToolsProtocol))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        bad = await _exchange(port, "GET /api/v1/search?q=예산 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, _, body = bad.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"content-type: application/problem+json" in head.lower()
        problem = json.loads(body)
        assert problem["status"] == 400 and problem["errors"][0]["field"] == "request"
        assert "percent-encoded" in problem["detail"]
        good = await _exchange(port, b"GET /api/v1/search?q=%EC%98%88%EC%82%B0 HTTP/1.1\r\nHost: x\r\n"
                                     b"Connection: close\r\n\r\n")
        assert good.startswith(b"HTTP/1.1 200 ") and json.loads(good.partition(b"\r\n\r\n")[2]) == {"q": "예산"}
    finally:
        server.should_exit = True
        await task
