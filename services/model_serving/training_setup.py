"""Wires model-serving's training side (datasets now; jobs and their finisher) onto its app and registry."""
from __future__ import annotations

from fastapi import FastAPI

from services.common.auth import TokenVerifier

from .datasets.api import DatasetContext, build_dataset_router
from .datasets.eval_sets import load_eval_set
from .datasets.gate import GateSettings
from .datasets.store import DatasetStore
from .registry import RegistryConnection
from .training_settings import TrainingApiSettings


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


def include_training(app: FastAPI, connection: RegistryConnection, verifier: TokenVerifier,
                     settings: TrainingApiSettings | None = None) -> None:
    settings = settings or TrainingApiSettings()
    datasets = DatasetStore(connection.db)

    def current_datasets() -> DatasetStore:
        connection.current()   # RegistryUnavailable (503) until the database was reached
        return datasets

    app.include_router(build_dataset_router(current_datasets, verifier, dataset_context(settings)))
