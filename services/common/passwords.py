"""Password hashing with argon2id (argon2-cffi), shared by the gateway's token endpoint
and the operator CLI that creates users.

Hashes are self-describing PHC strings (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
so the parameters can be raised later: `check_password` tells the caller when a stored
hash was made with weaker parameters than the current ones and hands back a new hash
to store.
"""
from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's defaults follow RFC 9106's low-memory profile (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher(type=Type.ID)

# Verified against when the user does not exist, so that an unknown tenant or user
# costs the same time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash("doctag-no-such-user")

MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class PasswordCheck:
    ok: bool
    # A fresh hash to store when `ok` and the stored one uses outdated parameters.
    new_hash: str | None = None


def hash_password(password: str) -> str:
    """An argon2id PHC string for `password` (non-empty, at most 1024 characters)."""
    if not password:
        raise ValueError("password must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"password must be at most {MAX_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches `password_hash`; False on mismatch or a malformed hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with parameters other than the current ones."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def check_password(password_hash: str | None, password: str) -> PasswordCheck:
    """Verifies and, when the hash is outdated, rehashes in one step.

    `password_hash=None` (unknown user) still spends the time of one verification.
    """
    if password_hash is None:
        verify_password(_DUMMY_HASH, password)
        return PasswordCheck(ok=False)
    if not verify_password(password_hash, password):
        return PasswordCheck(ok=False)
    return PasswordCheck(ok=True, new_hash=_hasher.hash(password) if needs_rehash(password_hash) else None)
