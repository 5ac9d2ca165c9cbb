"""Kong's `jwt` plugin (PRIORITY 1450), RS256 only: find the token, pick the consumer's jwt_secret by
the claim named in `key_claim_name` (default `iss`), verify signature, the claims in
`claims_to_verify`, and the audience.

Deviations from Kong (see gateway/README.md): the audience (`DOCTAG_JWT_AUDIENCE`) is
verified too; the token must carry the platform claims `tenant` and `roles`; a token of an
older generation than its user's (gateway/revocation.py) is refused; a credential's
`rsa_public_key` may hold several keys (rotation), the token's `kid` picks one. A token
found in a query parameter or cookie is passed upstream in `Authorization` as well,
because the services behind the gateway verify it again.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import ConfigError, KongConfig, resolve_secret_value, secret_file
from services.common.auth import KeySet, Principal, key_id, parse_public_keys, principal_from_claims
from services.common.context import tenant_id_var
from services.common.errors import ProblemError

from ...revocation import TokenGenerations
from ..base import Dependencies, PluginHandler, RequestContext
from .schema import Config

JwtConfig = Config
_LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class RsaCredential:
    """A consumer's jwt_secret with its public key(s) resolved to PEM text; `source` is the file
    of a `{file:...}` reference, read again when it changes (key rotation)."""

    consumer: str
    key: str
    public_key_pem: str
    source: Path | None = None


@dataclass(frozen=True)
class Authenticated:
    principal: Principal
    claims: dict[str, Any]
    credential: RsaCredential


def _unauthorized(detail: str, *, slug: str = "invalid-token", error: str | None = "invalid_token",
                  realm: str | None = None) -> ProblemError:
    challenge = f'Bearer realm="{realm or "doctag"}"' + (f', error="{error}"' if error else "")
    return ProblemError(401, detail, slug=slug, field="Authorization", headers={"WWW-Authenticate": challenge})


def find_token(headers: Any, config: Config, query_string: bytes = b"") -> str | None:
    """The token from the first configured query parameter, cookie or header that has one
    (Kong's order)."""
    if config.uri_param_names and query_string:
        params = parse_qs(query_string.decode("latin-1"), keep_blank_values=False)
        for name in config.uri_param_names:
            if params.get(name):
                return params[name][0].strip() or None
    if config.cookie_names and headers.get("cookie"):
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie"))
        except CookieError:
            cookies = SimpleCookie()
        for name in config.cookie_names:
            if name in cookies and cookies[name].value:
                return cookies[name].value
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

    def __init__(self, credentials: list[RsaCredential], *, audience: str, cache_size: int = 4096) -> None:
        self.by_key = {c.key: c for c in credentials}
        self.key_sets = {c.key: _key_set(c) for c in credentials}
        self.audience = audience
        # Tokens whose signature, audience and platform claims were verified, by (token, key claim):
        # the same bytes verify the same way, so only the time claims are checked again on a hit.
        self._verified: OrderedDict[tuple[str, str], tuple[dict[str, Any], RsaCredential, Principal, str]] = \
            OrderedDict()
        self._cache_size = cache_size

    def authenticate(self, headers: Any, config: Config, *, now: float | None = None,
                     query_string: bytes = b"") -> Authenticated:
        token = find_token(headers, config, query_string)
        if token is None:
            raise _unauthorized("a bearer token is required in the Authorization header", slug="unauthorized",
                                error=None, realm=config.realm)
        cache_key = (token, config.key_claim_name)
        verified = self._verified.get(cache_key)
        if verified is not None and verified[3] not in self.key_sets[verified[1].key].current():
            del self._verified[cache_key]  # its key was retired since (rotation)
            verified = None
        if verified is None:
            verified = self._verify(token, config)
            self._verified[cache_key] = verified
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(cache_key)
        claims, credential, principal, _ = verified
        _check_times(claims, config, time.time() if now is None else now)
        return Authenticated(principal=principal, claims=claims, credential=credential)

    def _verify(self, token: str, config: Config) -> tuple[dict[str, Any], RsaCredential, Principal, str]:
        """Signature, algorithm, credential, audience and the platform claims (not the times)."""
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
        try:
            public_key = self.key_sets[credential.key].key_for(token)
            claims: dict[str, Any] = jwt.decode(
                token, public_key, algorithms=["RS256"], audience=self.audience,
                options={"require": ["sub"], "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
            principal = principal_from_claims(claims)
        except (jwt.InvalidTokenError, KeyError) as exc:
            raise _unauthorized(f"the token is not valid: {exc}") from None
        return claims, credential, principal, key_id(public_key)


class _InlineKeys(KeySet):
    """The keys of a PEM bundle written in kong.yml itself."""

    def __init__(self, pem: str) -> None:
        super().__init__(Path("-"))
        self._inline = parse_public_keys(pem)

    def current(self) -> dict[str, rsa.RSAPublicKey]:
        return self._inline


def _key_set(credential: RsaCredential) -> KeySet:
    try:
        return KeySet(credential.source) if credential.source else _InlineKeys(credential.public_key_pem)
    except ValueError as exc:
        raise ConfigError(f"jwt_secret '{credential.key}': rsa_public_key: {exc}") from None


def _check_times(claims: dict[str, Any], config: Config, now: float) -> None:
    """Kong's `claims_to_verify` (exp, nbf, with a small leeway) and `maximum_expiration`."""
    to_verify = config.claims_to_verify or []
    for name in to_verify:
        if not isinstance(claims.get(name), int | float) or isinstance(claims.get(name), bool):
            raise _unauthorized(f"the token is not valid: the '{name}' claim must be a number")
    if "exp" in to_verify and claims["exp"] <= now - _LEEWAY_SECONDS:
        raise _unauthorized("the token has expired", slug="token-expired")
    if "nbf" in to_verify and claims["nbf"] > now + _LEEWAY_SECONDS:
        raise _unauthorized("the token is not valid yet (nbf)")
    if config.maximum_expiration:
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp - now > config.maximum_expiration:
            raise _unauthorized("the token's expiry is too far in the future")


def resolve_credentials(config: KongConfig, public_key_path: str) -> list[RsaCredential]:
    """The consumers' jwt_secrets with `{file:...}` references read.
    `${DOCTAG_JWT_PUBLIC_KEY_FILE}` defaults to the gateway's own public key file."""
    env = {**os.environ, "DOCTAG_JWT_PUBLIC_KEY_FILE": public_key_path}
    credentials = []
    for consumer in config.consumers:
        for secret in consumer.jwt_secrets:
            pem = resolve_secret_value(secret.rsa_public_key, env)
            try:
                parse_public_keys(pem)
            except ValueError:
                raise ConfigError(f"consumer {consumer.username}: jwt_secret '{secret.key}' has no valid "
                                  "PEM public key in rsa_public_key") from None
            credentials.append(RsaCredential(consumer=consumer.username, key=secret.key, public_key_pem=pem,
                                             source=secret_file(secret.rsa_public_key, env)))
    return credentials


class Handler(PluginHandler[Config]):
    PRIORITY = 1450

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        credentials = resolve_credentials(deps.config, str(deps.settings.public_key_path))
        self.verifier = JwtVerifier(credentials, audience=deps.settings.jwt_audience)
        self.generations = (TokenGenerations(deps.db, deps.settings.gateway_revocation_cache_seconds)
                            if deps.settings.gateway_token_revocation else None)

    async def access(self, conf: Config, ctx: RequestContext) -> None:
        request = ctx.request
        assert request is not None
        if request.method == "OPTIONS" and not conf.run_on_preflight:
            return
        if ctx.principal is not None:  # already authenticated by a plugin of higher priority
            return
        query = ctx.scope.get("query_string", b"")
        if find_token(request.headers, conf, query) is None and "key-auth" in ctx.shared.get("plugins", ()):
            return  # no token: key-auth (next) authenticates the request or refuses it
        auth = self.verifier.authenticate(request.headers, conf, query_string=ctx.scope.get("query_string", b""))
        principal = auth.principal
        if self.generations is not None:
            await self.generations.check(principal, auth.claims)
        ctx.principal = principal
        ctx.credential = auth.credential.key
        tenant_id_var.set(principal.tenant_id)
        ctx.upstream_headers += [
            ("X-Consumer-ID", principal.user_id), ("X-Consumer-Username", principal.username),
            ("X-Credential-Identifier", auth.credential.key), ("X-Tenant-ID", principal.tenant_id)]
        if "authorization" not in request.headers:
            token = find_token(request.headers, conf, ctx.scope.get("query_string", b""))
            ctx.upstream_headers.append(("Authorization", f"Bearer {token}"))
