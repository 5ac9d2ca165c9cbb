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

# Shadow mode (shadow.py): the candidate scoring a share of live texts off the answer path.
SHADOW_SAMPLES = Counter(
    "doctag_shadow_samples_total", "Live texts the candidate scored beside production, by top-label agreement",
    ["model", "outcome"],
)
SHADOW_DROPPED = Counter(
    "doctag_shadow_dropped_total", "Texts chosen for shadow scoring but dropped because the shadow queue was full",
    ["model"],
)
SHADOW_FAILED = Counter(
    "doctag_shadow_failed_total", "Shadow samples not scored because the candidate could not be loaded or failed",
    ["model"],
)
SHADOW_LATENCY = Histogram(
    "doctag_shadow_candidate_seconds", "Time the candidate took to score one text in the shadow thread",
    buckets=_SECONDS,
)
SHADOW_QUEUE_DEPTH = Gauge("doctag_shadow_queue_texts", "Texts waiting for the shadow thread")
