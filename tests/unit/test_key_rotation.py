"""Signing key rotation: a bundle of public keys, tokens naming their key, no restart needed."""
from __future__ import annotations

import uuid
from pathlib import Path

import jwt
import pytest

from services.common.auth import decode_token, ensure_keypair, key_set, parse_public_keys, rotate_keypair, sign_token


def _token(private: Path) -> str:
    return sign_token(private_key_file=private, user_id=str(uuid.uuid4()), tenant_id=str(uuid.uuid4()),
                      tenant_slug="hr", username="kim", roles=["user"], issuer="doctag", audience="doctag-api",
                      ttl_seconds=600, generation=3)


def _decode(token: str, public: Path) -> dict:
    return decode_token(token, public_key_file=public, issuer="doctag", audience="doctag-api")


def test_rotation_keeps_recent_keys_and_verifiers_follow_the_file(tmp_path: Path) -> None:
    private, public = ensure_keypair(tmp_path)
    before = _token(private)
    first_kid = jwt.get_unverified_header(before)["kid"]
    assert _decode(before, public)["gen"] == 3
    new_kid, kept = rotate_keypair(tmp_path)
    after = _token(private)
    assert jwt.get_unverified_header(after)["kid"] == new_kid != first_kid
    assert kept == [new_kid, first_kid] and list(parse_public_keys(public.read_text())) == kept
    # The same verifier (cached key set) accepts both without a restart.
    assert _decode(before, public)["sub"] and _decode(after, public)["sub"]
    for _ in range(2):
        rotate_keypair(tmp_path)
    assert first_kid not in key_set(str(public)).current()
    with pytest.raises(jwt.InvalidTokenError, match="not one of the platform's keys"):
        _decode(before, public)
    assert _decode(after, public)["sub"]  # still among the three kept


def test_token_without_kid_is_checked_against_the_current_key(tmp_path: Path) -> None:
    private, public = ensure_keypair(tmp_path)
    unnamed = jwt.encode({"iss": "doctag", "aud": "doctag-api", "sub": "u", "iat": 1, "exp": 2**31},
                         private.read_text(), algorithm="RS256")
    assert _decode(unnamed, public)["sub"] == "u"
