"""Safe extraction of an uploaded model artifact archive (.tar.gz, .tar or .zip).

Every member is checked before anything is written: no absolute paths, no `..`,
no links or device files, at most `max_files` files and `max_bytes` bytes once
unpacked (counted while extracting too, so a zip that lies about its sizes is
stopped). Tar members are then written with tarfile's `data` filter as a second
lock. The artifact root is the top of the archive or its single top-level folder.
"""
from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .models.manifest import MANIFEST_NAME


class ArchiveError(ValueError):
    """The archive is not one we accept; the message says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int = 2 * 1024**3
    max_files: int = 1000


def _safe_name(name: str) -> PurePosixPath:
    """The member's relative path, or ArchiveError when it could leave the target directory."""
    if not name or "\\" in name or "\x00" in name:
        raise ArchiveError(f"archive member {name!r} has an invalid name")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"archive member {name!r} leaves the archive ('..')")
    return path


class _Budget:
    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise ArchiveError(f"the archive holds more than {self.limits.max_files} files")

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_bytes:
            raise ArchiveError(f"the archive unpacks to more than {self.limits.max_bytes} bytes")


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Extracts `archive` into the empty or new directory `dest`; returns the artifact root in it."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, limits)
    else:
        try:
            is_tar = tarfile.is_tarfile(archive)
        except OSError:
            is_tar = False
        if not is_tar:
            raise ArchiveError("the file is not a .tar.gz, .tar or .zip archive")
        _extract_tar(archive, dest, limits)
    return artifact_root(dest)


def _extract_tar(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    budget = _Budget(limits)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members: list[tarfile.TarInfo] = []
            for member in tar:  # reads headers as it goes: a bomb stops at the limit
                _safe_name(member.name)
                if member.isdir():
                    members.append(member)
                    continue
                if not member.isfile():
                    raise ArchiveError(f"archive member {member.name!r} is a link or special file; "
                                       "only regular files are accepted")
                budget.add_file()
                budget.add_bytes(member.size)
                members.append(member)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"the archive is damaged: {exc}") from None


def _extract_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    budget = _Budget(limits)
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _safe_name(info.filename)
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no file type
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise ArchiveError(f"archive member {info.filename!r} is a link or special file; "
                                       "only regular files are accepted")
                if not info.is_dir():
                    budget.add_file()
                    budget.add_bytes(info.file_size)
            written = _Budget(limits)
            for info in infos:
                target = (root / _safe_name(info.filename)).resolve()
                if target != root and root not in target.parents:
                    raise ArchiveError(f"archive member {info.filename!r} leaves the archive")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    while block := src.read(1 << 20):  # counted: declared sizes may lie
                        written.add_bytes(len(block))
                        out.write(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError) as exc:
        raise ArchiveError(f"the archive is damaged: {exc}") from None


def artifact_root(dest: Path) -> Path:
    """`dest` when it holds the manifest, else its single top-level folder when that does."""
    if (dest / MANIFEST_NAME).is_file():
        return dest
    entries = [p for p in dest.iterdir() if not p.name.startswith("._") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).is_file():
        return entries[0]
    raise ArchiveError(f"no {MANIFEST_NAME} at the top of the archive or in its single top-level folder")


def remove_tree(path: Path) -> None:
    """Removes a directory tree even when its files were made read-only."""
    if not path.exists():
        return
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)
