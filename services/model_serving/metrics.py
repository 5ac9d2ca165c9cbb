"""Prometheus metrics of model-serving (exposed on /metrics with the shared ones)."""
from __future__ import annotations

from prometheus_client import Histogram

INFERENCE_LATENCY = Histogram(
    "doctag_inference_duration_seconds", "Model forward time of one predict call (all its windows)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INFERENCE_BATCH_WINDOWS = Histogram(
    "doctag_inference_batch_windows", "Windows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64),
)
INFERENCE_WINDOWS_PER_TEXT = Histogram(
    "doctag_inference_windows_per_text", "Windows read per text", buckets=(1, 2, 4, 8, 16, 32, 64),
)
