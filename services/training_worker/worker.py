"""The training worker: one job at a time from RabbitMQ, urgent before routine.

Per job: claim it in PostgreSQL (PENDING → VALIDATING, attempt + 1) → read the approved dataset
versions' masked rows → TRAINING: the run in a child process at a lower priority, a heartbeat with
the progress every few seconds (which also brings a cancellation), a time-out per job → the
artifact checked against its manifest (every file's SHA-256) and handed to model-serving in
`<model store>/.training/<job id>` → EVALUATING (model-serving registers, evaluates and promotes
it, then READY). The message is acked once the job left the worker's hands.

A worker that dies leaves its job with a heartbeat that stops: the reaper (every worker runs one)
makes it PENDING again and publishes it while attempts remain, or FAILED and dead-lettered
(`<prefix>.training.dead`) after `max_attempts`; a message that kills the worker before it could
claim its job is dead-lettered by the queue's delivery limit.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel, AbstractRobustConnection

from services.common.db import Database
from services.common.training_queue import PRIORITIES, TrainingTopology, dead_letter, publish_job

from .jobs import Claim, JobDb
from .run import TrainingRun
from .settings import TrainingWorkerSettings

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class ArtifactInvalid(Exception):
    pass


def verify_artifact(directory: Path) -> dict[str, Any]:
    """The manifest, after every file it lists matched its SHA-256 (and nothing is unlisted)."""
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactInvalid("the manifest lists no files")
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {MANIFEST}
    if present != set(files):
        raise ArtifactInvalid(f"files differ from the manifest: {sorted(present ^ set(files))[:5]}")
    for rel, expected in files.items():
        digest = hashlib.sha256()
        with (directory / rel).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise ArtifactInvalid(f"{rel} does not match its SHA-256 in the manifest")
    return dict(manifest)


class TrainingWorker:
    def __init__(self, settings: TrainingWorkerSettings) -> None:
        self.settings = settings
        self.db = Database(settings.dsn(), min_size=1, max_size=3)
        self.jobs = JobDb(self.db, settings.worker_id)
        self.topology = TrainingTopology(prefix=settings.amqp_prefix, delivery_limit=settings.delivery_limit)
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractRobustChannel | None = None
        self.queues: dict[str, AbstractQueue] = {}
        self.current: Claim | None = None
        self.run: TrainingRun | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.db.open()
        self.connection = await aio_pika.connect_robust(self.settings.amqp_connection_url)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=1)
        self.queues = await self.topology.open(self.channel, declare=self.settings.amqp_declare_topology)
        self._tasks = [asyncio.create_task(self._consume(), name="training-consume"),
                       asyncio.create_task(self._reaper(), name="training-reaper")]
        log.info("training worker consuming", extra={"worker_id": self.settings.worker_id,
                                                     "queues": [self.topology.queue(p) for p in PRIORITIES],
                                                     "nice": self.settings.training_nice})

    async def stop(self) -> None:
        """Stops taking jobs; a running training is killed (its job is retried after the heartbeat time-out)."""
        self._stopping.set()
        if self.run is not None:
            await self.run.kill()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.connection is not None:
            await self.connection.close()
        await self.db.close()

    async def check_ready(self) -> None:
        await self.db.ping()
        if self.connection is None or self.connection.is_closed:
            raise RuntimeError("not connected to RabbitMQ")

    # -- consuming ----------------------------------------------------------------------------
    async def _next_message(self) -> AbstractIncomingMessage | None:
        for priority in PRIORITIES:   # urgent first, always
            message = await self.queues[priority].get(no_ack=False, fail=False)
            if message is not None:
                return message
        return None

    async def _consume(self) -> None:
        while not self._stopping.is_set():
            try:
                message = await self._next_message()
            except Exception:
                log.warning("could not read the training queues", exc_info=True)
                await asyncio.sleep(self.settings.poll_interval_s)
                continue
            if message is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.poll_interval_s)
                continue
            await self._handle(message)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            job_id = str(uuid.UUID(json.loads(message.body)["job_id"]))
        except (ValueError, KeyError, TypeError):
            log.error("not a training job message; dead-lettered", extra={"message_id": message.message_id})
            await message.reject(requeue=False)
            return
        claim = await self.jobs.claim(job_id)
        if claim is None:   # finished, cancelled, or running elsewhere: a duplicate
            await message.ack()
            return
        self.current = claim
        log.info("training job claimed", extra={"job_id": job_id, "attempt": claim.attempt,
                                                "priority": claim.priority})
        try:
            await self._run(claim)
        except Exception as exc:
            log.exception("training job failed", extra={"job_id": job_id})
            await self.jobs.set_state(claim, "FAILED", reason=f"internal error: {exc.__class__.__name__}: {exc}",
                                      finished=True)
        finally:
            self.current = None
            self.run = None
        await message.ack()

    # -- one job -------------------------------------------------------------------------------
    async def _run(self, claim: Claim) -> None:
        s = self.settings
        work = s.work_path / claim.job_id / f"attempt-{claim.attempt}"
        try:
            by_task, described = await self.jobs.dataset_rows(claim)
        except ValueError as exc:
            await self.jobs.set_state(claim, "FAILED", reason=str(exc), finished=True)
            return
        await asyncio.to_thread(_write_data, work / "data", by_task)
        spec = {"name": claim.model_name, "seed": claim.seed,
                "hyperparameters": {"torch_threads": s.training_torch_threads, **claim.hyperparameters},
                "manifest": {"job_id": claim.job_id, "dataset_versions": described}}
        (work / "spec.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        rows = {task: len(r) for task, r in by_task.items()}
        unused = sum(int(d.get("negative_rows_unused", 0)) for d in described)
        await self.jobs.log(claim, [f"attempt {claim.attempt} on {s.worker_id}: rows per task {rows}, "
                                    f"nice {s.training_nice}, torch threads {s.training_torch_threads}"
                                    + (f"; {unused} negative rows (removed model tags) not used: the trainer "
                                       "learns one label per text" if unused else "")])
        if not await self.jobs.set_state(claim, "TRAINING", progress={"stage": "starting", "rows": rows}):
            return
        out = work / "artifact"
        run = self.run = TrainingRun(s.trainer_module, work / "data", out, work / "spec.json",
                                     nice=s.training_nice, threads=s.training_torch_threads)
        await run.start()
        deadline = time.monotonic() + claim.timeout_s
        while True:
            code = await run.wait(min(s.heartbeat_interval_s, max(0.1, deadline - time.monotonic())))
            await self.jobs.log(claim, run.take_logs())
            if code is not None:
                break
            cancel = await self.jobs.heartbeat(claim, run.snapshot())
            if cancel is None:
                log.warning("training job no longer ours; stopping its run", extra={"job_id": claim.job_id})
                await run.kill()
                return
            if cancel:
                await run.kill()
                await self.jobs.set_state(claim, "CANCELLED", reason="cancelled while training", finished=True,
                                          progress=run.snapshot())
                return
            if time.monotonic() >= deadline:
                await run.kill()
                await self.jobs.set_state(claim, "FAILED", finished=True, progress=run.snapshot(),
                                          reason=f"timed out after {claim.timeout_s} s "
                                                 f"(stage {run.progress.get('stage')})")
                return
        if code != 0:
            last = run.tail[-1] if run.tail else "no output"
            await self.jobs.set_state(claim, "FAILED", finished=True, progress=run.snapshot(),
                                      reason=f"the training run exited with code {code}: {last[:500]}")
            return
        try:
            manifest = await asyncio.to_thread(verify_artifact, out)
        except (OSError, ValueError, ArtifactInvalid) as exc:
            await self.jobs.set_state(claim, "FAILED", finished=True, reason=f"the artifact is not complete: {exc}")
            return
        target = s.incoming_path / claim.job_id
        await asyncio.to_thread(_hand_over, out, target)
        code_version = str((manifest.get("training_job") or {}).get("code_version") or "")
        await self.jobs.set_state(claim, "EVALUATING", artifact_dir=str(target), code_version=code_version or None,
                                  progress={**run.snapshot(), "stage": "registering"})
        await asyncio.to_thread(shutil.rmtree, work, True)
        log.info("training run finished; handed to model-serving", extra={"job_id": claim.job_id,
                                                                          "artifact": str(target)})

    # -- the reaper ------------------------------------------------------------------------------
    async def reap_once(self) -> None:
        assert self.channel is not None
        for reaped in await self.jobs.reap(self.settings.heartbeat_timeout_s):
            log.warning("training job's heartbeat stopped", extra={"job_id": reaped.job_id, "now": reaped.state,
                                                                   "attempts": reaped.attempts})
            if reaped.state == "FAILED":
                await dead_letter(self.channel, self.topology, reaped.job_id)
        for job_id, priority in await self.jobs.unpublished(self.settings.republish_after_s):
            await publish_job(self.channel, self.topology, job_id, priority)

    async def _reaper(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.reap_once()
            except Exception:
                log.warning("reaper round failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.reaper_interval_s)


def _write_data(directory: Path, by_task: dict[str, list[dict[str, Any]]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for task, rows in by_task.items():
        with (directory / f"{task}_train.jsonl").open("w", encoding="utf-8") as fh:
            for r in rows:
                record = {"text": r["text"], "label": r["label"], **({"title": r["title"]} if r["title"] else {})}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _hand_over(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
