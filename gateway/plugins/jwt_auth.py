"""Kong's `jwt` plugin, RS256 only: find the token, pick the consumer's jwt_secret by
the claim named in `key_claim_name` (default `iss`), verify signature, the claims in
`claims_to_verify`, and the audience.

Deviations from Kong (see gateway/README.md): the audience (`DOCTAG_JWT_AUDIENCE`) is
verified too; tokens are read from headers only (no `uri_param_names`/`cookie_names`,
because the services behind the gateway verify the `Authorization` header again);
the token must carry the platform claims `tenant` and `roles`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from pydantic import Field

from services.common.auth import Principal, principal_from_claims
from services.common.errors import ProblemError

from .base import PluginConfig

_LEEWAY_SECONDS = 5


class JwtConfig(PluginConfig):
    key_claim_name: str = Field("iss", min_length=1)
    claims_to_verify: list[Literal["exp", "nbf"]] = Field(default_factory=list)
    header_names: list[str] = Field(default_factory=lambda: ["authorization"], min_length=1)
    # 0: no limit; otherwise a token may not be valid for longer than this many seconds from now.
    maximum_expiration: int = Field(0, ge=0, le=31_536_000)
    run_on_preflight: bool = True


@dataclass(frozen=True)
class RsaCredential:
    """A consumer's jwt_secret with its public key resolved to PEM text."""

    consumer: str
    key: str
    public_key_pem: str


@dataclass(frozen=True)
class Authenticated:
    principal: Principal
    claims: dict[str, Any]
    credential: RsaCredential


def _unauthorized(detail: str, *, slug: str = "invalid-token", error: str | None = "invalid_token") -> ProblemError:
    challenge = 'Bearer realm="doctag"' + (f', error="{error}"' if error else "")
    return ProblemError(401, detail, slug=slug, field="Authorization", headers={"WWW-Authenticate": challenge})


def find_token(headers: Any, config: JwtConfig) -> str | None:
    """The bearer token from the first configured header that has one."""
    for name in config.header_names:
        value: str | None = headers.get(name)
        if not value:
            continue
        scheme, sep, token = value.strip().partition(" ")
        if sep and scheme.lower() == "bearer" and token.strip():
            return token.strip()
        if not sep and name.lower() != "authorization":
            return value.strip()  # a custom header may carry the bare token, as in Kong
    return None


class JwtVerifier:
    """Verifies tokens against the consumers' RS256 public keys."""

    def __init__(self, credentials: list[RsaCredential], *, audience: str) -> None:
        self.by_key = {c.key: c for c in credentials}
        self.audience = audience

    def authenticate(self, headers: Any, config: JwtConfig, *, now: float | None = None) -> Authenticated:
        token = find_token(headers, config)
        if token is None:
            raise _unauthorized("a bearer token is required in the Authorization header", slug="unauthorized",
                                error=None)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise _unauthorized("the token is not a well-formed JWT") from None
        if header.get("alg") != "RS256":
            raise _unauthorized("the token must be signed with RS256")
        key = unverified.get(config.key_claim_name)
        credential = self.by_key.get(key) if isinstance(key, str) else None
        if credential is None:
            raise _unauthorized(f"no credentials found for the token's '{config.key_claim_name}' claim")
        required = ["sub", *config.claims_to_verify]
        try:
            claims = jwt.decode(
                token, credential.public_key_pem, algorithms=["RS256"], audience=self.audience,
                options={"require": required, "verify_exp": "exp" in config.claims_to_verify,
                         "verify_nbf": "nbf" in config.claims_to_verify, "verify_iat": False},
                leeway=_LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired", slug="token-expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"the token is not valid: {exc}") from None
        if config.maximum_expiration:
            exp = claims.get("exp")
            current = time.time() if now is None else now
            if not isinstance(exp, int | float) or exp - current > config.maximum_expiration:
                raise _unauthorized("the token's expiry is too far in the future")
        try:
            principal = principal_from_claims(claims)
        except (jwt.InvalidTokenError, KeyError) as exc:
            raise _unauthorized(f"the token is not valid: {exc}") from None
        return Authenticated(principal=principal, claims=claims, credential=credential)
