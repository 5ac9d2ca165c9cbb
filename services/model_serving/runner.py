"""The served models: which version answers a request, its batcher, hot swap, and the input limits.

A *resolver* (resolved.py) says which artifact a model reference means; without a registry
`StaticResolver` serves `settings.model_dir`. Loaded models are cached per (name, version),
each with its own DynamicBatcher. Every `model_refresh_s` the default reference is resolved
again; when it names another version, that version is verified and loaded in the background
and then becomes the default in one assignment. Requests hold a lease on the model they
started with, so they finish on it; a model evicted from the cache is closed only after its
leases are returned and its batcher has drained. While no default model is loaded the
service is not ready.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from services.common.context import request_id_var, tenant_id_var

from .batcher import BatcherConfig, DynamicBatcher
from .metrics import INFERENCE_LATENCY, INFERENCE_WINDOWS_PER_TEXT
from .models.base import PreparedText, WindowModel, top_tags
from .models.embedder import E5Embedder, EmbedConfig
from .models.loader import load_model
from .models.manifest import ModelIntegrityError
from .resolved import RegistryUnavailable, ResolvedModel, Resolver, StaticResolver, UnknownModel
from .settings import ModelServingSettings

log = logging.getLogger(__name__)

# Texts longer than this (in total) are tokenised off the event loop.
INLINE_PREPARE_CHARS = 20_000


class ModelNotReady(Exception):
    """No model is loaded (still loading, or loading failed), or the resolver cannot be reached."""


class ModelNotFound(Exception):
    """The request named a model reference that no version answers to."""


class ModelRefused(Exception):
    """The named version exists but cannot be served (its files fail their checksums, or loading failed)."""


class InputError(ValueError):
    """A request the model cannot answer; `field` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ShadowHook(Protocol):
    """Shadow mode (shadow.py): offered each answer of the default model; must never wait."""

    def offer(self, production: ResolvedModel, texts: Sequence[str], tags: Sequence[list[tuple[str, float]]],
              tenant_id: str | None) -> None: ...


class InferenceLog(Protocol):
    def record(self, tenant_id: str | None, model: str, version: str, latency_ms: float,
               tags: list[list[tuple[str, float]]], input_sha256: list[str], request_id: str | None) -> None: ...


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    labels: list[str]
    manifest_sha256: str
    default: bool = False


@dataclass(eq=False)
class _Loaded:
    resolved: ResolvedModel
    model: WindowModel
    batcher: DynamicBatcher
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.resolved.key


class ModelRunner:
    def __init__(self, settings: ModelServingSettings, *, resolver: Resolver | None = None,
                 inference_log: InferenceLog | None = None, shadow: ShadowHook | None = None) -> None:
        self.settings = settings
        self.resolver: Resolver = resolver or StaticResolver(settings.model_dir)
        self.inference_log = inference_log
        self.shadow = shadow
        self.load_error: str | None = None
        self.on_ready: Callable[[], Coroutine[Any, Any, None]] | None = None   # called when the first model is ready
        self._default: _Loaded | None = None
        self._loaded: dict[tuple[str, str], _Loaded] = {}
        self._loading: dict[tuple[str, str, str], asyncio.Task[_Loaded]] = {}
        self._refused: dict[tuple[str, str, str], tuple[str, float]] = {}   # -> (error, when)
        self._refs: dict[str, tuple[ResolvedModel, float]] = {}             # explicit ref -> (resolved, expiry)
        self._retiring: set[asyncio.Task[None]] = set()
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_now = asyncio.Event()   # set by refresh_soon: re-resolve without waiting the interval
        # Loading (checksums, weights) and tokenising long texts, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        # The retrieval embedder (base e5, models/embedder.py), loaded once, on first use or by start_embedder.
        self._embedder: tuple[E5Embedder, DynamicBatcher] | None = None
        self._embedder_task: asyncio.Task[tuple[E5Embedder, DynamicBatcher]] | None = None
        self.embedder_error: str | None = None

    # -- models ------------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo | None:
        """The default model."""
        return None if self._default is None else _info(self._default, default=True)

    def loaded_models(self) -> list[ModelInfo]:
        return [_info(m, default=m is self._default) for m in self._loaded.values()]

    def _batcher_config(self) -> BatcherConfig:
        s = self.settings
        return BatcherConfig(batch_max_windows=s.batch_max_windows, max_delay_s=s.batch_max_delay_ms / 1000,
                             max_queue_windows=s.queue_max_windows, inference_threads=s.inference_threads,
                             torch_threads=s.torch_threads)

    async def load(self) -> None:
        """Resolves and loads the default model; raises what failed, after recording it for /readyz."""
        try:
            resolved = await self.resolver(None)
            loaded = await self._ensure(resolved)
        except Exception as exc:
            self.load_error = f"{exc.__class__.__name__}: {exc}"
            raise
        self._set_default(loaded)

    async def start(self) -> None:
        """Loads the default model (logging a failure) and keeps re-resolving it every `model_refresh_s`."""
        try:
            await self.load()
        except Exception:  # reported by /readyz and the log; retried by the refresh loop
            log.exception("model could not be loaded", extra={"error": self.load_error})
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="model-refresh")

    def refresh_soon(self) -> None:
        """Re-resolves the default model now rather than at the next interval (the registry just connected).

        Called while the first load is still running, it takes effect when that load is done."""
        self._refresh_now.set()

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), self.settings.model_refresh_s)
            self._refresh_now.clear()
            try:
                await self.refresh()
            except Exception:  # the current model keeps serving
                log.exception("default model could not be refreshed")

    async def refresh(self) -> bool:
        """Re-resolves the default reference; loads and swaps in a new version. True when it swapped."""
        resolved = await self.resolver(None)
        current = self._default
        if current is not None and current.resolved == resolved:
            return False
        refused = self._refused.get(_refusal_key(resolved))
        if refused is not None and time.monotonic() - refused[1] < self._refusal_ttl():
            return False   # already refused recently; the current default keeps serving
        try:
            loaded = await self._ensure(resolved)
        except Exception as exc:
            self.load_error = f"{exc.__class__.__name__}: {exc}"
            raise
        self._set_default(loaded)
        return current is not loaded

    def _set_default(self, loaded: _Loaded) -> None:
        previous = self._default
        self._default = loaded
        self.load_error = None
        if previous is not loaded:
            log.info("default model", extra={"model": loaded.resolved.name, "version": loaded.resolved.version,
                                             "previous": previous.resolved.version if previous else None})
            if previous is None and self.on_ready is not None:
                task = asyncio.create_task(self.on_ready(), name="model-ready")
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        self._evict()

    def _refusal_ttl(self) -> float:
        return max(60.0, 10 * self.settings.model_refresh_s)

    async def _ensure(self, resolved: ResolvedModel) -> _Loaded:
        """The loaded model of `resolved`, loading it (once, however many ask) when needed."""
        loaded = self._loaded.get(resolved.key)
        if loaded is not None and loaded.resolved == resolved and not loaded.retired:
            return loaded
        key = _refusal_key(resolved)
        refused = self._refused.get(key)
        if refused is not None and time.monotonic() - refused[1] < self._refusal_ttl():
            raise ModelRefused(refused[0])
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(resolved), name=f"load-{resolved.name}-{resolved.version}")
            self._loading[key] = task
            task.add_done_callback(lambda _t: self._loading.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, resolved: ResolvedModel) -> _Loaded:
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._executor, load_model, resolved.directory,
                                               self.settings.inference_options())
            if model.manifest_sha256 != resolved.manifest_sha256:
                raise ModelIntegrityError(
                    f"manifest.json of {resolved.name}:{resolved.version} has sha256 {model.manifest_sha256}, "
                    f"expected {resolved.manifest_sha256}")
            # The version is the registry's number (the manifest's own "version" is a build label);
            # the manifest checksum above already proves this is the registered artifact.
            if model.name != resolved.name:
                raise ModelIntegrityError(f"the artifact in {resolved.directory} is model {model.name}, "
                                          f"expected {resolved.name}")
        except Exception as exc:
            message = (f"model {resolved.name}:{resolved.version} in {resolved.directory} is refused: "
                       f"{exc.__class__.__name__}: {exc}")
            self._refused[_refusal_key(resolved)] = (message, time.monotonic())
            log.error("model refused", extra={"model": resolved.name, "version": resolved.version,
                                              "path": str(resolved.directory),
                                              "error": f"{exc.__class__.__name__}: {exc}"})
            raise ModelRefused(message) from exc
        loaded = _Loaded(resolved, model, DynamicBatcher(model, self._batcher_config()))
        previous = self._loaded.get(resolved.key)
        self._loaded[resolved.key] = loaded
        if previous is not None:   # the same version with other files (a re-created artifact)
            if previous is self._default:
                self._default = loaded
            self._retire(previous)
        return loaded

    def _evict(self, keep: _Loaded | None = None) -> None:
        """Keeps at most `max_loaded_models` loaded: the default, `keep` (about to serve a request)
        and the most recently used others."""
        protected = [m for m in (self._default, keep) if m is not None]
        others = sorted((m for m in self._loaded.values() if all(m is not p for p in protected)),
                        key=lambda m: m.last_used, reverse=True)
        for stale in others[max(0, self.settings.max_loaded_models - len(set(map(id, protected)))):]:
            self._loaded.pop(stale.key, None)
            self._retire(stale)

    def _retire(self, loaded: _Loaded) -> None:
        loaded.retired = True
        task = asyncio.create_task(self._close_when_idle(loaded), name=f"retire-{loaded.resolved.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_idle(self, loaded: _Loaded) -> None:
        while loaded.leases:
            await asyncio.sleep(0.02)
        await loaded.batcher.drain()
        await asyncio.to_thread(loaded.batcher.close)
        log.info("model unloaded", extra={"model": loaded.resolved.name, "version": loaded.resolved.version})

    async def _model_for(self, ref: str | None) -> _Loaded:
        ref = (ref or "").strip() or None
        if ref is None:
            if self._default is None:
                raise ModelNotReady("the model failed to load: " + self.load_error if self.load_error
                                    else "the model is not loaded yet")
            return self._default
        cached = self._refs.get(ref)
        if cached is not None and cached[1] > time.monotonic():
            resolved = cached[0]
        else:
            try:
                resolved = await self.resolver(ref)
            except UnknownModel as exc:
                raise ModelNotFound(str(exc)) from None
            except ModelIntegrityError as exc:
                raise ModelRefused(str(exc)) from None
            except RegistryUnavailable as exc:
                raise ModelNotReady(str(exc)) from None
            except Exception as exc:  # e.g. the registry's database is unreachable
                raise ModelNotReady(f"model {ref!r} cannot be resolved now: {exc.__class__.__name__}") from exc
            self._refs[ref] = (resolved, time.monotonic() + self.settings.model_refresh_s)
        if self._default is not None and self._default.resolved == resolved:
            return self._default
        loaded = await self._ensure(resolved)   # ModelRefused when it cannot be loaded
        self._evict(keep=loaded)
        return loaded

    async def _acquire(self, ref: str | None) -> _Loaded:
        for _ in range(3):
            loaded = await self._model_for(ref)
            if not loaded.retired:   # no await between this check and the lease
                loaded.leases += 1
                loaded.last_used = time.monotonic()
                return loaded
        raise ModelNotReady("the model is being replaced; try again")

    async def ready_check(self) -> None:
        """Readiness check for /readyz: raises while no model is loaded."""
        if self._default is None:
            raise ModelNotReady(f"model failed to load: {self.load_error}" if self.load_error
                                else "model is loading")

    # -- requests ----------------------------------------------------------------------------
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
        if self._default is not None:
            top_k = min(top_k, len(self._default.model.labels))
        return top_k

    def deadline_from(self, timeout_s: float | None) -> float:
        """A monotonic deadline `timeout_s` from now (the configured default when None)."""
        if timeout_s is None:
            timeout_s = self.settings.default_deadline_ms / 1000
        return time.monotonic() + timeout_s

    async def predict(self, texts: Sequence[str], top_k: int, *, model: str | None = None,
                      deadline: float | None = None,
                      tenant_id: str | None = None) -> tuple[ModelInfo, list[list[tuple[str, float]]]]:
        """Tags for each text (validated by the caller) from the default model or the one `model` names.

        `deadline` is a `time.monotonic()` instant (default: `default_deadline_ms` from now).
        Raises ModelNotReady, ModelNotFound, ModelRefused, batcher.Overloaded, batcher.DeadlineExceeded.
        """
        started = time.perf_counter()
        deadline = deadline if deadline is not None else self.deadline_from(None)
        loaded = await self._acquire(model)
        try:
            prepared = await self._prepare(loaded.model, texts)
            probs = await loaded.batcher.submit(prepared, deadline)
        finally:
            loaded.leases -= 1
        labels = loaded.model.labels
        top_k = min(top_k, len(labels))
        tags = [top_tags(p, labels, top_k, self.settings.min_score) for p in probs]
        latency = time.perf_counter() - started
        INFERENCE_LATENCY.observe(latency)
        for p in prepared:
            INFERENCE_WINDOWS_PER_TEXT.observe(len(p.windows))
        self._log(loaded, texts, tags, latency, tenant_id)
        if self.shadow is not None and loaded is self._default:
            try:   # only production's answers are shadowed; offering never waits
                self.shadow.offer(loaded.resolved, texts, tags,
                                  tenant_id if tenant_id is not None else tenant_id_var.get())
            except Exception:  # shadow mode must never fail a prediction
                log.exception("shadow offer failed")
        return _info(loaded, default=loaded is self._default), tags

    async def _prepare(self, model: WindowModel, texts: Sequence[str]) -> list[PreparedText]:
        if sum(len(t) for t in texts) <= INLINE_PREPARE_CHARS:
            return model.prepare(list(texts))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare_executor, model.prepare, list(texts))

    def _log(self, loaded: _Loaded, texts: Sequence[str], tags: list[list[tuple[str, float]]],
             latency: float, tenant_id: str | None) -> None:
        if self.inference_log is None:
            return
        try:
            self.inference_log.record(
                tenant_id if tenant_id is not None else tenant_id_var.get(), loaded.resolved.name,
                loaded.resolved.version, latency * 1000, tags,
                [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts], request_id_var.get())
        except Exception:  # logging must never fail a prediction
            log.exception("inference log record failed")

    # -- embeddings --------------------------------------------------------------------------
    def start_embedder(self) -> asyncio.Task[tuple[E5Embedder, DynamicBatcher]]:
        """Starts loading the embedding model in the background (once); Embed waits for it."""
        if self._embedder_task is None:
            task = asyncio.create_task(self._load_embedder(), name="load-embedder")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())   # logged in _load_embedder
            self._embedder_task = task
        return self._embedder_task

    async def _load_embedder(self) -> tuple[E5Embedder, DynamicBatcher]:
        s = self.settings
        config = EmbedConfig(passage_windows=s.embed_passage_windows, window_tokens=s.embed_window_tokens)
        loop = asyncio.get_running_loop()
        try:
            embedder = await loop.run_in_executor(self._executor, E5Embedder.load, s.inference_options(), config)
        except Exception as exc:
            self.embedder_error = f"{exc.__class__.__name__}: {exc}"
            log.error("embedding model refused", extra={"error": self.embedder_error})
            raise
        batcher = DynamicBatcher(embedder, self._batcher_config(), label=f"{embedder.name}:embed")
        self._embedder = (embedder, batcher)
        return self._embedder

    async def embed(self, texts: Sequence[str], mode: str, *,
                    deadline: float | None = None) -> tuple[str, str, np.ndarray]:
        """(model, version, (len(texts), dim) float32 unit vectors) for `mode` "query" or "passage".

        Raises ModelRefused when embeddings are off or the model failed to load, ModelNotReady while
        it loads past the deadline, and the batcher's Overloaded / DeadlineExceeded."""
        if not self.settings.embeddings:
            raise ModelRefused("embeddings are disabled here (DOCTAG_EMBEDDINGS=false)")
        deadline = deadline if deadline is not None else self.deadline_from(None)
        loaded = self._embedder
        if loaded is None:
            task = self.start_embedder()
            try:
                loaded = await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ModelNotReady("the embedding model is loading") from None
            except Exception as exc:  # noqa: BLE001 - any load failure: recorded in embedder_error
                raise ModelRefused(f"the embedding model failed to load: {self.embedder_error or exc}") from None
        embedder, batcher = loaded
        prepared = await asyncio.get_running_loop().run_in_executor(
            self._prepare_executor, embedder.prepare_mode, list(texts), mode)
        vectors = await batcher.submit(prepared, deadline)
        return embedder.name, embedder.config.version(mode), vectors.astype(np.float32)

    async def aclose(self) -> None:
        """Stops refreshing, then closes every batcher (what is queued fails) and the executors."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        for task in [*self._loading.values(), *self._retiring]:
            task.cancel()
        if self._embedder_task is not None and not self._embedder_task.done():
            self._embedder_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._embedder_task
        self.close()

    def close(self) -> None:
        for loaded in list(self._loaded.values()):
            loaded.batcher.close()
        if self._embedder is not None:
            self._embedder[1].close()
            self._embedder = None
        self._loaded.clear()
        self._default = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._prepare_executor.shutdown(wait=False, cancel_futures=True)


def _refusal_key(resolved: ResolvedModel) -> tuple[str, str, str]:
    return (resolved.name, resolved.version, resolved.manifest_sha256)


def _info(loaded: _Loaded, *, default: bool = False) -> ModelInfo:
    model = loaded.model
    return ModelInfo(loaded.resolved.name, loaded.resolved.version, list(model.labels), model.manifest_sha256,
                     default)

