"""The administrators' pages of the web UI as rendered HTML: who sees which screen, forms carry
the CSRF token and turn into the right admin API calls, attacker-controlled names stay text,
the usage chart is drawn on the server with its data table. The gateway is replaced by an
httpx MockTransport that records calls (the real API is exercised in the browser tests)."""
from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.web.charts import daily_bars, nice_ceiling
from services.web.session import COOKIE, csrf_token

from .web_support import EVIL, TENANT, Web, make_web, run


def test_chart_scale_bars_and_limit_line() -> None:
    assert [nice_ceiling(v) for v in (0, 7, 120, 999, 12345)] == [4, 8, 200, 1000, 20000]
    start = date(2026, 11, 1)
    days: list[dict[str, object]] = [{"day": (start + timedelta(days=i)).isoformat(), "calls": i * 10}
                                     for i in range(30)]
    chart = daily_bars(days, daily_limit=400)
    assert len(chart.bars) == 30 and chart.peak == 290 and chart.total == sum(i * 10 for i in range(30))
    assert chart.bars[0].height == 0 and chart.bars[-1].height > chart.bars[-2].height
    assert chart.bars[-1].label == "11/30 · 290회"
    assert chart.x_labels[-1].label == "11/30" and len(chart.x_labels) == 6
    assert chart.limit_y is not None and chart.limit_y < chart.bars[-1].y  # 400 is above the highest bar
    assert daily_bars(days, daily_limit=100_000).limit_y is None  # a far-away quota is not drawn


@pytest.fixture
def web(tmp_path: Path) -> Web:
    return make_web(tmp_path)


def test_users_page_lists_escapes_and_changes_through_the_api(web) -> None:  # type: ignore[no-untyped-def]
    client, gateway, login = web
    token = login(["tenant_admin"])
    user_id = str(uuid.uuid4())
    gateway.answers[("GET", "/api/v1/admin/users")] = httpx.Response(200, json={"items": [
        {"id": user_id, "username": EVIL, "roles": ["user"], "disabled": False,
         "created_at": "2026-11-30T01:00:00+00:00"}]})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            page = await client.get("/admin/users")
            assert page.status_code == 200 and "사용자 추가" in page.text
            assert EVIL not in page.text and "&lt;script&gt;" in page.text
            assert page.headers["content-security-policy"].startswith("default-src 'none'")
            csrf = csrf_token(token)
            done = await client.post(f"/admin/users/{user_id}", data={"csrf": csrf, "action": "disable"})
            assert done.status_code == 303 and done.headers["location"] == "/admin/users?msg=user-disable"
            assert gateway.calls[-1] == ("PATCH", f"/api/v1/admin/users/{user_id}", {"disabled": True})
            await client.post(f"/admin/users/{user_id}", data={"csrf": csrf, "action": "role", "role": "tenant_admin"})
            assert gateway.calls[-1][2] == {"role": "tenant_admin"}
            # Without the CSRF token nothing reaches the API.
            before = len(gateway.calls)
            refused = await client.post(f"/admin/users/{user_id}", data={"action": "enable"})
            assert refused.status_code == 403 and len(gateway.calls) == before
            # A refusal of the API is explained on the page, in Korean.
            gateway.answers[("POST", "/api/v1/admin/users")] = httpx.Response(
                409, json={"type": "about:blank", "status": 409, "detail": "exists"})
            taken = await client.post("/admin/users", data={"csrf": csrf, "username": "kim", "password": "x" * 12,
                                                             "role": "user"})
            assert taken.status_code == 409 and "같은 이름의 사용자가 이미 있습니다" in taken.text
            assert 'value="kim"' in taken.text  # what was typed is kept
    run(go())


def test_new_api_key_shown_once_and_revoked(web) -> None:  # type: ignore[no-untyped-def]
    client, gateway, login = web
    token = login(["tenant_admin"])
    key_id = str(uuid.uuid4())
    gateway.answers[("POST", "/api/v1/admin/api-keys")] = httpx.Response(201, json={
        "id": key_id, "name": "야간 배치", "roles": ["user"], "created_at": "2026-11-30T01:00:00+00:00",
        "revoked_at": None, "key": "dtk_secret-once"})
    gateway.answers[("GET", "/api/v1/admin/api-keys")] = httpx.Response(200, json={"items": [
        {"id": key_id, "name": "야간 배치", "roles": ["user"], "created_at": "2026-11-30T01:00:00+00:00",
         "revoked_at": None}]})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, token)
            csrf = csrf_token(token)
            made = await client.post("/admin/api-keys", data={"csrf": csrf, "name": "야간 배치",
                                                              "roles": ["user", "platform_admin"]})
            assert made.status_code == 201 and "dtk_secret-once" in made.text
            assert made.headers["cache-control"] == "no-store"
            assert gateway.calls[0] == ("POST", "/api/v1/admin/api-keys", {"name": "야간 배치", "roles": ["user"]})
            listed = await client.get("/admin/api-keys")
            assert "dtk_secret-once" not in listed.text and "야간 배치" in listed.text
            revoked = await client.post(f"/admin/api-keys/{key_id}/revoke", data={"csrf": csrf})
            assert revoked.status_code == 303
            assert gateway.calls[-1][:2] == ("DELETE", f"/api/v1/admin/api-keys/{key_id}")
    run(go())


def test_screens_by_role(web) -> None:  # type: ignore[no-untyped-def]
    client, gateway, login = web
    today = date.today()
    gateway.answers[("GET", "/api/v1/admin/usage")] = httpx.Response(200, json={
        "tenant_id": TENANT, "slug": "finance", "name": "재정과", "daily_limit": 500, "timezone": "Asia/Seoul",
        "total": 42, "days": [{"day": (today - timedelta(days=29 - i)).isoformat(), "calls": 42 if i == 29 else 0}
                              for i in range(30)]})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["user"]))
            for path in ("/admin/users", "/admin/api-keys", "/admin/usage", "/admin/tenants"):
                assert (await client.get(path)).status_code == 403, path
            assert gateway.calls == []  # refused before any API call
            client.cookies.set(COOKIE, login(["tenant_admin"]))
            usage = await client.get("/admin/usage")
            assert usage.status_code == 200 and 'id="usage-chart"' in usage.text
            assert usage.text.count('class="chart-bar') == 30 and 'id="usage-table"' in usage.text
            assert "style=" not in usage.text  # the CSP allows no inline style
            assert (await client.get("/admin/tenants")).status_code == 403
            client.cookies.set(COOKIE, login(["platform_admin"]))
            assert (await client.get("/admin/users")).status_code == 403  # the admin API wants tenant_admin
            gateway.answers[("GET", "/api/v1/admin/tenants")] = httpx.Response(200, json={"items": [
                {"id": TENANT, "slug": "finance", "name": EVIL, "api_daily_quota": 10000,
                 "api_daily_quota_is_default": True, "api_calls_today": 5}]})
            tenants = await client.get("/admin/tenants")
            assert tenants.status_code == 200 and EVIL not in tenants.text
            saved = await client.post(f"/admin/tenants/{TENANT}/quota",
                                      data={"csrf": csrf_token(client.cookies[COOKIE]), "api_daily_quota": "2,000"})
            assert saved.status_code == 303 and gateway.calls[-1] == (
                "PATCH", f"/api/v1/admin/tenants/{TENANT}", {"api_daily_quota": 2000})
            await client.post(f"/admin/tenants/{TENANT}/quota",
                              data={"csrf": csrf_token(client.cookies[COOKIE]), "api_daily_quota": ""})
            assert gateway.calls[-1][2] == {"api_daily_quota": None}
    run(go())


def queue_answer(tenant: str, doc_id: str) -> dict[str, Any]:
    return {"scope": "tenant", "tenant_id": tenant,
            "documents": {"queued": 3, "processing": 1, "failed": 1, "oldest_queued_at": "2026-11-30T01:00:00+00:00",
                          "unpublished_jobs": 0},
            "rate": {"tagged_last_hour": 42, "failed_last_hour": 1, "tagged_per_minute": 0.7},
            "broker": None, "broker_error": None,
            "failed": [{"id": doc_id, "tenant_id": tenant, "title": EVIL, "filename": "a.hwp",
                        "error": "the HWP file is encrypted", "failed_at": "2026-11-30T02:00:00+00:00"}],
            "dead_letters": [{"message_id": "m", "document_id": doc_id, "tenant_id": tenant, "filename": "a.hwp",
                              "title": EVIL, "reason": "delivery_limit", "dead_lettered_at": None, "valid": True}]}


def test_queue_screen_and_retry(web) -> None:  # type: ignore[no-untyped-def]
    client, gateway, login = web
    doc_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    gateway.answers[("GET", "/api/v1/tagging/queue")] = httpx.Response(200, json=queue_answer(TENANT, doc_id))

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["user"]))
            assert (await client.get("/admin/queue")).status_code == 403 and gateway.calls == []
            token = login(["tenant_admin"])
            client.cookies.set(COOKIE, token)
            page = await client.get("/admin/queue")
            assert page.status_code == 200 and 'id="failed-table"' in page.text and 'id="dead-table"' in page.text
            assert EVIL not in page.text and "암호가 걸린 파일" in page.text and "재시도 한도 초과" in page.text
            retried = await client.post("/admin/queue/retry", data={"csrf": csrf_token(token), "document_id": doc_id,
                                                                   "tenant_id": TENANT})
            assert retried.status_code == 303 and retried.headers["location"] == "/admin/queue?msg=retried"
            assert gateway.calls[-1] == ("POST", f"/api/v1/tagging/documents/{doc_id}/retry", None)
            assert gateway.params == {}  # its own department: no tenant named
            gateway.answers[("POST", f"/api/v1/tagging/documents/{doc_id}/retry")] = httpx.Response(
                409, json={"status": 409, "detail": "tagged"})
            refused = await client.post("/admin/queue/retry", data={"csrf": csrf_token(token), "document_id": doc_id})
            assert refused.status_code == 409 and "다시 시도하지 않았습니다" in refused.text
            # A platform administrator retries another department's document by naming it.
            token = login(["platform_admin"])
            client.cookies.set(COOKIE, token)
            assert (await client.get(f"/admin/queue?tenant={other}")).status_code == 200
            assert gateway.params == {}  # (the tenants list, for the department names, was asked last)
            gateway.answers[("GET", "/api/v1/admin/tenants")] = httpx.Response(200, json={"items": [
                {"id": TENANT, "slug": "finance", "name": "재정과", "api_daily_quota": 1,
                 "api_daily_quota_is_default": True, "api_calls_today": 0}]})
            every = await client.get("/admin/queue")
            assert every.status_code == 200 and every.text.count("<td>재정과</td>") == 2  # failed and dead-letter rows
            await client.post("/admin/queue/retry", data={"csrf": csrf_token(token), "document_id": str(uuid.UUID(
                int=5)), "tenant_id": other, "back_tenant": other})
            method, path, _ = gateway.calls[-1]
            assert (method, path) == ("POST", f"/api/v1/tagging/documents/{uuid.UUID(int=5)}/retry")
            assert gateway.params == {"tenant_id": other}
    run(go())


def test_platform_admin_sets_a_storage_quota_in_mb(web) -> None:  # type: ignore[no-untyped-def]
    client, gateway, login = web
    mb = 1024 * 1024
    other, third = str(uuid.uuid4()), str(uuid.uuid4())
    gateway.answers[("GET", "/api/v1/admin/tenants")] = httpx.Response(200, json={"items": [
        {"id": TENANT, "slug": "finance", "name": EVIL, "api_daily_quota": 10000,
         "api_daily_quota_is_default": True, "api_calls_today": 5},
        {"id": other, "slug": "audit", "name": "감사실", "api_daily_quota": 10000,
         "api_daily_quota_is_default": True, "api_calls_today": 0},
        {"id": third, "slug": "press", "name": "대변인실", "api_daily_quota": 10000,
         "api_daily_quota_is_default": True, "api_calls_today": 0}]})
    gateway.answers[("GET", f"/api/v1/storage-quotas/{TENANT}")] = httpx.Response(200, json={
        "tenant_id": TENANT, "quota_bytes": 2048 * mb, "used_bytes": 512 * mb, "available_bytes": 1536 * mb})
    gateway.answers[("GET", f"/api/v1/storage-quotas/{third}")] = httpx.Response(
        503, json={"type": "about:blank", "status": 503, "detail": "down"})
    gateway.answers[("GET", f"/api/v1/storage-quotas/{other}")] = httpx.Response(200, json={
        "tenant_id": other, "quota_bytes": 100_000, "used_bytes": 0, "available_bytes": 100_000})

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["platform_admin"]))
            csrf = csrf_token(client.cookies[COOKIE])
            page = await client.get("/admin/tenants")
            assert page.status_code == 200 and EVIL not in page.text
            assert "저장 용량 (사용 / 한도)" in page.text and "512.0 MB / 2.0 GB" in page.text and "(25%)" in page.text
            assert f'action="/admin/tenants/{TENANT}/storage-quota"' in page.text
            assert 'name="storage_quota_mb"' in page.text and 'value="2048"' in page.text and 'min="512"' in page.text
            assert "저장 용량 한도 (MB)" in page.text  # the field's label names the unit
            assert "저장 용량 정보를 불러오지 못했습니다." in page.text  # the tenant upload did not answer for
            assert f'action="/admin/tenants/{third}/storage-quota"' not in page.text
            # A quota that is no whole number of MB is not put in the field (saving it unchanged
            # would round it); the field shows it as a hint.
            assert 'placeholder="현재 97.7 KB"' in page.text
            assert "style=" not in page.text

            saved = await client.post(f"/admin/tenants/{TENANT}/storage-quota",
                                      data={"csrf": csrf, "storage_quota_mb": "4,096"})
            assert saved.status_code == 303 and saved.headers["location"] == "/admin/tenants?msg=storage-quota-set"
            assert gateway.calls[-1] == ("PUT", f"/api/v1/storage-quotas/{TENANT}", {"quota_bytes": 4096 * mb})

            before = len(gateway.calls)
            for bad in ("", "0", "-5", "1.5", "열", str(2**30 + 1)):
                refused = await client.post(f"/admin/tenants/{TENANT}/storage-quota",
                                            data={"csrf": csrf, "storage_quota_mb": bad})
                assert refused.status_code == 422 and "MB 단위 정수" in refused.text, bad
            assert (await client.post(f"/admin/tenants/{TENANT}/storage-quota",
                                      data={"storage_quota_mb": "10"})).status_code == 403  # no CSRF token
            assert len(gateway.calls) == before  # nothing reached the API

            # Below the usage: upload's 409 explained with the used size.
            gateway.answers[("PUT", f"/api/v1/storage-quotas/{TENANT}")] = httpx.Response(409, json={
                "type": "about:blank", "status": 409, "detail": "below usage", "used_bytes": 512 * mb + 1,
                "errors": [{"field": "quota_bytes", "message": "below usage"}]})
            below = await client.post(f"/admin/tenants/{TENANT}/storage-quota",
                                      data={"csrf": csrf, "storage_quota_mb": "100"})
            assert below.status_code == 409 and "이미 513 MB를 쓰고 있습니다" in below.text
    run(go())


def test_queue_numbers_for_the_polling(web) -> None:  # type: ignore[no-untyped-def]
    client, gateway, login = web
    doc_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    gateway.answers[("GET", "/api/v1/tagging/queue")] = httpx.Response(200, json=queue_answer(TENANT, doc_id))

    async def go() -> None:
        async with client:
            client.cookies.set(COOKIE, login(["user"]))
            assert (await client.get("/admin/queue/live")).status_code == 403 and gateway.calls == []
            client.cookies.set(COOKIE, login(["platform_admin"]))
            page = await client.get(f"/admin/queue?tenant={other}")
            # The page tells the script where to poll (the same tenant) and which lists it shows.
            assert f'data-live="/admin/queue/live?tenant={other}"' in page.text
            assert f'data-failed-ids="{doc_id}"' in page.text and f'data-dead-ids="{doc_id}"' in page.text
            assert 'id="queue-live-note" role="status"' in page.text and "style=" not in page.text
            live = await client.get(f"/admin/queue/live?tenant={other}")
            assert live.status_code == 200 and live.headers["cache-control"] == "no-store"
            assert gateway.params == {"tenant_id": other}
            assert live.json() == {"queued": 3, "processing": 1, "failed": 1, "oldest_queued_at": "2026-11-30 10:00",
                                   "tagged_last_hour": 42, "tagged_per_minute": 0.7, "failed_last_hour": 1,
                                   "broker": None, "failed_ids": [doc_id], "dead_letter_ids": [doc_id]}
            assert EVIL not in live.text  # numbers and ids only, no titles
            gateway.answers[("GET", "/api/v1/tagging/queue")] = httpx.Response(
                401, json={"status": 401, "detail": "expired"})
            expired = await client.get("/admin/queue/live")
            assert expired.status_code == 401 and expired.json()["login"] is True
    run(go())


def test_every_audit_action_and_role_has_a_korean_label() -> None:
    from services.common import audit
    from services.common.roles import ROLES
    from services.web import messages

    assert set(audit.ACTIONS) <= set(messages.ACTION_LABELS)
    assert set(ROLES) <= set(messages.ROLE_LABELS)
