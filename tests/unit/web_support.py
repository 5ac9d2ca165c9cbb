"""What the web UI's page tests share: the web app with its gateway replaced by an httpx
MockTransport that answers like the gateway and records what the pages sent, and signed tokens."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from services.common.auth import ensure_keypair, sign_token
from services.web.app import build_app
from services.web.settings import WebSettings

TENANT = str(uuid.uuid4())
EVIL = "<script>alert(1)</script>"


class FakeGateway:
    """Answers the API like the gateway would and records what the pages sent (JSON bodies parsed;
    a multipart form kept as its bytes, with its content type, in `raw`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.answers: dict[tuple[str, str], httpx.Response] = {}
        self.params: dict[str, str] = {}
        self.raw: list[tuple[str, bytes]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        content_type = request.headers.get("content-type", "")
        body: Any = None
        if content_type.startswith("multipart/form-data"):
            self.raw.append((content_type, request.read()))
            body = "multipart"
        elif request.content:
            body = json.loads(request.content)
        self.calls.append((request.method, request.url.path, body))
        self.params = dict(request.url.params)
        answer = self.answers.get((request.method, request.url.path))
        return answer if answer is not None else httpx.Response(200, json={})


Web = tuple[httpx.AsyncClient, FakeGateway, Callable[[list[str]], str]]


def make_web(tmp_path: Path) -> Web:
    """(a client of the web app, the fake gateway, login(roles) → a token of department TENANT)."""
    ensure_keypair(tmp_path / "keys")
    app = build_app(WebSettings(state_dir=tmp_path, web_api_url="http://gateway"))
    gateway = FakeGateway()
    app.state.web.api.client = httpx.AsyncClient(transport=httpx.MockTransport(gateway.handler),
                                                 base_url="http://gateway")

    def login(roles: list[str]) -> str:
        return sign_token(private_key_file=tmp_path / "keys" / "jwt_private.pem", user_id=str(uuid.uuid4()),
                          tenant_id=TENANT, tenant_slug="finance", username="chief", roles=roles,
                          issuer="doctag", audience="doctag-api", ttl_seconds=600)

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://web")
    return client, gateway, login


def run(coro: Any) -> Any:
    return asyncio.run(coro)
