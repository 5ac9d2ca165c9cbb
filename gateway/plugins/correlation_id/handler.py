"""Kong's `correlation-id` plugin (PRIORITY 100001): every request gets an id that
follows it upstream, into every log line and problem body, and back to the client.

A valid incoming id is kept (so a client or an outer proxy can correlate); anything
else is replaced by a generated one. It runs in the rewrite phase, before the shared
`RequestContextMiddleware` (services/common/http.py) reads `X-Request-ID` into the
logging context, so the id in the logs, in a problem body (500s included) and in the
response header is one and the same.
"""
from __future__ import annotations

import itertools
import re
import uuid
from typing import TypeGuard

from services.common.context import REQUEST_ID_HEADER

from ..base import Dependencies, PluginHandler, RawHeaders, RequestContext
from .schema import Config

# UUIDs, "uuid#counter", W3C trace ids and the like; no spaces, quotes or control characters.
_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#@+=/-]{0,127}$")
_STD = REQUEST_ID_HEADER.lower().encode("latin-1")


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


class Handler(PluginHandler[Config]):
    PRIORITY = 100001

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self._generators = {kind: IdGenerator(kind) for kind in ("uuid", "uuid#counter")}

    def rewrite(self, conf: Config, ctx: RequestContext) -> None:
        header = conf.header_name.lower().encode("latin-1")
        incoming = None
        for name, value in ctx.scope.get("headers", []):
            if name == header:
                incoming = value.decode("latin-1")
                break
        request_id = incoming if is_valid_id(incoming) else self._generators[conf.generator]()
        raw = request_id.encode("latin-1")
        headers = [(k, v) for k, v in ctx.scope.get("headers", []) if k not in (header, _STD)]
        headers.append((_STD, raw))
        if header != _STD:
            headers.append((header, raw))
        ctx.scope["headers"] = headers
        ctx.shared["correlation_id"] = request_id

    def header_filter(self, conf: Config, ctx: RequestContext, headers: RawHeaders) -> None:
        header = conf.header_name.lower().encode("latin-1")
        headers[:] = [(k, v) for k, v in headers if k.lower() not in (header, _STD)]
        request_id = ctx.shared.get("correlation_id")
        if conf.echo_downstream and request_id:
            headers.append((conf.header_name.encode("latin-1"), request_id.encode("latin-1")))
