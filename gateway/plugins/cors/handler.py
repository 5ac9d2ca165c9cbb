"""Kong's `cors` plugin (PRIORITY 2000): answers preflight requests itself (unless
`preflight_continue`) and adds the CORS headers to the answers of allowed origins; an
origin that is not allowed gets no CORS headers, so the browser refuses the answer."""
from __future__ import annotations

from starlette.responses import Response

from ..base import PluginHandler, RawHeaders, RequestContext
from .schema import Config


def _origin_header(conf: Config, origin: str) -> str:
    return "*" if conf.origins and "*" in conf.origins and not conf.credentials else origin


class Handler(PluginHandler[Config]):
    PRIORITY = 2000

    async def access(self, conf: Config, ctx: RequestContext) -> None:
        request = ctx.request
        assert request is not None
        origin = request.headers.get("origin")
        preflight = (request.method == "OPTIONS" and origin is not None
                     and "access-control-request-method" in request.headers)
        if not preflight or conf.preflight_continue:
            return
        headers: dict[str, str] = {}
        if origin is not None and conf.allows(origin):
            headers["Access-Control-Allow-Origin"] = _origin_header(conf, origin)
            headers["Access-Control-Allow-Methods"] = ",".join(conf.methods)
            requested = request.headers.get("access-control-request-headers")
            allowed = ",".join(conf.headers) if conf.headers else requested
            if allowed:
                headers["Access-Control-Allow-Headers"] = allowed
            if conf.max_age is not None:
                headers["Access-Control-Max-Age"] = str(conf.max_age)
            if conf.credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
            if conf.private_network and request.headers.get("access-control-request-private-network") == "true":
                headers["Access-Control-Allow-Private-Network"] = "true"
        headers["Vary"] = "Origin"
        ctx.exit_response = Response(status_code=200, headers=headers)

    def header_filter(self, conf: Config, ctx: RequestContext, headers: RawHeaders) -> None:
        if ctx.exit_response is not None or ctx.request is None:
            return
        origin = ctx.request.headers.get("origin")
        if origin is None or not conf.allows(origin):
            return
        headers.append((b"Access-Control-Allow-Origin", _origin_header(conf, origin).encode("latin-1")))
        headers.append((b"Vary", b"Origin"))
        if conf.credentials:
            headers.append((b"Access-Control-Allow-Credentials", b"true"))
        if conf.exposed_headers:
            headers.append((b"Access-Control-Expose-Headers", ",".join(conf.exposed_headers).encode("latin-1")))
