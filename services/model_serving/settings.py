"""model-serving configuration (`DOCTAG_*` environment variables)."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from services.common.settings import CommonSettings

# The committed model, found relative to this package so the service starts from any cwd.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "artifacts" / "doctag-tagger"


def _default_threads() -> int:
    """Half the cores (at least one): inference gets real parallelism, while the event
    loop, gRPC and the other processes of a shared host keep a core."""
    return max(1, (os.cpu_count() or 2) // 2)


class ModelServingSettings(CommonSettings):
    service_name: str = "model-serving"
    http_port: int = 8121
    grpc_port: int = 9121
    grpc_grace_s: float = 5.0

    model_dir: Path = DEFAULT_MODEL_DIR
    torch_threads: int = Field(default_factory=_default_threads, ge=1)
    max_windows: int = Field(16, ge=1, description="windows per text at most, spread over the text")
    window_overlap: int = Field(32, ge=0, description="tokens shared by consecutive windows")
    batch_windows: int = Field(16, ge=1, description="windows per forward pass")
    top_k: int = Field(3, ge=1)
    min_score: float = Field(0.05, ge=0.0, le=1.0)
    max_texts: int = Field(64, ge=1, description="texts per request at most")
    max_text_chars: int = Field(1_000_000, ge=1, description="characters per text at most")
