"""model-serving configuration (`DOCTAG_*` environment variables)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from services.common.settings import CommonSettings

if TYPE_CHECKING:
    from .models.base import InferenceOptions

# The committed model, found relative to this package so the service starts from any cwd.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "artifacts" / "doctag-tagger"


def _default_inference_threads() -> int:
    """One inference thread per core this process may run on (its CPU affinity, which a container's
    or `taskset`'s CPU set narrows; not the machine's count), each with one torch thread (see
    batcher.py for the measurements)."""
    return max(1, len(os.sched_getaffinity(0)))


class ModelServingSettings(CommonSettings):
    service_name: str = "model-serving"
    http_port: int = 8121
    grpc_port: int = 9121
    grpc_grace_s: float = 5.0
    # Request bodies under /api/v1/models (artifact archives), as the gateway's models route allows.
    models_max_request_bytes: int = 1024 * 1024 * 1024
    # /api/v1/datasets: labelled files for training (DOCTAG_DATASET_MAX_UPLOAD_BYTES limits the file itself).
    datasets_max_request_bytes: int = 65 * 1024 * 1024

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="artifact served without a registry (may be a symlink)")
    model_refresh_s: float = Field(30.0, gt=0, description="how often the default model is re-resolved (hot swap)")
    max_loaded_models: int = Field(2, ge=1, description="model versions kept loaded at once (default included)")
    quantize: bool = Field(False, description="dynamic int8 quantisation of the model's linear layers: about 2.8x "
                                              "faster, but a text's scores then depend on its batch (batcher.py)")
    onnx: bool = Field(True, description="run the e5-hybrid encoder with ONNX Runtime (exported from the "
                                         "transformers model at load; about 2x faster than torch on this CPU)")
    onnx_cache_dir: Path | None = Field(None, description="where exported encoders are kept; "
                                                          "default <state_dir>/onnx-cache")
    torch_threads: int = Field(1, ge=1, description="torch (and ONNX Runtime) intra-op threads per forward pass")
    inference_threads: int = Field(default_factory=_default_inference_threads, ge=1,
                                   description="threads running forward passes, per loaded model")
    batch_max_windows: int = Field(16, ge=1, description="windows per forward pass at most")
    batch_max_delay_ms: float = Field(0.0, ge=0, description="how long a window may wait for a fuller batch")
    queue_max_windows: int = Field(512, ge=1, description="queued windows per model before requests are refused")
    default_deadline_ms: int = Field(30_000, ge=1, description="deadline of a request that does not bring one")
    max_windows: int = Field(16, ge=1, description="windows per text at most, spread over the text")
    window_tokens: int = Field(0, ge=0, description="window length in tokens, special tokens included; "
                                                   "0 = the model's maximum")
    window_overlap: int = Field(32, ge=0, description="tokens shared by consecutive windows")
    top_k: int = Field(3, ge=1)
    min_score: float = Field(0.05, ge=0.0, le=1.0)
    max_texts: int = Field(64, ge=1, description="texts per request at most")
    max_text_chars: int = Field(1_000_000, ge=1, description="characters per text at most")
    embeddings: bool = Field(True, description="serve Embed (retrieval vectors from the base multilingual-e5-small)")
    embed_preload: bool = Field(True, description="load the embedding model at start, after the tagging model "
                                                  "(else on the first Embed call)")
    embed_passage_windows: int = Field(2, ge=1, le=8, description="windows read from the start of a document")
    embed_window_tokens: int = Field(256, ge=16, le=512, description="tokens per window, special tokens included")

    def inference_options(self) -> InferenceOptions:
        """How the model reads texts: the same for serving, `doctag model eval` and the benchmarks."""
        from .models.base import InferenceOptions

        return InferenceOptions(max_windows=self.max_windows, overlap=self.window_overlap,
                                window_tokens=self.window_tokens, quantize=self.quantize, onnx=self.onnx,
                                onnx_cache_dir=self.onnx_cache_dir or self.state_dir / "onnx-cache",
                                threads=self.torch_threads)
