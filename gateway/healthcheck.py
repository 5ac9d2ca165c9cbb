"""Kong's active health checks: each target of an upstream with `healthchecks.active`
intervals set is probed with `GET http_path` (the shipped kong.yml: `/readyz`).

A healthy target is probed every `healthy.interval` seconds and taken out after
`unhealthy.http_failures` answers with a status in `unhealthy.http_statuses`,
`unhealthy.tcp_failures` connection failures or `unhealthy.timeouts` timeouts in a row; an
unhealthy one is probed every `unhealthy.interval` seconds and comes back after
`healthy.successes` answers with a status in `healthy.http_statuses` in a row (0 counts as 1;
a threshold of 0 disables that kind of counting, as in Kong). With active checks on, only a
probe brings a target back (passive failures still take it out at once).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from .balancer import UNHEALTHY, TargetState, UpstreamBalancer
from .config import ActiveHealthcheck
from .upstream_client import TimeoutException, TransportError, UpstreamClient

log = logging.getLogger("gateway.healthcheck")


class ActiveChecker:
    def __init__(self, balancer: UpstreamBalancer, conf: ActiveHealthcheck, client: UpstreamClient) -> None:
        self.balancer = balancer
        self.conf = conf
        self.client = client
        self._counts: dict[str, dict[str, int]] = {}

    async def probe(self, target: TargetState) -> str:
        """One probe: "success", "http", "tcp" or "timeout"."""
        headers = {k: v[0] for k, v in (self.conf.headers or {}).items() if v}
        try:
            status = await self.client.get(self.conf.type, target.host, target.port, self.conf.http_path,
                                           headers, timeout=self.conf.timeout or None)
        except TimeoutException:
            return "timeout"
        except TransportError:
            return "tcp"
        if status in self.conf.healthy.http_statuses:
            return "success"
        return "http" if status in self.conf.unhealthy.http_statuses else "neutral"

    def record(self, target: TargetState, outcome: str) -> None:
        counts = self._counts.setdefault(target.address, {"success": 0, "http": 0, "tcp": 0, "timeout": 0})
        if outcome == "neutral":
            return
        for kind in counts:
            counts[kind] = counts[kind] + 1 if kind == outcome else 0
        unhealthy = self.conf.unhealthy
        if outcome == "success":
            if target.state == UNHEALTHY and counts["success"] >= max(1, self.conf.healthy.successes):
                log.info("target healthy again (active check)", extra={"target": target.address})
                self.balancer.mark_healthy(target)
            return
        threshold = {"http": unhealthy.http_failures, "tcp": unhealthy.tcp_failures,
                     "timeout": unhealthy.timeouts}[outcome]
        if threshold and counts[outcome] >= threshold and target.state != UNHEALTHY:
            log.warning("target unhealthy (active check)", extra={"target": target.address, "kind": outcome})
            self.balancer.mark_unhealthy(target)

    async def _check(self, target: TargetState) -> None:
        self.record(target, await self.probe(target))

    async def run(self) -> None:
        """Probes until cancelled; healthy and unhealthy targets at their own intervals."""
        due: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            batch = []
            for target in self.balancer.targets:
                interval = (self.conf.unhealthy.interval if target.state == UNHEALTHY
                            else self.conf.healthy.interval)
                if interval > 0 and due.get(target.address, 0.0) <= now:
                    due[target.address] = now + interval
                    batch.append(target)
            for start in range(0, len(batch), max(1, self.conf.concurrency)):
                await asyncio.gather(*(self._check(t) for t in batch[start:start + self.conf.concurrency]))
            await asyncio.sleep(0.1)


class HealthChecks:
    """The active checkers of a configuration's upstreams, started and stopped together."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, balancers: list[tuple[UpstreamBalancer, ActiveHealthcheck]], client: UpstreamClient) -> None:
        for balancer, conf in balancers:
            if conf.enabled:
                self._tasks.append(asyncio.create_task(ActiveChecker(balancer, conf, client).run()))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
