"""The role check of the services' HTTPS ports (mutual TLS), next to the gRPC one.

TLS already proves that the client holds a certificate of the platform CA; this checks its role
against `HTTP_ACCESS` (services/common/access.py). uvicorn does not hand the peer certificate to
the app, so `with_peer_role` subclasses its HTTP protocol: when a connection is made (after the
handshake), the verified leaf certificate's role is put into the connection's ASGI state
(`scope["state"][PEER_ROLE_KEY]`, the same for every request on that connection).
`HttpAccessMiddleware` then answers 403 problem+json to a role the table does not allow, before
the app sees the request. `use_tls` (services/common/runner.py) installs both whenever a service
serves HTTPS; without TLS (the loopback development mode) there is no certificate and no check,
as on the gRPC side.
"""
from __future__ import annotations

import asyncio
import logging
from functools import lru_cache
from typing import Any

from cryptography import x509
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .access import HTTP_ACCESS, OPERATIONAL_PATHS, HttpRule, http_allowed
from .context import REQUEST_ID_HEADER
from .errors import problem_response
from .pki import role_of

log = logging.getLogger(__name__)

PEER_ROLE_KEY = "doctag.peer_role"
# Present (True) on connections made through a role-reading protocol over TLS.
PEER_VERIFIED_KEY = "doctag.peer_verified"

DENIED = Counter("doctag_http_denied_total", "HTTPS requests refused by caller authorisation",
                 ["service", "kind", "role"])


@lru_cache(maxsize=64)
def role_from_der(der: bytes) -> str | None:
    try:
        return role_of(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


def peer_state(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """What a connection adds to its requests' state: the role of the verified client certificate."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return {}
    der = ssl_object.getpeercert(binary_form=True)
    return {PEER_VERIFIED_KEY: True, PEER_ROLE_KEY: role_from_der(der) if der else None}


class PeerRoleHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.app_state = {**self.app_state, **peer_state(transport)}
        super().connection_made(transport)


class PeerRoleH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.app_state = {**self.app_state, **peer_state(transport)}
        super().connection_made(transport)


def with_peer_role(protocol_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the peer role in the state (httptools or h11 only)."""
    if issubclass(protocol_class, HttpToolsProtocol):
        return PeerRoleHttpToolsProtocol
    if issubclass(protocol_class, H11Protocol):
        return PeerRoleH11Protocol
    raise RuntimeError(f"the HTTP role check needs uvicorn's httptools or h11 protocol, not {protocol_class}")


class HttpAccessMiddleware:
    """Refuses (403) a request whose connection's certificate role `HTTP_ACCESS[service]` does not
    allow for the path; a request on a connection the protocol did not mark (no TLS) is refused
    too, so a wiring mistake fails closed."""

    def __init__(self, app: ASGIApp, service: str, rule: HttpRule | None = None) -> None:
        self.app = app
        self.service = service
        self.rule = rule if rule is not None else HTTP_ACCESS[service]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.get("state") or {}
        path: str = scope.get("path", "")
        role: str | None = state.get(PEER_ROLE_KEY)
        if state.get(PEER_VERIFIED_KEY) and http_allowed(self.rule, path, role):
            await self.app(scope, receive, send)
            return
        kind = "operational" if path in OPERATIONAL_PATHS else "api"
        DENIED.labels(self.service, kind, role or "none").inc()
        log.warning("HTTPS request refused", extra={"service": self.service, "path": path,
                                                    "caller_role": role or "none",
                                                    "client": (scope.get("client") or ("", 0))[0]})
        if role is None:
            detail = "the client certificate names no platform role"
        else:
            allowed = sorted(self.rule.operational if kind == "operational" else self.rule.api)
            detail = (f"role {role} may not call the {self.service} HTTP API"
                      + (f" (only {', '.join(allowed)})" if allowed else ""))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        request_ids = [v.decode("latin-1")[:128] for k, v in scope.get("headers", []) if k == b"x-request-id"]
        headers = {REQUEST_ID_HEADER: request_ids[0]} if request_ids else None
        await problem_response(403, detail, instance=path, extra={"role": role}, headers=headers)(scope, receive, send)
