"""services.common.passwords: argon2id hashing, verification and rehash on login."""
from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from services.common.passwords import (
    check_password,
    hash_password,
    needs_rehash,
    verify_password,
)


def test_hash_and_verify() -> None:
    stored = hash_password("한글 비밀번호 1234")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "한글 비밀번호 1234")
    assert not verify_password(stored, "한글 비밀번호 1235")
    assert not verify_password("not-a-hash", "x")
    assert hash_password("same") != hash_password("same")  # salted
    assert not needs_rehash(stored)


def test_password_bounds() -> None:
    with pytest.raises(ValueError):
        hash_password("")
    with pytest.raises(ValueError):
        hash_password("x" * 1025)
    assert verify_password(hash_password("x" * 1024), "x" * 1024)


def test_check_password_rehashes_outdated_hashes() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw")
    assert needs_rehash(weak)
    result = check_password(weak, "pw")
    assert result.ok and result.new_hash is not None and verify_password(result.new_hash, "pw")
    assert not needs_rehash(result.new_hash)
    assert check_password(weak, "wrong") == check_password(None, "pw")
    assert not check_password(None, "pw").ok
    current = hash_password("pw")
    assert check_password(current, "pw").new_hash is None
