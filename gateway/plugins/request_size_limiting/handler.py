"""Kong's `request-size-limiting` plugin (PRIORITY 951).

A declared Content-Length over the limit is refused before anything is sent
upstream. A body without one (chunked) is counted while it streams through and the
request is aborted with 413 as soon as it passes the limit, so no more than the
limit is ever forwarded. Bodies are never held in memory.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.common.errors import ProblemError

from ..base import PluginHandler, RequestContext
from .schema import Config


class PayloadTooLarge(Exception):
    """Raised from the body stream once more than the limit has arrived."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


def too_large(limit: int) -> ProblemError:
    return ProblemError(413, f"the request body is larger than the allowed {limit} bytes",
                        extra={"max_bytes": limit})


def parse_content_length(value: str | None) -> int | None:
    """The declared body size, None when absent; 400 when it is not a plain non-negative integer."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise ProblemError(400, "Content-Length must be a non-negative integer", field="Content-Length")
    return int(value)


def check_declared(content_length: int | None, has_body: bool, config: Config) -> None:
    """The early check on the headers alone: 413 for a declared size over the limit,
    411 when a length is required and a body comes without one."""
    if content_length is not None and content_length > config.limit_bytes:
        raise too_large(config.limit_bytes)
    if config.require_content_length and has_body and content_length is None:
        raise ProblemError(411, "a Content-Length header is required", slug="length-required",
                           title="Length required", field="Content-Length")


async def limited(stream: AsyncIterator[bytes], limit: int | None) -> AsyncIterator[bytes]:
    """Passes chunks through, raising PayloadTooLarge before yielding past `limit` bytes."""
    received = 0
    async for chunk in stream:
        if not chunk:
            continue
        received += len(chunk)
        if limit is not None and received > limit:
            raise PayloadTooLarge(limit)
        yield chunk


def has_body(headers: Any) -> bool:
    return "content-length" in headers or "transfer-encoding" in headers


class Handler(PluginHandler[Config]):
    PRIORITY = 951

    async def access(self, conf: Config, ctx: RequestContext) -> None:
        assert ctx.request is not None
        headers = ctx.request.headers
        check_declared(parse_content_length(headers.get("content-length")), has_body(headers), conf)
        ctx.body_limit = conf.limit_bytes
