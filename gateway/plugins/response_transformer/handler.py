"""Kong's `response-transformer` plugin (PRIORITY 800), headers only, in Kong's order:
remove, rename, replace (only headers present), add (only headers absent), append.

It runs in the header_filter phase, so it applies to the gateway's own answers too
(a 401 or a 429 problem), not only to upstream responses. The shipped kong.yml uses it
to add `X-Content-Type-Options: nosniff` and `Cache-Control: no-store` to every API
answer that does not set them itself.
"""
from __future__ import annotations

from ..base import PluginHandler, RawHeaders, RequestContext
from .schema import Config


def _has(headers: RawHeaders, name: bytes) -> bool:
    return any(k.lower() == name for k, _ in headers)


class Handler(PluginHandler[Config]):
    PRIORITY = 800

    def header_filter(self, conf: Config, ctx: RequestContext, headers: RawHeaders) -> None:
        for name in conf.remove.headers:
            low = name.strip().lower().encode("latin-1")
            headers[:] = [(k, v) for k, v in headers if k.lower() != low]
        for old, new in conf.pairs(conf.rename.headers):
            low = old.lower().encode("latin-1")
            headers[:] = [(new.encode("latin-1") if k.lower() == low else k, v) for k, v in headers]
        for name, value in conf.pairs(conf.replace.headers):
            low = name.lower().encode("latin-1")
            if _has(headers, low):
                headers[:] = [(k, v) for k, v in headers if k.lower() != low]
                headers.append((name.encode("latin-1"), value.encode("latin-1")))
        for name, value in conf.pairs(conf.add.headers):
            if not _has(headers, name.lower().encode("latin-1")):
                headers.append((name.encode("latin-1"), value.encode("latin-1")))
        for name, value in conf.pairs(conf.append.headers):
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
