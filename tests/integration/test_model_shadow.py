"""Shadow mode with model-serving as a real process on the real PostgreSQL and two tiny registered
versions (production 1, candidate 2): answers come from production while the candidate's comparisons
are recorded per tenant with the input's hash only; a full queue drops and counts; switched off,
nothing is recorded; only platform admins see or switch it, and switching is audited."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from tests.conftest import DB_HOST, DB_PORT, create_tenant
from tests.integration.test_model_serving import Service, _start, _stop, _wait_for_health
from tests.model_artifacts import make_tiny_bert, register_tiny_versions

pytestmark = pytest.mark.integration

TEXTS = ["코스피 외국인 매수에 상승 마감", "국회 본회의 예산안 통과", "프로야구 개막전 매진", "수출 증가세 이어져",
         "여야 원내대표 회동 결렬", "축구 대표팀 평가전 승리", "한국은행 기준금리 동결", "총선 앞두고 공천 심사",
         "농구 리그 플레이오프 진출", "부동산 거래량 석 달째 감소", "대통령 외교 순방 일정", "마라톤 대회 신기록"]
QUEUE = 4


@pytest.fixture(scope="module")
def shadow(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, test_db_name: str) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("shadow")
    name = f"shadow-{uuid.uuid4().hex[:8]}"
    store = RegistrySettings().store_path
    sources = {v: make_tiny_bert(tmp / f"src{v}", name=name, version=f"build-{v}", seed=10 + v) for v in (1, 2)}

    register_tiny_versions(test_db_name, store, name, sources, {"production": 1, "candidate": 2})
    svc = _start(tmp, key_dir, sources[1], {
        "DOCTAG_MODEL_REGISTRY": "true", "DOCTAG_DB_NAME": test_db_name, "DOCTAG_DB_HOST": DB_HOST,
        "DOCTAG_DB_PORT": str(DB_PORT), "DOCTAG_MODEL_STORE": str(store), "DOCTAG_MODEL_REFRESH_S": "0.3",
        "DOCTAG_SHADOW_SHARE": "1.0", "DOCTAG_SHADOW_QUEUE": str(QUEUE), "DOCTAG_SHADOW_REFRESH_S": "0.3",
        "DOCTAG_SHADOW_FLUSH_S": "0.2"})
    try:
        _wait_for_health(svc, health_pb2.HealthCheckResponse.SERVING)
        yield {"svc": svc, "name": name}
    finally:
        assert _stop(svc) == 0, svc.output()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _report(svc: Service, name: str, admin: str, **params: str) -> dict[str, Any]:
    got = httpx.get(f"{svc.http}/api/v1/models/{name}/shadow", headers=_bearer(admin), params=params, timeout=10)
    assert got.status_code == 200, got.text
    return dict(got.json())


def _wait_for(svc: Service, name: str, admin: str, seen: int, **params: str) -> dict[str, Any]:
    """The report once `seen` texts were scored or dropped (written in batches every 0.2 s)."""
    deadline = time.monotonic() + 30
    while True:
        report = _report(svc, name, admin, **params)
        if report["samples"] + report["dropped"] >= seen or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def _switch(svc: Service, name: str, token: str, enabled: bool) -> httpx.Response:
    return httpx.put(f"{svc.http}/api/v1/models/{name}/shadow", json={"enabled": enabled}, headers=_bearer(token),
                     timeout=10)


def _predict(svc: Service, token: str, text: str) -> dict[str, Any]:
    answer = httpx.post(f"{svc.http}/api/v1/predict", json={"text": text}, headers=_bearer(token), timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_with_shadow_on_answers_come_from_production_and_comparisons_are_recorded_per_tenant(
        shadow: dict[str, Any], make_token, admin_dsn: str, test_db_name: str) -> None:  # type: ignore[no-untyped-def]
    svc: Service = shadow["svc"]
    name = shadow["name"]
    admin_tenant = create_tenant(admin_dsn, f"s-{uuid.uuid4().hex[:8]}")
    admin = make_token(admin_tenant, roles=("platform_admin",), username="root")
    user = make_token(admin_tenant)
    assert _switch(svc, name, user, True).status_code == 403
    assert httpx.get(f"{svc.http}/api/v1/models/{name}/shadow", headers=_bearer(user), timeout=10).status_code == 403
    assert _report(svc, name, admin)["enabled"] is False
    switched = _switch(svc, name, admin, True)
    assert switched.status_code == 200, switched.text
    assert switched.json()["enabled"] is True and switched.json()["candidate_version"] == 2
    assert switched.json()["share"] == 1.0

    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    stub = pb_grpc.ModelServingStub(svc.channel)
    production = {t: stub.Predict(pb.PredictRequest(text=t, model=f"{name}:1"), timeout=60) for t in TEXTS}
    candidate = {t: stub.Predict(pb.PredictRequest(text=t, model=f"{name}:2"), timeout=60) for t in TEXTS}
    # Those named versions explicitly: never shadowed. Now the live path, two tenants.
    for i, text in enumerate(TEXTS):
        answer = _predict(svc, make_token(tenant_a if i < 8 else tenant_b), text)
        assert answer["version"] == "1", "answers always come from production"
        assert [t["tag"] for t in answer["predictions"][0]["tags"]] == \
            [t.tag for t in production[text].prediction.tags]
        time.sleep(0.05)   # the tiny candidate keeps up: this test is about what is recorded
    # gRPC Predict as the tagging worker calls it: the tenant is the job capability's.
    tenant_c = str(uuid.uuid4())
    capability = CapabilitySigner(CommonSettings().capability_private_key_path, 600).sign(
        str(uuid.uuid4()), tenant_c, "a" * 64)
    live = stub.Predict(pb.PredictRequest(text=TEXTS[0]), timeout=60, metadata=((CAPABILITY_KEY, capability),))
    assert live.version == "1"
    report_c = _wait_for(svc, name, admin, 1, tenant_id=tenant_c)
    assert report_c["samples"] + report_c["dropped"] == 1
    report_a = _wait_for(svc, name, admin, 8, tenant_id=tenant_a)
    report_b = _wait_for(svc, name, admin, 4, tenant_id=tenant_b)
    assert report_a["samples"] + report_a["dropped"] == 8 and report_b["samples"] + report_b["dropped"] == 4
    assert report_a["samples"] + report_b["samples"] >= 8, (report_a, report_b)
    report = _report(svc, name, admin)
    assert report["production_version"] == 1 and report["candidate_version"] == 2
    assert report["production_versions"] == ["1"] and report["since"] is not None
    assert report["candidate_latency_ms"]["p50"] > 0
    tenants = {t["tenant_id"]: t for t in report["tenants"]}
    assert tenants[tenant_a]["samples"] == report_a["samples"] and tenants[tenant_b]["dropped"] == report_b["dropped"]

    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("SELECT tenant_id::text, input_sha256, production_label, candidate_label, agree "
                            "FROM models.shadow_comparisons WHERE model_name = %s AND tenant_id IN (%s, %s)",
                            (name, tenant_a, tenant_b)).fetchall()
        columns = [d.name for d in conn.execute("SELECT * FROM models.shadow_comparisons LIMIT 0").description]
    by_hash = {input_sha256(t): t for t in TEXTS}
    assert len(rows) == report_a["samples"] + report_b["samples"]
    for tenant, digest, production_label, candidate_label, agree in rows:
        text = by_hash[digest]   # the hash identifies the input; the text itself is not stored
        assert tenant == (tenant_a if TEXTS.index(text) < 8 else tenant_b)
        assert production_label == production[text].prediction.tags[0].tag
        assert candidate_label == candidate[text].prediction.tags[0].tag
        assert agree == (production_label == candidate_label)
    assert not {"text", "input", "text_content"} & set(columns)
    for one, tenant in ((report_a, tenant_a), (report_b, tenant_b)):
        agree = sum(1 for r in rows if r[4] and r[0] == tenant)
        assert one["agree"] == agree and one["agreement"] == (round(agree / one["samples"], 4) if one["samples"]
                                                              else None)
        assert sum(v["production"] for v in one["per_label"].values()) == one["samples"]
        assert sum(v["agree"] for v in one["per_label"].values()) == agree

    with psycopg.connect(admin_dsn) as conn:
        audited = conn.execute("SELECT actor_name, details FROM documents.audit_log WHERE tenant_id = %s "
                               "AND action = 'model.shadow_changed'", (admin_tenant,)).fetchall()
    assert audited == [("root", {"model": name, "enabled": True, "share": None})]
    assert _switch(svc, name, admin, False).status_code == 200


def test_a_full_queue_drops_and_counts_while_every_answer_comes_from_production(
        shadow: dict[str, Any], make_token, admin_dsn: str) -> None:  # type: ignore[no-untyped-def]
    svc: Service = shadow["svc"]
    name = shadow["name"]
    admin = make_token(create_tenant(admin_dsn, f"s-{uuid.uuid4().hex[:8]}"), roles=("platform_admin",))
    assert _switch(svc, name, admin, True).status_code == 200
    tenant = str(uuid.uuid4())
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}번째" for i in range(64)]
    batch = httpx.post(f"{svc.http}/api/v1/predict", json={"texts": texts}, timeout=30,
                       headers=_bearer(make_token(tenant)))
    assert batch.status_code == 200 and batch.json()["version"] == "1"
    assert len(batch.json()["predictions"]) == 64
    report = _wait_for(svc, name, admin, 64, tenant_id=tenant)
    assert report["samples"] + report["dropped"] == 64
    # 64 texts offered at once to a queue of 4 and one thread: most are dropped, and counted.
    assert report["dropped"] >= 64 - 2 * QUEUE - 8, report
    assert _switch(svc, name, admin, False).status_code == 200


def test_with_shadow_off_nothing_is_recorded(shadow: dict[str, Any], make_token, admin_dsn: str) -> None:  # type: ignore[no-untyped-def]
    svc: Service = shadow["svc"]
    name = shadow["name"]
    admin = make_token(create_tenant(admin_dsn, f"s-{uuid.uuid4().hex[:8]}"), roles=("platform_admin",))
    off = _switch(svc, name, admin, False)
    assert off.status_code == 200 and off.json()["enabled"] is False
    tenant = str(uuid.uuid4())
    for text in TEXTS[:5]:
        assert _predict(svc, make_token(tenant), text)["version"] == "1"
    time.sleep(1.0)   # five flush intervals
    report = _report(svc, name, admin, tenant_id=tenant)
    assert report["enabled"] is False and report["samples"] == 0 and report["dropped"] == 0
    assert report["tenants"] == []
    missing = httpx.get(f"{svc.http}/api/v1/models/no-such-model/shadow", headers=_bearer(admin), timeout=10)
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "name"
    bad = httpx.get(f"{svc.http}/api/v1/models/{name}/shadow", headers=_bearer(admin), params={"tenant_id": "x"},
                    timeout=10)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "tenant_id"
