"""Kong's `prometheus` plugin (PRIORITY 13), with Kong's metric names, served on the status
listener's /metrics:

- `kong_http_requests_total{service,route,code,source}` (status_code_metrics; `source` is
  `service` for upstream answers, `kong` for the gateway's own),
- `kong_request_latency_ms`, `kong_upstream_latency_ms`, `kong_kong_latency_ms`
  `{service,route}` histograms (latency_metrics; Kong's buckets),
- `kong_bandwidth_bytes{service,route,direction}` (bandwidth_metrics; ingress/egress),
- `kong_upstream_target_health{upstream,target,address,state}` (upstream_health_metrics;
  1 for the target's current state: healthy, unhealthy).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..base import Dependencies, PluginHandler, RequestContext
from .schema import Config

BUCKETS = (1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000, 2000, 5000, 10000, 30000, 60000)
REQUESTS = Counter("kong_http_requests_total", "HTTP status codes per service/route in Kong",
                   ["service", "route", "code", "source"])
REQUEST_LATENCY = Histogram("kong_request_latency_ms", "Total latency incurred during requests for each "
                            "service/route in Kong", ["service", "route"], buckets=BUCKETS)
UPSTREAM_LATENCY = Histogram("kong_upstream_latency_ms", "Latency added by upstream response for each "
                             "service/route in Kong", ["service", "route"], buckets=BUCKETS)
KONG_LATENCY = Histogram("kong_kong_latency_ms", "Latency added by Kong and enabled plugins for each "
                         "service/route in Kong", ["service", "route"], buckets=BUCKETS)
# A gauge that only grows: prometheus_client would name a counter kong_bandwidth_bytes_total,
# and Kong's name has no suffix.
BANDWIDTH = Gauge("kong_bandwidth_bytes", "Total bandwidth (ingress/egress) in bytes for each service/route",
                  ["service", "route", "direction"])


class _TargetHealth(Collector):
    """Reads the balancers of the live configuration at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], Any] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kong_upstream_target_health", "Health status of targets of upstream. "
                                   "States = healthchecks_off|healthy|unhealthy|dns_error",
                                   labels=["upstream", "target", "address", "state"])
        balancers = self.source() if self.source is not None else {}
        for name, balancer in sorted(balancers.items()):
            if name.endswith(".direct"):
                continue
            for target in balancer.targets:
                current = "unhealthy" if target.state == "unhealthy" else "healthy"
                for state in ("healthchecks_off", "healthy", "unhealthy", "dns_error"):
                    family.add_metric([name, target.address, target.address, state],
                                      1.0 if state == current else 0.0)
        yield family


TARGET_HEALTH = _TargetHealth()
REGISTRY.register(TARGET_HEALTH)


class Handler(PluginHandler[Config]):
    PRIORITY = 13

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.balancers: Callable[[], Any] | None = deps.extra.get("balancers")

    async def start(self) -> None:
        wanted = any(p.name == "prometheus" and p.enabled and p.config.upstream_health_metrics
                     for _, p in self.deps.config.all_plugins())
        TARGET_HEALTH.source = self.balancers if wanted else None

    def log(self, conf: Config, ctx: RequestContext) -> None:
        service, route = ctx.service_name, ctx.route_name
        if conf.status_code_metrics:
            source = "service" if ctx.upstream_latency_s is not None else "kong"
            REQUESTS.labels(service, route, str(ctx.status), source).inc()
        if conf.latency_metrics:
            total_ms = (time.perf_counter() - ctx.started) * 1000
            REQUEST_LATENCY.labels(service, route).observe(total_ms)
            if ctx.upstream_latency_s is not None:
                upstream_ms = ctx.upstream_latency_s * 1000
                UPSTREAM_LATENCY.labels(service, route).observe(upstream_ms)
                KONG_LATENCY.labels(service, route).observe(max(0.0, total_ms - upstream_ms))
            else:
                KONG_LATENCY.labels(service, route).observe(total_ms)
        if conf.bandwidth_metrics:
            BANDWIDTH.labels(service, route, "egress").inc(ctx.response_bytes)
            if ctx.request is not None:
                length = ctx.request.headers.get("content-length", "")
                BANDWIDTH.labels(service, route, "ingress").inc(int(length) if length.isdigit() else 0)
