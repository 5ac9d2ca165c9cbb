"""The loaded model behind one dedicated worker thread, with the input limits both APIs share.

PyTorch's forward pass blocks; running it on the event loop would stall every other
request, health checks included. One worker thread serialises inference (the model is
not thread-safe, and torch's intra-op threads already use the cores we gave it), while
the loop keeps accepting, validating and answering.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from .inference import InferenceOptions, TaggingModel
from .settings import ModelServingSettings

log = logging.getLogger(__name__)


class ModelNotReady(Exception):
    """No model is loaded (still loading, or loading failed)."""


class InputError(ValueError):
    """A request the model cannot answer; `field` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    labels: list[str]
    manifest_sha256: str


class ModelRunner:
    def __init__(self, settings: ModelServingSettings) -> None:
        self.settings = settings
        self.model: TaggingModel | None = None
        self.load_error: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def info(self) -> ModelInfo | None:
        return None if self.model is None else _info(self.model)

    async def load(self) -> None:
        """Verifies and loads the model on the worker thread (so torch's threads are set there too).

        Raises what loading raised, after recording it for /readyz.
        """
        s = self.settings
        options = InferenceOptions(max_windows=s.max_windows, overlap=s.window_overlap,
                                   batch_size=s.batch_windows, min_score=s.min_score)
        loop = asyncio.get_running_loop()
        try:
            self.model = await loop.run_in_executor(
                self._executor, partial(TaggingModel.load, s.model_dir, options=options, torch_threads=s.torch_threads))
            self.load_error = None
        except Exception as exc:
            self.load_error = f"{exc.__class__.__name__}: {exc}"
            raise

    async def ready_check(self) -> None:
        """Readiness check for /readyz: raises while no model is loaded."""
        if self.model is None:
            raise ModelNotReady(f"model failed to load: {self.load_error}" if self.load_error
                                else "model is loading")

    def validate(self, texts: Sequence[str], field: str, *, batch: bool) -> None:
        """Raises InputError naming the field (`text`, `texts` or `texts.<i>`)."""
        s = self.settings
        if batch and not texts:
            raise InputError(field, "give at least one text")
        if len(texts) > s.max_texts:
            raise InputError(field, f"at most {s.max_texts} texts per request, got {len(texts)}")
        for index, text in enumerate(texts):
            name = f"{field}.{index}" if batch else field
            if not text.strip():
                raise InputError(name, "text is empty")
            if len(text) > s.max_text_chars:
                raise InputError(name, f"text is longer than {s.max_text_chars} characters ({len(text)})")

    def resolve_top_k(self, top_k: int | None, field: str = "top_k") -> int:
        """0/None means the configured default; more than the model has labels is capped."""
        if top_k is None or top_k == 0:
            top_k = self.settings.top_k
        if top_k < 0:
            raise InputError(field, "must not be negative")
        if self.model is not None:
            top_k = min(top_k, len(self.model.labels))
        return top_k

    async def predict(self, texts: Sequence[str], top_k: int) -> tuple[ModelInfo, list[list[tuple[str, float]]]]:
        """Tags for each text (validated by the caller), computed on the worker thread."""
        model = self.model
        if model is None:
            raise ModelNotReady("the model is not loaded yet" if self.load_error is None
                                else f"the model failed to load: {self.load_error}")
        loop = asyncio.get_running_loop()
        tags = await loop.run_in_executor(self._executor, partial(model.predict, list(texts), top_k))
        return _info(model), tags

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _info(model: TaggingModel) -> ModelInfo:
    return ModelInfo(model.name, model.version, list(model.labels), model.manifest_sha256)
