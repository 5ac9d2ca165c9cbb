"""Alembic environment: migrations are plain SQL run with the admin (owner) role."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, version_table="alembic_version", version_table_schema="public",
                          transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
