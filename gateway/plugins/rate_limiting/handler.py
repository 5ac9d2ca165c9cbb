"""Kong's `rate-limiting` plugin (PRIORITY 910).

Each configured window is a fixed window (the second, minute, hour, day, calendar month
or year, UTC) with a counter per identifier. A request adds 1 to the counter of every
window atomically (policy `local`: in this process; `redis`: one Lua script in Redis, shared and exact
across gateway processes); if any counter passes its limit the request is refused with
`error_code` (429) and `Retry-After`, and its additions are taken back, so refused requests
do not use up the allowance (as in Kong, which does not count them).

Headers as Kong's: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (the window
with the fewest requests left; on a tie the longer one) and `X-RateLimit-Limit-<Period>`,
`X-RateLimit-Remaining-<Period>` for each window, unless `hide_client_headers`.

Identifiers (`limit_by`): `consumer` = the authenticated user; `credential` = the caller's
tenant (deviation: the platform's credentials belong to a tenant; Kong counts per
credential); `ip`; `service`; `header` (`header_name`); `path` (requests on `path` share
one counter). Without what `limit_by` needs, the client address is used, as in Kong.
Counters are kept per configured plugin (its scope), as in Kong.

When Redis cannot be reached: `fault_tolerant: true` lets the request through (logged,
`doctag_gateway_rate_limit_store_errors_total`); `false` answers 503 (Kong: 500).
"""
from __future__ import annotations

import logging
import math
import random
import time
from datetime import UTC, datetime

from prometheus_client import Counter

from services.common.errors import ProblemError

from ...counters import Counters, CounterStoreError, LocalCounters, RedisCounters
from ..base import Dependencies, PluginHandler, RequestContext
from .schema import Config

log = logging.getLogger("gateway.rate_limiting")
STORE_ERRORS = Counter("doctag_gateway_rate_limit_store_errors_total",
                       "rate-limiting requests whose counter store could not be reached", ["policy"])
_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def window(period: str, now: float) -> tuple[int, int]:
    """(start, end) of the fixed window of `period` that contains `now`, in epoch seconds (UTC)."""
    if period in _SECONDS:
        size = _SECONDS[period]
        start = int(now // size * size)
        return start, start + size
    moment = datetime.fromtimestamp(now, UTC)
    if period == "month":
        begin = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = begin.replace(year=begin.year + 1, month=1) if begin.month == 12 else begin.replace(month=begin.month + 1)
    else:
        begin = moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        end = begin.replace(year=begin.year + 1)
    return int(begin.timestamp()), int(end.timestamp())


def identifier(conf: Config, ctx: RequestContext) -> str:
    principal = ctx.principal
    if conf.limit_by == "consumer" and principal is not None:
        return f"consumer:{principal.user_id}"
    if conf.limit_by == "credential" and principal is not None:
        return f"tenant:{principal.tenant_id}"
    if conf.limit_by == "service" and ctx.match is not None:
        return f"service:{ctx.match.entry.service.name}"
    if conf.limit_by == "header" and ctx.request is not None and conf.header_name:
        value = ctx.request.headers.get(conf.header_name)
        if value:
            return f"header:{value[:256]}"
    if conf.limit_by == "path" and ctx.request is not None and ctx.request.url.path == conf.path:
        return f"path:{conf.path}"
    return f"ip:{ctx.client_ip}"


class Handler(PluginHandler[Config]):
    PRIORITY = 910

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.prefix = deps.settings.gateway_redis_prefix
        self.local = LocalCounters()
        self.remote: dict[str, RedisCounters] = {}

    def store(self, conf: Config) -> Counters:
        if conf.policy == "local":
            return self.local
        url = conf.redis.url()
        if url not in self.remote:
            timeout = (conf.redis.connect_timeout or conf.redis.timeout) / 1000
            self.remote[url] = RedisCounters.from_url(url, timeout_s=timeout)
        return self.remote[url]

    async def close(self) -> None:
        for store in self.remote.values():
            await store.close()

    async def access(self, conf: Config, ctx: RequestContext) -> None:
        now = time.time()
        who = identifier(conf, ctx)
        limits = conf.limits()
        windows = [window(period, now) for period, _ in limits]
        keys = [(f"{self.prefix}:ratelimit:{ctx.plugin_scope}:{who}:{period}:{start}", max(1, end - int(now)) + 1)
                for (period, _), (start, end) in zip(limits, windows, strict=True)]
        store = self.store(conf)
        try:
            counts = await store.incr(keys)
        except CounterStoreError as exc:
            STORE_ERRORS.labels(conf.policy).inc()
            if conf.fault_tolerant:
                log.warning("rate-limit counters unavailable; request let through (fault_tolerant)",
                            extra={"error": str(exc)})
                return
            raise ProblemError(503, "the rate-limit counters cannot be reached") from None
        stopped = [period for (period, limit), count in zip(limits, counts, strict=True) if count > limit]
        if stopped:
            try:
                await store.decr([key for key, _ in keys])
            except CounterStoreError:
                log.warning("could not take back a refused request's rate-limit counts")
        headers: list[tuple[str, str]] = []
        best: tuple[float, int, float, int] | None = None  # remaining, window size, limit, reset
        for (period, limit), count, (start, end) in zip(limits, counts, windows, strict=True):
            remaining = max(0, int(limit) - (count - 1 if stopped else count))
            if period in stopped:
                remaining = 0
            reset = max(1, math.ceil(end - now))
            size = end - start
            if best is None or remaining < best[0] or (remaining == best[0] and size > best[1]):
                best = (remaining, size, limit, reset)
            title = period.capitalize()
            headers += [(f"X-RateLimit-Limit-{title}", f"{limit:g}"),
                        (f"X-RateLimit-Remaining-{title}", str(remaining))]
        assert best is not None
        headers += [("RateLimit-Limit", f"{best[2]:g}"), ("RateLimit-Remaining", str(int(best[0]))),
                    ("RateLimit-Reset", str(best[3]))]
        if not conf.hide_client_headers:
            ctx.response_headers += headers
        if stopped:
            reset = max(max(1, math.ceil(windows[i][1] - now)) for i, (p, _) in enumerate(limits) if p in stopped)
            retry_after = reset + (random.randint(0, conf.retry_after_jitter_max) if conf.retry_after_jitter_max else 0)
            raise ProblemError(conf.error_code, conf.error_message, slug="rate-limited",
                               headers={"Retry-After": str(retry_after)},
                               extra={"limit_by": conf.limit_by, "windows": stopped, "retry_after": retry_after})
