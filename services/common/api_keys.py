"""API keys for machine clients (the gateway's `key-auth`): made here, stored as SHA-256.

A key is `dtk_` and 43 random URL-safe characters (256 bits): too long to guess, so a plain
SHA-256 (not a slow password hash) is a safe thing to store and lets the gateway find a key
with one indexed lookup.
"""
from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "dtk_"
KEY_ROLES = ("user", "tenant_admin")


def new_key() -> str:
    return f"{KEY_PREFIX}{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
