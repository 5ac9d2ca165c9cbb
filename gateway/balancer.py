"""Balancing over an upstream's targets (Kong's `round-robin` with weights,
`least-connections`, `consistent-hashing` on the consumer, the client address or a header),
with Kong-style passive health checks and, when configured, active ones
(gateway/healthcheck.py).

Proxied traffic is the only health signal: a target reaching `unhealthy.tcp_failures`
connection failures, `unhealthy.timeouts` timeouts or `unhealthy.http_failures`
responses with a status in `unhealthy.http_statuses` (each counted in a row, reset by
a success) is taken out of rotation.

With active checks on, an unhealthy target comes back only when an active probe finds it
healthy again, as in Kong. Without them (deviation from Kong, where a passively-unhealthy
target stays out until an operator brings it back) it stays out for a cool-down
(`DOCTAG_GATEWAY_UNHEALTHY_COOLDOWN_SECONDS`), then gets traffic again on probation;
one failure on probation takes it out again, `healthy.successes` successes (at least
one) make it healthy. When every target is out, the ones whose cool-down ends first
are still tried, so an upstream that has recovered is found without waiting.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
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
    in_flight: int = 0


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
        self.algorithm = upstream.algorithm
        self.hash_on, self.hash_on_header = upstream.hash_on, upstream.hash_on_header
        self.hash_fallback, self.hash_fallback_header = upstream.hash_fallback, upstream.hash_fallback_header
        # With active checks, only a probe brings an unhealthy target back.
        self.active = upstream.healthchecks.active.enabled
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
        if self.active:
            return
        if target.state == UNHEALTHY and self.clock() >= target.unhealthy_until:
            target.state = PROBATION
            target.successes = 0
            self._publish(target)

    def hash_key(self, consumer: str | None, address: str, headers: Mapping[str, str]) -> str | None:
        """What consistent-hashing hashes for a request (hash_on, then hash_fallback); None: nothing."""
        for kind, header in ((self.hash_on, self.hash_on_header), (self.hash_fallback, self.hash_fallback_header)):
            if kind == "consumer" and consumer:
                return f"c:{consumer}"
            if kind == "ip" and address:
                return f"i:{address}"
            if kind == "header" and header and headers.get(header):
                return f"h:{headers.get(header)}"
        return None

    def _ordered(self, available: list[TargetState], hash_key: str | None) -> list[TargetState]:
        """Available targets in the order of the algorithm (each target once)."""
        if self.algorithm == "consistent-hashing" and hash_key is not None:
            # Weighted rendezvous hashing: a key keeps its target while that target is available,
            # and only the keys of a target that goes away move.
            def score(t: TargetState) -> float:
                digest = hashlib.sha256(f"{hash_key}|{t.address}".encode()).digest()
                unit = (int.from_bytes(digest[:8], "big") + 1) / 2**64
                return -t.weight / math.log(unit)
            return sorted({t.address: t for t in available}.values(), key=score, reverse=True)
        start = self._next % len(available)
        self._next += 1
        rotated = available[start:] + available[:start]
        distinct = list({t.address: t for t in rotated}.values())
        if self.algorithm == "least-connections":
            distinct.sort(key=lambda t: (t.in_flight + 1) / t.weight)  # stable: round-robin among equals
        return distinct

    def candidates(self, hash_key: str | None = None) -> Iterator[TargetState]:
        """Targets to try for one request, in order: the available ones (healthy or on
        probation) in the algorithm's order, then (fail-open) the unhealthy ones, soonest
        back first. The order runs over the available targets only, so a target that is out
        does not hand its share to its neighbour in the ring."""
        for target in self.targets:
            self._refresh(target)
        ring = [t for t in self._ring if t.state != UNHEALTHY]
        seen: set[str] = set()
        if ring:
            for target in self._ordered(ring, hash_key):
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

    def mark_healthy(self, target: TargetState) -> None:
        """An active probe found the target healthy."""
        for kind in target.failures:
            target.failures[kind] = 0
        if target.state != HEALTHY:
            target.state = HEALTHY
            self._publish(target)

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

    def mark_unhealthy(self, target: TargetState) -> None:
        """An active probe found the target unhealthy."""
        if target.state != UNHEALTHY:
            self._mark_unhealthy(target)

    def _mark_unhealthy(self, target: TargetState) -> None:
        target.state = UNHEALTHY
        target.unhealthy_until = self.clock() + self.cooldown
        target.successes = 0
        for kind in target.failures:
            target.failures[kind] = 0
        self._publish(target)
