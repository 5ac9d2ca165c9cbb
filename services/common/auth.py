"""JWT verification for every service, and key-pair management for the issuer.

Tokens are RS256 (as Kong's `jwt` plugin verifies them), issued by the gateway.
Services verify them again with the public key: the gateway is the front door,
not the only lock. Claims: `sub` (user id), `tenant` (tenant id), `tenant_slug`,
`roles`, `name`, `iss`, `aud`, `iat`, `exp`, `jti`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Request

from .context import tenant_id_var
from .errors import ProblemError

ALGORITHM = "RS256"


@dataclass(frozen=True)
class Principal:
    user_id: str
    tenant_id: str
    tenant_slug: str
    username: str
    roles: tuple[str, ...]


def ensure_keypair(key_dir: Path) -> tuple[Path, Path]:
    """Creates an RSA key pair in `key_dir` on first use; never overwrites one."""
    key_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = key_dir / "jwt_private.pem", key_dir / "jwt_public.pem"
    if private_path.exists() and public_path.exists():
        return private_path, public_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    tmp_priv, tmp_pub = private_path.with_suffix(".tmp"), public_path.with_suffix(".tmp")
    fd = os.open(tmp_priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    tmp_pub.write_bytes(public_pem)
    os.replace(tmp_pub, public_path)
    os.replace(tmp_priv, private_path)
    return private_path, public_path


@lru_cache(maxsize=8)
def _read_key(path: str) -> str:
    return Path(path).read_text()


def decode_token(token: str, *, public_key_file: Path, issuer: str, audience: str) -> dict[str, Any]:
    """Verifies signature, expiry, issuer and audience; raises jwt.InvalidTokenError otherwise."""
    return jwt.decode(
        token, _read_key(str(public_key_file)), algorithms=[ALGORITHM], issuer=issuer, audience=audience,
        options={"require": ["exp", "iat", "sub", "iss", "aud"]}, leeway=5,
    )


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not claims.get("tenant"):
        raise jwt.InvalidTokenError("token lacks tenant or roles")
    return Principal(
        user_id=str(claims["sub"]), tenant_id=str(claims["tenant"]), tenant_slug=str(claims.get("tenant_slug", "")),
        username=str(claims.get("name", "")), roles=tuple(str(r) for r in roles),
    )


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(401, "a bearer token is required in the Authorization header", field="Authorization",
                           headers={"WWW-Authenticate": 'Bearer realm="doctag"'})
    return token.strip()


class TokenVerifier:
    """FastAPI dependency: `principal: Principal = Depends(verifier)`."""

    def __init__(self, public_key_file: Path, issuer: str, audience: str) -> None:
        self.public_key_file = public_key_file
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> Principal:
        try:
            claims = decode_token(token, public_key_file=self.public_key_file, issuer=self.issuer,
                                  audience=self.audience)
            return principal_from_claims(claims)
        except jwt.ExpiredSignatureError:
            raise ProblemError(401, "the token has expired", slug="token-expired", field="Authorization",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        except jwt.InvalidTokenError as exc:
            raise ProblemError(401, f"the token is not valid: {exc}", slug="invalid-token", field="Authorization",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None

    async def __call__(self, request: Request) -> Principal:
        principal = self.verify(bearer_token(request))
        tenant_id_var.set(principal.tenant_id)
        return principal


def sign_token(
    *,
    private_key_file: Path,
    user_id: str,
    tenant_id: str,
    tenant_slug: str,
    username: str,
    roles: list[str] | tuple[str, ...],
    issuer: str,
    audience: str,
    ttl_seconds: int,
    now: int | None = None,
) -> str:
    """Signs an access token (used by the gateway's token endpoint and by tests)."""
    import time
    import uuid

    issued = int(now if now is not None else time.time())
    claims = {
        "iss": issuer, "aud": audience, "sub": user_id, "tenant": tenant_id, "tenant_slug": tenant_slug,
        "name": username, "roles": list(roles), "iat": issued, "exp": issued + ttl_seconds, "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, _read_key(str(private_key_file)), algorithm=ALGORITHM)
