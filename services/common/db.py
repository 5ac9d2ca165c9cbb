"""PostgreSQL access with psycopg 3: a pool per service and tenant-scoped transactions.

Every tenant-scoped table has row-level security keyed on the setting
`app.tenant_id`; `tenant_transaction` sets it (transaction-local) from the
verified token before any query runs. Without it a query sees no rows.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

# A connection of the pool: its rows are dicts (the pool sets row_factory=dict_row).
DictConnection: TypeAlias = AsyncConnection[DictRow]


class Database:
    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.pool: AsyncConnectionPool[DictConnection] = AsyncConnectionPool(
            dsn, min_size=min_size, max_size=max_size, open=False,
            kwargs={"row_factory": dict_row, "autocommit": False},
            check=AsyncConnectionPool.check_connection,
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[DictConnection]:
        """A transaction with no tenant set (sees no tenant-scoped rows)."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def tenant_transaction(self, tenant_id: str) -> AsyncIterator[DictConnection]:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant_id),))
            yield conn

    async def ping(self) -> None:
        async with self.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
