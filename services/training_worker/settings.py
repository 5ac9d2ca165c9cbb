"""Training worker configuration (`DOCTAG_*` environment variables)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field

from services.common.amqp import DEFAULT_DELIVERY_LIMIT
from services.common.settings import CommonSettings


class TrainingWorkerSettings(CommonSettings):
    service_name: str = "training-worker"
    db_user: str = "doctag_training"
    http_port: int = 8151

    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # How often an idle worker looks at the queues (urgent first).
    poll_interval_s: float = 1.0
    heartbeat_interval_s: float = 3.0
    # A running job whose heartbeat is older than this is taken back by the reaper: PENDING again
    # (and published) while attempts remain, else FAILED and dead-lettered.
    heartbeat_timeout_s: float = 30.0
    reaper_interval_s: float = 10.0
    # A PENDING job whose publication was never confirmed is published again after this long.
    republish_after_s: float = 30.0
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    # Inference first: the training run is a child process at this nice value (0-19; higher = lower
    # priority) with this many torch threads, so model-serving on the same host keeps its CPU share.
    training_nice: int = Field(10, ge=0, le=19)
    training_torch_threads: int = Field(1, ge=1, le=64)
    # The module the child runs (the training package's job entry).
    trainer_module: str = "services.model_training.job_run"
    # Where runs keep their data and artifacts; finished artifacts go to <model store>/.training/<job id>,
    # where model-serving registers them (it verifies every file's SHA-256 against the manifest).
    work_dir: Path | None = None
    model_store: Path | None = None
    log_lines_kept: int = 2000

    @property
    def work_path(self) -> Path:
        return self.work_dir or self.state_dir / "training"

    @property
    def incoming_path(self) -> Path:
        return (self.model_store or self.state_dir / "models") / ".training"
