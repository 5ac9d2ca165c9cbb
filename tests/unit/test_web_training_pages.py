"""The training screens of the web UI (datasets, jobs, models) as rendered HTML against a gateway
replaced by an httpx MockTransport that records calls: who sees them, what each form sends to the
API, the gate report in Korean, refusals beside the field they name with the form kept, the jobs'
live numbers, and the labels the screens need (the real API is exercised in the browser test)."""
from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.model_serving.datasets.eval_sets import TASK_RE
from services.model_serving.datasets.gate import GateSettings, Record, run_gate, text_key
from services.model_serving.jobs.store import ACTIVE, TERMINAL
from services.model_serving.shadow import per_label
from services.model_serving.shadow_api import ShadowBody
from services.web import messages
from services.web.admin_datasets import TASK
from services.web.admin_training import job_view
from services.web.api import ApiError
from services.web.session import COOKIE, csrf_token
from tests.conftest import REPO

from .web_support import EVIL, TENANT, Web, make_web, run

DATASET, VERSION_ID, JOB = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
SCREENS = ("/admin/datasets", f"/admin/datasets/{DATASET}", "/admin/training-jobs", f"/admin/training-jobs/{JOB}")


@pytest.fixture
def web(tmp_path: Path) -> Web:
    return make_web(tmp_path)


def problem(status: int, field: str | None = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"type": "about:blank", "status": status, "detail": "refused", **extra}
    if field:
        body["errors"] = [{"field": field, "message": "refused"}]
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


def version(n: int, status: str, **extra: Any) -> dict[str, Any]:
    return {"id": VERSION_ID if n == 1 else str(uuid.uuid4()), "version": n, "source": "upload", "format": "jsonl",
            "rows": 40, "status": status, "created_at": "2026-11-30T01:00:00+00:00", "created_by_name": "chief",
            "stats": {"rows": 40, "labels": {"경제": 30, "정치": 10},
                      "length_chars": {"min": 5, "p50": 42.0, "p90": 80.0, "p99": 99.0, "max": 120, "mean": 44.1}},
            **extra}


REPORT = {"rows_in": 47, "rows_kept": 40,
          "dropped": {"empty_text": {"count": 2, "rows": [3, 9]}, "exact_duplicate": {"count": 5, "rows": [11, 12]}},
          "pii_masked": {"mobile": 3, "rrn": 1},
          "class_balance": {"largest_to_smallest": 3.0, "small_labels": []}, "label_set": None,
          "evaluation_set": {"task": "headlines", "sha256": "x", "rows": 300},
          "warnings": ["class imbalance: the largest class has 23.0× the rows of the smallest"], "blocking": [],
          "settings": {}}


def dataset_answers(gateway: Any, status: str = "pending", shared: bool = False) -> None:
    base = {"id": DATASET, "name": EVIL, "task": "headlines", "shared": shared, "created_by": "chief",
            "created_at": "2026-11-30T01:00:00+00:00"}
    gateway.answers[("GET", "/api/v1/datasets")] = httpx.Response(200, json={"datasets": [
        {**base, "latest": version(1, status)}]})
    gateway.answers[("GET", f"/api/v1/datasets/{DATASET}")] = httpx.Response(200, json={
        **base, "versions": [version(1, status)]})
    gateway.answers[("GET", f"/api/v1/datasets/{DATASET}/versions/1")] = httpx.Response(200, json={
        **version(1, status), "report": REPORT, "decided_by_name": None, "decided_at": None, "decision_note": None})


def job(state: str = "TRAINING", **extra: Any) -> dict[str, Any]:
    beat = (datetime.now(UTC) - timedelta(seconds=12)).isoformat()
    return {"id": JOB, "state": state, "reason": None, "priority": "urgent", "model": "doctag-tagger",
            "dataset_versions": [VERSION_ID], "seed": 13, "hyperparameters": {"epochs": 1}, "code_version": "abc",
            "timeout_s": 3600, "attempts": 1, "max_attempts": 3, "cancel_requested": False,
            "progress": {"stage": "fine-tuning", "step": 30, "steps": 120, "epoch": 1, "epochs": 2, "loss": 0.51234,
                         "elapsed_s": 75.0, "eta_s": 225.0},
            "heartbeat_at": beat, "result_version": None, "evaluation": None, "created_by_name": "chief",
            "created_at": "2026-11-30T01:00:00+00:00", "started_at": "2026-11-30T01:00:05+00:00",
            "finished_at": None, **extra}


def test_a_plain_user_gets_no_training_screen_and_no_link(web: Web) -> None:
    client, gateway, login = web

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["user"]))
            for path in (*SCREENS, "/admin/training-jobs/live", "/admin/models"):
                assert (await client.get(path)).status_code == 403, path
            assert gateway.calls == []  # refused before any API call
            gateway.answers[("GET", "/api/v1/search")] = httpx.Response(200, json={"items": [], "total": 0})
            page = await client.get("/search")
            assert page.status_code == 200
            assert "/admin/datasets" not in page.text and "/admin/training-jobs" not in page.text
            client.cookies.set(COOKIE, login(["tenant_admin"]))
            gateway.answers[("GET", "/api/v1/datasets")] = httpx.Response(200, json={"datasets": []})
            mine = await client.get("/admin/datasets")
            assert mine.status_code == 200
            assert 'href="/admin/datasets" aria-current="page">학습 데이터셋' in mine.text
            assert 'href="/admin/training-jobs">학습 작업' in mine.text
            assert "/admin/models" not in mine.text and 'name="shared"' not in mine.text  # shared: platform only
            client.cookies.set(COOKIE, login(["platform_admin"]))
            theirs = await client.get("/admin/datasets")
            assert 'href="/admin/models">모델' in theirs.text and 'name="shared" value="true" checked' in theirs.text
    run(go())


def test_datasets_list_sorts_on_the_server_and_escapes_names(web: Web) -> None:
    client, gateway, login = web
    other = str(uuid.uuid4())
    gateway.answers[("GET", "/api/v1/datasets")] = httpx.Response(200, json={"datasets": [
        {"id": DATASET, "name": "가 작은", "task": "headlines", "shared": False, "created_by": "chief",
         "created_at": "2026-11-30T02:00:00+00:00", "latest": version(1, "approved", rows=10)},
        {"id": other, "name": EVIL, "task": "petitions", "shared": True, "created_by": "root",
         "created_at": "2026-11-30T01:00:00+00:00", "latest": version(2, "pending", rows=900)}]})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["tenant_admin"]))
            newest = await client.get("/admin/datasets")
            assert newest.text.index(DATASET) < newest.text.index(other)
            assert EVIL not in newest.text and "&lt;script&gt;" in newest.text
            assert "검토 대기" in newest.text and "승인됨" in newest.text and "국민청원" in newest.text
            by_rows = await client.get("/admin/datasets?sort=rows")
            assert by_rows.text.index(other) < by_rows.text.index(DATASET)
            pending_first = await client.get("/admin/datasets?sort=status")
            assert pending_first.text.index(other) < pending_first.text.index(DATASET)
            assert (await client.get("/admin/datasets?sort=evil")).status_code == 200  # an unknown order: newest
    run(go())


def test_uploading_a_dataset_passes_the_file_on_and_shows_the_gate_report(web: Web) -> None:
    client, gateway, login = web
    token = login(["tenant_admin"])
    dataset_answers(gateway)
    gateway.answers[("POST", "/api/v1/datasets")] = httpx.Response(201, json={
        "dataset": {"id": DATASET}, "version": version(1, "pending"), "report": REPORT, "created": True})
    content = '{"text": "기준금리 동결", "label": "경제"}\n'.encode()

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            made = await client.post("/admin/datasets", data={"csrf": csrf_token(token), "name": "헤드라인",
                                                              "task": "headlines", "source": "file"},
                                     files={"file": ("헤드라인.jsonl", content, "application/jsonl")})
            assert made.status_code == 303
            assert made.headers["location"] == f"/admin/datasets/{DATASET}?version=1&msg=dataset-created"
            assert gateway.calls[-1] == ("POST", "/api/v1/datasets", "multipart")
            sent = gateway.raw[-1][1]
            assert content in sent and "헤드라인.jsonl".encode() in sent
            for name, value in (("name", "헤드라인"), ("task", "headlines"), ("shared", "false")):
                assert f'name="{name}"\r\n\r\n{value}'.encode() in sent
            page = await client.get(made.headers["location"])
            assert page.status_code == 200 and "데이터셋을 등록했습니다" in page.text
            text = page.text
            assert 'id="report-rows-in">47' in text and 'id="report-rows-kept">40' in text
            assert "본문이 비어 있음" in text and "3, 9" in text and "완전히 같은 중복" in text
            assert "휴대전화 3건" in text and "주민등록번호 1건" in text
            assert "클래스 불균형: 가장 많은 라벨의 행이 가장 적은 라벨의 23.0배입니다" in text
            assert 'name="decision" value="approve"' in text and EVIL not in text
    run(go())


def test_users_corrections_become_a_dataset_as_json(web: Web) -> None:
    client, gateway, login = web
    token = login(["tenant_admin"])
    gateway.answers[("POST", "/api/v1/datasets")] = httpx.Response(201, json={
        "dataset": {"id": DATASET}, "version": version(1, "pending"), "report": REPORT, "created": False})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            made = await client.post("/admin/datasets", data={"csrf": csrf_token(token), "name": "수정 태그",
                                                              "task": "headlines", "source": "user"})
            assert made.status_code == 303 and "msg=dataset-same" in made.headers["location"]
            assert gateway.calls[-1] == ("POST", "/api/v1/datasets",
                                         {"name": "수정 태그", "task": "headlines", "source": "user"})
    run(go())


def test_dataset_refusals_are_shown_beside_their_field_with_the_form_kept(web: Web) -> None:
    client, gateway, login = web
    token = login(["tenant_admin"])
    gateway.answers[("GET", "/api/v1/datasets")] = httpx.Response(200, json={"datasets": []})
    form = {"csrf": csrf_token(token), "name": "헤드라인 11월", "task": "headlines", "source": "file"}
    upload = {"file": ("a.jsonl", b'{"text": 1}\n', "application/jsonl")}

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            # The page's own checks: nothing reaches the API.
            bad = await client.post("/admin/datasets", data={**form, "name": "", "task": "Head Lines"}, files=upload)
            assert bad.status_code == 422 and gateway.calls[-1][0] == "GET"
            assert 'id="err-name"' in bad.text and 'id="err-task"' in bad.text
            assert 'value="Head Lines"' in bad.text
            # No file chosen.
            nofile = await client.post("/admin/datasets", data=form, files={"file": ("", b"", "application/jsonl")})
            assert nofile.status_code == 422 and "학습 데이터 파일(.jsonl 또는 .csv)을 고르세요" in nofile.text
            # The API's schema refusal names the row: shown beside the file field, in Korean.
            gateway.answers[("POST", "/api/v1/datasets")] = problem(
                400, "rows[3].label", type="urn:doctag:problem:invalid-dataset", row=3)
            refused = await client.post("/admin/datasets", data=form, files=upload)
            assert refused.status_code == 400
            assert 'id="err-file"' in refused.text
            assert "파일 3번째 줄의 라벨 값이 없거나 올바르지 않습니다" in refused.text
            assert 'aria-invalid="true" aria-describedby="err-file' in refused.text
            assert 'value="헤드라인 11월"' in refused.text and 'value="headlines"' in refused.text
            assert 'id="page-error"' not in refused.text
            # A file too large, a wrong type, a tenant admin asking for a shared dataset.
            gateway.answers[("POST", "/api/v1/datasets")] = problem(413, "file", max_bytes=64 * 1024 * 1024)
            assert "64.0 MB 이하만" in (await client.post("/admin/datasets", data=form, files=upload)).text
            gateway.answers[("POST", "/api/v1/datasets")] = problem(415, "file")
            assert ".jsonl 또는 .csv인 파일만" in (await client.post("/admin/datasets", data=form, files=upload)).text
            gateway.answers[("POST", "/api/v1/datasets")] = problem(403, "shared")
            shared = await client.post("/admin/datasets", data={**form, "shared": "true"}, files=upload)
            assert shared.status_code == 403 and 'id="page-error"' in shared.text  # no shared box for a tenant admin
            assert "공용 데이터셋은 플랫폼 관리자만 만들 수 있습니다" in shared.text
            # No corrected tags yet for a dataset from users' tags.
            gateway.answers[("POST", "/api/v1/datasets")] = problem(422, "source")
            empty = await client.post("/admin/datasets", data={**form, "source": "user"})
            assert 'id="err-source"' in empty.text
            assert "사람이 직접 붙이거나 고친 태그가 있는 문서가 없습니다" in empty.text
            assert 'value="user" checked' in empty.text
            # Without the CSRF token nothing is sent.
            before = len(gateway.calls)
            assert (await client.post("/admin/datasets", data={**form, "csrf": ""}, files=upload)).status_code == 403
            assert len(gateway.calls) == before
    run(go())


def test_review_approve_reject_with_a_reason_and_delete(web: Web) -> None:
    client, gateway, login = web
    token = login(["tenant_admin"])
    dataset_answers(gateway)
    csrf = csrf_token(token)
    review = f"/admin/datasets/{DATASET}/versions/1/review"

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            approved = await client.post(review, data={"csrf": csrf, "decision": "approve"})
            assert approved.status_code == 303 and "msg=dataset-approved" in approved.headers["location"]
            assert gateway.calls[-1] == ("POST", f"/api/v1/datasets/{DATASET}/versions/1/approve", {})
            # A rejection without a reason is refused by the page, beside the note.
            before = len(gateway.calls)
            bare = await client.post(review, data={"csrf": csrf, "decision": "reject", "note": " "})
            assert bare.status_code == 422 and 'id="err-note"' in bare.text and "반려 사유를 적으세요" in bare.text
            assert not [c for c in gateway.calls[before:] if c[0] == "POST"]
            rejected = await client.post(review, data={"csrf": csrf, "decision": "reject", "note": "라벨 오류 많음"})
            assert rejected.status_code == 303
            assert gateway.calls[-1] == ("POST", f"/api/v1/datasets/{DATASET}/versions/1/reject",
                                         {"note": "라벨 오류 많음"})
            gateway.answers[("POST", f"/api/v1/datasets/{DATASET}/versions/1/approve")] = problem(
                409, "version", status_="blocked")
            late = await client.post(review, data={"csrf": csrf, "decision": "approve", "note": "확인함"})
            assert late.status_code == 409 and "검토 대기 중인 버전만" in late.text and 'value="확인함"' in late.text
            deleted = await client.post(f"/admin/datasets/{DATASET}/delete", data={"csrf": csrf})
            assert deleted.headers["location"] == "/admin/datasets?msg=dataset-deleted"
            assert gateway.calls[-1][:2] == ("DELETE", f"/api/v1/datasets/{DATASET}")
    run(go())


def test_a_shared_dataset_is_reviewed_by_platform_admins_only(web: Web) -> None:
    client, gateway, login = web
    dataset_answers(gateway, shared=True)

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["tenant_admin"]))
            page = await client.get(f"/admin/datasets/{DATASET}")
            assert "공용 데이터셋은 플랫폼 관리자가 검토합니다" in page.text
            assert 'name="decision"' not in page.text and "데이터셋 삭제" not in page.text
            client.cookies.set(COOKIE, login(["platform_admin"]))
            page = await client.get(f"/admin/datasets/{DATASET}")
            assert 'name="decision" value="approve"' in page.text and "데이터셋 삭제" in page.text
    run(go())


def test_jobs_list_progress_and_start_form(web: Web) -> None:
    client, gateway, login = web
    token = login(["tenant_admin"])
    dataset_answers(gateway, status="approved")
    gateway.answers[("GET", "/api/v1/training-jobs")] = httpx.Response(200, json={"jobs": [job()]})
    gateway.answers[("POST", "/api/v1/training-jobs")] = httpx.Response(202, json=job("PENDING"))

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            page = await client.get("/admin/training-jobs")
            text = page.text
            assert page.status_code == 200 and 'data-live="/admin/training-jobs/live"' in text
            assert "학습 중" in text and "미세 조정 중" in text and "에폭 1/2 · 단계 30/120" in text
            assert 'value="25"' in text and "0.5123" in text and "1분 15초" in text and "3분 45초" in text
            assert "초 전" in text and "긴급" in text and "style=" not in text
            assert f'name="dataset_versions" value="{VERSION_ID}"' in text and 'value="doctag-tagger"' in text
            started = await client.post("/admin/training-jobs", data={
                "csrf": csrf_token(token), "dataset_versions": [VERSION_ID], "model": "doctag-tagger",
                "priority": "urgent", "seed": "7", "epochs": "1", "tune_layers": "", "learning_rate": "0.00003",
                "timeout_min": "30"})
            assert started.status_code == 303
            assert started.headers["location"] == f"/admin/training-jobs/{JOB}?msg=job-started"
            assert gateway.calls[-1] == ("POST", "/api/v1/training-jobs", {
                "dataset_versions": [VERSION_ID], "model": "doctag-tagger", "priority": "urgent", "seed": 7,
                "timeout_s": 1800, "hyperparameters": {"epochs": 1, "learning_rate": 3e-05}})
    run(go())


def test_job_refusals_limits_and_field_errors_keep_the_form(web: Web) -> None:
    client, gateway, login = web
    token = login(["tenant_admin"])
    dataset_answers(gateway, status="approved")
    gateway.answers[("GET", "/api/v1/training-jobs")] = httpx.Response(200, json={"jobs": []})
    form = {"csrf": csrf_token(token), "dataset_versions": [VERSION_ID], "model": "my-model", "priority": "urgent",
            "seed": "13", "epochs": "2"}

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            page = await client.get("/admin/training-jobs")
            assert "아직 학습 작업이 없습니다" in page.text and "data-live" not in page.text
            # The page's own checks: a number that is not one, no dataset chosen.
            bad = await client.post("/admin/training-jobs", data={**form, "epochs": "two", "dataset_versions": []})
            assert bad.status_code == 422 and 'id="err-epochs"' in bad.text and 'id="err-dataset_versions"' in bad.text
            assert 'value="two"' in bad.text and 'value="my-model"' in bad.text
            assert not [c for c in gateway.calls if c[0] == "POST"]
            # Over the limit: 429 with Retry-After, a clear Korean sentence, the choices kept.
            gateway.answers[("POST", "/api/v1/training-jobs")] = httpx.Response(
                429, json={"type": "urn:doctag:problem:training-limit", "status": 429, "detail": "limit", "limit": 2},
                headers={"retry-after": "60"})
            limited = await client.post("/admin/training-jobs", data=form)
            assert limited.status_code == 429
            assert "진행 중인 학습 작업이 한도(2개)에 도달했습니다" in limited.text and "60초" in limited.text
            assert f'value="{VERSION_ID}" checked' in limited.text and '<option value="urgent" selected' in limited.text
            # The API's validation names a hyper-parameter: shown beside it.
            gateway.answers[("POST", "/api/v1/training-jobs")] = problem(422, "hyperparameters.epochs")
            wrong = await client.post("/admin/training-jobs", data={**form, "epochs": "99"})
            assert 'id="err-epochs"' in wrong.text and "에폭 값이 올바르지 않습니다" in wrong.text
            assert 'value="99"' in wrong.text
            gateway.answers[("POST", "/api/v1/training-jobs")] = problem(409, "dataset_versions")
            stale = await client.post("/admin/training-jobs", data=form)
            assert "승인된 버전만 학습에 쓸 수 있습니다" in stale.text
            gateway.answers[("POST", "/api/v1/training-jobs")] = problem(422, "model")
            named = await client.post("/admin/training-jobs", data={**form, "model": "Bad Name"})
            assert 'id="err-model"' in named.text and 'value="Bad Name"' in named.text
    run(go())


def test_job_page_live_numbers_logs_and_cancel(web: Web) -> None:
    client, gateway, login = web
    token = login(["tenant_admin"])
    gateway.answers[("GET", f"/api/v1/training-jobs/{JOB}")] = httpx.Response(200, json=job())
    gateway.answers[("GET", f"/api/v1/training-jobs/{JOB}/logs")] = httpx.Response(200, json={
        "lines": [{"id": 1, "at": "2026-11-30T01:00:06+00:00", "message": f"attempt 1 {EVIL}"}], "next_after": 1})
    gateway.answers[("GET", "/api/v1/training-jobs")] = httpx.Response(200, json={"jobs": [job()]})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            page = await client.get(f"/admin/training-jobs/{JOB}")
            assert page.status_code == 200 and 'id="job-live" data-live="/admin/training-jobs/live"' in page.text
            assert "attempt 1 &lt;script&gt;" in page.text and "1/3" in page.text and "작업 취소" in page.text
            live = await client.get("/admin/training-jobs/live")
            assert live.status_code == 200 and live.headers["cache-control"] == "no-store"
            body = live.json()
            assert body["active"] is True and body["jobs"][0]["percent"] == 25
            assert body["jobs"][0]["state_label"] == "학습 중" and body["jobs"][0]["heartbeat"].endswith("초 전")
            assert "dataset_versions" not in body["jobs"][0]
            cancelled = await client.post(f"/admin/training-jobs/{JOB}/cancel", data={"csrf": csrf_token(token)})
            assert cancelled.headers["location"] == f"/admin/training-jobs/{JOB}?msg=job-cancelled"
            assert gateway.calls[-1][:2] == ("POST", f"/api/v1/training-jobs/{JOB}/cancel")
            gateway.answers[("POST", f"/api/v1/training-jobs/{JOB}/cancel")] = problem(409, "id", state="READY")
            late = await client.post(f"/admin/training-jobs/{JOB}/cancel", data={"csrf": csrf_token(token)})
            assert late.status_code == 409 and "이미 끝난 작업(완료)이라 취소할 수 없습니다" in late.text
            gateway.answers[("GET", "/api/v1/training-jobs")] = httpx.Response(401, json={"status": 401})
            expired = await client.get("/admin/training-jobs/live")
            assert expired.status_code == 401 and expired.json()["login"] is True
    run(go())


def test_a_finished_job_shows_its_evaluation_and_decision(web: Web) -> None:
    client, gateway, login = web
    metrics = {"n": 300, "accuracy": 0.87, "macro_f1": 0.8612,
               "per_label": {"경제": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "support": 150}}}
    evaluation = {"model": "doctag-tagger", "version": 4, "created": True, "production_before": 3,
                  "evaluation_sets": {"headlines": {"task": "headlines", "sha256": "x", "rows": 300}},
                  "candidate": {"headlines": metrics}, "production": {"headlines": {**metrics, "macro_f1": 0.87}},
                  "aliases": ["candidate"], "decision": {"promote": False, "reasons": ["headlines: macro-F1 ..."]}}
    done = job("READY", evaluation=evaluation, result_version=4, finished_at="2026-11-30T01:10:00+00:00")
    gateway.answers[("GET", f"/api/v1/training-jobs/{JOB}")] = httpx.Response(200, json=done)
    gateway.answers[("GET", f"/api/v1/training-jobs/{JOB}/logs")] = httpx.Response(200, json={"lines": []})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["tenant_admin"]))
            page = await client.get(f"/admin/training-jobs/{JOB}")
            text = page.text
            assert "data-live" not in text and "작업 취소" not in text and "완료" in text
            assert "doctag-tagger v4" in text and "후보 (candidate)" in text and "0.8612" in text
            assert "운영 v3: 0.8700" in text and "자동 승격 조건을 채우지 못해" in text and "0.847" in text
    run(go())


def test_models_screen_shows_evaluations_promotes_a_candidate_and_rolls_back(web: Web) -> None:
    client, gateway, login = web
    per_label = {"경제": {"precision": 0.9, "recall": 0.8, "f1": 0.8471, "support": 150}}
    gateway.answers[("GET", "/api/v1/models")] = httpx.Response(200, json={"models": [
        {"name": "doctag-tagger", "versions": 2, "aliases": {"candidate": 2, "production": 1}}]})
    gateway.answers[("GET", "/api/v1/models/doctag-tagger/versions")] = httpx.Response(200, json={"versions": [
        {"version": 1, "aliases": ["production"], "created_at": "2026-11-01T00:00:00+00:00",
         "metrics": {"validation": {"headlines": {"n": 3653, "accuracy": 0.873, "macro_f1": 0.8708,
                                                  "per_label": per_label}}}},
        {"version": 2, "aliases": ["candidate"], "created_at": "2026-11-30T00:00:00+00:00",
         "metrics": {"validation": {"headlines": {"n": 3653, "accuracy": 0.88, "macro_f1": 0.8811}}},
         "evaluations": {"petitions": {"n": 276, "accuracy": 0.57, "macro_f1": 0.5512, "per_label": per_label}}}]})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["tenant_admin"]))
            assert (await client.get("/admin/models")).status_code == 403
            token = login(["platform_admin"])
            client.cookies.set(COOKIE, token)
            page = await client.get("/admin/models")
            text = page.text
            assert "후보(candidate) v2" in text and "후보 승격" in text
            assert "validation/headlines: macro-F1 <strong>0.8708</strong>" in text and "0.8811" in text
            assert "validation/headlines 라벨별 지표" in text and "0.847" in text
            assert "평가 세트 petitions: macro-F1 <strong>0.5512</strong>" in text and "petitions 라벨별 지표" in text
            promoted = await client.post("/admin/models/doctag-tagger/alias",
                                         data={"csrf": csrf_token(token), "alias": "production", "version": "2"})
            assert promoted.status_code == 303
            assert gateway.calls[-1] == ("PUT", "/api/v1/models/doctag-tagger/aliases/production", {"version": 2})
            back = await client.post("/admin/models/doctag-tagger/rollback",
                                     data={"csrf": csrf_token(token), "alias": "production"})
            assert back.headers["location"] == "/admin/models?msg=alias-rolled-back"
            assert gateway.calls[-1][:2] == ("POST", "/api/v1/models/doctag-tagger/aliases/production/rollback")
            gateway.answers[("POST", "/api/v1/models/doctag-tagger/aliases/candidate/rollback")] = problem(404, "alias")
            none = await client.post("/admin/models/doctag-tagger/rollback",
                                     data={"csrf": csrf_token(token), "alias": "candidate"})
            assert none.status_code == 404 and "되돌아갈 이전 버전이 없습니다" in none.text
            before = len(gateway.calls)
            assert (await client.post("/admin/models/doctag-tagger/rollback",
                                      data={"alias": "production"})).status_code == 403
            assert len(gateway.calls) == before
    run(go())


def test_job_view_words_and_limits() -> None:
    now = datetime(2026, 11, 30, 1, 0, 30, tzinfo=UTC)
    view = job_view(job(heartbeat_at="2026-11-30T01:00:18+00:00"), now)
    assert view["heartbeat"] == "12초 전" and view["eta"] == "3분 45초" and view["percent"] == 25
    finished = job_view(job("READY", progress={"stage": "ready", "elapsed_s": 3725.0}), now)
    assert finished["active"] is False and finished["eta"] == "-" and finished["heartbeat"] == "-"
    assert finished["elapsed"] == "1시간 2분" and finished["stage"] == "완료" and finished["percent"] == 100
    waiting = job_view(job("PENDING", progress={}), now)
    assert waiting["stage"] == "-" and waiting["percent"] is None and waiting["loss"] == "-"
    assert messages.duration(None) == "-" and messages.duration(8) == "8초"
    # A general 429 keeps its sentence; the training limit says what the limit is.
    assert messages.problem_message(ApiError(429, {}, {"retry-after": "30"})) == (
        "요청이 너무 많습니다. 30초 후 다시 시도하세요.")
    errors, page = messages.form_errors(ApiError(422, {"errors": [{"field": "timeout_s"}]}), ("timeout_min",),
                                        {"timeout_s": "timeout_min"})
    assert errors == {"timeout_min": "제한 시간 값이 올바르지 않습니다."} and page is None
    errors, page = messages.form_errors(ApiError(503, {"type": "urn:doctag:problem:registry-unavailable"}), ("name",))
    assert errors == {} and page == "모델 저장소에 연결할 수 없습니다. 잠시 후 다시 시도하세요."


def test_the_screens_know_every_value_the_database_allows() -> None:
    """Statuses, sources and priorities as migration 0020 constrains them; the task rule as the API's."""
    migration = next((REPO / "infra" / "migrations" / "versions").glob("0020_*.py")).read_text(encoding="utf-8")

    def allowed(column: str) -> set[str]:
        found = re.search(rf"\b{column}\s+text NOT NULL CHECK \({column} IN \(([^)]*)\)\)", migration)
        assert found, column
        return set(re.findall(r"'([^']+)'", found.group(1)))

    assert allowed("status") == set(messages.DATASET_STATUS_LABELS)
    assert allowed("source") == set(messages.DATASET_SOURCE_LABELS)
    assert allowed("priority") == set(messages.PRIORITY_LABELS)
    assert TASK.pattern == TASK_RE.pattern


def test_every_gate_issue_job_state_and_stage_has_a_korean_label() -> None:
    # The gate itself, fed a row of every kind it drops, names only kinds the screens can say.
    rows = [Record(1, "", "경제"), Record(2, "가" * 50, "경제"), Record(3, "본문 하나 " * 3, "없는라벨"),
            Record(4, "평가 세트 문장", "경제"), Record(5, "같은 본문 다른 라벨", "경제"),
            Record(6, "같은 본문 다른 라벨", "정치"), Record(7, "완전히 같은 문장입니다", "경제"),
            Record(8, "완전히 같은 문장입니다", "경제"),
            Record(9, "거의 같은 긴 문장으로 중복을 찾아 봅니다 하나", "정치"),
            Record(10, "거의 같은 긴 문장으로 중복을 찾아 봅니다 하나.", "정치")]
    result = run_gate(rows, GateSettings(max_chars=40, near_threshold=0.8), label_set=frozenset({"경제", "정치"}),
                      eval_keys=frozenset({text_key("평가 세트 문장")}), eval_set=None)
    assert set(result.report["dropped"]) == set(messages.GATE_ISSUE_LABELS)
    assert all(messages.gate_note(w) != w for w in result.report["warnings"] + result.report["blocking"])
    assert set(ACTIVE) == set(messages.JOB_ACTIVE_STATES)
    assert set(ACTIVE) | set(TERMINAL) == set(messages.JOB_STATE_LABELS)
    for stage in ("starting", "loading", "lower-pass", "fine-tuning", "head", "measuring", "done", "registering",
                  *(s.lower() for s in TERMINAL)):
        assert stage in messages.STAGE_LABELS, stage


# -- shadow mode on the models screen ------------------------------------------------------------
OTHER_TENANT = str(uuid.uuid4())


def shadow_report(samples: int = 0, **extra: Any) -> dict[str, Any]:
    """The report as model-serving's ShadowMode.report answers it."""
    base: dict[str, Any] = {
        "name": "doctag-tagger", "enabled": False, "share": 0.1, "enabled_at": None, "updated_by": None,
        "production_version": 1, "candidate_version": 2, "tenant_id": None, "since": None, "until": None,
        "samples": samples, "agree": 0, "disagree": 0, "agreement": None, "dropped": 0,
        "candidate_latency_ms": {"mean": None, "p50": None, "p95": None}, "production_versions": [],
        "per_label": {}, "tenants": []}
    return {**base, **extra}


SCORED = shadow_report(
    200, enabled=True, share=0.25, enabled_at="2026-11-30T00:00:00+00:00", updated_by="root",
    since="2026-11-30T00:05:00+00:00", until="2026-11-30T03:00:00+00:00", agree=174, disagree=26, agreement=0.87,
    dropped=7, candidate_latency_ms={"mean": 40.0, "p50": 31.25, "p95": 88.5}, production_versions=["1"],
    per_label={"경제": {"production": 120, "candidate": 118, "agree": 110, "disagree": 10, "agreement": 0.9167},
               EVIL: {"production": 80, "candidate": 82, "agree": 64, "disagree": 16, "agreement": 0.8}},
    tenants=[{"tenant_id": TENANT, "samples": 150, "agree": 135, "dropped": 5, "agreement": 0.9},
             {"tenant_id": OTHER_TENANT, "samples": 50, "agree": 39, "dropped": 2, "agreement": 0.78}])


def models_answers(gateway: Any, report: dict[str, Any] | httpx.Response | None) -> None:
    gateway.answers[("GET", "/api/v1/models")] = httpx.Response(200, json={"models": [
        {"name": "doctag-tagger", "versions": 2, "aliases": {"candidate": 2, "production": 1}},
        {"name": "plain", "versions": 1, "aliases": {"production": 1}}]})
    for name in ("doctag-tagger", "plain"):
        gateway.answers[("GET", f"/api/v1/models/{name}/versions")] = httpx.Response(200, json={"versions": [
            {"version": 1, "aliases": ["production"], "created_at": "2026-11-01T00:00:00+00:00", "metrics": {}}]})
    if report is not None:
        gateway.answers[("GET", "/api/v1/models/doctag-tagger/shadow")] = (
            report if isinstance(report, httpx.Response) else httpx.Response(200, json=report))
    gateway.answers[("GET", "/api/v1/admin/tenants")] = httpx.Response(200, json={"items": [
        {"id": TENANT, "slug": "finance", "name": "기획재정담당관"}]})


def shadow_part(text: str) -> str:
    start = text.index('id="shadow-doctag-tagger"')
    return text[start:text.index("</section>", start)]


def test_shadow_report_names_departments_and_only_candidates_get_a_section(web: Web) -> None:
    client, gateway, login = web
    models_answers(gateway, SCORED)

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["platform_admin"]))
            page = await client.get("/admin/models")
            assert page.status_code == 200
            asked = [path for method, path, _ in gateway.calls if method == "GET"]
            assert "/api/v1/models/doctag-tagger/shadow" in asked and "/api/v1/models/plain/shadow" not in asked
            assert 'id="shadow-plain"' not in page.text   # no candidate, no shadow section
            part = shadow_part(page.text)
            assert 'data-shadow="on"' in part and "켜짐" in part and "2026-11-30 09:00부터 켜짐" in part
            assert "비율 25% ·" in part and 'name="share" value="25"' in part
            assert 'value="true" checked' in part and "변경: root" in part
            assert "후보 v2 ↔ 운영 v1" in part
            assert "87.0%" in part and "일치 174 · 불일치 26" in part and ">200<" in part
            assert "건너뛴 표본 (대기열 가득 참)" in part and ">7<" in part
            assert "31.2 ms" in part and "88.5 ms" in part
            assert "비교 시작 2026-11-30 09:05" in part
            assert 'data-label="경제"' in part and "91.7%" in part
            assert EVIL not in part and "&lt;script&gt;" in part      # labels are text, never markup
            assert "기획재정담당관" in part and "90.0%" in part       # a department the web knows: by name
            assert f'<span class="mono small">{OTHER_TENANT}</span>' in part and "78.0%" in part
            assert "아직 비교한 표본이 없습니다" not in part
    run(go())


def test_shadow_empty_state_and_a_report_that_failed_keep_the_screen(web: Web) -> None:
    client, gateway, login = web
    models_answers(gateway, shadow_report())

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["platform_admin"]))
            part = shadow_part((await client.get("/admin/models")).text)
            assert 'data-shadow="off"' in part and "꺼짐" in part and 'value="false" checked' in part
            assert "아직 비교한 표본이 없습니다. 섀도 모드를 켜면" in part and "shadow-stats" not in part
            assert "/api/v1/admin/tenants" not in [path for _, path, _ in gateway.calls]  # no departments to name
            gateway.answers[("GET", "/api/v1/models/doctag-tagger/shadow")] = problem(
                503, type="urn:doctag:problem:registry-unavailable")
            page = await client.get("/admin/models")
            assert page.status_code == 200 and "v1" in page.text
            assert "섀도 모드 보고서를 불러오지 못했습니다: 모델 저장소에 연결할 수 없습니다" in shadow_part(page.text)
    run(go())


def test_shadow_switch_posts_the_api_body_and_shows_refusals_by_field(web: Web) -> None:
    client, gateway, login = web
    models_answers(gateway, shadow_report())

    async def go() -> None:
        async with client:
            token = login(["platform_admin"])
            client.cookies.set(COOKIE, token)
            on = await client.post("/admin/models/doctag-tagger/shadow",
                                   data={"csrf": csrf_token(token), "enabled": "true", "share": "12.5"})
            assert on.status_code == 303
            assert on.headers["location"] == "/admin/models?msg=shadow-on#shadow-doctag-tagger"
            assert gateway.calls[-1] == ("PUT", "/api/v1/models/doctag-tagger/shadow",
                                         {"enabled": True, "share": 0.125})
            assert "섀도 모드를 켰습니다" in (await client.get("/admin/models?msg=shadow-on")).text
            off = await client.post("/admin/models/doctag-tagger/shadow",
                                    data={"csrf": csrf_token(token), "enabled": "false", "share": ""})
            assert off.headers["location"] == "/admin/models?msg=shadow-off#shadow-doctag-tagger"
            assert gateway.calls[-1] == ("PUT", "/api/v1/models/doctag-tagger/shadow", {"enabled": False})
            # The page's own refusals: no API call, the words beside the field, the form kept.
            before = len(gateway.calls)
            bad = await client.post("/admin/models/doctag-tagger/shadow",
                                    data={"csrf": csrf_token(token), "share": "150"})
            assert bad.status_code == 422
            assert not any(method == "PUT" for method, _, _ in gateway.calls[before:])
            part = shadow_part(bad.text)
            assert '<p class="error" id="err-share" role="alert">섀도 비율은 0% 초과 100% 이하로' in part
            assert '<p class="error" id="err-enabled" role="alert">켜기 또는 끄기를 고르세요.' in part
            assert 'name="share" value="150" inputmode="decimal" class="num-input" placeholder="기본값" ' \
                   'aria-invalid="true" aria-describedby="err-share"' in part
            # The API's 422 naming `share`: beside the share field, in Korean.
            gateway.answers[("PUT", "/api/v1/models/doctag-tagger/shadow")] = problem(422, "body.share")
            refused = await client.post("/admin/models/doctag-tagger/shadow",
                                        data={"csrf": csrf_token(token), "enabled": "true", "share": "0.001"})
            assert refused.status_code == 422
            part = shadow_part(refused.text)
            assert 'id="err-share" role="alert">섀도 비율은 0% 초과 100% 이하로 입력하세요 (예: 10).' in part
            assert 'value="0.001"' in part and 'value="true" checked' in part
            # The API's 403 (no field): a Korean sentence at the top of the form.
            gateway.answers[("PUT", "/api/v1/models/doctag-tagger/shadow")] = problem(403)
            denied = await client.post("/admin/models/doctag-tagger/shadow",
                                       data={"csrf": csrf_token(token), "enabled": "true"})
            assert denied.status_code == 403
            assert "섀도 모드는 플랫폼 관리자만 켜고 끌 수 있습니다." in shadow_part(denied.text)
            gateway.answers[("PUT", "/api/v1/models/doctag-tagger/shadow")] = problem(404, "name")
            gone = await client.post("/admin/models/doctag-tagger/shadow",
                                     data={"csrf": csrf_token(token), "enabled": "false"})
            assert gone.status_code == 404 and "모델을 찾을 수 없습니다." in shadow_part(gone.text)
            # No CSRF token, or not a platform admin: refused before the API is asked.
            before = len(gateway.calls)
            assert (await client.post("/admin/models/doctag-tagger/shadow",
                                      data={"enabled": "true"})).status_code == 403
            chief = login(["tenant_admin"])
            client.cookies.set(COOKIE, chief)
            assert (await client.post("/admin/models/doctag-tagger/shadow",
                                      data={"csrf": csrf_token(chief), "enabled": "true"})).status_code == 403
            assert len(gateway.calls) == before
    run(go())


def test_shadow_section_has_no_switch_for_a_session_without_the_platform_role(web: Web) -> None:
    """The screen itself is a platform admin's; a department admin is refused it, so never sees the form."""
    client, gateway, login = web
    models_answers(gateway, SCORED)

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["tenant_admin"]))
            page = await client.get("/admin/models")
            assert page.status_code == 403 and "/shadow" not in page.text and gateway.calls == []
            client.cookies.set(COOKIE, login(["platform_admin"]))
            assert 'action="/admin/models/doctag-tagger/shadow"' in (await client.get("/admin/models")).text
    run(go())


def test_every_shadow_word_the_screen_shows_is_korean() -> None:
    """The report's per-label numbers and the switch's fields (as model-serving defines them) have labels."""
    entry = next(iter(per_label([("경제", "정치", 3)]).values()))
    assert set(entry) <= set(messages.SHADOW_REPORT_LABELS)
    for key in ("samples", "agree", "disagree", "agreement", "dropped", "since", "until", "p50", "p95"):
        assert key in messages.SHADOW_REPORT_LABELS, key
    for field in ShadowBody.model_fields:
        errors, page = messages.form_errors(ApiError(422, {"errors": [{"field": f"body.{field}"}]}), (field,))
        assert page is None and field not in errors[field] and re.search("[가-힣]", errors[field]), field
    assert messages.share_percent(0.1) == "10" and messages.share_percent(0.125) == "12.5"
    assert messages.share_percent(None) == "" and messages.percent(0.8712, 1) == "87.1%"
