"""Login throttling and rate limits against real Redis: exponential lock-outs per user and
per address that answer alike for unknown users and wrong passwords, and rate-limit
counts exact under concurrency across two gateway processes."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import parse_config, write_config
from services.common.passwords import hash_password
from tests.conftest import create_tenant

from .test_gateway_support import GatewayServer, ServerThread, echo_app, free_port, gateway_config_data, start_gateway
from .test_gateway_tokens import add_user

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "올바른-비밀번호-7"


@pytest.fixture()
def throttled(tmp_path: Path, test_db_name: str, key_dir: Path, admin_dsn: str) -> Iterator[tuple[GatewayServer, str]]:
    slug = f"th-{uuid.uuid4().hex[:8]}"
    tenant = create_tenant(admin_dsn, slug)
    add_user(admin_dsn, tenant, "kim.minsu", hash_password(PASSWORD), ["user"])
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{free_port()}"]})
    server = start_gateway(tmp_path, data, db_name=test_db_name, key_dir=key_dir,
                           gateway_redis_prefix=f"t-{uuid.uuid4().hex}", login_free_failures_per_user=3,
                           login_free_failures_per_address=12, login_backoff_base_seconds=2)
    yield server, slug
    server.stop()


def _login(client: httpx.Client, slug: str, username: str, password: str) -> httpx.Response:
    return client.post("/api/v1/auth/token", json={"tenant": slug, "username": username, "password": password})


def test_user_locked_out_with_growing_back_off_alike_for_unknown_users(throttled: tuple[GatewayServer, str]) -> None:
    server, slug = throttled
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        locked = []
        for username, password in (("kim.minsu", PASSWORD), ("no.such.user", "wrong")):
            statuses = [_login(c, slug, username, "wrong").status_code for _ in range(4)]
            assert statuses == [401, 401, 401, 401]  # the 4th failure (1 past the free 3) locks for 2 s
            locked.append(_login(c, slug, username, password))  # even the right password
        for r in locked:
            assert r.status_code == 429 and r.headers["content-type"].startswith("application/problem+json")
            assert 1 <= int(r.headers["retry-after"]) <= 2
        assert [(r.json()["type"], r.json()["title"], r.json()["status"]) for r in locked] == \
            [("urn:doctag:problem:login-throttled", "Too many requests", 429)] * 2
        time.sleep(int(locked[0].headers["retry-after"]) + 0.2)
        # Another failure now locks for 4 s (exponential), again refusing the right password.
        assert _login(c, slug, "kim.minsu", "wrong").status_code == 401
        r = _login(c, slug, "kim.minsu", PASSWORD)
        assert r.status_code == 429 and 3 <= int(r.headers["retry-after"]) <= 4
        time.sleep(int(r.headers["retry-after"]) + 0.2)
        # The right password after the lock: a token, and the user's failures are cleared.
        assert _login(c, slug, "kim.minsu", PASSWORD).status_code == 200
        assert [_login(c, slug, "kim.minsu", "wrong").status_code for _ in range(3)] == [401, 401, 401]


def test_source_address_locked_out_across_users(throttled: tuple[GatewayServer, str]) -> None:
    server, slug = throttled
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        # 13 failures from one address, each for a different user (no user reaches its own limit).
        assert {_login(c, slug, f"guess{i}", "wrong").status_code for i in range(13)} == {401}
        r = _login(c, slug, "kim.minsu", PASSWORD)
        assert r.status_code == 429 and "retry-after" in r.headers


def test_forwarded_address_counts_only_from_a_trusted_forwarder(throttled: tuple[GatewayServer, str]) -> None:
    """A client that is not a trusted forwarder cannot spread its failures over made-up addresses."""
    server, slug = throttled
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        for i in range(13):
            r = c.post("/api/v1/auth/token", json={"tenant": slug, "username": f"guess{i}", "password": "wrong"},
                       headers={"X-Forwarded-For": f"203.0.113.{i + 1}"})
            assert r.status_code == 401
        assert _login(c, slug, "kim.minsu", PASSWORD).status_code == 429


def test_web_replica_names_each_users_address(tmp_path: Path, test_db_name: str, key_dir: Path,
                                              admin_dsn: str) -> None:
    """UI logins all come from the web replica: one user's failures lock that user's address, not
    every UI user's."""
    slug = f"th-{uuid.uuid4().hex[:8]}"
    tenant = create_tenant(admin_dsn, slug)
    add_user(admin_dsn, tenant, "kim.minsu", hash_password(PASSWORD), ["user"])
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{free_port()}"]})
    server = start_gateway(tmp_path, data, db_name=test_db_name, key_dir=key_dir,
                           gateway_redis_prefix=f"t-{uuid.uuid4().hex}", login_free_failures_per_user=3,
                           login_free_failures_per_address=12, login_backoff_base_seconds=30,
                           gateway_trusted_forwarders=["127.0.0.1/32"])
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
            def login(username: str, password: str, address: str) -> int:
                return c.post("/api/v1/auth/token", json={"tenant": slug, "username": username, "password": password},
                              headers={"X-Forwarded-For": address}).status_code

            assert {login(f"guess{i}", "wrong", "198.51.100.7") for i in range(13)} == {401}
            assert login("kim.minsu", PASSWORD, "198.51.100.7") == 429   # the guessing address is locked
            assert login("kim.minsu", PASSWORD, "198.51.100.8") == 200   # another user's address is not
    finally:
        server.stop()


# ----------------------------------------------------------------- rate limits across two processes

def _spawn(config: Path, db_name: str, key_dir: Path, state: Path, prefix: str) -> tuple[subprocess.Popen[bytes], int]:
    port, status = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCTAG_")}
    env.update({"DOCTAG_GATEWAY_CONFIG": str(config), "DOCTAG_HTTP_PORT": str(port),
                "DOCTAG_GATEWAY_STATUS_PORT": str(status), "DOCTAG_DB_NAME": db_name,
                "DOCTAG_STATE_DIR": str(state), "DOCTAG_JWT_PUBLIC_KEY_FILE": str(key_dir / "jwt_public.pem"),
                "DOCTAG_JWT_PRIVATE_KEY_FILE": str(key_dir / "jwt_private.pem"),
                "DOCTAG_GATEWAY_REDIS_PREFIX": prefix, "DOCTAG_LOG_LEVEL": "WARNING",
                "DOCTAG_GATEWAY_TOKEN_REVOCATION": "false"})
    proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{status}/readyz", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.1)


async def _burst(ports: list[int], headers: dict[str, str], total: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        return list(await asyncio.gather(*(
            client.get(f"http://127.0.0.1:{ports[i % len(ports)]}/api/v1/search", headers=headers)
            for i in range(total))))


def test_redis_rate_limit_exact_across_two_gateway_processes(tmp_path: Path, test_db_name: str, key_dir: Path,
                                                             make_token) -> None:  # type: ignore[no-untyped-def]
    upstream = ServerThread(echo_app("se"), free_port()).start()
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{upstream.port}"]})
    limit = 25
    data["services"][1]["routes"][0]["plugins"] = [{"name": "rate-limiting", "config": {
        "hour": limit, "limit_by": "credential", "policy": "redis", "redis": {"host": "127.0.0.1", "port": 6379}}}]
    config = write_config(parse_config(data, "test"), tmp_path / "kong.yml")
    prefix = f"t-{uuid.uuid4().hex}"
    procs = [_spawn(config, test_db_name, key_dir, tmp_path / f"state{i}", prefix) for i in range(2)]
    try:
        if time.time() % 3600 > 3590:  # do not straddle the hour's window boundary
            time.sleep(3600 - time.time() % 3600 + 0.5)
        tenant, other = str(uuid.uuid4()), str(uuid.uuid4())
        headers = {"Authorization": f"Bearer {make_token(tenant)}"}
        answers = asyncio.run(_burst([p for _, p in procs], headers, 70))
        counts = Counter(r.status_code for r in answers)
        assert counts == {200: limit, 429: 70 - limit}, counts
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["detail"] == "API rate limit exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert refused.headers["x-ratelimit-remaining-hour"] == "0" and refused.headers["ratelimit-limit"] == "25"
        allowed = [r for r in answers if r.status_code == 200]
        assert sorted(int(r.headers["x-ratelimit-remaining-hour"]) for r in allowed) == list(range(limit))
        # Another tenant has its own allowance (limit_by credential = the caller's tenant).
        other_answer = asyncio.run(_burst([procs[0][1]], {"Authorization": f"Bearer {make_token(other)}"}, 1))[0]
        assert other_answer.status_code == 200 and other_answer.headers["ratelimit-remaining"] == str(limit - 1)
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=20)
        upstream.stop()
