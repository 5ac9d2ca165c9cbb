"""Gateway metrics (exposed on /metrics next to the shared HTTP metrics)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROXY_REQUESTS = Counter(
    "doctag_gateway_requests_total", "Requests through the gateway by route, service and status",
    ["route", "service", "status"],
)
PROXY_LATENCY = Histogram(
    "doctag_gateway_request_duration_seconds", "Time to the response headers, gateway included",
    ["route", "service"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_LATENCY = Histogram(
    "doctag_gateway_upstream_duration_seconds", "Time from sending upstream to its response headers",
    ["service", "target"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TARGET_HEALTHY = Gauge(
    "doctag_gateway_upstream_target_healthy", "1 when the target gets traffic, 0 while passively unhealthy",
    ["upstream", "target"],
)
TARGET_FAILURES = Counter(
    "doctag_gateway_upstream_target_failures_total", "Failures seen on proxied traffic by kind",
    ["upstream", "target", "kind"],
)
RETRIES = Counter("doctag_gateway_retries_total", "Requests sent again to another target", ["service"])
CONFIG_RELOADS = Counter("doctag_gateway_config_reloads_total", "Configuration reloads by outcome", ["outcome"])
