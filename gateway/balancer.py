"""Weighted round-robin over an upstream's targets, with Kong-style passive health checks.

Proxied traffic is the only health signal: a target reaching `unhealthy.tcp_failures`
connection failures, `unhealthy.timeouts` timeouts or `unhealthy.http_failures`
responses with a status in `unhealthy.http_statuses` (each counted in a row, reset by
a success) is taken out of rotation.

Deviation from Kong, where a passively-unhealthy target stays out until an operator
or an active check brings it back: here it stays out for a cool-down
(`DOCTAG_GATEWAY_UNHEALTHY_COOLDOWN_SECONDS`), then gets traffic again on probation;
one failure on probation takes it out again, `healthy.successes` successes (at least
one) make it healthy. When every target is out, the ones whose cool-down ends first
are still tried, so an upstream that has recovered is found without waiting.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import reduce

from .config import Upstream
from .metrics import TARGET_FAILURES, TARGET_HEALTHY

HEALTHY, UNHEALTHY, PROBATION = "healthy", "unhealthy", "probation"


@dataclass
class TargetState:
    address: str
    host: str
    port: int
    weight: int
    state: str = HEALTHY
    unhealthy_until: float = 0.0
    failures: dict[str, int] = field(default_factory=lambda: {"tcp": 0, "timeout": 0, "http": 0})
    successes: int = 0


class UpstreamBalancer:
    def __init__(self, upstream: Upstream, *, cooldown_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = upstream.name
        self.host_header = upstream.host_header
        unhealthy = upstream.healthchecks.passive.unhealthy
        self.thresholds = {"tcp": unhealthy.tcp_failures, "timeout": unhealthy.timeouts,
                           "http": unhealthy.http_failures}
        self.unhealthy_statuses = frozenset(unhealthy.http_statuses)
        self.healthy_statuses = frozenset(upstream.healthchecks.passive.healthy.http_statuses)
        self.successes_needed = max(1, upstream.healthchecks.passive.healthy.successes)
        self.cooldown = cooldown_seconds
        self.clock = clock
        self.targets = [TargetState(address=t.target, host=t.host, port=t.port, weight=t.weight)
                        for t in upstream.targets]
        # Each target appears weight/gcd times, so a weight of 200 gets twice the turns of 100.
        active = [t for t in self.targets if t.weight > 0]
        divisor = reduce(math.gcd, (t.weight for t in active), 0) or 1
        self._ring = [t for t in active for _ in range(t.weight // divisor)]
        self._next = 0
        for target in self.targets:
            self._publish(target)

    def _publish(self, target: TargetState) -> None:
        TARGET_HEALTHY.labels(self.name, target.address).set(0 if target.state == UNHEALTHY else 1)

    def _refresh(self, target: TargetState) -> None:
        if target.state == UNHEALTHY and self.clock() >= target.unhealthy_until:
            target.state = PROBATION
            target.successes = 0
            self._publish(target)

    def candidates(self) -> Iterator[TargetState]:
        """Targets to try for one request, in order: the available ones (healthy or on
        probation) in round-robin order, then (fail-open) the unhealthy ones, soonest
        back first. Round-robin runs over the available targets only, so a target that
        is out does not hand its share to its neighbour in the ring."""
        for target in self.targets:
            self._refresh(target)
        ring = [t for t in self._ring if t.state != UNHEALTHY]
        seen: set[str] = set()
        if ring:
            start = self._next % len(ring)
            self._next += 1
            for i in range(len(ring)):
                target = ring[(start + i) % len(ring)]
                if target.address not in seen:
                    seen.add(target.address)
                    yield target
        # Reached only when every available target failed (or none is available).
        rest = sorted((t for t in self.targets if t.weight > 0 and t.address not in seen),
                      key=lambda t: t.unhealthy_until)
        yield from rest

    def healthy_count(self) -> int:
        for target in self.targets:
            self._refresh(target)
        return sum(1 for t in self.targets if t.weight > 0 and t.state != UNHEALTHY)

    def report_success(self, target: TargetState) -> None:
        for kind in target.failures:
            target.failures[kind] = 0
        if target.state == PROBATION:
            target.successes += 1
            if target.successes >= self.successes_needed:
                target.state = HEALTHY
                self._publish(target)

    def report_failure(self, target: TargetState, kind: str) -> None:
        """kind: "tcp" (connection refused/reset), "timeout" or "http" (an unhealthy status)."""
        TARGET_FAILURES.labels(self.name, target.address, kind).inc()
        threshold = self.thresholds[kind]
        if threshold == 0:  # this kind of failure is not counted (Kong: 0 disables it)
            return
        if target.state == PROBATION:
            self._mark_unhealthy(target)
            return
        target.failures[kind] += 1
        if target.failures[kind] >= threshold:
            self._mark_unhealthy(target)

    def report_status(self, target: TargetState, status: int) -> None:
        """A status in `unhealthy.http_statuses` is a failure, one in `healthy.http_statuses` a
        success; any other (a 404, say) counts as neither, as in Kong."""
        if status in self.unhealthy_statuses:
            self.report_failure(target, "http")
        elif status in self.healthy_statuses:
            self.report_success(target)

    def _mark_unhealthy(self, target: TargetState) -> None:
        target.state = UNHEALTHY
        target.unhealthy_until = self.clock() + self.cooldown
        target.successes = 0
        for kind in target.failures:
            target.failures[kind] = 0
        self._publish(target)
