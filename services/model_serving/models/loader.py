"""Loads a verified artifact with the class of the architecture its manifest names.

Each architecture's module is imported only when an artifact of that architecture is loaded,
so serving one kind of model never pays for the others' imports.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .base import InferenceOptions, WindowModel
from .manifest import ModelIntegrityError, read_verified_manifest

# manifest "architecture" -> module (in this package) whose `MODEL_CLASS.load` builds it.
ARCHITECTURES: dict[str, str] = {
    "bert-sequence-classification": "bert",
    "e5-hybrid": "hybrid",
}
DEFAULT_ARCHITECTURE = "bert-sequence-classification"


def load_model(directory: Path | str, options: InferenceOptions | None = None) -> WindowModel:
    """Verifies the artifact against its manifest, then loads it with the class of its architecture."""
    directory = Path(directory).resolve()
    options = options or InferenceOptions()
    manifest, manifest_sha256 = read_verified_manifest(directory)
    architecture = str(manifest.get("architecture", DEFAULT_ARCHITECTURE))
    module_name = ARCHITECTURES.get(architecture)
    if module_name is None:
        raise ModelIntegrityError(f"manifest.json: unknown architecture {architecture!r} "
                                  f"(known: {', '.join(sorted(ARCHITECTURES))})")
    module = importlib.import_module(f"{__package__}.{module_name}")
    model: WindowModel = module.MODEL_CLASS.load(directory, manifest, manifest_sha256, options)
    return model
