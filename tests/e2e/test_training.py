"""Training as a service through the gateway on the whole stack (`make up`'s processes, the training
worker among them): a tenant admin uploads a labelled file, approves the gated version, starts a tiny
training job, and the job ends READY with its version registered as `candidate`; a plain user is
refused by the gateway's acl."""
from __future__ import annotations

import json
import time
from collections import Counter

import httpx
import pytest

from services.cli import admin
from tests.conftest import DATA

from .test_platform import login


@pytest.fixture(scope="module")
def client(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as c:
        yield c


def _headlines(per_label: int) -> bytes:
    seen: Counter[str] = Counter()
    lines = []
    with (DATA / "headlines_train.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if seen[record["label"]] < per_label:
                seen[record["label"]] += 1
                lines.append(json.dumps({"text": record["text"], "label": record["label"]}, ensure_ascii=False))
    return "\n".join(lines).encode()


def test_a_tenant_admin_trains_a_tiny_model_through_the_gateway(client: httpx.Client, accounts, admin_dsn) -> None:  # type: ignore[no-untyped-def]
    slug = accounts["a"][0]
    admin.create_user(admin_dsn, slug, "trainer", "a long trainer password", "tenant_admin")
    trainer, user = login(client, (slug, "trainer", "a long trainer password")), login(client, accounts["a"])
    assert client.get("/api/v1/datasets", headers=user).status_code == 403
    made = client.post("/api/v1/datasets", headers=trainer, files={"file": ("헤드라인.jsonl", _headlines(12))},
                       data={"name": "e2e 헤드라인", "task": "headlines"})
    assert made.status_code == 201, made.text
    dataset = made.json()["dataset"]["id"]
    approved = client.post(f"/api/v1/datasets/{dataset}/versions/1/approve", headers=trainer, json={})
    assert approved.status_code == 200, approved.text
    job = client.post("/api/v1/training-jobs", headers=trainer, json={
        "dataset_versions": [made.json()["version"]["id"]], "model": "e2e-tiny", "hyperparameters": {
            "epochs": 1, "tune_layers": 1, "max_windows": 1, "window_tokens": 48, "emb_scales": [3.0]}})
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 420
    while True:
        state = client.get(f"/api/v1/training-jobs/{job.json()['id']}", headers=trainer).json()
        if state["state"] in ("READY", "FAILED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, state
        time.sleep(2)
    assert state["state"] == "READY", state
    assert state["result_version"] == 1 and state["evaluation"]["aliases"] == ["candidate"]
    logs = client.get(f"/api/v1/training-jobs/{job.json()['id']}/logs", headers=trainer).json()["lines"]
    assert logs and "nice 10" in logs[0]["message"]
