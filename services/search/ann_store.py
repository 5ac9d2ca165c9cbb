"""Built ANN indexes kept in the replica's state dir, so a restarted replica does not rebuild them.

One pair of files per tenant and embedding model: `<tenant>-<model hash>.usearch` (usearch's own
format) and `.json` beside it (the document id of each key, the watermark the index is up to date
with, the HNSW settings and the SHA-256 of the index file). Both are written to temporary names
and renamed, the index first, so a crash leaves the previous pair or none. A file whose checksum,
settings or contents do not match is deleted and the index rebuilt: nothing read here is trusted
before its checksum is, so a damaged file never reaches usearch's loader.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .ann import AnnIndex, AnnParams

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class Stored:
    index: AnnIndex
    watermark: datetime | None
    age_s: float             # seconds since it was saved


class IndexStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _paths(self, tenant: str, model: str) -> tuple[Path, Path]:
        stem = f"{tenant}-{hashlib.sha256(model.encode()).hexdigest()[:16]}"
        return self.directory / f"{stem}.usearch", self.directory / f"{stem}.json"

    def save(self, tenant: str, model: str, index: AnnIndex, watermark: datetime | None) -> None:
        """Writes the index and its metadata (call from a worker thread: hundreds of MB at 500,000 vectors)."""
        index_path, meta_path = self._paths(tenant, model)
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = index_path.with_suffix(".usearch.partial")
        ids = index.save(partial)
        digest = _sha256(partial)
        meta = {"format": FORMAT, "tenant": tenant, "model": model, "dim": index.dim,
                "params": asdict(index.params), "watermark": watermark.isoformat() if watermark else None,
                "saved_at": time.time(), "sha256": digest, "ids": ids}
        meta_partial = meta_path.with_suffix(".json.partial")
        meta_partial.write_text(json.dumps(meta), encoding="utf-8")
        meta_path.unlink(missing_ok=True)   # never a new index beside an old id list
        os.replace(partial, index_path)
        os.replace(meta_partial, meta_path)

    def load(self, tenant: str, model: str, params: AnnParams) -> Stored | None:
        """The saved index of the tenant's model, or None (none saved, other settings, or damaged:
        then the files are deleted and the caller builds anew)."""
        index_path, meta_path = self._paths(tenant, model)
        if not meta_path.exists() or not index_path.exists():
            return None
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
            saved_params = AnnParams(**meta["params"])
            if meta["format"] != FORMAT or meta["tenant"] != tenant or meta["model"] != model:
                raise ValueError("the metadata names another index")
            if (saved_params.dtype, saved_params.connectivity) != (params.dtype, params.connectivity):
                log.info("saved vector index has other settings; rebuilding", extra={"tenant_id": tenant})
                self.remove(tenant, model)
                return None
            if _sha256(index_path) != meta["sha256"]:
                raise ValueError("the index file does not match its checksum")
            index = AnnIndex.restore(index_path, int(meta["dim"]), params, meta["ids"])
            watermark = datetime.fromisoformat(meta["watermark"]) if meta["watermark"] else None
            return Stored(index, watermark, max(0.0, time.time() - float(meta["saved_at"])))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.warning("saved vector index is damaged; rebuilding it",
                        extra={"tenant_id": tenant, "error": f"{type(exc).__name__}: {exc}"})
            self.remove(tenant, model)
            return None

    def remove(self, tenant: str, model: str) -> None:
        for path in self._paths(tenant, model):
            path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
