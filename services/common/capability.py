"""Job capabilities: what upload signs when it publishes a tagging job, so that the tenant of the
pipeline's calls comes from upload's own signature, never from a request field.

A capability is a compact JWS (EdDSA / Ed25519, via PyJWT and cryptography) with the claims
`sub` (document id), `tenant`, `sha256` (the content version), `iat`, `exp`, `iss`, `aud`. Upload
holds the private key and signs; it verifies the capability the worker presents with
ReadContent / RecordTaggingResult, and model-serving verifies it with the public key to learn the
tenant of a Predict (its inference log). The worker only carries it.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

ALGORITHM = "EdDSA"
ISSUER = "doctag-upload"
AUDIENCE = "doctag-job"
PRIVATE_NAME, PUBLIC_NAME = "job_capability_ed25519.pem", "job_capability_ed25519.pub.pem"


class InvalidCapability(Exception):
    """Not signed by upload, expired, or not for this document / tenant / content version."""


@dataclass(frozen=True)
class JobCapability:
    document_id: str
    tenant_id: str
    sha256: str
    expires_at: int


def ensure_keypair(key_dir: Path) -> tuple[Path, Path]:
    """Creates upload's Ed25519 capability key pair in `key_dir` (private key 0600); never overwrites."""
    key_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = key_dir / PRIVATE_NAME, key_dir / PUBLIC_NAME
    if private_path.exists() and public_path.exists():
        return private_path, public_path
    key = ed25519.Ed25519PrivateKey.generate()
    tmp = private_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    os.replace(tmp, private_path)
    return private_path, public_path


@lru_cache(maxsize=8)
def _read(path: str) -> bytes:
    return Path(path).read_bytes()


class CapabilitySigner:
    def __init__(self, private_key_file: Path, ttl_seconds: int) -> None:
        self.private_key_file = private_key_file
        self.ttl_seconds = ttl_seconds

    def sign(self, document_id: str, tenant_id: str, sha256: str, *, now: int | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": document_id, "tenant": tenant_id, "sha256": sha256,
                  "iat": issued, "exp": issued + self.ttl_seconds, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, _read(str(self.private_key_file)), algorithm=ALGORITHM)


class CapabilityVerifier:
    def __init__(self, public_key_file: Path) -> None:
        self.public_key_file = public_key_file

    def verify(self, token: str) -> JobCapability:
        """Signature, issuer, audience and expiry; raises InvalidCapability otherwise."""
        try:
            claims = jwt.decode(token, _read(str(self.public_key_file)), algorithms=[ALGORITHM], issuer=ISSUER,
                                audience=AUDIENCE, options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise InvalidCapability("the job capability has expired") from None
        except (jwt.InvalidTokenError, OSError) as exc:
            raise InvalidCapability(f"the job capability is not valid: {exc}") from None
        tenant, sha = claims.get("tenant"), claims.get("sha256")
        if not isinstance(tenant, str) or not isinstance(sha, str):
            raise InvalidCapability("the job capability lacks tenant or sha256")
        return JobCapability(str(claims["sub"]), tenant, sha, int(claims["exp"]))

    def verify_for(self, token: str | None, document_id: str, *, sha256: str | None = None) -> JobCapability:
        """As verify(), and the capability must be for `document_id` (and content `sha256` when given)."""
        if not token:
            raise InvalidCapability("a job capability is required")
        cap = self.verify(token)
        if cap.document_id != document_id:
            raise InvalidCapability("the job capability is for another document")
        if sha256 is not None and cap.sha256 != sha256:
            raise InvalidCapability("the job capability is for another content version")
        return cap
