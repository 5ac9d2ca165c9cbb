"""The blob store shared by two web hosts: processes storing the same object at once.

Each writer process stands for a web host committing the same content-addressed object again
and again; reader processes open the object whenever it exists and hash what they read. The
first writer wins: the object's file (inode) never changes once it exists, nobody ever reads a
torn or foreign file, and no temporary file is left behind.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
import uuid
from pathlib import Path

from services.common.blobstore import BlobStore, file_sha256

TENANT = str(uuid.UUID(int=7))
# 2 MiB: large enough that a torn (partly written) file would be seen by a reader.
CONTENT = ("한국어 문서 태깅 플랫폼 " * 80_000).encode("utf-8")[: 2 * 1024 * 1024]
SHA = hashlib.sha256(CONTENT).hexdigest()
WRITES_PER_WRITER = 12


def _store_once(root: Path) -> tuple[int, int]:
    store = BlobStore(root)
    blob = store.begin()
    for start in range(0, len(CONTENT), 256 * 1024):
        blob.write(CONTENT[start:start + 256 * 1024])
    blob.finish()
    final = blob.commit(TENANT)
    st = final.stat()
    return st.st_ino, st.st_size


def _writer(root: str, start: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    while time.time() < start:
        time.sleep(0.001)
    out.put([_store_once(Path(root)) for _ in range(WRITES_PER_WRITER)])


def _reader(root: str, stop_at: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    path = BlobStore(Path(root)).path(TENANT, SHA)
    reads, bad = 0, 0
    while time.time() < stop_at:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            continue
        reads += 1
        if hashlib.sha256(data).hexdigest() != SHA:
            bad += 1
    out.put((reads, bad))


def test_concurrent_writers_first_wins_and_readers_never_see_a_torn_object(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    reads: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    start = time.time() + 1.5  # every process spawned before the first write
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), start, results)) for _ in range(3)]
    readers = [ctx.Process(target=_reader, args=(str(tmp_path), start + 4.0, reads)) for _ in range(2)]
    for p in writers + readers:
        p.start()
    commits = [c for _ in writers for c in results.get(timeout=60)]
    read_counts = [reads.get(timeout=60) for _ in readers]
    for p in writers + readers:
        p.join(timeout=30)
        assert p.exitcode == 0

    assert len(commits) == 3 * WRITES_PER_WRITER
    final = BlobStore(tmp_path).path(TENANT, SHA)
    assert {ino for ino, _ in commits} == {final.stat().st_ino}, "an existing object was replaced"
    assert {size for _, size in commits} == {len(CONTENT)}
    assert file_sha256(final) == SHA
    assert sum(r for r, _ in read_counts) > 0
    assert sum(b for _, b in read_counts) == 0, "a reader saw a torn or wrong object"
    assert os.listdir(tmp_path / ".incoming") == []


def test_a_damaged_object_is_replaced_by_the_next_writer(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    final = store.path(TENANT, SHA)
    final.parent.mkdir(parents=True)
    final.write_bytes(CONTENT[: len(CONTENT) // 2])  # torn, as a non-atomic writer could leave it

    _store_once(tmp_path)

    assert file_sha256(final) == SHA
    assert os.listdir(tmp_path / ".incoming") == []


def test_a_discarded_blob_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob = store.begin()
    blob.write("일부만".encode())
    blob.discard()
    assert os.listdir(tmp_path / ".incoming") == []
    assert not store.exists(TENANT, SHA)
