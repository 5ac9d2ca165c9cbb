"""Fixtures shared by the integration tests: the upload service's settings, the search role's pool."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.db import Database
from services.search.settings import SearchSettings
from services.upload.settings import UploadSettings
from tests.conftest import AMQP_URL, DB_HOST, DB_PORT


@pytest.fixture
def upload_settings(test_db_name: str, amqp_prefix: str, key_dir: Path, tmp_path: Path) -> UploadSettings:
    """Upload against this session's database and queues, its blobs in the test's own folder."""
    return UploadSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=test_db_name, amqp_url=AMQP_URL,
                          amqp_prefix=amqp_prefix, jwt_public_key_file=key_dir / "jwt_public.pem",
                          blob_dir=tmp_path / "blobs", max_upload_bytes=1024 * 1024, relay_poll_seconds=0.2)


@pytest.fixture
async def db(test_db_name: str) -> AsyncIterator[Database]:
    """A pool of the search service's role (row-level security applies) on this session's database;
    a module may define its own `db`."""
    database = Database(SearchSettings(db_name=test_db_name).dsn(), max_size=2)
    await database.open()
    yield database
    await database.close()
