"""Settings of model-serving's training side: datasets, the quality gate, jobs and promotion (DOCTAG_*)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.settings import CommonSettings


class TrainingApiSettings(CommonSettings):
    service_name: str = "model-serving"
    db_user: str = "doctag_model"

    # One JSONL file per task (`headlines.jsonl`, ...): the fixed evaluation sets; default <state_dir>/eval-sets.
    eval_sets_dir: Path | None = None
    dataset_max_upload_bytes: int = 64 * 1024 * 1024
    dataset_max_chars: int = 200_000
    dataset_min_rows: int = 10
    dataset_near_duplicate: float = Field(0.9, gt=0, le=1)
    feedback_max_rows: int = 100_000
    dataset_purge_interval_s: float = 3600.0

    # Training jobs: limits answered with 429 + Retry-After.
    training_max_active_per_user: int = 2
    training_max_active_per_tenant: int = 3
    training_retry_after_s: int = 60
    training_default_timeout_s: int = 4 * 3600
    training_max_attempts: int = 3
    training_heartbeat_timeout_s: float = 30.0

    # Promotion: a new version becomes `candidate`; `production` only when its macro-F1 on every task's
    # evaluation set beats production's by this margin and no label's F1 drops by more than the threshold.
    promotion_margin: float = 0.005
    promotion_max_label_drop: float = 0.05
    promotion_auto: bool = True
    # How often model-serving looks for finished training artifacts to register and evaluate.
    training_finish_interval_s: float = 5.0

    @property
    def eval_sets_path(self) -> Path:
        return self.eval_sets_dir or self.state_dir / "eval-sets"
