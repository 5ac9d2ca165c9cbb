"""Safe extraction of uploaded model archives, model references, and the registry's gateway routes."""
from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.router import Router
from gateway.settings import DEFAULT_CONFIG
from services.model_serving.archive import ArchiveError, ArchiveLimits, extract_archive
from services.model_serving.registry import (
    RegistryError,
    RegistryNotFound,
    check_alias,
    check_name,
)
from services.model_serving.resolved import UnknownModel

REPO = Path(__file__).resolve().parents[2]


def make_tar(path: Path, members: list[tuple[str, bytes | None, bytes]], mode: str = "w:gz") -> Path:
    """members: (name, data or None for a directory, tar type)."""
    with tarfile.open(path, mode) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


MANIFEST = b'{"name": "m"}'


def test_tar_gz_with_a_top_level_folder(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [("art", None, tarfile.DIRTYPE),
                                               ("art/manifest.json", MANIFEST, tarfile.REGTYPE),
                                               ("art/sub/w.bin", b"\x00" * 10, tarfile.REGTYPE)])
    root = extract_archive(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "art"
    assert (root / "manifest.json").read_bytes() == MANIFEST and (root / "sub" / "w.bin").stat().st_size == 10


def test_flat_zip_and_plain_tar(tmp_path: Path) -> None:
    flat = make_zip(tmp_path / "a.zip", [("manifest.json", MANIFEST), ("dir/x.txt", b"x")])
    assert extract_archive(flat, tmp_path / "z") == tmp_path / "z"
    assert (tmp_path / "z" / "dir" / "x.txt").read_bytes() == b"x"
    plain = make_tar(tmp_path / "a.tar", [("manifest.json", MANIFEST, tarfile.REGTYPE)], mode="w")
    assert extract_archive(plain, tmp_path / "t") == tmp_path / "t"


@pytest.mark.parametrize(("name", "message"), [
    ("/etc/cron.d/evil", "absolute path"),
    ("../evil", "leaves the archive"),
    ("art/../../evil", "leaves the archive"),
    ("C:/evil", "absolute path"),
    ("dir\\evil", "invalid name"),
])
def test_paths_that_leave_the_target_are_refused(tmp_path: Path, name: str, message: str) -> None:
    tar = make_tar(tmp_path / "a.tar.gz", [("manifest.json", MANIFEST, tarfile.REGTYPE), (name, b"x", tarfile.REGTYPE)])
    with pytest.raises(ArchiveError, match=message):
        extract_archive(tar, tmp_path / "t")
    zipped = make_zip(tmp_path / "a.zip", [("manifest.json", MANIFEST), (name, b"x")])
    with pytest.raises(ArchiveError, match=message):
        extract_archive(zipped, tmp_path / "z")
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_links_and_special_files_are_refused(tmp_path: Path, kind: bytes) -> None:
    tar = make_tar(tmp_path / "a.tar.gz", [("manifest.json", MANIFEST, tarfile.REGTYPE), ("link", b"", kind)])
    with pytest.raises(ArchiveError, match="link or special file"):
        extract_archive(tar, tmp_path / "t")
    assert not (tmp_path / "t" / "link").exists()


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    zipped = make_zip(tmp_path / "a.zip", [("manifest.json", MANIFEST)], symlink="link")
    with pytest.raises(ArchiveError, match="link or special file"):
        extract_archive(zipped, tmp_path / "z")


def test_size_and_file_count_limits(tmp_path: Path) -> None:
    many = make_tar(tmp_path / "many.tar.gz", [(f"f{i}", b"x", tarfile.REGTYPE) for i in range(6)])
    with pytest.raises(ArchiveError, match="more than 5 files"):
        extract_archive(many, tmp_path / "a", ArchiveLimits(max_files=5))
    big = make_tar(tmp_path / "big.tar.gz", [("manifest.json", b"\x00" * 5000, tarfile.REGTYPE)])
    with pytest.raises(ArchiveError, match="more than 4096 bytes"):
        extract_archive(big, tmp_path / "b", ArchiveLimits(max_bytes=4096))
    bigzip = make_zip(tmp_path / "big.zip", [("manifest.json", b"\x00" * 5000)])
    with pytest.raises(ArchiveError, match="more than 4096 bytes"):
        extract_archive(bigzip, tmp_path / "c", ArchiveLimits(max_bytes=4096))


def test_zip_that_lies_about_its_sizes_is_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "liar.zip", [("manifest.json", b"\x00" * 50_000)])
    data = bytearray(path.read_bytes())
    # Patch the central directory's uncompressed size (offset 24 in the entry) to claim 10 bytes.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        extract_archive(path, tmp_path / "z", ArchiveLimits(max_bytes=4096))
    written = tmp_path / "z" / "manifest.json"
    assert not written.exists() or written.stat().st_size <= 4096


def test_not_an_archive_or_no_manifest(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"definitely not an archive" * 10)
    with pytest.raises(ArchiveError, match=r"not a \.tar\.gz, \.tar or \.zip"):
        extract_archive(junk, tmp_path / "j")
    two = make_zip(tmp_path / "two.zip", [("a/manifest.json", MANIFEST), ("b/x", b"x")])
    with pytest.raises(ArchiveError, match=r"no manifest\.json"):
        extract_archive(two, tmp_path / "t")
    truncated = tmp_path / "cut.tar.gz"
    full = make_tar(tmp_path / "full.tar.gz", [("manifest.json", os.urandom(100_000), tarfile.REGTYPE)])
    truncated.write_bytes(full.read_bytes()[:20_000])
    with pytest.raises(ArchiveError):
        extract_archive(truncated, tmp_path / "c")


def test_model_names_and_aliases() -> None:
    assert issubclass(RegistryNotFound, UnknownModel)  # the runner answers "not found", not "not ready"
    assert check_name("doctag-tagger") == "doctag-tagger"
    for bad_name in ("", "Upper", "../x", ".hidden", "a" * 65):
        with pytest.raises(RegistryError):
            check_name(bad_name)
    for bad_alias in ("3", "Prod", "", "-x"):
        with pytest.raises(RegistryError):
            check_alias(bad_alias)


@pytest.mark.parametrize("path", [DEFAULT_CONFIG, REPO / "infra" / "compose" / "kong.yml"])
def test_gateway_lets_only_platform_admins_reach_the_registry(path: Path) -> None:
    router = Router(load_config(path))
    for method, url in (("GET", "/api/v1/models"), ("GET", "/api/v1/models/doctag-tagger/versions"),
                        ("POST", "/api/v1/models/doctag-tagger/versions"),
                        ("PUT", "/api/v1/models/doctag-tagger/aliases/production")):
        match = router.match(method, url)
        assert match.entry.service.name == "model-serving"
        assert match.entry.plugins["acl"].allow == ["platform_admin"]
        assert match.entry.plugins["request-size-limiting"].limit_bytes == 1024**3
    assert "user" in router.match("POST", "/api/v1/predict").entry.plugins["acl"].allow
