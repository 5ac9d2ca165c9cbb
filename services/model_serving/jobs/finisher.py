"""model-serving's side of a finished training run: register, evaluate, promote, READY.

The training worker leaves a job EVALUATING with its artifact in `<model store>/.training/<job id>`.
Here the artifact is registered through the registry (every file checked against the manifest's
SHA-256; a damaged artifact fails the job), measured through the serving inference path
(`load_model` with model-serving's own inference options, `probabilities`) on the fixed evaluation
set of each task it was trained for, per-label metrics and confusion matrix stored in
`models.version_evaluations`; it becomes `candidate`, and `production` when the promotion rule
says so (otherwise an admin decides). The job ends READY with the version and its evaluation.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from services.common import audit
from services.common.db import Database, DictConnection

from ..datasets.eval_sets import EvalSet, load_eval_set
from ..models.base import InferenceOptions, probabilities
from ..models.loader import load_model
from ..registry import ModelRegistry, RegistryError
from ..training_settings import TrainingApiSettings
from .promotion import Decision, classification_metrics, decide

log = logging.getLogger(__name__)
CANDIDATE = "candidate"
PRODUCTION = "production"


def evaluate_directory(directory: Path, options: InferenceOptions, eval_set: EvalSet) -> tuple[dict[str, Any],
                                                                                              dict[str, Any]]:
    model = load_model(directory, options)
    predicted: list[str] = []
    for begin in range(0, len(eval_set.texts), 256):
        probs = probabilities(model, eval_set.texts[begin:begin + 256])
        predicted.extend(model.labels[int(i)] for i in probs.argmax(axis=1))
    return classification_metrics(eval_set.labels, predicted)


class JobFinisher:
    def __init__(self, db: Database, registry: ModelRegistry, settings: TrainingApiSettings,
                 options: InferenceOptions) -> None:
        self.db = db
        self.registry = registry
        self.settings = settings
        self.options = options

    async def finish_once(self) -> str | None:
        """Finishes one EVALUATING job, if any; returns its id."""
        async with self.db.transaction() as conn:
            await conn.execute("SELECT set_config('app.system', 'on', true)")
            cur = await conn.execute(
                "SELECT j.id, j.tenant_id, j.model_name, j.artifact_dir, j.created_by, j.created_by_name, "
                "(SELECT array_agg(DISTINCT d.task) FROM models.dataset_versions v "
                " JOIN models.datasets d ON d.id = v.dataset_id WHERE v.id = ANY(j.dataset_versions)) AS tasks "
                "FROM models.training_jobs j WHERE j.state = 'EVALUATING' AND j.artifact_dir IS NOT NULL "
                "ORDER BY j.created_at LIMIT 1 FOR UPDATE SKIP LOCKED")
            job = await cur.fetchone()
            if job is None:
                return None
            job_id = str(job["id"])
            try:
                result = await self._finish(job)
            except (RegistryError, OSError, ValueError) as exc:
                log.exception("training job could not be registered or evaluated", extra={"job_id": job_id})
                await self._end(conn, job, "FAILED", reason=f"registration or evaluation failed: {exc}")
                return job_id
            await self._end(conn, job, "READY", version=result["version"], evaluation=result)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(shutil.rmtree, job["artifact_dir"], True)
        return job_id

    async def _finish(self, job: dict[str, Any]) -> dict[str, Any]:
        name = job["model_name"]
        registered = await self.registry.register(name, Path(job["artifact_dir"]),
                                                  created_by=f"training-job:{job['id']}")
        version = registered.version
        try:
            production = int((await self.registry.resolve(name, PRODUCTION)).version)
        except RegistryError:
            production = None
        candidate_metrics: dict[str, dict[str, Any]] = {}
        production_metrics: dict[str, dict[str, Any] | None] = {}
        sets = {}
        for task in sorted(job["tasks"] or []):
            eval_set = await asyncio.to_thread(load_eval_set, self.settings.eval_sets_path, task)
            if eval_set is None:
                continue
            sets[task] = eval_set.describe()
            candidate_metrics[task] = await self._evaluation(name, version, registered.directory, eval_set)
            production_metrics[task] = None
            if production is not None and production != version:
                directory = (await self.registry.resolve(name, str(production))).directory
                production_metrics[task] = await self._evaluation(name, production, directory, eval_set)
        await self.registry.set_alias(name, CANDIDATE, version, by=f"training-job:{job['id']}")
        decision = (decide(candidate_metrics, production_metrics, margin=self.settings.promotion_margin,
                           max_label_drop=self.settings.promotion_max_label_drop)
                    if production is not None else Decision(False, ["no production version yet; an admin decides"]))
        if not self.settings.promotion_auto and decision.promote:
            decision = Decision(False, ["automatic promotion is off (DOCTAG_PROMOTION_AUTO); an admin decides"])
        if decision.promote:
            await self.registry.set_alias(name, PRODUCTION, version, by=f"promotion-policy:training-job:{job['id']}")
        log.info("training job evaluated", extra={"job_id": str(job["id"]), "model": name, "version": version,
                                                  "promoted": decision.promote})
        return {"model": name, "version": version, "created": registered.created, "production_before": production,
                "evaluation_sets": sets, "candidate": candidate_metrics, "production": production_metrics,
                "aliases": [CANDIDATE, *([PRODUCTION] if decision.promote else [])],
                "decision": decision.as_dict()}

    async def _evaluation(self, name: str, version: int, directory: Path, eval_set: EvalSet) -> dict[str, Any]:
        """The stored evaluation of (version, set), or a new one measured now and stored."""
        async with self.db.transaction() as conn:
            cur = await conn.execute("SELECT metrics FROM models.version_evaluations WHERE model_name = %s AND "
                                     "version = %s AND task = %s AND eval_sha256 = %s",
                                     (name, version, eval_set.task, eval_set.sha256))
            row = await cur.fetchone()
        if row is not None:
            return dict(row["metrics"])
        metrics, confusion = await asyncio.to_thread(evaluate_directory, directory, self.options, eval_set)
        async with self.db.transaction() as conn:
            await conn.execute("INSERT INTO models.version_evaluations (model_name, version, task, eval_sha256, "
                               "metrics, confusion) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                               (name, version, eval_set.task, eval_set.sha256, Jsonb(metrics), Jsonb(confusion)))
        return metrics

    async def _end(self, conn: DictConnection, job: dict[str, Any], state: str, *, reason: str | None = None,
                   version: int | None = None, evaluation: dict[str, Any] | None = None) -> None:
        await conn.execute(
            "UPDATE models.training_jobs SET state = %s, reason = %s, result_version = %s, evaluation = %s, "
            "finished_at = now(), progress = progress || jsonb_build_object('stage', %s::text) WHERE id = %s",
            (state, reason, version, Jsonb(evaluation) if evaluation is not None else None, state.lower(), job["id"]))
        await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(job["tenant_id"]),))
        details: dict[str, Any] = {"job_id": str(job["id"]), "state": state, "model": job["model_name"],
                                   "version": version, "reason": reason}
        if evaluation is not None:
            details["decision"] = evaluation["decision"]
            details["macro_f1"] = {t: m["macro_f1"] for t, m in evaluation["candidate"].items()}
        await audit.record(conn, action=audit.TRAINING_FINISHED, actor_id=None, actor_name=audit.TRAINING_ACTOR,
                           request_id=None, details=details)
        if evaluation is not None and evaluation["decision"]["promote"]:
            await audit.record(conn, action=audit.MODEL_PROMOTED, actor_id=None, actor_name=audit.TRAINING_ACTOR,
                               request_id=None, details={"model": job["model_name"], "alias": PRODUCTION,
                                                         "version": version,
                                                         "previous_version": evaluation["production_before"],
                                                         "reasons": evaluation["decision"]["reasons"]})

    async def run_forever(self) -> None:
        while True:
            try:
                while await self.finish_once() is not None:
                    pass
            except Exception:
                log.warning("training finisher round failed", exc_info=True)
            await asyncio.sleep(self.settings.training_finish_interval_s)
