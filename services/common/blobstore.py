"""Filesystem blob store, content-addressed by SHA-256, written atomically.

Layout: `<root>/<tenant_id>/<sha[0:2]>/<sha>`. Blobs are per tenant so that
deleting one tenant's document never touches another's, and so that identical
files of two tenants never reveal each other's existence. A blob is first
streamed to a temporary file in `<root>/.incoming` (same filesystem) while it is
hashed and counted, then renamed into place (atomic on POSIX).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CHUNK_SIZE = 256 * 1024


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass
class IncomingBlob:
    """A blob being written; `commit` moves it into place, `discard` removes it."""

    store: BlobStore
    tmp_path: Path
    max_bytes: int | None
    size: int = 0
    _hash: hashlib._Hash = field(init=False, repr=False)
    _fh: BinaryIO = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()
        self._fh = open(self.tmp_path, "wb")  # noqa: SIM115 - closed in finish/discard

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise BlobTooLarge(self.max_bytes)
        self._hash.update(data)
        self._fh.write(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def commit(self, tenant_id: str) -> Path:
        """Moves the finished blob to its content address (keeps an existing identical blob)."""
        final = self.store.path(tenant_id, self.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp_path, final)
        return final

    def discard(self) -> None:
        try:
            if not self._fh.closed:
                self._fh.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.incoming = self.root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, tenant_id: str, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / str(uuid.UUID(tenant_id)) / sha256[:2] / sha256

    def begin(self, max_bytes: int | None = None) -> IncomingBlob:
        return IncomingBlob(self, self.incoming / f"{uuid.uuid4()}.part", max_bytes)

    def exists(self, tenant_id: str, sha256: str) -> bool:
        return self.path(tenant_id, sha256).exists()

    async def aiter_chunks(self, tenant_id: str, sha256: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        import asyncio

        with open(self.path(tenant_id, sha256), "rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk

    def delete(self, tenant_id: str, sha256: str) -> None:
        self.path(tenant_id, sha256).unlink(missing_ok=True)
