"""Fairness between tenants (beyond Kong): a cap on each tenant's concurrent requests to
each upstream.

A tenant with `cap` requests in flight to an upstream waits (first come, first served)
for one of them to finish before the next is sent, so a department that floods the
gateway uses at most `cap` of the upstream's capacity and the others keep theirs. At
most `max_waiting` of a tenant's requests wait per upstream (more answer 429 at once)
and none waits longer than `wait_s` (then 503). Requests without a tenant (not
authenticated) are not capped here. Kept out of kong.yml, which stays Kong's format:
set by `DOCTAG_GATEWAY_TENANT_MAX_IN_FLIGHT` (0 turns it off) and its neighbours.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from services.common.errors import ProblemError

WAITING = Gauge("doctag_gateway_tenant_waiting", "Requests waiting for their tenant's turn, by upstream",
                ["upstream"])
REFUSED = Counter("doctag_gateway_tenant_refused_total", "Requests refused by the per-tenant in-flight cap",
                  ["upstream", "reason"])


@dataclass
class _Lane:
    semaphore: asyncio.Semaphore
    users: int = 0  # in flight plus waiting
    waiting: int = field(default=0)


class TenantFairness:
    def __init__(self, cap: int, *, max_waiting: int = 200, wait_s: float = 30.0) -> None:
        self.cap = cap
        self.max_waiting = max_waiting
        self.wait_s = wait_s
        self._lanes: dict[tuple[str, str], _Lane] = {}

    def in_use(self, upstream: str, tenant: str) -> int:
        lane = self._lanes.get((upstream, tenant))
        return 0 if lane is None else lane.users - lane.waiting

    @asynccontextmanager
    async def slot(self, upstream: str, tenant: str | None) -> AsyncIterator[None]:
        if self.cap <= 0 or tenant is None:
            yield
            return
        key = (upstream, tenant)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(asyncio.Semaphore(self.cap))
        if lane.semaphore.locked() and lane.waiting >= self.max_waiting:
            REFUSED.labels(upstream, "queue_full").inc()
            raise ProblemError(429, "your department has too many requests waiting for this service; "
                               "slow down", slug="tenant-in-flight", headers={"Retry-After": "1"})
        lane.users += 1
        lane.waiting += 1
        WAITING.labels(upstream).inc()
        try:
            try:
                async with asyncio.timeout(self.wait_s):
                    await lane.semaphore.acquire()
            finally:
                lane.waiting -= 1
                WAITING.labels(upstream).dec()
        except TimeoutError:
            self._leave(key, lane)
            REFUSED.labels(upstream, "timeout").inc()
            raise ProblemError(503, "your department's requests to this service did not get a turn in time",
                               slug="tenant-in-flight", headers={"Retry-After": "1"}) from None
        except BaseException:
            self._leave(key, lane)
            raise
        try:
            yield
        finally:
            lane.semaphore.release()
            self._leave(key, lane)

    def _leave(self, key: tuple[str, str], lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0 and self._lanes.get(key) is lane:
            del self._lanes[key]
