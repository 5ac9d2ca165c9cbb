"""The operator CLI against the real PostgreSQL: idempotent tenant/user creation, clear errors."""
from __future__ import annotations

import io
import uuid

import psycopg
import pytest

from services.cli.main import main
from services.common.passwords import verify_password

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, test_db_name: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCTAG_DB_NAME", test_db_name)

    def run(*argv: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(list(argv))

    return run


def test_tenant_and_user_creation_is_idempotent(cli, admin_dsn, capsys) -> None:  # type: ignore[no-untyped-def]
    slug = f"dept-{uuid.uuid4().hex[:6]}"
    assert cli("tenant", "create", slug, "--name", "기획재정과", "--storage-quota", "5000") == 0
    assert "created" in capsys.readouterr().out
    assert cli("tenant", "create", slug, "--name", "기획재정과") == 0
    assert "already exists" in capsys.readouterr().out

    assert cli("user", "create", slug, "kim", "--password-stdin", "--role", "tenant_admin", stdin="s3cret-pass\n") == 0
    assert cli("user", "create", slug, "kim", "--password-stdin", "--role", "tenant_admin", stdin="s3cret-pass\n") == 0
    assert "unchanged" in capsys.readouterr().out
    assert cli("user", "create", slug, "kim", "--password-stdin", stdin="another-pass\n") == 1
    assert "already exists" in capsys.readouterr().err

    with psycopg.connect(admin_dsn) as conn:
        quota = conn.execute("SELECT q.quota_bytes FROM documents.quotas q "
                             "JOIN identity.tenants t ON t.id = q.tenant_id WHERE t.slug = %s", (slug,)).fetchone()[0]
        pw_hash, roles = conn.execute(
            "SELECT password_hash, roles FROM identity.users WHERE username = 'kim'").fetchone()
    assert quota == 5000 and roles == ["tenant_admin"]
    assert verify_password(pw_hash, "s3cret-pass") and "s3cret-pass" not in pw_hash


def test_clear_errors(cli, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli("tenant", "create", "Bad Slug!", "--name", "x") == 1
    assert "SLUG" in capsys.readouterr().err
    assert cli("user", "create", "no-such-tenant", "lee", "--password-stdin", stdin="password123\n") == 1
    assert "no tenant" in capsys.readouterr().err
    slug = f"dept-{uuid.uuid4().hex[:6]}"
    assert cli("tenant", "create", slug, "--name", "총무과") == 0
    assert cli("user", "create", slug, "lee") == 1
    assert "--password-stdin" in capsys.readouterr().err
    assert cli("user", "create", slug, "lee", "--password-stdin", stdin="short\n") == 1
    assert "at least 8" in capsys.readouterr().err


def test_a_new_department_gets_the_default_quota_of_100_gib(admin_dsn: str) -> None:
    from services.cli import admin

    slug = f"dq-{uuid.uuid4().hex[:6]}"
    admin.create_tenant(admin_dsn, slug, "기본 할당 부서", None)
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT q.quota_bytes FROM documents.quotas q JOIN identity.tenants t "
                           "ON t.id = q.tenant_id WHERE t.slug = %s", (slug,)).fetchone()
    assert row is not None and row[0] == 100 * 1024**3


def test_tenant_daily_api_quota_set_at_creation_and_changed(cli, admin_dsn, capsys) -> None:  # type: ignore[no-untyped-def]
    slug = f"api-{uuid.uuid4().hex[:6]}"
    assert cli("tenant", "create", slug, "--name", "소규모 부서", "--api-daily-quota", "5000") == 0
    assert cli("tenant", "create", slug, "--name", "소규모 부서", "--api-daily-quota", "7000") == 0
    assert "daily API quota" in capsys.readouterr().out
    assert cli("tenant", "create", slug, "--name", "x", "--api-daily-quota", "-1") == 1
    with psycopg.connect(admin_dsn) as conn:
        quota = conn.execute("SELECT api_daily_quota FROM identity.tenants WHERE slug = %s", (slug,)).fetchone()
    assert quota == (7000,)


def test_keys_rotate(cli, capsys, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCTAG_STATE_DIR", str(tmp_path))
    assert cli("keys", "ensure") == 0
    assert cli("keys", "rotate") == 0
    out = capsys.readouterr().out
    assert "new signing key" in out
    assert (tmp_path / "keys" / "jwt_public.pem").read_text().count("BEGIN PUBLIC KEY") == 2
