"""Daily API quotas per tenant: exact under concurrency across two gateways sharing the
database, kept across a restart, one warning event at 80%, 429 naming the quota and its
reset, and the usage shown next to storage by upload's GET /api/v1/quota."""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from services.common.api_quota import quota_day
from services.common.db import Database
from services.upload.service import DocumentService
from services.upload.settings import UploadSettings
from tests.conftest import create_tenant

from .test_gateway_support import ServerThread, echo_app, free_port, gateway_config_data, start_gateway

pytestmark = pytest.mark.integration
QUOTA = 20


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    server = ServerThread(echo_app("se"), free_port()).start()
    yield server
    server.stop()


def _tenant(admin_dsn: str, quota: int | None) -> str:
    tenant = create_tenant(admin_dsn, f"q-{uuid.uuid4().hex[:8]}")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE identity.tenants SET api_daily_quota = %s WHERE id = %s", (quota, tenant))
    return tenant


async def _burst(urls: list[str], headers: dict[str, str], total: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        return list(await asyncio.gather(*(client.get(f"{urls[i % len(urls)]}/api/v1/search", headers=headers)
                                           for i in range(total))))


def test_quota_exact_across_two_gateways_and_a_restart(tmp_path: Path, test_db_name: str, key_dir: Path,
                                                       admin_dsn: str, upstream: ServerThread,
                                                       make_token) -> None:  # type: ignore[no-untyped-def]
    tenant = _tenant(admin_dsn, QUOTA)
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{upstream.port}"]})
    gateways = [start_gateway(tmp_path / f"g{i}", data, db_name=test_db_name, key_dir=key_dir) for i in range(2)]
    headers = {"Authorization": f"Bearer {make_token(tenant)}"}
    try:
        answers = asyncio.run(_burst([g.url for g in gateways], headers, 50))
    finally:
        for g in gateways:
            g.stop()
    assert Counter(r.status_code for r in answers) == {200: QUOTA, 429: 50 - QUOTA}
    allowed = [r for r in answers if r.status_code == 200]
    assert sorted(int(r.headers["x-api-quota-remaining"]) for r in allowed) == list(range(QUOTA))
    assert {r.headers["x-api-quota-limit"] for r in allowed} == {str(QUOTA)}
    warned = [r for r in allowed if "x-api-quota-warning" in r.headers]
    assert len(warned) == QUOTA - QUOTA * 80 // 100 + 1  # from the 16th call of 20 on
    refused = next(r for r in answers if r.status_code == 429)
    body = refused.json()
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert body["type"] == "urn:doctag:problem:api-quota-exceeded" and body["quota"] == "api_daily_calls"
    assert (body["limit"], body["used"]) == (QUOTA, QUOTA)
    resets = datetime.fromisoformat(body["resets_at"])
    assert resets > datetime.now(UTC) and body["resets_at"] in body["detail"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400

    # Persisted: a gateway started afterwards still refuses, and the count did not move.
    again = start_gateway(tmp_path / "g3", data, db_name=test_db_name, key_dir=key_dir)
    try:
        assert httpx.get(f"{again.url}/api/v1/search", headers=headers, timeout=10).status_code == 429
    finally:
        again.stop()
    with psycopg.connect(admin_dsn) as conn:
        calls = conn.execute("SELECT calls FROM identity.api_usage WHERE tenant_id = %s AND day = %s",
                             (tenant, quota_day(datetime.now(UTC), "Asia/Seoul"))).fetchone()
        events = conn.execute("SELECT payload FROM documents.outbox WHERE tenant_id = %s AND event_type = "
                              "'quota.warning'", (tenant,)).fetchall()
    assert calls == (QUOTA,)
    assert len(events) == 1  # one warning for the day, however many calls passed 80%
    event = events[0][0]
    assert (event["quota"], event["limit"], event["used"], event["threshold_percent"]) == \
        ("api_daily_calls", QUOTA, QUOTA * 80 // 100, 80)


def test_tenant_without_identity_row_is_not_counted(tmp_path: Path, test_db_name: str, key_dir: Path,
                                                    upstream: ServerThread, make_token) -> None:  # type: ignore[no-untyped-def]
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{upstream.port}"]})
    gateway = start_gateway(tmp_path, data, db_name=test_db_name, key_dir=key_dir)
    try:
        r = httpx.get(f"{gateway.url}/api/v1/search", timeout=10,
                      headers={"Authorization": f"Bearer {make_token(str(uuid.uuid4()))}"})
        assert r.status_code == 200 and "x-api-quota-limit" not in r.headers
    finally:
        gateway.stop()


async def test_upload_quota_shows_api_usage_next_to_storage(admin_dsn: str, upload_settings: UploadSettings) -> None:
    tenant = _tenant(admin_dsn, None)  # the platform default
    day = quota_day(datetime.now(UTC), upload_settings.api_quota_timezone)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO identity.api_usage (tenant_id, day, calls) VALUES (%s, %s, 8500)", (tenant, day))
    db = Database(upload_settings.dsn(), min_size=1, max_size=2)
    await db.open()
    try:
        quota = await DocumentService(upload_settings, db, None).quota(tenant)  # type: ignore[arg-type]
    finally:
        await db.close()
    assert quota["quota_bytes"] == 100 * 1024 * 1024  # storage as before
    api = quota["api"]
    assert (api["quota"], api["daily_limit"], api["used_today"], api["remaining_today"], api["warning"]) == \
        ("api_daily_calls", 10_000, 8500, 1500, True)
    assert datetime.fromisoformat(api["resets_at"]) > datetime.now(UTC)
