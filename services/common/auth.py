"""JWT verification for every service, and key-pair management for the issuer.

Tokens are RS256 (as Kong's `jwt` plugin verifies them), issued by the gateway.
Services verify them again with the public key: the gateway is the front door,
not the only lock. Claims: `sub` (user id), `tenant` (tenant id), `tenant_slug`,
`roles`, `name`, `iss`, `aud`, `iat`, `exp`, `jti`, `gen` (the user's token generation
when issued; the gateway refuses tokens of an older generation).

Key rotation: the public key file is a bundle of PEM public keys, the current one first
(`doctag keys rotate` makes a new pair and keeps the previous public keys in the bundle, so
tokens signed before the rotation stay valid until they expire). A token's header names
its key (`kid`: a thumbprint of the public key). Verifiers re-read the bundle when the file
changes, so a rotation needs no restart.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
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


KEEP_PUBLIC_KEYS = 3
_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The `kid` of a key: base64url of the first 12 bytes of the SHA-256 of its DER form."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode("ascii")


def parse_public_keys(text: str) -> dict[str, rsa.RSAPublicKey]:
    """kid -> key for every RSA public key in a PEM bundle, in file order (current first)."""
    keys: dict[str, rsa.RSAPublicKey] = {}
    for block in _PEM_BLOCK.findall(text):
        key = serialization.load_pem_public_key(block.encode())
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the public key bundle holds a key that is not RSA")
        keys[key_id(key)] = key
    if not keys:
        raise ValueError("no PEM public key found")
    return keys


class KeySet:
    """The public keys of a bundle file, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, rsa.RSAPublicKey] = {}

    def current(self) -> dict[str, rsa.RSAPublicKey]:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._keys = parse_public_keys(self.path.read_text())
            self._stamp = stamp
        return self._keys

    def key_for(self, token: str) -> rsa.RSAPublicKey:
        """The key named by the token's `kid`; the current key for a token without one."""
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self.current()
        if kid is None:
            return next(iter(keys.values()))
        if not isinstance(kid, str) or kid not in keys:
            raise jwt.InvalidTokenError("the token's key (kid) is not one of the platform's keys")
        return keys[kid]


@lru_cache(maxsize=8)
def key_set(path: str) -> KeySet:
    return KeySet(Path(path))


class _SigningKey:
    """The private key file, read again whenever it changes (after `doctag keys rotate`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._key: rsa.RSAPrivateKey | None = None
        self._kid = ""

    def get(self) -> tuple[rsa.RSAPrivateKey, str]:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp or self._key is None:
            key = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{self.path} is not an RSA private key")
            self._key, self._kid, self._stamp = key, key_id(key.public_key()), stamp
        return self._key, self._kid


@lru_cache(maxsize=8)
def _signing_key(path: str) -> _SigningKey:
    return _SigningKey(Path(path))


def decode_token(token: str, *, public_key_file: Path, issuer: str, audience: str) -> dict[str, Any]:
    """Verifies signature, expiry, issuer and audience; raises jwt.InvalidTokenError otherwise."""
    return jwt.decode(
        token, key_set(str(public_key_file)).key_for(token), algorithms=[ALGORITHM], issuer=issuer,
        audience=audience, options={"require": ["exp", "iat", "sub", "iss", "aud"]}, leeway=5,
    )


def rotate_keypair(key_dir: Path, keep: int = KEEP_PUBLIC_KEYS) -> tuple[str, list[str]]:
    """A new signing key; the public bundle gets it first and keeps the `keep - 1` previous keys.
    Returns the new kid and the kids still accepted."""
    private_path, public_path = ensure_keypair(key_dir)
    previous = parse_public_keys(public_path.read_text())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kept = [key.public_key(), *list(previous.values())[: keep - 1]]
    bundle = b"".join(k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                      for k in kept)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    tmp_priv, tmp_pub = private_path.with_suffix(".tmp"), public_path.with_suffix(".tmp")
    fd = os.open(tmp_priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    tmp_pub.write_bytes(bundle)
    # The bundle first: a token signed with the new key must never meet a verifier without it.
    os.replace(tmp_pub, public_path)
    os.replace(tmp_priv, private_path)
    return key_id(key.public_key()), [key_id(k) for k in kept]


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
    generation: int = 0,
) -> str:
    """Signs an access token (used by the gateway's token endpoint and by tests)."""
    import time
    import uuid

    issued = int(now if now is not None else time.time())
    claims = {
        "iss": issuer, "aud": audience, "sub": user_id, "tenant": tenant_id, "tenant_slug": tenant_slug,
        "name": username, "roles": list(roles), "iat": issued, "exp": issued + ttl_seconds, "jti": str(uuid.uuid4()),
        "gen": generation,
    }
    key, kid = _signing_key(str(private_key_file)).get()
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
