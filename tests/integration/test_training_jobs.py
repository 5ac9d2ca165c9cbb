"""Training jobs against the real PostgreSQL and RabbitMQ, with the real training worker and real (tiny)
training runs in child processes: limits (429), tenant isolation, cancellation, time-out, a killed
worker whose heartbeat stops (retried, then failed and dead-lettered), urgent before routine, and
one complete run registered, evaluated on a fixed evaluation set and made `candidate`.

The complete run trains for real on 84 headlines (12 per label) with one tuned layer, one epoch and
48-token windows: about a minute and a half on two cores (most of it loading the base model)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg
import pytest

from services.common.auth import TokenVerifier
from services.common.db import Database
from services.common.http import create_app
from services.common.training_queue import TrainingTopology, publish_job
from services.model_serving.datasets.api import build_dataset_router
from services.model_serving.datasets.store import DatasetStore
from services.model_serving.jobs.api import build_jobs_router
from services.model_serving.jobs.finisher import JobFinisher
from services.model_serving.jobs.publisher import JobPublisher
from services.model_serving.jobs.store import JobStore
from services.model_serving.models.base import InferenceOptions
from services.model_serving.registry import ModelRegistry, RegistrySettings
from services.model_serving.training_settings import TrainingApiSettings
from services.model_serving.training_setup import dataset_context
from services.training_worker.settings import TrainingWorkerSettings
from services.training_worker.worker import TrainingWorker
from tests.conftest import AMQP_URL, DATA, DB_HOST, DB_PORT, create_tenant

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TINY = {"epochs": 1, "tune_layers": 1, "max_windows": 1, "window_tokens": 48, "emb_scales": [3.0]}


def headlines(per_label: int, skip: int = 0) -> list[dict[str, str]]:
    seen: Counter[str] = Counter()
    rows = []
    with (DATA / "headlines_train.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            seen[record["label"]] += 1
            if skip < seen[record["label"]] <= skip + per_label:
                rows.append({"text": record["text"], "label": record["label"]})
    return rows


def jsonl(rows: list[dict[str, str]]) -> bytes:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()


class World:
    def __init__(self, tmp: Path, test_db_name: str, amqp_prefix: str, key_dir: Path, **training: Any) -> None:
        self.prefix = f"{amqp_prefix}-tr-{uuid.uuid4().hex[:6]}"
        self.topology = TrainingTopology(prefix=self.prefix)
        self.eval_dir = tmp / "eval-sets"
        self.eval_dir.mkdir()
        (self.eval_dir / "headlines.jsonl").write_bytes(jsonl(headlines(4, skip=40)))
        self.settings = TrainingApiSettings(eval_sets_dir=self.eval_dir, amqp_url=AMQP_URL, amqp_prefix=self.prefix,
                                            **training)
        self.db = Database(f"host={DB_HOST} port={DB_PORT} user=doctag_model dbname={test_db_name}", max_size=4)
        self.publisher = JobPublisher(AMQP_URL, self.topology, declare=True)
        self.store_path = RegistrySettings().store_path   # the session's model store
        app = create_app("model-serving-test", title="training test")
        verifier = TokenVerifier(key_dir / "jwt_public.pem", "doctag", "doctag-api")
        datasets, jobs = DatasetStore(self.db), JobStore(self.db)
        app.include_router(build_dataset_router(lambda: datasets, verifier, dataset_context(self.settings)))
        app.include_router(build_jobs_router(lambda: jobs, verifier, self.settings, self.publisher))
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model-serving")
        self.worker_settings = TrainingWorkerSettings(
            db_host=DB_HOST, db_port=DB_PORT, db_name=test_db_name, amqp_url=AMQP_URL, amqp_prefix=self.prefix,
            state_dir=tmp / "worker-state", model_store=self.store_path, poll_interval_s=0.2,
            heartbeat_interval_s=0.5, heartbeat_timeout_s=4, reaper_interval_s=0.5, republish_after_s=1,
            training_torch_threads=1)

    async def approved_version(self, token: str, rows: list[dict[str, str]]) -> str:
        made = await self.client.post("/api/v1/datasets", headers=bearer(token),
                                      files={"file": ("d.jsonl", jsonl(rows))},
                                      data={"name": "tiny", "task": "headlines"})
        assert made.status_code == 201, made.text
        body = made.json()
        ok = await self.client.post(f"/api/v1/datasets/{body['dataset']['id']}/versions/1/approve",
                                    headers=bearer(token))
        assert ok.status_code == 200, ok.text
        return str(body["version"]["id"])

    async def submit(self, token: str, version: str, **extra: Any) -> httpx.Response:
        body = {"dataset_versions": [version], "model": extra.pop("model", "tiny-" + uuid.uuid4().hex[:6]),
                "hyperparameters": TINY, **extra}
        return await self.client.post("/api/v1/training-jobs", headers=bearer(token), json=body)

    async def job(self, token: str, job_id: str) -> dict[str, Any]:
        got = await self.client.get(f"/api/v1/training-jobs/{job_id}", headers=bearer(token))
        assert got.status_code == 200, got.text
        return dict(got.json())

    async def wait(self, token: str, job_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(token, job_id)
            if job["state"] in states:
                return job
            assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
            await asyncio.sleep(0.3)

    async def close(self) -> None:
        channel_conn = await aio_pika.connect(AMQP_URL)
        async with channel_conn:
            await self.topology.delete(await channel_conn.channel())
        await self.publisher.close()
        await self.client.aclose()
        await self.db.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def world(tmp_path: Path, test_db_name: str, amqp_prefix: str, key_dir: Path,
                request: pytest.FixtureRequest) -> AsyncIterator[World]:
    marker = request.node.get_closest_marker("training")
    w = World(tmp_path, test_db_name, amqp_prefix, key_dir, **(marker.kwargs if marker else {}))
    await w.db.open()
    yield w
    await w.close()


@pytest.fixture
async def worker(world: World) -> AsyncIterator[TrainingWorker]:
    w = TrainingWorker(world.worker_settings)
    await w.start()
    yield w
    await w.stop()


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
        return fh.read().split()[2] != "Z"


@pytest.mark.training(training_max_active_per_user=1, training_max_active_per_tenant=2, training_retry_after_s=42)
async def test_limits_isolation_and_cancelling_a_pending_job(world: World, make_token, admin_dsn) -> None:
    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    kim = make_token(tenant, roles=("tenant_admin",), username="kim")
    lee = make_token(tenant, roles=("tenant_admin",), username="lee")
    park = make_token(tenant, roles=("tenant_admin",), username="park")
    version = await world.approved_version(kim, headlines(3))
    first = await world.submit(kim, version)
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["state"] == "PENDING" and job["seed"] == 13 and job["hyperparameters"] == TINY
    assert first.headers["location"] == f"/api/v1/training-jobs/{job['id']}"

    over_user = await world.submit(kim, version)
    assert over_user.status_code == 429 and over_user.headers["retry-after"] == "42"
    assert over_user.headers["content-type"].startswith("application/problem+json")
    assert (await world.submit(lee, version)).status_code == 202
    over_tenant = await world.submit(park, version)
    assert over_tenant.status_code == 429 and "department" in over_tenant.json()["detail"]

    other = make_token(create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}"), roles=("tenant_admin",))
    assert (await world.client.get(f"/api/v1/training-jobs/{job['id']}", headers=bearer(other))).status_code == 404
    assert (await world.client.post(f"/api/v1/training-jobs/{job['id']}/cancel",
                                    headers=bearer(other))).status_code == 404
    foreign = await world.submit(other, version)
    assert foreign.status_code == 404 and foreign.json()["errors"][0]["field"] == "dataset_versions"
    user = make_token(tenant, roles=("user",))
    assert (await world.client.get("/api/v1/training-jobs", headers=bearer(user))).status_code == 403

    pending = await world.client.post("/api/v1/training-jobs",
                                      headers=bearer(make_token(tenant, roles=("tenant_admin",))),
                                      json={"dataset_versions": [await unapproved(world, kim)]})
    assert pending.status_code in (409, 429)

    cancelled = await world.client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=bearer(kim))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    again = await world.client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=bearer(kim))
    assert again.status_code == 409
    assert (await world.submit(kim, version)).status_code == 202, "a cancelled job no longer counts"
    with psycopg.connect(admin_dsn) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM documents.audit_log WHERE tenant_id = %s AND "
                                              "action LIKE 'training.%%' ORDER BY id", (tenant,))]
    assert actions == ["training.submitted", "training.submitted", "training.cancelled", "training.submitted"]


async def unapproved(world: World, token: str) -> str:
    made = await world.client.post("/api/v1/datasets", headers=bearer(token),
                                   files={"file": ("d.jsonl", jsonl(headlines(3, skip=5)))},
                                   data={"name": "unreviewed", "task": "headlines"})
    return str(made.json()["version"]["id"])


async def test_an_unapproved_version_is_not_trainable(world: World, make_token, admin_dsn) -> None:
    token = make_token(create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}"), roles=("tenant_admin",))
    refused = await world.submit(token, await unapproved(world, token))
    assert refused.status_code == 409 and "pending" in refused.json()["detail"]


async def test_urgent_jobs_are_taken_before_routine_ones(world: World, make_token, admin_dsn) -> None:
    w = TrainingWorker(world.worker_settings)
    await w.db.open()
    w.connection = await aio_pika.connect_robust(AMQP_URL)
    w.channel = await w.connection.channel()
    try:
        w.queues = await world.topology.declare(w.channel)
        for job_id, priority in (("00000000-0000-0000-0000-00000000000a", "routine"),
                                 ("00000000-0000-0000-0000-00000000000b", "routine"),
                                 ("00000000-0000-0000-0000-00000000000c", "urgent")):
            await publish_job(w.channel, world.topology, job_id, priority)
        order = []
        for _ in range(3):
            message = await w._next_message()
            assert message is not None
            order.append(message.message_id)
            await message.ack()
        assert order[0].endswith("c") and order[1:] == [order[1], order[2]] and order[1].endswith("a")
    finally:
        await w.connection.close()
        await w.db.close()


async def test_cancel_while_training_and_a_time_out_kill_the_run(world: World, worker: TrainingWorker, make_token,
                                                                  admin_dsn) -> None:
    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    token = make_token(tenant, roles=("tenant_admin",))
    version = await world.approved_version(token, headlines(3))
    job = (await world.submit(token, version)).json()
    running = await world.wait(token, job["id"], {"TRAINING"}, timeout=60)
    while running["progress"].get("pid") is None:
        running = await world.job(token, job["id"])
    pid = running["progress"]["pid"]
    assert alive(pid) and running["heartbeat_at"] is not None and running["attempts"] == 1
    assert os.getpriority(os.PRIO_PROCESS, pid) >= 10, "the training run is niced below inference"
    cancelled = await world.client.post(f"/api/v1/training-jobs/{job['id']}/cancel", headers=bearer(token))
    assert cancelled.status_code == 200
    done = await world.wait(token, job["id"], {"CANCELLED"}, timeout=20)
    assert done["reason"] == "cancelled while training" and not alive(pid)

    timed = (await world.submit(token, version, timeout_s=3)).json()
    failed = await world.wait(token, timed["id"], {"FAILED", "READY"}, timeout=60)
    assert failed["state"] == "FAILED" and failed["reason"].startswith("timed out after 3 s"), failed
    assert not alive(failed["progress"].get("pid"))
    logs = (await world.client.get(f"/api/v1/training-jobs/{timed['id']}/logs", headers=bearer(token))).json()
    assert logs["lines"] and "attempt 1" in logs["lines"][0]["message"]


@pytest.mark.training(training_max_attempts=2)
async def test_a_killed_worker_is_retried_then_failed_and_dead_lettered(world: World, make_token, admin_dsn,
                                                                         tmp_path: Path) -> None:
    """Two worker processes are killed (SIGKILL) while training: the reaper of a third gives the job a
    second attempt after the first death, and fails and dead-letters it after the second."""
    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    token = make_token(tenant, roles=("tenant_admin",))
    version = await world.approved_version(token, headlines(3))
    job = (await world.submit(token, version)).json()
    s = world.worker_settings
    env = {**os.environ, "PYTHONPATH": str(REPO), "DOCTAG_DB_HOST": DB_HOST, "DOCTAG_DB_PORT": str(DB_PORT),
           "DOCTAG_DB_NAME": s.db_name, "DOCTAG_AMQP_URL": AMQP_URL, "DOCTAG_AMQP_PREFIX": world.prefix,
           "DOCTAG_STATE_DIR": str(tmp_path / "proc-state"), "DOCTAG_MODEL_STORE": str(world.store_path),
           "DOCTAG_HTTP_PORT": "0", "DOCTAG_POLL_INTERVAL_S": "0.2", "DOCTAG_HEARTBEAT_INTERVAL_S": "0.5",
           "DOCTAG_REAPER_INTERVAL_S": "3600", "DOCTAG_TRAINING_TORCH_THREADS": "1"}
    pids = []
    for attempt in (1, 2):
        proc = subprocess.Popen([sys.executable, "-m", "services.training_worker"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            running = await world.wait(token, job["id"], {"TRAINING"}, timeout=60)
            while running["attempts"] != attempt or running["progress"].get("pid") is None:
                await asyncio.sleep(0.2)
                running = await world.job(token, job["id"])
            pids.append(running["progress"]["pid"])
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # The reaper (a worker that only reaps here) takes the job back once the heartbeat is stale.
        reaper = TrainingWorker(world.worker_settings)
        await reaper.db.open()
        reaper.connection = await aio_pika.connect_robust(AMQP_URL)
        reaper.channel = await reaper.connection.channel()
        try:
            deadline = time.monotonic() + 30
            while (await world.job(token, job["id"]))["state"] == "TRAINING":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
                await reaper.reap_once()
        finally:
            await reaper.connection.close()
            await reaper.db.close()
        state = await world.job(token, job["id"])
        if attempt == 1:
            assert state["state"] == "PENDING" and "retried" in state["reason"], state
    assert state["state"] == "FAILED" and "on each of 2 attempts" in state["reason"], state
    assert not any(alive(p) for p in pids), "a run dies with its worker"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        dead = await (await connection.channel()).get_queue(world.topology.dead_letter_queue)
        message = await dead.get(fail=False, timeout=5)
        assert message is not None and message.message_id == job["id"]
        await message.ack()


@pytest.mark.training(training_max_active_per_user=5)
async def test_a_tiny_job_trains_for_real_and_its_version_is_registered_evaluated_and_made_candidate(
        world: World, worker: TrainingWorker, make_token, admin_dsn) -> None:
    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    token = make_token(tenant, roles=("tenant_admin",), username="choi")
    version = await world.approved_version(token, headlines(12))
    name = "tiny-" + uuid.uuid4().hex[:6]
    job = (await world.submit(token, version, model=name, seed=7)).json()
    handed = await world.wait(token, job["id"], {"EVALUATING", "FAILED"}, timeout=300)
    assert handed["state"] == "EVALUATING", handed
    assert handed["progress"]["step"] == handed["progress"]["steps"] >= 1 and "loss" in handed["progress"]
    assert handed["code_version"] and len(handed["code_version"]) == 16

    registry = ModelRegistry(world.db, world.store_path)
    finisher = JobFinisher(world.db, registry, world.settings, InferenceOptions())
    assert await finisher.finish_once() == job["id"]
    ready = await world.job(token, job["id"])
    assert ready["state"] == "READY" and ready["result_version"] == 1, ready
    evaluation = ready["evaluation"]
    assert evaluation["aliases"] == ["candidate"] and not evaluation["decision"]["promote"]
    assert set(evaluation["candidate"]["headlines"]["per_label"]) == {r["label"] for r in headlines(1)}
    versions = await registry.list_versions(name)
    assert versions[0]["aliases"] == ["candidate"]
    manifest_job = (await registry.resolve(name, "candidate")).directory / "manifest.json"
    training_job = json.loads(manifest_job.read_text(encoding="utf-8"))["training_job"]
    assert training_job["seed"] == 7 and training_job["job_id"] == job["id"]
    assert training_job["dataset_versions"][0]["id"] == version and training_job["hyperparameters"]["epochs"] == 1
    assert training_job["code_version"] == ready["code_version"]
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT confusion FROM models.version_evaluations WHERE model_name = %s",
                           (name,)).fetchone()
        finished = conn.execute("SELECT details FROM documents.audit_log WHERE tenant_id = %s AND action = "
                                "'training.finished'", (tenant,)).fetchone()
    assert row is not None and sum(map(sum, row[0]["matrix"])) == 28
    assert finished is not None and finished[0]["version"] == 1
