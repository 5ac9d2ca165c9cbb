"""Operator actions on tenants and users, run as the database admin role.

Tenants live in identity (the gateway's schema) and their storage quota in
documents (the upload service's schema); creating a tenant writes both in one
transaction.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import psycopg
from psycopg.rows import DictRow, dict_row

from services.common.roles import ROLES

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
DEFAULT_QUOTA_BYTES = 100 * 1024**3   # 100 GiB per department unless set (the seed design's default)


class AdminError(Exception):
    """A clear, user-facing error (the CLI prints it and exits 1)."""


@dataclass
class Result:
    created: bool
    message: str


def _connect(dsn: str) -> psycopg.Connection[DictRow]:
    return psycopg.connect(dsn, row_factory=dict_row)


def create_tenant(dsn: str, slug: str, name: str, storage_quota: int | None,
                  api_daily_quota: int | None = None) -> Result:
    if not SLUG_RE.match(slug):
        raise AdminError("tenant SLUG must be 2-63 characters of a-z, 0-9 and '-', starting with a letter or digit")
    if not name.strip() or len(name) > 200:
        raise AdminError("--name must be 1-200 characters")
    if storage_quota is not None and storage_quota < 0:
        raise AdminError("--storage-quota must be a number of bytes >= 0")
    if api_daily_quota is not None and not 0 <= api_daily_quota <= 2**31 - 1:
        raise AdminError("--api-daily-quota must be a number of calls a day >= 0")
    with _connect(dsn) as conn, conn.transaction():
        row = conn.execute("SELECT id, name FROM identity.tenants WHERE slug = %s", (slug,)).fetchone()
        if row:
            changes = []
            if row["name"] != name:
                conn.execute("UPDATE identity.tenants SET name = %s WHERE id = %s", (name, row["id"]))
                changes.append("name")
            if storage_quota is not None:
                conn.execute(
                    "INSERT INTO documents.quotas (tenant_id, quota_bytes) VALUES (%s, %s) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET quota_bytes = EXCLUDED.quota_bytes, updated_at = now()",
                    (row["id"], storage_quota))
                changes.append("storage quota")
            if api_daily_quota is not None:
                conn.execute("UPDATE identity.tenants SET api_daily_quota = %s WHERE id = %s",
                             (api_daily_quota, row["id"]))
                changes.append("daily API quota")
            what = f"updated {', '.join(changes)}" if changes else "unchanged"
            return Result(False, f"tenant {slug} already exists ({row['id']}); {what}")
        tenant_id = str(uuid.uuid4())
        conn.execute("INSERT INTO identity.tenants (id, slug, name, api_daily_quota) VALUES (%s, %s, %s, %s)",
                     (tenant_id, slug, name, api_daily_quota))
        conn.execute("INSERT INTO documents.quotas (tenant_id, quota_bytes) VALUES (%s, %s)",
                     (tenant_id, DEFAULT_QUOTA_BYTES if storage_quota is None else storage_quota))
    return Result(True, f"tenant {slug} created ({tenant_id})")


def list_tenants(dsn: str) -> list[DictRow]:
    with _connect(dsn) as conn:
        return conn.execute(
            "SELECT t.id, t.slug, t.name, q.quota_bytes, q.used_bytes, t.api_daily_quota, "
            "(SELECT count(*) FROM identity.users u WHERE u.tenant_id = t.id) AS users "
            "FROM identity.tenants t LEFT JOIN documents.quotas q ON q.tenant_id = t.id ORDER BY t.slug").fetchall()


def _tenant_id(conn: psycopg.Connection[DictRow], slug: str) -> str:
    row = conn.execute("SELECT id FROM identity.tenants WHERE slug = %s", (slug,)).fetchone()
    if not row:
        raise AdminError(f"no tenant {slug!r}; create it first with `doctag tenant create {slug} --name ...`")
    return str(row["id"])


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise AdminError("the password must be at least 8 characters")
    if len(password) > 1024:
        raise AdminError("the password must be at most 1024 characters")


def create_user(dsn: str, slug: str, username: str, password: str, role: str) -> Result:
    """Creates a user; running it again with the same password and role changes nothing."""
    from services.common.passwords import hash_password, verify_password

    if not USERNAME_RE.match(username):
        raise AdminError("USERNAME must be 1-64 characters of letters, digits and . _ @ -")
    if role not in ROLES:
        raise AdminError(f"--role must be one of {', '.join(ROLES)}")
    _check_password(password)
    with _connect(dsn) as conn, conn.transaction():
        tenant_id = _tenant_id(conn, slug)
        row = conn.execute("SELECT id, password_hash, roles FROM identity.users WHERE tenant_id = %s AND username = %s",
                           (tenant_id, username)).fetchone()
        if row:
            if row["roles"] == [role] and verify_password(row["password_hash"], password):
                return Result(False, f"user {username} already exists in {slug} with that password and role; unchanged")
            raise AdminError(f"user {username} already exists in {slug} with another password or role; "
                             f"use `doctag user set-password` or `doctag user set-role`")
        user_id = str(uuid.uuid4())
        conn.execute("INSERT INTO identity.users (id, tenant_id, username, password_hash, roles) "
                     "VALUES (%s, %s, %s, %s, %s)", (user_id, tenant_id, username, hash_password(password), [role]))
    return Result(True, f"user {username} created in {slug} with role {role} ({user_id})")


def set_password(dsn: str, slug: str, username: str, password: str) -> Result:
    from services.common.passwords import hash_password

    _check_password(password)
    with _connect(dsn) as conn, conn.transaction():
        tenant_id = _tenant_id(conn, slug)
        # A new password ends every session: tokens of the old generation are refused by the gateway.
        cur = conn.execute("UPDATE identity.users SET password_hash = %s, token_generation = token_generation + 1, "
                           "updated_at = now() WHERE tenant_id = %s AND username = %s",
                           (hash_password(password), tenant_id, username))
        if cur.rowcount == 0:
            raise AdminError(f"no user {username!r} in tenant {slug!r}")
    return Result(False, f"password of {username} in {slug} changed")


def set_role(dsn: str, slug: str, username: str, role: str) -> Result:
    if role not in ROLES:
        raise AdminError(f"--role must be one of {', '.join(ROLES)}")
    with _connect(dsn) as conn, conn.transaction():
        tenant_id = _tenant_id(conn, slug)
        cur = conn.execute("UPDATE identity.users SET roles = %s, updated_at = now() "
                           "WHERE tenant_id = %s AND username = %s", ([role], tenant_id, username))
        if cur.rowcount == 0:
            raise AdminError(f"no user {username!r} in tenant {slug!r}")
    return Result(False, f"role of {username} in {slug} is now {role}")


def list_users(dsn: str, slug: str) -> list[DictRow]:
    with _connect(dsn) as conn:
        tenant_id = _tenant_id(conn, slug)
        return conn.execute("SELECT id, username, roles, disabled, created_at FROM identity.users "
                            "WHERE tenant_id = %s ORDER BY username", (tenant_id,)).fetchall()


def create_api_key(dsn: str, slug: str, name: str, roles: list[str]) -> Result:
    """A new API key for the tenant; the key is in the message only (stored as its SHA-256)."""
    from services.common.api_keys import KEY_ROLES, key_hash, new_key

    if not 1 <= len(name) <= 100:
        raise AdminError("NAME must be 1-100 characters")
    if not roles or any(r not in KEY_ROLES for r in roles):
        raise AdminError(f"--role must be one of {', '.join(KEY_ROLES)}")
    key = new_key()
    key_id = str(uuid.uuid4())
    with _connect(dsn) as conn, conn.transaction():
        tenant_id = _tenant_id(conn, slug)
        conn.execute("INSERT INTO identity.api_keys (id, tenant_id, name, key_hash, roles) VALUES (%s, %s, %s, %s, %s)",
                     (key_id, tenant_id, name, key_hash(key), sorted(set(roles))))
    return Result(True, f"API key {name} ({key_id}) for {slug}; keep it now, it is not shown again:\n{key}")


def list_api_keys(dsn: str, slug: str) -> list[DictRow]:
    with _connect(dsn) as conn:
        tenant_id = _tenant_id(conn, slug)
        return conn.execute("SELECT id, name, roles, created_at, revoked_at FROM identity.api_keys "
                            "WHERE tenant_id = %s ORDER BY created_at", (tenant_id,)).fetchall()


def revoke_api_key(dsn: str, slug: str, key_id: str) -> Result:
    try:
        key_id = str(uuid.UUID(key_id))
    except ValueError:
        raise AdminError("ID must be a UUID") from None
    with _connect(dsn) as conn, conn.transaction():
        tenant_id = _tenant_id(conn, slug)
        row = conn.execute("UPDATE identity.api_keys SET revoked_at = coalesce(revoked_at, now()) "
                           "WHERE id = %s AND tenant_id = %s RETURNING id", (key_id, tenant_id)).fetchone()
    if row is None:
        raise AdminError(f"no API key {key_id} in tenant {slug!r}")
    return Result(False, f"API key {key_id} revoked")
