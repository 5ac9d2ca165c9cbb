"""Tagging worker metrics (served on /metrics)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# outcome: tagged, failed, skipped (already final, stale or deleted), deferred (model unavailable), requeued,
# dead_lettered, rejected
JOBS = Counter("doctag_tagging_jobs_total", "Tagging jobs handled, by outcome", ["outcome"])
JOB_DURATION = Histogram(
    "doctag_tagging_job_duration_seconds", "Time to handle one job, by outcome", ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
EXTRACTION_DURATION = Histogram(
    "doctag_tagging_extraction_duration_seconds", "Text extraction time, by result", ["result"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge("doctag_tagging_jobs_in_flight", "Jobs being handled now")
GRPC_RETRIES = Counter("doctag_tagging_grpc_retries_total", "Transient gRPC failures retried", ["method", "code"])
