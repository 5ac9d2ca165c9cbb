"""Signed page cursors: opaque to clients, impossible to forge or to reuse elsewhere.

A cursor is `base64url(payload JSON) "." base64url(HMAC-SHA256)`; the MAC covers the
payload, the tenant and the query the cursor was made for (`binding`), with a platform
key shared by every service (`DOCTAG_CURSOR_KEY_FILE`, default
`<state_dir>/keys/cursor_hmac.key`, 32 random bytes made on first use). So a cursor
altered by hand, made for another tenant or for another query is refused before its
payload is parsed, and the payload, being the service's own, is a small flat object.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

from .settings import CommonSettings

MAX_CURSOR_CHARS = 512
_MAC_BYTES = 16


class CursorError(ValueError):
    """The cursor is malformed, altered, or made for another tenant or query."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=4)
def _key_from(path: str) -> bytes:
    key_path = Path(path)
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
    key = key_path.read_bytes()
    if len(key) < 32:
        raise RuntimeError(f"the cursor key {key_path} is shorter than 32 bytes")
    return key


def platform_key() -> bytes:
    settings = CommonSettings()
    return _key_from(str(settings.cursor_key_path))


def _mac(key: bytes, payload: bytes, tenant: str, binding: Any) -> bytes:
    bound = json.dumps([tenant, binding], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, bound.encode("utf-8") + b"\x00" + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def seal(payload: dict[str, Any], *, tenant: str, binding: Any = None, key: bytes | None = None) -> str:
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return f"{_b64(raw)}.{_b64(_mac(key or platform_key(), raw, tenant, binding))}"


def unseal(cursor: str, *, tenant: str, binding: Any = None, key: bytes | None = None) -> dict[str, Any]:
    """The payload of a cursor made by `seal` for this tenant and binding; CursorError otherwise."""
    if len(cursor) > MAX_CURSOR_CHARS or cursor.count(".") != 1:
        raise CursorError("the cursor is not valid")
    body, mac = cursor.split(".")
    try:
        raw, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        raise CursorError("the cursor is not valid") from None
    if not hmac.compare_digest(given, _mac(key or platform_key(), raw, tenant, binding)):
        raise CursorError("the cursor was altered or belongs to a different query or tenant; "
                          "use next_cursor from a previous page")
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise CursorError("the cursor is not valid")
    return data
