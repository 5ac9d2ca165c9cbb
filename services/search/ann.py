"""An approximate nearest-neighbour index (usearch HNSW) over one tenant's document vectors.

The vectors are unit length, so the inner product is the cosine similarity; usearch reports the
distance 1 - cos, turned back into a similarity here. usearch keys are integers: each vector gets
the next key, and a document whose vector changes gets a new key (its old one is removed), since
usearch's Python wrapper refuses a key twice. One lock serialises additions and searches: usearch
gives each calling thread a scratch context by number, and two Python threads would share one.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ._native_order import load_onnxruntime_first

load_onnxruntime_first()
from usearch.index import Index  # noqa: E402  (after onnxruntime, see _native_order)

Dtype = Literal["f16", "f32", "i8"]
# Cosine between a document's stored and given vector above which they are the same vector (as stored:
# i8 quantisation alone moves a unit vector to about 0.998).
UNCHANGED = {"f32": 0.99999, "f16": 0.99999, "i8": 0.99}
# Vectors inserted per usearch call while building: between two, a build can be stopped (shutdown).
BUILD_CHUNK = 2_000


class BuildStopped(Exception):
    """The build was asked to stop (the replica is shutting down)."""


@dataclass(frozen=True)
class AnnParams:
    """HNSW settings (see semantic.py's docstring for the measured choice)."""

    dtype: Dtype = "f16"            # how vectors are stored: f16 halves f32's memory, i8 quarters it
    connectivity: int = 32          # graph edges per node ("M")
    expansion_add: int = 128        # candidates examined when a vector is inserted ("efConstruction")
    expansion_search: int = 300     # candidates examined per query ("ef"); raised to k when below it


class AnnIndex:
    """Document ids <-> usearch keys, and the HNSW graph over their vectors."""

    def __init__(self, dim: int, params: AnnParams) -> None:
        self.dim = dim
        self.params = params
        # i8 quantisation needs the cosine metric (it scales each vector); on unit vectors it equals ip.
        metric = "cos" if params.dtype == "i8" else "ip"
        self._index = Index(ndim=dim, metric=metric, dtype=params.dtype, connectivity=params.connectivity,
                            expansion_add=params.expansion_add, expansion_search=params.expansion_search)
        self._ids: list[str | None] = []     # key -> document id; None once the key is replaced
        self._keys: dict[str, int] = {}      # document id -> its current key
        self._lock = threading.Lock()

    @classmethod
    def build(cls, ids: Sequence[str], matrix: np.ndarray, params: AnnParams, *, threads: int = 1,
              stop: threading.Event | None = None) -> AnnIndex:
        """A new index over `matrix` (row i is document ids[i]). Slow (seconds per 10,000 vectors):
        call it from a worker thread. BuildStopped soon after `stop` is set."""
        index = cls(int(matrix.shape[1]), params)
        for start in range(0, len(ids), BUILD_CHUNK):
            if stop is not None and stop.is_set():
                raise BuildStopped
            index.add(ids[start:start + BUILD_CHUNK], matrix[start:start + BUILD_CHUNK], threads=threads)
        return index

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._keys

    def add(self, ids: Sequence[str], matrix: np.ndarray, *, threads: int = 1) -> None:
        """Inserts the documents' vectors; a document already present has its vector replaced."""
        if not len(ids):
            return
        last = {doc_id: i for i, doc_id in enumerate(ids)}   # a document twice in one batch: its last vector
        if len(last) != len(ids):
            rows = sorted(last.values())
            ids, matrix = [ids[i] for i in rows], matrix[rows]
        with self._lock:
            ids, matrix = self._changed(ids, matrix)
            if not ids:
                return
            replaced = [self._keys[doc_id] for doc_id in ids if doc_id in self._keys]
            if replaced:
                self._index.remove(np.asarray(replaced, dtype=np.uint64))
                for key in replaced:
                    self._ids[key] = None
            first = len(self._ids)
            keys = np.arange(first, first + len(ids), dtype=np.uint64)
            self._index.add(keys, np.ascontiguousarray(matrix, dtype=np.float32), threads=threads)
            self._ids.extend(ids)
            for offset, doc_id in enumerate(ids):
                self._keys[doc_id] = first + offset

    def _changed(self, ids: Sequence[str], matrix: np.ndarray) -> tuple[Sequence[str], np.ndarray]:
        """Leaves out documents whose stored vector is the given one: the refresh reads recent rows again
        (services/search/vectors.py WATERMARK_MARGIN), and re-adding them would only pile up removed keys."""
        present = [i for i, doc_id in enumerate(ids) if doc_id in self._keys]
        if not present:
            return ids, matrix
        keys = np.asarray([self._keys[ids[i]] for i in present], dtype=np.uint64)
        stored = np.asarray(self._index.get(keys, dtype="f32"), dtype=np.float32)   # one row per key
        given = np.asarray(matrix[present], dtype=np.float32)
        norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(given, axis=1)
        cosine = (stored * given).sum(axis=1) / np.maximum(norms, 1e-12)
        same = {present[j] for j in np.flatnonzero(cosine >= UNCHANGED[self.params.dtype])}
        if not same:
            return ids, matrix
        keep = [i for i in range(len(ids)) if i not in same]
        return [ids[i] for i in keep], matrix[keep]

    def remove(self, ids: Sequence[str]) -> None:
        """Drops documents (purged, or no longer embedded); unknown ids are ignored."""
        with self._lock:
            keys = [self._keys.pop(doc_id) for doc_id in ids if doc_id in self._keys]
            if keys:
                self._index.remove(np.asarray(keys, dtype=np.uint64))
            for key in keys:
                self._ids[key] = None

    def live_ids(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    @property
    def removed_share(self) -> float:
        """Keys removed or replaced, as a share of all keys ever added: HNSW graphs lose quality as it grows."""
        return 1 - len(self._keys) / len(self._ids) if self._ids else 0.0

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> tuple[list[str], list[float]]:
        """About the `k` documents most similar to `query`, best first, with their cosine similarity."""
        if k <= 0 or not self._keys:
            return [], []
        wanted = k + (1 if exclude is not None and exclude in self._keys else 0)
        with self._lock:
            expansion = max(wanted, self.params.expansion_search)
            if self._index.expansion_search != expansion:
                self._index.expansion_search = expansion  # type: ignore[misc]  # a property with a setter
            matches = self._index.search(query.astype(np.float32), wanted)
            keys, distances = matches.keys, matches.distances
            found = [(self._ids[int(key)], 1.0 - float(d)) for key, d in zip(keys, distances, strict=True)]
        pairs = [(doc_id, sim) for doc_id, sim in found if doc_id is not None and doc_id != exclude][:k]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def save(self, path: Path) -> list[str | None]:
        """Writes the graph and vectors to `path`; returns the document id of each key (None: replaced)."""
        with self._lock:
            self._index.save(str(path))
            return list(self._ids)

    @classmethod
    def restore(cls, path: Path, dim: int, params: AnnParams, ids: list[str | None]) -> AnnIndex:
        """The index `save` wrote, with its key -> document id list; ValueError when they disagree."""
        index = cls(dim, params)
        index._index.load(str(path))
        live = {doc_id: key for key, doc_id in enumerate(ids) if doc_id is not None}
        if index._index.ndim != dim or len(index._index) != len(live):
            raise ValueError("the index holds other vectors than its id list says")
        keys = np.fromiter(live.values(), dtype=np.uint64, count=len(live))
        if len(keys) and not bool(np.all(index._index.contains(keys))):
            raise ValueError("the index lacks keys its id list names")
        index._ids, index._keys = list(ids), live
        return index

    def set_expansion_search(self, expansion_search: int) -> None:
        """Changes the query-time expansion (the graph stays as built)."""
        with self._lock:
            self.params = replace(self.params, expansion_search=expansion_search)
            self._index.expansion_search = expansion_search  # type: ignore[misc]  # a property with a setter

    def memory_bytes(self) -> int:
        """What usearch holds for the graph and vectors, reserved capacity included (not the id maps)."""
        return int(self._index.memory_usage)

    def serialized_bytes(self) -> int:
        """The graph and vectors without reserved capacity (what `save` writes)."""
        return int(self._index.serialized_length)
