"""Applies the database migrations (Alembic) as the admin role; creates the database if missing."""
from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.engine import URL

from .settings import CommonSettings

# Alembic scripts live with the other operator artefacts under infra/ (see ARCHITECTURE.md).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "infra" / "migrations"


def admin_url(settings: CommonSettings, user: str, password: str, database: str | None = None) -> str:
    """SQLAlchemy URL for Alembic: the password escaped, a socket directory (DOCTAG_DB_HOST starting
    with '/') and the TLS settings (DOCTAG_DB_SSLMODE) passed as libpq parameters."""
    query = dict(settings.db_tls_params())
    host: str | None = settings.db_host
    port: int | None = settings.db_port
    if settings.db_host.startswith("/"):
        query.update(host=settings.db_host, port=str(settings.db_port))
        host = port = None
    url = URL.create("postgresql+psycopg", username=user, password=password or None, host=host, port=port,
                     database=database or settings.db_name, query=query)
    return url.render_as_string(hide_password=False)


def ensure_database(settings: CommonSettings, user: str, password: str) -> bool:
    """Creates the database when it does not exist; returns True when it created it."""
    with psycopg.connect(settings.dsn(user=user, password=password).replace(
            f"dbname='{settings.db_name}'", "dbname='postgres'"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.db_name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
            sql.Identifier(settings.db_name)))
        return True


def alembic_config(settings: CommonSettings, user: str, password: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", admin_url(settings, user, password).replace("%", "%%"))
    return cfg


def upgrade(settings: CommonSettings, user: str = "postgres", password: str = "", revision: str = "head") -> None:
    ensure_database(settings, user, password)
    command.upgrade(alembic_config(settings, user, password), revision)
