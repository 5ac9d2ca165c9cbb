"""Fixtures shared by the integration tests of the upload service."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.upload.settings import UploadSettings
from tests.conftest import AMQP_URL, DB_HOST, DB_PORT


@pytest.fixture
def upload_settings(test_db_name: str, amqp_prefix: str, key_dir: Path, tmp_path: Path) -> UploadSettings:
    """Upload against this session's database and queues, its blobs in the test's own folder."""
    return UploadSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=test_db_name, amqp_url=AMQP_URL,
                          amqp_prefix=amqp_prefix, jwt_public_key_file=key_dir / "jwt_public.pem",
                          blob_dir=tmp_path / "blobs", max_upload_bytes=1024 * 1024, relay_poll_seconds=0.2)
