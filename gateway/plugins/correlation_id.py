"""Kong's `correlation-id` plugin: every request gets an id that follows it upstream,
into every log line and problem body, and back to the client.

A valid incoming id is kept (so a client or an outer proxy can correlate); anything
else is replaced by a generated one. The shared `RequestContextMiddleware`
(services/common/http.py) then takes the id from `X-Request-ID`, puts it in the
logging context and echoes it; this middleware sits outside it and makes sure
the id it sees is valid, and honours `header_name` and `echo_downstream`.
"""
from __future__ import annotations

import itertools
import re
import uuid
from typing import Literal, TypeGuard

from pydantic import Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.context import REQUEST_ID_HEADER

from .base import PluginConfig

# UUIDs, "uuid#counter", W3C trace ids and the like; no spaces, quotes or control characters.
_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#@+=/-]{0,127}$")


class CorrelationIdConfig(PluginConfig):
    header_name: str = Field("Kong-Request-ID", pattern=r"^[A-Za-z0-9-]{1,64}$")
    # Kong also has "tracker" (nginx variables); not meaningful here.
    generator: Literal["uuid", "uuid#counter"] = "uuid#counter"
    echo_downstream: bool = False


def is_valid_id(value: str | None) -> TypeGuard[str]:
    return value is not None and _VALID_ID.match(value) is not None


class IdGenerator:
    """`uuid`: a random UUID per request; `uuid#counter`: one UUID per process plus a counter."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._prefix = str(uuid.uuid4())
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        if self.kind == "uuid":
            return str(uuid.uuid4())
        return f"{self._prefix}#{next(self._counter)}"


class CorrelationIdMiddleware:
    """Outermost ASGI middleware: fixes up the incoming id header before anything reads it."""

    def __init__(self, app: ASGIApp, config: CorrelationIdConfig) -> None:
        self.app = app
        self.config = config
        self.header = config.header_name.lower().encode("latin-1")
        self.generate = IdGenerator(config.generator)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        std = REQUEST_ID_HEADER.lower().encode("latin-1")
        incoming = None
        for name, value in scope.get("headers", []):
            if name == self.header:
                incoming = value.decode("latin-1")
                break
        request_id = incoming if is_valid_id(incoming) else self.generate()
        raw = request_id.encode("latin-1")
        headers = [(k, v) for k, v in scope.get("headers", []) if k not in (self.header, std)]
        headers.append((std, raw))
        if self.header != std:
            headers.append((self.header, raw))
        scope = dict(scope, headers=headers)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = [(k, v) for k, v in message.get("headers", [])
                       if k.lower() not in (self.header, std)]
                if self.config.echo_downstream:
                    out.append((self.config.header_name.encode("latin-1"), raw))
                message = dict(message, headers=out)
            await send(message)

        await self.app(scope, receive, send_wrapper)
