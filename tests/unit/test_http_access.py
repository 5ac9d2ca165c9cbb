"""The HTTPS role check's decisions (services/common/http_access.py), without sockets: the
connection state the protocol sets decides, and a connection it did not mark fails closed."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.common.http_access import PEER_ROLE_KEY, PEER_VERIFIED_KEY, HttpAccessMiddleware


async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def with_state(state: dict[str, Any]) -> Any:
    app = HttpAccessMiddleware(ok, "search")

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "state": dict(state)}, receive, send)

    return wrapped


@pytest.mark.parametrize(("state", "path", "status"), [
    ({PEER_VERIFIED_KEY: True, PEER_ROLE_KEY: "gateway"}, "/api/v1/search", 200),
    ({PEER_VERIFIED_KEY: True, PEER_ROLE_KEY: "tagging-worker"}, "/api/v1/search", 403),
    ({PEER_VERIFIED_KEY: True, PEER_ROLE_KEY: "tagging-worker"}, "/metrics", 200),
    ({PEER_VERIFIED_KEY: True, PEER_ROLE_KEY: "web"}, "/readyz", 200),
    ({PEER_VERIFIED_KEY: True, PEER_ROLE_KEY: "web"}, "/readyz/", 403),  # operational paths are exact
    ({PEER_VERIFIED_KEY: True, PEER_ROLE_KEY: None}, "/healthz", 403),    # a CA certificate naming no role
    ({}, "/healthz", 403),                                                # not marked by the protocol: closed
    ({PEER_ROLE_KEY: "gateway"}, "/api/v1/search", 403),
])
async def test_decisions(state: dict[str, Any], path: str, status: int) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state(state)), base_url="https://s") as c:
        r = await c.get(path)
    assert r.status_code == status
    if status == 403:
        assert r.headers["content-type"] == "application/problem+json" and r.json()["status"] == 403
        role = state.get(PEER_ROLE_KEY)
        assert r.json()["role"] == role
        assert ("names no platform role" in r.json()["detail"]) == (role is None)
