"""Tagging worker configuration (`DOCTAG_*` environment variables)."""
from __future__ import annotations

from services.common.amqp import DEFAULT_DELIVERY_LIMIT
from services.common.settings import CommonSettings


class WorkerSettings(CommonSettings):
    service_name: str = "tagging-worker"

    http_port: int = 8131

    # Upload replicas (comma list, balanced round-robin) and model-serving.
    documents_grpc_target: str = "127.0.0.1:9101,127.0.0.1:9102"
    model_grpc_target: str = "127.0.0.1:9121"
    documents_timeout_seconds: float = 15.0      # RecordTaggingResult deadline
    read_timeout_seconds: float = 120.0          # whole ReadContent stream deadline
    model_timeout_seconds: float = 60.0          # Predict deadline
    model_top_k: int = 0                         # 0 = model-serving's default
    # Text sent to Predict is cut here (the model reads only the start anyway).
    model_max_chars: int = 100_000

    prefetch: int = 2
    # Must equal the limit the jobs queue was declared with (upload declares it too).
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    # model-serving not ready / down / overloaded: the job waits, then goes back to the queue's end (a
    # deferral). The wait doubles per deferral of the same job, from the first to the max value; after
    # `model_unavailable_max_deferrals` deferrals (about 33 minutes with these defaults) the document is
    # recorded failed ("model-serving unavailable after N attempts") instead of waiting forever.
    model_unavailable_retry_seconds: float = 15.0
    model_unavailable_retry_max_seconds: float = 300.0
    model_unavailable_max_deferrals: int = 10

    # Transient gRPC failures are retried inside the handler before the job is requeued.
    retry_attempts: int = 4
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 8.0

    extract_timeout_seconds: float = 120.0
    extract_max_pages: int = 1000
    extract_max_chars: int = 2_000_000
    extract_memory_limit_mb: int = 2048          # address-space limit of the extractor process; 0 = none
    max_document_bytes: int = 100 * 1024 * 1024  # larger files fail as too large

    shutdown_grace_seconds: float = 30.0
    # How often the jobs and dead-letter queue depths are read for /metrics (0: never).
    queue_metrics_interval_seconds: float = 15.0
