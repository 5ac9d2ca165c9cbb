"""The platform's cursor key lives in the state directory (created on first use, 0600)."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.common import cursors
from services.common.settings import CommonSettings


def test_platform_cursor_key_is_created_in_the_state_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTAG_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("DOCTAG_CURSOR_KEY_FILE", raising=False)
    path = CommonSettings().cursor_key_path
    assert path == tmp_path / "keys" / "cursor_hmac.key"
    key = cursors.platform_key()
    assert len(key) >= 32 and path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cursors.platform_key() == key
