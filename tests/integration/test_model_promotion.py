"""Promotion and rollback through the registry, with model-serving as a real process on the real
PostgreSQL: moving `production` switches what is served within the refresh interval, under
concurrent gRPC load, without one failed request and without a restart; a request may still
name a version; every prediction lands in the inference log with a hash, never the text."""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from services.common.access import CAPABILITY_KEY
from services.common.capability import CapabilitySigner
from services.common.pb import model_serving_pb2 as pb
from services.common.pb import model_serving_pb2_grpc as pb_grpc
from services.common.settings import CommonSettings
from services.model_serving.inference_log import input_sha256
from services.model_serving.registry import RegistrySettings
from tests.conftest import DB_HOST, DB_PORT
from tests.integration.test_model_serving import (
    Service,
    _start,
    _stop,
    _wait_for_health,
)
from tests.model_artifacts import make_tiny_bert, register_tiny_versions

pytestmark = pytest.mark.integration

HEADLINE = "코스피 2,600선 회복…외국인 순매수"


@pytest.fixture(scope="module")
def promo(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, test_db_name: str) -> Iterator[dict]:
    """Two tiny versions of one model registered in the session database, production -> 1, and
    model-serving started against that database, re-resolving `production` every 0.3 s."""
    tmp = tmp_path_factory.mktemp("promotion")
    name = f"promo-{uuid.uuid4().hex[:8]}"
    store = RegistrySettings().store_path   # the session's store (conftest), as for every version in its database
    sources = {v: make_tiny_bert(tmp / f"src{v}", name=name, version=f"build-{v}", seed=v) for v in (1, 2)}

    register_tiny_versions(test_db_name, store, name, sources, {"production": 1})
    svc = _start(tmp, key_dir, sources[1], {
        "DOCTAG_MODEL_REGISTRY": "true", "DOCTAG_DB_NAME": test_db_name, "DOCTAG_DB_HOST": DB_HOST,
        "DOCTAG_DB_PORT": str(DB_PORT), "DOCTAG_MODEL_STORE": str(store), "DOCTAG_MODEL_REFRESH_S": "0.3",
        "DOCTAG_INFERENCE_LOG_FLUSH_S": "0.2"})
    try:
        _wait_for_health(svc, health_pb2.HealthCheckResponse.SERVING)
        yield {"svc": svc, "name": name}
    finally:
        assert _stop(svc) == 0, svc.output()


def _served_version(stub: pb_grpc.ModelServingStub) -> str:
    return stub.Predict(pb.PredictRequest(text=HEADLINE), timeout=10).version


def _wait_for_version(stub: pb_grpc.ModelServingStub, version: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _served_version(stub) == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"production did not switch to version {version}")


def test_promotion_and_rollback_under_load_fail_no_request(promo: dict, make_token) -> None:  # type: ignore[no-untyped-def]
    svc: Service = promo["svc"]
    name = promo["name"]
    stub = pb_grpc.ModelServingStub(svc.channel)
    assert _served_version(stub) == "1"
    admin = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()), roles=('platform_admin',))}"}

    seen: Counter[str] = Counter()
    errors: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                request = pb.PredictRequest(text=HEADLINE, tenant_id=str(uuid.uuid4()))
                seen[stub.Predict(request, timeout=10).version] += 1
            except grpc.RpcError as exc:  # any failure is a dropped request
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        promote = httpx.put(f"{svc.http}/api/v1/models/{name}/aliases/production", json={"version": 2},
                            headers=admin, timeout=10)
        assert promote.status_code == 200, promote.text
        assert promote.json()["previous_version"] == 1
        _wait_for_version(stub, "2")
        time.sleep(0.5)
        rollback = httpx.put(f"{svc.http}/api/v1/models/{name}/aliases/production", json={"version": 1},
                             headers=admin, timeout=10)
        assert rollback.status_code == 200 and rollback.json()["previous_version"] == 2, rollback.text
        _wait_for_version(stub, "1")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:3]
    assert seen["1"] > 0 and seen["2"] > 0, seen
    # A request may still name a version explicitly, whatever production is.
    assert stub.Predict(pb.PredictRequest(text=HEADLINE, model=f"{name}:2"), timeout=10).version == "2"


def test_aliases_and_history_are_visible_to_the_admin_only(promo: dict, make_token) -> None:  # type: ignore[no-untyped-def]
    svc: Service = promo["svc"]
    user = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()))}"}
    denied = httpx.get(f"{svc.http}/api/v1/models", headers=user, timeout=10)
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("application/problem+json")
    admin = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()), roles=('platform_admin',))}"}
    versions = httpx.get(f"{svc.http}/api/v1/models/{promo['name']}/versions", headers=admin, timeout=10)
    assert versions.status_code == 200
    assert [v["version"] for v in versions.json()["versions"]] == [1, 2]


def test_every_prediction_is_logged_with_a_hash_not_the_text(promo: dict, test_db_name: str) -> None:
    """The tenant of the log row is the job capability's (signed by upload), never the request's."""
    stub = pb_grpc.ModelServingStub(promo["svc"].channel)
    tenant, spoofed = str(uuid.uuid4()), str(uuid.uuid4())
    capability = CapabilitySigner(CommonSettings().capability_private_key_path, 600).sign(
        str(uuid.uuid4()), tenant, "a" * 64)
    stub.Predict(pb.PredictRequest(text=HEADLINE, tenant_id=spoofed), timeout=10,
                 metadata=((CAPABILITY_KEY, capability),))
    unmarked = f"{HEADLINE} {spoofed}"
    stub.Predict(pb.PredictRequest(text=unmarked, tenant_id=spoofed), timeout=10)  # no capability: no tenant
    deadline = time.monotonic() + 10
    rows: list[tuple] = []
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user="postgres", dbname=test_db_name) as conn:
        while time.monotonic() < deadline and not rows:
            rows = conn.execute("SELECT * FROM models.inference_log WHERE tenant_id = %s", (tenant,)).fetchall()
            conn.commit()
            time.sleep(0.2)
        columns = [d.name for d in conn.execute("SELECT * FROM models.inference_log LIMIT 0").description]
    assert len(rows) == 1, "one row per predicted text"
    row = dict(zip(columns, rows[0], strict=True))
    assert row["model_name"] == promo["name"] and row["model_version"] == "1"
    assert row["tags"] and row["latency_ms"] > 0
    assert row["input_sha256"] == input_sha256(HEADLINE)
    assert HEADLINE not in repr(row), "the raw text is never stored"
    spoof_rows: list[tuple] = []
    deadline = time.monotonic() + 10
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user="postgres", dbname=test_db_name) as conn:
        while time.monotonic() < deadline and not spoof_rows:
            spoof_rows = conn.execute("SELECT tenant_id FROM models.inference_log WHERE input_sha256 = %s",
                                      (input_sha256(unmarked),)).fetchall()
            conn.commit()
            time.sleep(0.2)
    assert spoof_rows == [(None,)], "a request's tenant_id is not trusted"
