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
# A job is in flight from its delivery until it is settled (acked, requeued or rejected): the number of
# deliveries this worker holds unacknowledged.
IN_FLIGHT = Gauge("doctag_tagging_jobs_in_flight", "Jobs being handled now (deliveries held unacknowledged)")
GRPC_RETRIES = Counter("doctag_tagging_grpc_retries_total", "Transient gRPC failures retried", ["method", "code"])
# model-serving unavailable: jobs put back at the end of the queue, and jobs given up (document recorded
# failed) after DOCTAG_MODEL_UNAVAILABLE_MAX_DEFERRALS deferrals.
DEFERRALS = Counter("doctag_tagging_deferrals_total", "Jobs deferred because model-serving was unavailable")
DEFERRAL_LIMIT_FAILURES = Counter(
    "doctag_tagging_deferral_limit_failures_total",
    "Documents recorded failed because model-serving stayed unavailable past the deferral limit",
)
# Deliveries the broker marked redelivered: a worker died or gave the job back before acking it.
REDELIVERIES = Counter("doctag_tagging_redeliveries_total", "Jobs received as a redelivery")
# Ready messages in the jobs and dead-letter queues (services/tagging_worker/queue_depth.py):
# the backlog and dead-letter alerts read it.
QUEUE_MESSAGES = Gauge("doctag_amqp_queue_messages", "Messages ready in a queue, as the broker last reported",
                       ["queue"])
