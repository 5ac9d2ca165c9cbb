"""Training datasets through model-serving's HTTP API against the real PostgreSQL (as `doctag_model`):
uploads gated and stored masked, content-addressed immutable versions, review by the right admin,
tenant isolation, soft delete, the audit log, and the feedback path from a person's tag on an
uploaded document (upload's real API) to a dataset row."""
from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest

from services.common.auth import TokenVerifier
from services.common.db import Database
from services.common.http import create_app
from services.common.pii import mask_pii
from services.model_serving.datasets.api import build_dataset_router
from services.model_serving.datasets.store import DatasetStore
from services.model_serving.training_settings import TrainingApiSettings
from services.model_serving.training_setup import dataset_context
from services.upload.settings import UploadSettings
from tests.conftest import DB_HOST, DB_PORT, create_tenant

from .test_upload import auth, record_tagged, running, upload

pytestmark = pytest.mark.integration

ROWS = [("한국은행 기준금리 동결 결정", "경제"), ("국회 본회의 예산안 통과", "정치"),
        ("지하철 파업으로 출근길 혼잡", "사회"), ("수출 증가세 이어져 무역흑자", "경제"),
        ("대통령 외교 순방 일정 발표", "정치"), ("폭우로 도로 통제 잇따라", "사회"),
        ("코스피 외국인 매수에 상승 마감", "경제"), ("여야 원내대표 회동 결렬", "정치"),
        ("초등학교 돌봄교실 확대 운영", "사회"), ("부동산 거래량 석 달째 감소", "경제"),
        ("민원인 연락처 010-2345-6789 남김", "사회"), ("총선 앞두고 공천 심사 착수", "정치")]


def jsonl(rows: list[tuple[str, str]]) -> bytes:
    return "\n".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) for t, lab in rows).encode()


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "eval-sets"
    directory.mkdir()
    (directory / "headlines.jsonl").write_bytes(jsonl([("평가용 문장 하나", "경제"), ("평가용 문장 둘", "정치"),
                                                       ("평가용 문장 셋", "사회")]))
    return directory


@pytest.fixture
async def db(test_db_name: str) -> AsyncIterator[Database]:
    database = Database(f"host={DB_HOST} port={DB_PORT} user=doctag_model dbname={test_db_name}", max_size=3)
    await database.open()
    yield database
    await database.close()


@pytest.fixture
def api(db: Database, key_dir: Path, eval_dir: Path):  # type: ignore[no-untyped-def]
    settings = TrainingApiSettings(eval_sets_dir=eval_dir, dataset_min_rows=5)
    app = create_app("model-serving-test", title="datasets test")
    verifier = TokenVerifier(key_dir / "jwt_public.pem", "doctag", "doctag-api")
    store = DatasetStore(db)
    app.include_router(build_dataset_router(lambda: store, verifier, dataset_context(settings)))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model-serving")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_file(client: httpx.AsyncClient, token: str, data: bytes, *, name: str = "헤드라인",
                    filename: str = "rows.jsonl", url: str = "/api/v1/datasets", **fields: str) -> httpx.Response:
    return await client.post(url, headers=bearer(token), files={"file": (filename, data)},
                             data={"name": name, "task": "headlines", **fields})


async def test_an_upload_is_gated_masked_versioned_reviewed_and_soft_deleted(api, db, make_token,
                                                                            admin_dsn) -> None:
    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    admin = make_token(tenant, roles=("tenant_admin",), username="lee")
    rows = [*ROWS, ROWS[0], ("평가용 문장 하나", "경제"), ("", "경제"), ("새 소식", "스포츠")]
    async with api as client:
        created = await post_file(client, admin, jsonl(rows))
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["dataset"]["shared"] is False and body["version"]["version"] == 1
        assert body["version"]["status"] == "pending" and body["version"]["rows"] == 12
        dropped = {k: v["rows"] for k, v in body["report"]["dropped"].items()}
        assert dropped == {"exact_duplicate": [13], "in_evaluation_set": [14], "empty_text": [15],
                           "unknown_label": [16]}
        assert body["report"]["pii_masked"] == {"mobile": 1}
        assert body["report"]["evaluation_set"]["rows"] == 3
        dataset_id = body["dataset"]["id"]

        with psycopg.connect(admin_dsn) as conn:
            texts = [r[0] for r in conn.execute("SELECT r.text FROM models.dataset_rows r JOIN "
                                                "models.dataset_versions v ON v.id = r.version_id "
                                                "WHERE v.dataset_id = %s", (dataset_id,))]
            assert "민원인 연락처 010-****-6789 남김" in texts and not any("2345" in t for t in texts)
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute("UPDATE models.dataset_rows SET label = 'x' WHERE version_id = %s",
                             (body["version"]["id"],))

        # The same content again is the same version; new content is the next one.
        again = await post_file(client, admin, jsonl(rows), url=f"/api/v1/datasets/{dataset_id}/versions")
        assert again.status_code == 200 and again.json()["version"]["version"] == 1
        second = await post_file(client, admin, jsonl(ROWS[:-1]), url=f"/api/v1/datasets/{dataset_id}/versions")
        assert second.status_code == 201 and second.json()["version"]["version"] == 2

        listed = (await client.get("/api/v1/datasets", headers=bearer(admin))).json()["datasets"]
        mine = next(d for d in listed if d["id"] == dataset_id)
        assert mine["latest"]["version"] == 2 and mine["latest"]["stats"]["labels"] == {"경제": 4, "사회": 4, "정치": 3}

        user = make_token(tenant, roles=("user",))
        assert (await client.get("/api/v1/datasets", headers=bearer(user))).status_code == 403
        approved = await client.post(f"/api/v1/datasets/{dataset_id}/versions/1/approve", headers=bearer(admin),
                                     json={"note": "확인함"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved", approved.text
        twice = await client.post(f"/api/v1/datasets/{dataset_id}/versions/1/reject", headers=bearer(admin))
        assert twice.status_code == 409 and twice.json()["errors"][0]["field"] == "version"
        with psycopg.connect(admin_dsn) as conn, pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("UPDATE models.dataset_versions SET status = 'pending' WHERE dataset_id = %s "
                         "AND version = 1", (dataset_id,))

        other = make_token(create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}"), roles=("tenant_admin",))
        assert (await client.get(f"/api/v1/datasets/{dataset_id}", headers=bearer(other))).status_code == 404
        assert (await client.post(f"/api/v1/datasets/{dataset_id}/versions/2/approve",
                                  headers=bearer(other))).status_code == 404
        assert dataset_id not in [d["id"] for d in
                                  (await client.get("/api/v1/datasets", headers=bearer(other))).json()["datasets"]]

        deleted = await client.delete(f"/api/v1/datasets/{dataset_id}", headers=bearer(admin))
        assert deleted.status_code == 200
        assert (await client.get(f"/api/v1/datasets/{dataset_id}", headers=bearer(admin))).status_code == 404

    with psycopg.connect(admin_dsn) as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM documents.audit_log WHERE tenant_id = %s AND details->>'dataset_id' = %s "
            "ORDER BY id", (tenant, dataset_id))]
    assert actions == ["dataset.created", "dataset.created", "dataset.approved", "dataset.deleted"]

    # Past the 90 days of retention the purge removes the dataset with its versions and rows.
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE models.datasets SET deleted_at = now() - interval '91 days' WHERE id = %s",
                     (dataset_id,))
    assert await DatasetStore(db).purge_expired() >= 1
    with psycopg.connect(admin_dsn) as conn:
        left = conn.execute("SELECT count(*) FROM models.dataset_rows r JOIN models.dataset_versions v ON "
                            "v.id = r.version_id WHERE v.dataset_id = %s", (dataset_id,)).fetchone()
        assert left == (0,) and conn.execute("SELECT 1 FROM models.datasets WHERE id = %s",
                                             (dataset_id,)).fetchone() is None


async def test_schema_errors_name_row_and_field_and_a_gate_block_cannot_be_approved(api, make_token,
                                                                                    admin_dsn) -> None:
    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    admin = make_token(tenant, roles=("tenant_admin",))
    async with api as client:
        bad = await post_file(client, admin, jsonl(ROWS[:2]) + '\n{"text": "라벨 없음"}\n'.encode())
        assert bad.status_code == 400
        problem = bad.json()
        assert problem["errors"][0]["field"] == "rows[3].label" and problem["row"] == 3
        assert bad.headers["content-type"].startswith("application/problem+json")
        csv_bad = await post_file(client, admin, b"body,label\nx,y\n", filename="rows.csv")
        assert csv_bad.status_code == 400 and csv_bad.json()["errors"][0]["field"] == "rows[1].text"
        assert (await post_file(client, admin, b"x", filename="rows.txt")).status_code == 415
        shared = await post_file(client, admin, jsonl(ROWS), shared="true")
        assert shared.status_code == 403 and shared.json()["errors"][0]["field"] == "shared"

        tiny = await post_file(client, admin, jsonl(ROWS[:3]))
        assert tiny.status_code == 201 and tiny.json()["version"]["status"] == "blocked"
        refused = await client.post(f"/api/v1/datasets/{tiny.json()['dataset']['id']}/versions/1/approve",
                                    headers=bearer(admin))
        assert refused.status_code == 409 and "blocked" in refused.json()["detail"]


async def test_shared_datasets_are_made_and_approved_by_platform_admins_only(api, make_token, admin_dsn) -> None:
    home = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    platform = make_token(home, roles=("platform_admin",))
    tenant_admin = make_token(create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}"), roles=("tenant_admin",))
    async with api as client:
        created = await post_file(client, platform, jsonl(ROWS), name="공용")
        assert created.status_code == 201 and created.json()["dataset"]["shared"] is True
        dataset_id = created.json()["dataset"]["id"]
        seen = await client.get(f"/api/v1/datasets/{dataset_id}", headers=bearer(tenant_admin))
        assert seen.status_code == 200, "a shared dataset is visible to every department's admins"
        denied = await client.post(f"/api/v1/datasets/{dataset_id}/versions/1/approve", headers=bearer(tenant_admin))
        assert denied.status_code == 403
        ok = await client.post(f"/api/v1/datasets/{dataset_id}/versions/1/approve", headers=bearer(platform))
        assert ok.status_code == 200 and ok.json()["status"] == "approved"


async def test_a_persons_tag_on_an_uploaded_document_becomes_a_dataset_row(
        api, upload_settings: UploadSettings, make_token, admin_dsn) -> None:
    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    user = make_token(tenant, username="kim")
    admin = make_token(tenant, roles=("tenant_admin",), username="park")
    async with running(upload_settings.model_copy(update={"purge_enabled": False})) as (client, stub, _):
        docs = []
        for i in range(6):
            text = f"{ROWS[i][0]}에 관한 보고서입니다. {ROWS[i + 6][0]} 건도 함께 검토했다. 담당자 010-3456-78{i:02d}."
            doc = (await upload(client, make_token(tenant), f"문서{i}.txt", text.encode())).json()
            await record_tagged(stub, tenant, doc, text)
            tag = "경제" if i % 2 else "정치"
            added = await client.post(f"/api/v1/documents/{doc['id']}/tags", headers=auth(user), json={"tag": tag})
            assert added.status_code == 201, added.text
            docs.append(doc)
        # Another department's corrections never reach this one's dataset.
        other = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
        foreign = (await upload(client, make_token(other), "외부.txt", b"other department text")).json()
        await record_tagged(stub, other, foreign, "other department text")
        await client.post(f"/api/v1/documents/{foreign['id']}/tags", headers=auth(make_token(other)),
                          json={"tag": "외부"})
    async with api as model_client:
        made = await model_client.post("/api/v1/datasets", headers=bearer(admin),
                                       json={"name": "사용자 교정", "task": "corrections", "source": "user"})
        assert made.status_code == 201, made.text
        version = made.json()["version"]
        assert version["source"] == "user" and version["rows"] == 6
        assert version["stats"]["labels"] == {"경제": 3, "정치": 3}
        assert made.json()["report"]["pii_masked"] == {"mobile": 7}  # six contacts and ROWS[10]
        empty = await model_client.post("/api/v1/datasets", headers=bearer(make_token(
            create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}"), roles=("tenant_admin",))),
            json={"name": "없음", "task": "corrections", "source": "user"})
        assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "source"
    with psycopg.connect(admin_dsn) as conn:
        labels = sorted(r[0] for r in conn.execute("SELECT label FROM models.dataset_rows WHERE version_id = %s",
                                                   (version["id"],)))
        texts = [r[0] for r in conn.execute("SELECT text FROM models.dataset_rows WHERE version_id = %s",
                                            (version["id"],))]
    assert labels == ["경제"] * 3 + ["정치"] * 3
    assert all("010-****-78" in t and "3456" not in t for t in texts)


async def test_a_model_tag_a_person_removed_becomes_a_negative_row_the_trainer_is_not_given(
        api, upload_settings: UploadSettings, make_token, admin_dsn, test_db_name: str) -> None:
    """DELETE .../tags/경제?source=model through upload's API → a `negative` row (text is NOT 경제) in the
    department's `source: user` version; it drops a person's positive row that says the opposite for
    the same text; another department's removals never appear; the training worker reads positives only."""
    from services.training_worker.jobs import Claim, JobDb

    tenant = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
    user = make_token(tenant, username="kim")
    admin = make_token(tenant, roles=("tenant_admin",), username="park")
    async with running(upload_settings.model_copy(update={"purge_enabled": False})) as (client, stub, _):
        texts = []
        for i in range(8):
            text = f"{ROWS[i][0]}에 관한 보고서 {i}호. {ROWS[i + 4][0]} 건도 함께 검토했다."
            doc = (await upload(client, make_token(tenant), f"문서{i}.txt", text.encode())).json()
            await record_tagged(stub, tenant, doc, text)   # the model tagged it 경제
            texts.append(text)
            if i < 6:   # a person's own tag: 정치 or 사회
                added = await client.post(f"/api/v1/documents/{doc['id']}/tags", headers=auth(user),
                                          json={"tag": "정치" if i % 2 else "사회"})
                assert added.status_code == 201, added.text
            if i in (0, 1, 6):   # and the model's 경제 removed
                removed = await client.delete(f"/api/v1/documents/{doc['id']}/tags/경제",
                                              params={"source": "model"}, headers=auth(user))
                assert removed.status_code == 200, removed.text
            if i == 7:   # a person says 경제 after another removed the model's 경제 from a copy of the text
                copy = (await upload(client, make_token(tenant), f"문서{i}.txt", text.encode(),
                                     duplicate="allow")).json()
                await record_tagged(stub, tenant, copy, text)
                assert (await client.delete(f"/api/v1/documents/{copy['id']}/tags/경제", params={"source": "model"},
                                            headers=auth(user))).status_code == 200
                assert (await client.post(f"/api/v1/documents/{doc['id']}/tags", headers=auth(user),
                                          json={"tag": "경제"})).status_code == 201
        other = create_tenant(admin_dsn, f"t-{uuid.uuid4().hex[:8]}")
        foreign = (await upload(client, make_token(other), "외부.txt", b"other department text")).json()
        await record_tagged(stub, other, foreign, "other department text")
        assert (await client.delete(f"/api/v1/documents/{foreign['id']}/tags/경제", params={"source": "model"},
                                    headers=auth(make_token(other)))).status_code == 200
    async with api as model_client:
        made = await model_client.post("/api/v1/datasets", headers=bearer(admin),
                                       json={"name": "교정과 삭제", "task": "corrections", "source": "user"})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["version"]["source"] == "user"
        assert body["version"]["stats"]["labels"] == {"사회": 3, "정치": 3}   # 경제 of text 7 is contradicted
        assert body["version"]["stats"]["negatives"] == {"경제": 4}          # texts 0, 1, 6 and 7's copy
        assert list(body["report"]["dropped"]) == ["contradicted_by_negative"]
        assert body["report"]["dropped"]["contradicted_by_negative"]["count"] == 1
        dataset_id, version_id = body["dataset"]["id"], body["version"]["id"]
        assert (await model_client.post(f"/api/v1/datasets/{dataset_id}/versions/1/approve",
                                        headers=bearer(admin))).status_code == 200
    with psycopg.connect(admin_dsn) as conn:
        stored = conn.execute("SELECT text, label, negative FROM models.dataset_rows WHERE version_id = %s "
                              "ORDER BY row_no", (version_id,)).fetchall()
    masked = [mask_pii(t) for t in texts]   # the gate masked the contact in text 6
    negatives = sorted(masked.index(t) for t, label, negative in stored if negative and label == "경제")
    assert negatives == [0, 1, 6, 7]
    assert not any("other department" in t for t, _, _ in stored)
    assert sum(1 for _, _, negative in stored if not negative) == 6

    worker_db = Database(f"host={DB_HOST} port={DB_PORT} user=doctag_training dbname={test_db_name}", max_size=1)
    await worker_db.open()
    try:
        claim = Claim(str(uuid.uuid4()), tenant, 1, 3, "doctag-tagger", [version_id], 13, {}, 60, "routine")
        by_task, described = await JobDb(worker_db, "w").dataset_rows(claim)
    finally:
        await worker_db.close()
    assert sorted(r["label"] for r in by_task["corrections"]) == ["사회"] * 3 + ["정치"] * 3
    assert described[0]["negative_rows_unused"] == 4
