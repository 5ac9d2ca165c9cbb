"""Filesystem blob store, content-addressed by SHA-256, written atomically.

Layout: `<root>/<tenant_id>/<sha[0:2]>/<sha>`. Blobs are per tenant so that
deleting one tenant's document never touches another's, and so that identical
files of two tenants never reveal each other's existence. A blob is first
streamed to a uniquely named temporary file in `<root>/.incoming` (same
filesystem) while it is hashed and counted, fsynced, then *linked* into place.

The root may be a filesystem shared by several web hosts (CephFS or NFS, see the
README): two hosts can store the same object at once. `link()` never replaces an
existing name, so the first writer wins, the object's file never changes once it
exists (a reader on another host never has its open file replaced under it, which
NFS answers with ESTALE), and a reader only ever sees a complete file. A writer
that finds the object already there checks that its content hashes to its name
and repairs it (atomic replace) when it does not, e.g. a torn file left by an
older, non-atomic writer. NFSv3 may answer a retransmitted, successful `link()`
with EEXIST: the hash check makes that harmless too.
"""
from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CHUNK_SIZE = 256 * 1024

log = logging.getLogger(__name__)


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
        """Puts the finished (fsynced) blob at its content address. An existing object is kept when
        its content matches its name (first writer wins), replaced atomically when it does not."""
        final = self.store.path(tenant_id, self.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.tmp_path, final)
        except FileExistsError:
            if file_sha256(final) != self.sha256:
                log.warning("blob %s of tenant %s did not match its hash; replaced", self.sha256, tenant_id)
                os.replace(self.tmp_path, final)
                _fsync_dir(final.parent)
                return final
        else:
            _fsync_dir(final.parent)
        self.tmp_path.unlink(missing_ok=True)
        return final

    def discard(self) -> None:
        try:
            if not self._fh.closed:
                self._fh.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file's content (None when it vanished meanwhile)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_SIZE):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Makes a new directory entry durable (the file's data was fsynced before it was linked)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        # A random name: unique across processes and hosts sharing the directory.
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
