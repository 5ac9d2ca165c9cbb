"""The model artifact's manifest: what the directory holds, and the checksums that prove it.

`manifest.json` lists every other file of the artifact with its SHA-256. Serving checks
all of them before any file is parsed, so a truncated copy, a half-finished upload or a
tampered weight file is refused with the name of the file instead of being loaded.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
# Files the loader reads, per architecture; the manifest must vouch for each of them.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
REQUIRED_FILES_BY_ARCHITECTURE = {
    "e5-hybrid": ("head.safetensors", "encoder_delta.safetensors", "lexical.json"),
}


def required_files(manifest: dict[str, Any]) -> tuple[str, ...]:
    return REQUIRED_FILES_BY_ARCHITECTURE.get(str(manifest.get("architecture", "")), REQUIRED_FILES)


class ModelIntegrityError(Exception):
    """The artifact is incomplete or does not match its manifest."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory` except the manifest, keyed by relative path."""
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Writes `manifest` with a fresh `files` section covering everything now in `directory`."""
    body = dict(manifest)
    body["files"] = file_checksums(directory)
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def read_verified_manifest(directory: Path) -> tuple[dict[str, Any], str]:
    """The manifest and its own SHA-256, after checking every listed file.

    Raises ModelIntegrityError naming the first file that is missing, outside the
    directory, not listed although required, or whose checksum differs.
    """
    directory = directory.resolve()
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing: not a model artifact")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelIntegrityError(f"{path} is not valid JSON: {exc}") from None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelIntegrityError(f"{path} lists no files")
    for required in required_files(manifest):
        if required not in files:
            raise ModelIntegrityError(f"{required} is not listed in the manifest")
    for rel, expected in files.items():
        target = (directory / rel).resolve()
        if directory not in target.parents:
            raise ModelIntegrityError(f"{rel}: path leaves the model directory")
        if not target.is_file():
            raise ModelIntegrityError(f"{rel} is listed in the manifest but missing")
        actual = sha256_file(target)
        if actual != expected:
            raise ModelIntegrityError(
                f"{rel} does not match the manifest (sha256 {actual}, expected {expected})")
    for key in ("name", "version", "labels"):
        if key not in manifest:
            raise ModelIntegrityError(f"{path} lacks '{key}'")
    return manifest, hashlib.sha256(raw).hexdigest()
