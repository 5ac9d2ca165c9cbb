"""Request size limits and API docs on a service's own HTTP port (services/common/http.py)."""
from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import Request

from services.common.http import create_app


def _app(api_docs: bool = True):  # type: ignore[no-untyped-def]
    app = create_app("t", title="t", max_body_bytes=1000, body_limits={"/big": 5000}, api_docs=api_docs)

    @app.post("/echo")
    @app.post("/big/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return app


def _client(app) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def _chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 100):
        yield b"x" * 100


async def test_bodies_within_the_limit_pass() -> None:
    async with _client(_app()) as client:
        assert (await client.post("/echo", content=b"x" * 1000)).json() == {"received": 1000}
        assert (await client.post("/big/echo", content=b"x" * 5000)).json() == {"received": 5000}


async def test_a_declared_body_over_the_limit_is_refused_at_once() -> None:
    async with _client(_app()) as client:
        resp = await client.post("/echo", content=b"x" * 1001)
        assert resp.status_code == 413 and resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["max_bytes"] == 1000 and resp.headers["x-request-id"]
        assert (await client.post("/big/echo", content=b"x" * 5001)).json()["max_bytes"] == 5000


async def test_an_undeclared_body_is_counted_and_refused() -> None:
    async with _client(_app()) as client:
        resp = await client.post("/echo", content=_chunks(2000))
        assert resp.status_code == 413 and resp.json()["max_bytes"] == 1000
        assert (await client.post("/echo", content=_chunks(900))).json() == {"received": 900}


async def test_a_malformed_content_length_is_a_bad_request() -> None:
    async with _client(_app()) as client:
        resp = await client.post("/echo", content=b"x", headers={"content-length": "-1"})
        assert resp.status_code == 400 and "Content-Length" in resp.json()["detail"]


async def test_api_docs_only_where_configured() -> None:
    async with _client(_app(api_docs=False)) as client:
        assert (await client.get("/openapi.json")).status_code == 404
        assert (await client.get("/docs")).status_code == 404
    async with _client(_app()) as client:
        assert (await client.get("/openapi.json")).status_code == 200
