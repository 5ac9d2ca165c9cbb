"""Prometheus metrics of model-serving (exposed on /metrics with the shared ones)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

INFERENCE_LATENCY = Histogram(
    "doctag_inference_duration_seconds",
    "Time of one predict call inside model-serving: tokenising, queueing, forward passes, aggregation",
    buckets=_SECONDS,
)
FORWARD_LATENCY = Histogram(
    "doctag_inference_forward_seconds", "Time of one batched forward pass", buckets=_SECONDS,
)
QUEUE_WAIT = Histogram(
    "doctag_inference_queue_wait_seconds", "Time a window waited in the batcher's queue", buckets=_SECONDS,
)
INFERENCE_BATCH_WINDOWS = Histogram(
    "doctag_inference_batch_windows", "Windows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
INFERENCE_BATCH_PADDING = Histogram(
    "doctag_inference_batch_padding_ratio", "Padded tokens / real tokens of one forward pass",
    buckets=(1.0, 1.05, 1.1, 1.25, 1.5, 2, 4, 8),
)
INFERENCE_WINDOWS_PER_TEXT = Histogram(
    "doctag_inference_windows_per_text", "Windows read per text", buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_DEPTH = Gauge(
    "doctag_inference_queue_windows", "Windows waiting in a model's batcher queue", ["model"],
)
OVERLOADED = Counter(
    "doctag_inference_overloaded_total", "Requests refused at once because the queue was full",
)
DEADLINE_EXCEEDED = Counter(
    "doctag_inference_deadline_exceeded_total", "Requests whose deadline passed before their windows ran",
)
