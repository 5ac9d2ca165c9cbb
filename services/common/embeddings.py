"""Document and query embeddings as they travel (gRPC `bytes`) and are stored (PostgreSQL bytea):
L2-normalised float32 vectors, little-endian, with the model and version that produced them.

One packing for every service: model-serving writes it, the tagging worker passes it on, upload
stores it, search reads it back with `numpy.frombuffer` (no per-element parsing).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPE = np.dtype("<f4")
MAX_DIM = 4096
# A stored vector's norm must be 1 within this (it is L2-normalised by model-serving).
NORM_TOLERANCE = 1e-3


class InvalidEmbedding(ValueError):
    """Bytes that are not an L2-normalised float32 vector."""


@dataclass(frozen=True)
class Embedding:
    model: str      # e.g. "multilingual-e5-small@1571fc982750" (the weights)
    version: str    # how the text was read, e.g. "passage/2x256/mean"
    vector: bytes   # float32 little-endian, L2-normalised

    @property
    def dim(self) -> int:
        return len(self.vector) // DTYPE.itemsize


def pack(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=DTYPE).tobytes()


def unpack(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(data, dtype=DTYPE)


def checked(model: str, version: str, data: bytes) -> Embedding:
    """The embedding, after checking it is a finite unit vector with a model and version named."""
    if not model or not version:
        raise InvalidEmbedding("an embedding needs its model and version")
    if not data or len(data) % DTYPE.itemsize or len(data) // DTYPE.itemsize > MAX_DIM:
        raise InvalidEmbedding(f"an embedding is 1 to {MAX_DIM} float32 values ({len(data)} bytes given)")
    values = unpack(data)
    if not np.all(np.isfinite(values)):
        raise InvalidEmbedding("an embedding must hold finite numbers")
    norm = float(np.linalg.norm(values.astype(np.float64)))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise InvalidEmbedding(f"an embedding must be L2-normalised (norm {norm:.4f})")
    return Embedding(model, version, bytes(data))
