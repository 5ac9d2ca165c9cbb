"""Shared fixtures. Integration tests run against the real PostgreSQL and RabbitMQ on
loopback, each test session in its own freshly migrated database, with its own queue/exchange
prefix and its own state directory, all removed afterwards.

Isolation does not depend on each test remembering to pass settings: at import, before any
test or service starts, the environment every in-process setting and every started service
reads (`DOCTAG_DB_NAME`, `DOCTAG_AMQP_PREFIX`, `DOCTAG_STATE_DIR`, `DOCTAG_MODEL_STORE`) is
pointed at this session's resources, so a test cannot reach the platform that `make up`
runs on the same machine (its database `doctag`, its queues, `var/`), even by omission.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from services.common import capability, pki
from services.common.auth import ensure_keypair, sign_token
from services.common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "samples"
DATA = SHARED / "data"

# A process the tests start inherits the session's id (and so its names) instead of making new ones.
SESSION_ID = os.environ.setdefault("DOCTAG_TEST_SESSION_ID", uuid.uuid4().hex[:10])
TEST_DB_NAME = f"doctag_test_{SESSION_ID}"
TEST_AMQP_PREFIX = f"doctag-test-{SESSION_ID}"
TEST_STATE_DIR = Path(tempfile.gettempdir()) / f"doctag-test-state-{SESSION_ID}"
os.environ["DOCTAG_DB_NAME"] = TEST_DB_NAME
os.environ["DOCTAG_AMQP_PREFIX"] = TEST_AMQP_PREFIX
os.environ["DOCTAG_STATE_DIR"] = str(TEST_STATE_DIR)
os.environ["DOCTAG_MODEL_STORE"] = str(TEST_STATE_DIR / "models")
# Mutual TLS as in production: the session's own CA and a certificate per role, and upload's job
# capability keys, made before any service or setting reads them.
os.environ["DOCTAG_TLS_DIR"] = str(TEST_STATE_DIR / "pki")
os.environ["DOCTAG_JOB_CAPABILITY_PRIVATE_KEY_FILE"] = str(TEST_STATE_DIR / "keys" / capability.PRIVATE_NAME)
os.environ["DOCTAG_JOB_CAPABILITY_PUBLIC_KEY_FILE"] = str(TEST_STATE_DIR / "keys" / capability.PUBLIC_NAME)
pki.ensure_local(TEST_STATE_DIR / "pki")
capability.ensure_keypair(TEST_STATE_DIR / "keys")
os.environ["DOCTAG_GATEWAY_REDIS_PREFIX"] = f"doctag-test-{SESSION_ID}"
# In-process services and commands that call model-serving (search's query embeddings, reindex)
# reach none unless a test starts one and names it: never the platform's model-serving on 9121.
# Port 1 on loopback refuses at once.
os.environ["DOCTAG_MODEL_GRPC_TARGET"] = "127.0.0.1:1"
# The ONNX export of the e5-hybrid encoder is made once per machine, not per test process
# (onnx_encoder.py keys the cache by everything the export depends on, so sharing it is safe).
os.environ.setdefault("DOCTAG_ONNX_CACHE_DIR", str(REPO / "var" / "onnx-cache"))

DB_HOST = os.environ.get("DOCTAG_DB_HOST", "127.0.0.1")
DB_PORT = int(os.environ.get("DOCTAG_DB_PORT", "5432"))
DB_ADMIN = os.environ.get("DOCTAG_TEST_DB_ADMIN", "postgres")
AMQP_URL = os.environ.get("DOCTAG_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def pytest_sessionstart(session: pytest.Session) -> None:
    TEST_STATE_DIR.mkdir(parents=True, exist_ok=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TEST_STATE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def test_db_name() -> Iterator[str]:
    """A new database with all migrations applied; dropped after the session."""
    from services.common.migrate import upgrade

    name = TEST_DB_NAME
    settings = CommonSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=name)
    upgrade(settings, user=DB_ADMIN)
    yield name
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user=DB_ADMIN, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def admin_dsn(test_db_name: str) -> str:
    return f"host={DB_HOST} port={DB_PORT} user={DB_ADMIN} dbname={test_db_name}"


@pytest.fixture(scope="session")
def amqp_prefix() -> str:
    return TEST_AMQP_PREFIX


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys")
    ensure_keypair(path)
    return path


@pytest.fixture(scope="session")
def make_token(key_dir: Path):  # type: ignore[no-untyped-def]
    """make_token(tenant_id, roles=("user",), ttl=600, user_id=None) -> signed JWT."""

    def _make(tenant_id: str, roles: tuple[str, ...] = ("user",), ttl: int = 600, user_id: str | None = None,
              tenant_slug: str = "t", username: str = "tester") -> str:
        return sign_token(private_key_file=key_dir / "jwt_private.pem", user_id=user_id or str(uuid.uuid4()),
                          tenant_id=tenant_id, tenant_slug=tenant_slug, username=username, roles=roles,
                          issuer="doctag", audience="doctag-api", ttl_seconds=ttl)

    return _make


def create_tenant(admin_dsn: str, slug: str, quota_bytes: int = 100 * 1024 * 1024) -> str:
    """Inserts a tenant (identity) and its storage quota (documents) as the admin role."""
    tenant_id = str(uuid.uuid4())
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO identity.tenants (id, slug, name) VALUES (%s, %s, %s)", (tenant_id, slug, slug))
        conn.execute("INSERT INTO documents.quotas (tenant_id, quota_bytes) VALUES (%s, %s)", (tenant_id, quota_bytes))
    return tenant_id
