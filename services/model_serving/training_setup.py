"""Wires model-serving's training side (datasets, jobs and their finisher) onto its app and registry."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from services.common.auth import TokenVerifier
from services.common.training_queue import TrainingTopology

from .datasets.api import DatasetContext, build_dataset_router
from .datasets.eval_sets import load_eval_set
from .datasets.gate import GateSettings
from .datasets.store import DatasetStore
from .jobs.api import build_jobs_router
from .jobs.finisher import JobFinisher
from .jobs.publisher import JobPublisher
from .jobs.store import JobStore
from .models.base import InferenceOptions
from .registry import RegistryConnection
from .training_settings import TrainingApiSettings

log = logging.getLogger(__name__)


def dataset_context(settings: TrainingApiSettings) -> DatasetContext:
    def label_set(task: str) -> frozenset[str] | None:
        """A task's labels are those of its evaluation set; without one any label is accepted."""
        found = load_eval_set(settings.eval_sets_path, task)
        return frozenset(found.labels) if found else None

    return DatasetContext(
        eval_sets_dir=settings.eval_sets_path,
        gate=GateSettings(max_chars=settings.dataset_max_chars, min_rows=settings.dataset_min_rows,
                          near_threshold=settings.dataset_near_duplicate),
        max_upload_bytes=settings.dataset_max_upload_bytes, label_set=label_set,
        feedback_max_rows=settings.feedback_max_rows)


class TrainingSide:
    """The training routes' background parts: the job publisher and the finisher loop."""

    def __init__(self, connection: RegistryConnection, settings: TrainingApiSettings,
                 options: InferenceOptions) -> None:
        self.connection = connection
        self.settings = settings
        self.publisher = JobPublisher(settings.amqp_connection_url,
                                      TrainingTopology(prefix=settings.amqp_prefix),
                                      declare=settings.amqp_declare_topology)
        self.finisher = JobFinisher(connection.db, connection.registry, settings, options)
        self.datasets = DatasetStore(connection.db)
        self._tasks: list[asyncio.Task[None]] = []

    async def _finish_loop(self) -> None:
        while not self.connection.connected:
            await asyncio.sleep(self.settings.training_finish_interval_s)
        await self.finisher.run_forever()

    async def _purge_loop(self) -> None:
        """Hourly: datasets deleted more than 90 days ago are removed with their versions and rows."""
        while True:
            await asyncio.sleep(self.settings.dataset_purge_interval_s)
            if self.connection.connected:
                try:
                    purged = await self.datasets.purge_expired()
                    if purged:
                        log.info("deleted datasets purged", extra={"datasets": purged})
                except Exception:
                    log.warning("dataset purge failed", exc_info=True)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._finish_loop(), name="training-finisher"),
                       asyncio.create_task(self._purge_loop(), name="dataset-purge")]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.publisher.close()


def include_training(app: FastAPI, connection: RegistryConnection, verifier: TokenVerifier,
                     options: InferenceOptions, settings: TrainingApiSettings | None = None) -> TrainingSide:
    settings = settings or TrainingApiSettings()
    jobs = JobStore(connection.db)
    side = TrainingSide(connection, settings, options)
    datasets = side.datasets

    def current_datasets() -> DatasetStore:
        connection.current()   # RegistryUnavailable (503) until the database was reached
        return datasets

    def current_jobs() -> JobStore:
        connection.current()
        return jobs

    app.include_router(build_dataset_router(current_datasets, verifier, dataset_context(settings)))
    app.include_router(build_jobs_router(current_jobs, verifier, settings, side.publisher))
    return side
