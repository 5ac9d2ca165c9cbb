"""Prometheus metrics shared by every service (exposed on /metrics)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "doctag_http_requests_total", "HTTP requests handled", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "doctag_http_request_duration_seconds", "HTTP request latency", ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GRPC_REQUESTS = Counter(
    "doctag_grpc_requests_total", "gRPC calls handled", ["service", "method", "code"]
)
GRPC_LATENCY = Histogram(
    "doctag_grpc_request_duration_seconds", "gRPC call latency", ["service", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Set whenever a service loads its TLS files (start-up and each renewal): the alert "certificate
# expires within 14 days" (infra/prometheus/rules/doctag-alerts.yml) reads it. `certificate` is the
# file's name (`upload.crt`, `ca.crt`): one series per file a process uses, not per host.
TLS_CERT_EXPIRY = Gauge(
    "doctag_tls_certificate_expiry_timestamp_seconds", "When the certificate expires (Unix time)", ["certificate"]
)
