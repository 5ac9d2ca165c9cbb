"""Shadow mode: a model's `candidate` scores a share of live predictions in the background.

While shadow is on for a model (`PUT /api/v1/models/{name}/shadow`, platform admins; kept in
`models.shadow_settings`, migration 0021) and it has a `candidate` version other than the one
answering, the runner offers each text its default (production) model answered, with probability
`share` (DOCTAG_SHADOW_SHARE), to a bounded queue. Offering never waits: a full queue drops the
sample and counts it. One thread of its own, at a lower scheduling priority (DOCTAG_SHADOW_NICE),
takes samples one by one, loads the candidate lazily (verified against its manifest's SHA-256s and
the registry's manifest checksum, like any served version) and runs it on the reference path,
outside the batcher: answers always come from production, and nothing on their path waits for
the candidate. Comparisons (both top labels, agreement, the candidate's latency, the input's
SHA-256, never the text) and drop counts are written in batches to `models.shadow_comparisons`
and `models.shadow_drops` per tenant and version pair, and kept as long as the inference log.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import Field

from services.common import audit
from services.common.auth import Principal
from services.common.db import Database
from services.common.settings import CommonSettings

from .metrics import SHADOW_DROPPED, SHADOW_FAILED, SHADOW_LATENCY, SHADOW_QUEUE_DEPTH, SHADOW_SAMPLES
from .models.base import InferenceOptions, WindowModel, probabilities
from .models.loader import load_model
from .models.manifest import ModelIntegrityError
from .resolved import ResolvedModel

log = logging.getLogger(__name__)

CANDIDATE = "candidate"


class ShadowSettings(CommonSettings):
    """Shadow mode's part of model-serving's configuration (DOCTAG_* variables)."""

    service_name: str = "model-serving"
    db_user: str = "doctag_model"
    shadow_share: float = Field(0.1, gt=0, le=1, description="share of live texts the candidate also scores")
    shadow_queue: int = Field(64, ge=1, description="texts waiting for the candidate at most; more are dropped")
    shadow_nice: int = Field(10, ge=0, le=19, description="scheduling niceness of the shadow thread")
    shadow_refresh_s: float = Field(30.0, gt=0, description="how often shadow settings and the candidate are re-read")
    shadow_flush_s: float = Field(1.0, gt=0, description="how often comparisons are written")
    shadow_buffer: int = Field(10_000, ge=1, description="comparisons waiting to be written at most")
    shadow_retention_days: int = Field(30, ge=1, description="days comparisons are kept")


# -- the comparison ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    production_label: str
    candidate_label: str
    agree: bool


def compare(production_tags: Sequence[tuple[str, float]], candidate_probs: np.ndarray,
            candidate_labels: Sequence[str]) -> Comparison:
    """Top label of production's answer (its tags, best first) against the candidate's best label."""
    if not production_tags:
        raise ValueError("production answered no tag")
    production = production_tags[0][0]
    candidate = candidate_labels[int(np.argmax(candidate_probs))]
    return Comparison(production, candidate, production == candidate)


def per_label(pairs: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, Any]]:
    """(production label, candidate label, count) → per label: how often production and the candidate
    answered it, how often they agreed on it and how often production's answer was not the candidate's.
    `agreement` is agree / production (None when production never answered it)."""
    out: dict[str, dict[str, Any]] = {}

    def entry(label: str) -> dict[str, Any]:
        return out.setdefault(label, {"production": 0, "candidate": 0, "agree": 0, "disagree": 0})

    for production, candidate, n in pairs:
        entry(production)["production"] += n
        entry(candidate)["candidate"] += n
        entry(production)["agree" if production == candidate else "disagree"] += n
    for e in out.values():
        e["agreement"] = round(e["agree"] / e["production"], 4) if e["production"] else None
    return dict(sorted(out.items()))


# -- the queue and its thread --------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowSample:
    tenant_id: str | None
    production_version: str
    candidate: ResolvedModel
    text: str
    production_tags: list[tuple[str, float]]


@dataclass(frozen=True)
class ShadowResult:
    at: datetime
    sample: ShadowSample
    comparison: Comparison
    latency_ms: float


DropKey = tuple[str | None, str, str, str]   # tenant, model, production version, candidate version


class ShadowQueue:
    """A bounded queue and the one thread that scores it. `offer` never blocks: when the queue is
    full the sample is dropped and counted (`drops`, per tenant and version pair)."""

    def __init__(self, capacity: int, score: Callable[[ShadowSample], ShadowResult | None], *,
                 nice: int = 10, name: str = "shadow") -> None:
        self._queue: queue.Queue[ShadowSample | None] = queue.Queue(maxsize=max(1, capacity))
        self._score = score
        self._nice = nice
        self.drops: Counter[DropKey] = Counter()
        self.results: deque[ShadowResult] = deque()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def offer(self, sample: ShadowSample) -> bool:
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self.drops[(sample.tenant_id, sample.candidate.name, sample.production_version,
                        sample.candidate.version)] += 1
            SHADOW_DROPPED.labels(sample.candidate.name).inc()
            return False
        SHADOW_QUEUE_DEPTH.set(self._queue.qsize())
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def take_drops(self) -> dict[DropKey, int]:
        taken = dict(self.drops)
        self.drops.clear()
        return taken

    def _run(self) -> None:
        _lower_priority(self._nice)
        while True:
            sample = self._queue.get()
            SHADOW_QUEUE_DEPTH.set(self._queue.qsize())
            if sample is None:
                return
            try:
                result = self._score(sample)
            except Exception:   # a failing candidate never stops the thread
                log.warning("shadow scoring failed", exc_info=True)
                SHADOW_FAILED.labels(sample.candidate.name).inc()
                continue
            if result is not None:
                self.results.append(result)

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self._started:
            return
        with contextlib.suppress(queue.Full):
            while True:   # empty what waits, then the stop marker
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)


def _lower_priority(nice: int) -> None:
    """Raises this thread's niceness (Linux schedules threads one by one) so the candidate's work
    yields the CPU to the production answers."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, nice))
    except OSError as exc:
        log.warning("shadow thread keeps its priority", extra={"error": str(exc)})


class CandidateScorer:
    """Scores one sample with the candidate it names, loading that version on first use (in the
    shadow thread) and keeping only the latest one. A version that fails to load is not tried
    again for `refusal_s`."""

    def __init__(self, options: InferenceOptions, *, refusal_s: float = 300.0) -> None:
        self.options = options
        self.refusal_s = refusal_s
        self._model: tuple[ResolvedModel, WindowModel] | None = None
        self._refused: dict[ResolvedModel, float] = {}
        self.error: str | None = None

    def model(self, resolved: ResolvedModel) -> WindowModel | None:
        if self._model is not None and self._model[0] == resolved:
            return self._model[1]
        refused = self._refused.get(resolved)
        if refused is not None and time.monotonic() - refused < self.refusal_s:
            return None
        try:
            model = load_model(resolved.directory, self.options)
            if model.manifest_sha256 != resolved.manifest_sha256:
                raise ModelIntegrityError(f"manifest.json has sha256 {model.manifest_sha256}, "
                                          f"registered {resolved.manifest_sha256}")
            if model.name != resolved.name:
                raise ModelIntegrityError(f"the artifact is model {model.name}, expected {resolved.name}")
        except Exception as exc:  # noqa: BLE001 - refused: recorded, logged, retried later
            self._refused[resolved] = time.monotonic()
            self.error = f"candidate {resolved.name}:{resolved.version} refused: {exc.__class__.__name__}: {exc}"
            log.error("shadow candidate refused", extra={"model": resolved.name, "version": resolved.version,
                                                         "error": self.error})
            return None
        self._model = (resolved, model)   # the previous candidate, if any, is released
        self.error = None
        log.info("shadow candidate loaded", extra={"model": resolved.name, "version": resolved.version})
        return model

    def release(self) -> None:
        """Frees the loaded candidate (shadow mode was switched off everywhere)."""
        self._model = None

    def __call__(self, sample: ShadowSample) -> ShadowResult | None:
        model = self.model(sample.candidate)
        if model is None:
            SHADOW_FAILED.labels(sample.candidate.name).inc()
            return None
        started = time.perf_counter()
        probs = probabilities(model, [sample.text])[0]
        latency = time.perf_counter() - started
        comparison = compare(sample.production_tags, probs, model.labels)
        SHADOW_LATENCY.observe(latency)
        SHADOW_SAMPLES.labels(sample.candidate.name, "agree" if comparison.agree else "disagree").inc()
        return ShadowResult(datetime.now(UTC), sample, comparison, latency * 1000)


# -- settings, recording and the report ----------------------------------------------------------
@dataclass(frozen=True)
class ShadowState:
    enabled: bool
    share: float | None
    candidate: ResolvedModel | None


Resolve = Callable[[str, str], Any]   # (model name, alias) -> awaitable ResolvedModel


def _tenant_uuid(tenant_id: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(tenant_id)) if tenant_id else None
    except ValueError:
        return None


class ShadowMode:
    """The runner's hook (`offer`), the settings (`set`), the writer and the report (`report`)."""

    def __init__(self, db: Database, resolve: Resolve, options: InferenceOptions,
                 settings: ShadowSettings | None = None, *, connected: Callable[[], bool] = lambda: True) -> None:
        self.db = db
        self.resolve = resolve
        self.settings = settings or ShadowSettings()
        self.connected = connected
        self.states: dict[str, ShadowState] = {}
        self.scorer = CandidateScorer(options)
        self.queue = ShadowQueue(self.settings.shadow_queue, self.scorer, nice=self.settings.shadow_nice)
        self.lost = 0   # comparisons dropped because the write buffer was full (database down)
        self._random = random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    # -- the hook on the answer path: cheap, never waits ------------------------------------------
    def offer(self, production: ResolvedModel, texts: Sequence[str], tags: Sequence[list[tuple[str, float]]],
              tenant_id: str | None) -> None:
        state = self.states.get(production.name)
        if state is None or not state.enabled or state.candidate is None \
                or state.candidate.version == production.version:
            return
        share = state.share or self.settings.shadow_share
        for text, text_tags in zip(texts, tags, strict=True):
            if text_tags and self._random.random() < share:
                self.queue.offer(ShadowSample(tenant_id, production.version, state.candidate, text, text_tags))

    # -- settings ---------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-reads every model's shadow settings and resolves the candidates of those switched on."""
        async with self.db.transaction() as conn:
            cur = await conn.execute("SELECT model_name, enabled, share FROM models.shadow_settings")
            rows = list(await cur.fetchall())
        states: dict[str, ShadowState] = {}
        for row in rows:
            candidate = None
            if row["enabled"]:
                try:
                    candidate = await self.resolve(row["model_name"], CANDIDATE)
                except Exception:  # noqa: BLE001 - no candidate (yet): nothing to compare
                    candidate = None
            states[row["model_name"]] = ShadowState(row["enabled"], row["share"], candidate)
        self.states = states
        if not any(s.enabled and s.candidate is not None for s in states.values()):
            self.scorer.release()

    async def set(self, principal: Principal, name: str, *, enabled: bool, share: float | None,
                  request_id: str | None) -> dict[str, Any]:
        """Switches shadow mode for `name` (audited as model.shadow_changed); LookupError: no such model."""
        actor = principal.username or principal.user_id
        async with self.db.tenant_transaction(principal.tenant_id) as conn:
            cur = await conn.execute("SELECT 1 FROM models.models WHERE name = %s", (name,))
            if await cur.fetchone() is None:
                raise LookupError(name)
            cur = await conn.execute(
                "INSERT INTO models.shadow_settings (model_name, enabled, share, enabled_at, updated_by) "
                "VALUES (%s, %s, %s, CASE WHEN %s THEN now() END, %s) "
                "ON CONFLICT (model_name) DO UPDATE SET enabled = EXCLUDED.enabled, share = EXCLUDED.share, "
                "enabled_at = CASE WHEN EXCLUDED.enabled AND NOT models.shadow_settings.enabled THEN now() "
                "                  WHEN EXCLUDED.enabled THEN models.shadow_settings.enabled_at END, "
                "updated_by = EXCLUDED.updated_by, updated_at = now() "
                "RETURNING enabled, share, enabled_at, updated_by, updated_at",
                (name, enabled, share, enabled, actor))
            row = await cur.fetchone()
            assert row is not None
            await audit.record(conn, action=audit.MODEL_SHADOW_CHANGED, actor_id=principal.user_id,
                               actor_name=actor, request_id=request_id,
                               details={"model": name, "enabled": enabled, "share": share})
        await self.refresh()
        return self._settings_out(name, row)

    def _settings_out(self, name: str, row: dict[str, Any] | None) -> dict[str, Any]:
        state = self.states.get(name)
        return {"name": name, "enabled": bool(row and row["enabled"]),
                "share": (row["share"] if row and row["share"] else self.settings.shadow_share),
                "enabled_at": _iso(row["enabled_at"]) if row else None,
                "updated_by": row["updated_by"] if row else None,
                "candidate_version": int(state.candidate.version) if state and state.candidate else None}

    # -- writing ----------------------------------------------------------------------------
    def start(self) -> None:
        self.queue.start()
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._refresh_loop(), name="shadow-refresh"),
                           asyncio.create_task(self._flush_loop(), name="shadow-flush")]

    async def _refresh_loop(self) -> None:
        while True:
            if self.connected():
                try:
                    await self.refresh()
                except Exception as exc:  # noqa: BLE001 - keep the last known settings
                    log.warning("shadow settings could not be read", extra={"error": str(exc)[:300]})
            await asyncio.sleep(self.settings.shadow_refresh_s)

    async def _flush_loop(self) -> None:
        last_purge = 0.0
        while True:
            await asyncio.sleep(self.settings.shadow_flush_s)
            if not self.connected():
                self._trim()
                continue
            try:
                await self.flush()
                if time.monotonic() - last_purge > 3600:
                    await self.purge()
                    last_purge = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the database is down: keep what fits, retry
                self._trim()
                log.warning("shadow comparisons could not be written; retrying", extra={"error": str(exc)[:300]})

    def _trim(self) -> None:
        while len(self.queue.results) > self.settings.shadow_buffer:
            self.queue.results.popleft()
            self.lost += 1

    async def flush(self) -> int:
        """Writes the comparisons and drop counts gathered so far; returns the comparisons written."""
        results = list(self.queue.results)
        drops = self.queue.take_drops()
        if not results and not drops:
            return 0
        try:
            async with self.db.transaction() as conn:
                if results:
                    async with conn.cursor().copy(
                            "COPY models.shadow_comparisons (at, tenant_id, model_name, production_version, "
                            "candidate_version, input_sha256, production_label, candidate_label, agree, "
                            "candidate_latency_ms) FROM STDIN") as copy:
                        for r in results:
                            s = r.sample
                            await copy.write_row((
                                r.at, _tenant_uuid(s.tenant_id), s.candidate.name, s.production_version,
                                s.candidate.version, hashlib.sha256(s.text.encode("utf-8")).hexdigest(),
                                r.comparison.production_label, r.comparison.candidate_label, r.comparison.agree,
                                round(r.latency_ms, 3)))
                for (tenant, model, production, candidate), n in drops.items():
                    await conn.execute(
                        "INSERT INTO models.shadow_drops (tenant_id, model_name, production_version, "
                        "candidate_version, dropped) VALUES (%s, %s, %s, %s, %s)",
                        (_tenant_uuid(tenant), model, production, candidate, n))
        except BaseException:
            for key, n in drops.items():   # counted again at the next flush
                self.queue.drops[key] += n
            raise
        for _ in results:
            self.queue.results.popleft()
        return len(results)

    async def purge(self) -> None:
        async with self.db.transaction() as conn:
            for table in ("shadow_comparisons", "shadow_drops"):
                await conn.execute(f"DELETE FROM models.{table} WHERE at < now() - make_interval(days => %s)",
                                   (self.settings.shadow_retention_days,))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.to_thread(self.queue.stop)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.flush()

    # -- the report -------------------------------------------------------------------------
    async def report(self, name: str, *, candidate_version: int | None = None,
                     tenant_id: str | None = None) -> dict[str, Any]:
        """Agreement of a candidate version (default: the current candidate) with production, overall,
        per label and per tenant (or for one tenant), with the candidate's latency and the drops.
        LookupError: no such model."""
        async with self.db.transaction() as conn:
            cur = await conn.execute("SELECT 1 FROM models.models WHERE name = %s", (name,))
            if await cur.fetchone() is None:
                raise LookupError(name)
            cur = await conn.execute("SELECT enabled, share, enabled_at, updated_by FROM models.shadow_settings "
                                     "WHERE model_name = %s", (name,))
            setting = await cur.fetchone()
            cur = await conn.execute("SELECT alias, version FROM models.aliases WHERE model_name = %s "
                                     "AND alias IN ('production', 'candidate')", (name,))
            aliases = {r["alias"]: r["version"] for r in await cur.fetchall()}
            version = candidate_version if candidate_version is not None else aliases.get(CANDIDATE)
            where = "model_name = %s AND candidate_version = %s AND (%s::uuid IS NULL OR tenant_id = %s::uuid)"
            params = (name, str(version), tenant_id, tenant_id)
            cur = await conn.execute(
                f"SELECT production_label, candidate_label, count(*) AS n FROM models.shadow_comparisons "
                f"WHERE {where} GROUP BY 1, 2", params)
            pairs = [(r["production_label"], r["candidate_label"], r["n"]) for r in await cur.fetchall()]
            cur = await conn.execute(
                f"SELECT min(at) AS since, max(at) AS until, count(*) AS samples, "
                f"avg(candidate_latency_ms) AS mean, "
                f"percentile_cont(0.5) WITHIN GROUP (ORDER BY candidate_latency_ms) AS p50, "
                f"percentile_cont(0.95) WITHIN GROUP (ORDER BY candidate_latency_ms) AS p95, "
                f"array_agg(DISTINCT production_version) AS production_versions "
                f"FROM models.shadow_comparisons WHERE {where}", params)
            overall = await cur.fetchone()
            cur = await conn.execute(
                f"SELECT tenant_id, count(*) AS samples, count(*) FILTER (WHERE agree) AS agree "
                f"FROM models.shadow_comparisons WHERE {where} GROUP BY tenant_id", params)
            tenants: dict[str | None, dict[str, Any]] = {
                _str(r["tenant_id"]): {"samples": r["samples"], "agree": r["agree"], "dropped": 0}
                for r in await cur.fetchall()}
            cur = await conn.execute(
                f"SELECT tenant_id, sum(dropped) AS dropped FROM models.shadow_drops WHERE {where} "
                f"GROUP BY tenant_id", params)
            for r in await cur.fetchall():
                tenants.setdefault(_str(r["tenant_id"]), {"samples": 0, "agree": 0, "dropped": 0})["dropped"] = \
                    int(r["dropped"])
        assert overall is not None
        samples = int(overall["samples"])
        agree = sum(n for p, c, n in pairs if p == c)
        return {
            "name": name,
            **self._settings_out(name, setting),
            "production_version": aliases.get("production"),
            "candidate_version": version,
            "tenant_id": tenant_id,
            "since": _iso(overall["since"]), "until": _iso(overall["until"]),
            "samples": samples, "agree": agree, "disagree": samples - agree,
            "agreement": round(agree / samples, 4) if samples else None,
            "dropped": sum(t["dropped"] for t in tenants.values()),
            "candidate_latency_ms": {k: round(float(overall[k]), 3) if overall[k] is not None else None
                                     for k in ("mean", "p50", "p95")},
            "production_versions": sorted(v for v in (overall["production_versions"] or []) if v),
            "per_label": per_label(pairs),
            "tenants": [{"tenant_id": t, **v, "agreement": round(v["agree"] / v["samples"], 4) if v["samples"]
                         else None} for t, v in sorted(tenants.items(), key=lambda kv: str(kv[0]))],
        }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
