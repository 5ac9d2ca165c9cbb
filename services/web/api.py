"""The public API, reached through the gateway with the signed-in user's token.

The UI holds no data of its own: every page is rendered from the answers of the same
endpoints any client uses, so the gateway's authentication, roles, limits and audit apply
to the browser exactly as to the CLI.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.common.context import REQUEST_ID_HEADER, current_request_id


@dataclass
class ApiError(Exception):
    """An answer of 400 or above (or no answer: status 502) with its RFC 9457 body."""

    status: int
    problem: dict[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.problem.get('detail', '')}"

    @property
    def slug(self) -> str:
        kind = str(self.problem.get("type", ""))
        return kind.rsplit(":", 1)[-1] if kind.startswith("urn:doctag:problem:") else ""


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class Api:
    """A pooled HTTP client for the gateway."""

    def __init__(self, base_url: str, *, timeout_s: float, upload_timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(timeout_s)
        self.upload_timeout = httpx.Timeout(upload_timeout_s, connect=10.0)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, trust_env=False,
                                        follow_redirects=False)

    async def close(self) -> None:
        await self.client.aclose()

    @staticmethod
    def headers(token: str | None, client_ip: str | None = None) -> dict[str, str]:
        out = {REQUEST_ID_HEADER: current_request_id() or "", "Accept": "application/json"}
        if token:
            out["Authorization"] = f"Bearer {token}"
        if client_ip:
            out["X-Forwarded-For"] = client_ip
        return {k: v for k, v in out.items() if v}

    async def send(self, method: str, path: str, token: str | None, *, params: Any = None,
                   json: Any = None, data: Any = None, files: Any = None,
                   client_ip: str | None = None) -> httpx.Response:
        """The answer; ApiError for a status of 400 or above or when the gateway cannot be reached.
        `files` (a multipart form, with `data` its text fields) gets the upload time-out."""
        try:
            response = await self.client.request(method, path, params=params, json=json, data=data, files=files,
                                                 headers=self.headers(token, client_ip),
                                                 timeout=self.upload_timeout if files else self.timeout)
        except httpx.HTTPError as exc:
            raise ApiError(502, {"detail": f"the gateway cannot be reached: {exc.__class__.__name__}"}) from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem(response), response.headers)
        return response

    async def json(self, method: str, path: str, token: str | None, **kwargs: Any) -> Any:
        response = await self.send(method, path, token, **kwargs)
        return response.json() if response.content else None

    async def upload(self, token: str, content_type: str, length: str | None, body: AsyncIterator[bytes],
                     client_ip: str | None) -> httpx.Response:
        """Streams one multipart upload to `POST /api/v1/documents` (never held in memory) and
        returns the answer whatever its status (the page shows refusals per file)."""
        headers = {**self.headers(token, client_ip), "Content-Type": content_type}
        if length:
            headers["Content-Length"] = length
        request = self.client.build_request("POST", "/api/v1/documents", headers=headers, content=body,
                                            timeout=self.upload_timeout)
        try:
            return await self.client.send(request)
        except httpx.HTTPError as exc:
            raise ApiError(502, {"detail": f"the gateway cannot be reached: {exc.__class__.__name__}"}) from None

    async def stream(self, path: str, token: str, client_ip: str | None) -> httpx.Response:
        """A streamed GET (downloads); the caller closes the response."""
        request = self.client.build_request("GET", path, headers=self.headers(token, client_ip),
                                            timeout=self.upload_timeout)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ApiError(502, {"detail": f"the gateway cannot be reached: {exc.__class__.__name__}"}) from None
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise ApiError(response.status_code, _problem(response), response.headers)
        return response
