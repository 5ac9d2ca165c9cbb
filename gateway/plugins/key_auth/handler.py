"""Kong's `key-auth` plugin (PRIORITY 1250): API keys for machine clients.

Keys belong to a tenant and carry roles (`identity.api_keys`, created and revoked by tenant
administrators: `/api/v1/admin/api-keys` or `doctag apikey`). A key is looked up by its
SHA-256 (it is never stored), cached for a few seconds, so a revoked key stops working
within DOCTAG_GATEWAY_REVOCATION_CACHE_SECONDS. The caller becomes the key: `X-Consumer-ID`
and `X-Credential-Identifier` are the key's id, `X-Tenant-ID` its tenant, the acl groups its
roles. Deviation from Kong: the keys live in the platform's database, not in kong.yml
`keyauth_credentials`; and since the services behind the gateway verify a bearer token
themselves, the gateway passes them a short-lived token it signs for the key
(`Authorization: Bearer ...`, valid 5 minutes, reused while it has more than a minute left).

With `jwt` on the same route (the shipped kong.yml), a request is authenticated by whichever
credential it carries: key-auth (1250) runs after jwt (1450) and only when jwt found no
token; jwt itself steps aside for a request that carries an API key and no token.
"""
from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl, quote, urlencode

from services.common.api_keys import KEY_PREFIX, key_hash
from services.common.auth import Principal, sign_token
from services.common.context import tenant_id_var
from services.common.errors import ProblemError

from ..base import Dependencies, PluginHandler, RequestContext
from .schema import Config

log = logging.getLogger("gateway.key_auth")
_TOKEN_TTL_S = 300
_TOKEN_REUSE_S = 60


def find_key(conf: Config, headers: object, query_string: bytes) -> tuple[str | None, str | None]:
    """(key, where it was found: header name or query parameter), Kong's order: headers, then query."""
    if conf.key_in_header:
        for name in conf.key_names:
            value = headers.get(name)  # type: ignore[attr-defined]
            if value:
                return value.strip(), f"header:{name}"
    if conf.key_in_query and query_string:
        params = dict(parse_qsl(query_string.decode("latin-1")))
        for name in conf.key_names:
            if params.get(name):
                return params[name].strip(), f"query:{name}"
    return None, None


def _unauthorized(detail: str, realm: str | None) -> ProblemError:
    return ProblemError(401, detail, slug="invalid-api-key", field="apikey",
                        headers={"WWW-Authenticate": f'Key realm="{realm or "doctag"}"'})


class Handler(PluginHandler[Config]):
    PRIORITY = 1250

    def __init__(self, deps: Dependencies) -> None:
        super().__init__(deps)
        self.ttl_s = deps.settings.gateway_revocation_cache_seconds
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._tokens: dict[str, tuple[float, str]] = {}

    async def _lookup(self, key: str) -> Principal | None:
        digest = key_hash(key)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with self.deps.db.transaction() as conn:
                row = await (await conn.execute(
                    "SELECT k.id, k.tenant_id, k.name, k.roles, t.slug FROM identity.api_keys k "
                    "JOIN identity.tenants t ON t.id = k.tenant_id WHERE k.key_hash = %s AND k.revoked_at IS NULL",
                    (digest,))).fetchone()
        except Exception:
            log.exception("could not look the API key up")
            raise ProblemError(503, "the API key cannot be checked right now; try again shortly") from None
        principal = None if row is None else Principal(
            user_id=str(row["id"]), tenant_id=str(row["tenant_id"]), tenant_slug=row["slug"],
            # Percent-encoded: it travels in an HTTP header (X-Consumer-Username), and names may be Korean.
            username=f"apikey:{quote(row['name'], safe='')}", roles=tuple(row["roles"]))
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (now + self.ttl_s, principal)
        return principal

    def _upstream_token(self, principal: Principal) -> str:
        now = time.time()
        cached = self._tokens.get(principal.user_id)
        if cached is not None and cached[0] - now > _TOKEN_REUSE_S:
            return cached[1]
        settings = self.deps.settings
        token = sign_token(private_key_file=settings.private_key_path, user_id=principal.user_id,
                           tenant_id=principal.tenant_id, tenant_slug=principal.tenant_slug,
                           username=principal.username, roles=principal.roles, issuer=settings.jwt_issuer,
                           audience=settings.jwt_audience, ttl_seconds=_TOKEN_TTL_S)
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[principal.user_id] = (now + _TOKEN_TTL_S, token)
        return token

    async def access(self, conf: Config, ctx: RequestContext) -> None:
        request = ctx.request
        assert request is not None
        if ctx.principal is not None:  # already authenticated (a bearer token)
            return
        if request.method == "OPTIONS" and not conf.run_on_preflight:
            return
        key, where = find_key(conf, request.headers, ctx.scope.get("query_string", b""))
        if key is None:
            raise ProblemError(401, "a bearer token or an API key is required", slug="unauthorized",
                               field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="doctag"'})
        principal = await self._lookup(key) if key.startswith(KEY_PREFIX) and len(key) < 200 else None
        if principal is None:
            raise _unauthorized("the API key is not valid", conf.realm)
        ctx.principal = principal
        ctx.credential = principal.user_id
        tenant_id_var.set(principal.tenant_id)
        ctx.upstream_headers += [
            ("X-Consumer-ID", principal.user_id), ("X-Consumer-Username", principal.username),
            ("X-Credential-Identifier", principal.user_id), ("X-Tenant-ID", principal.tenant_id),
            ("Authorization", f"Bearer {self._upstream_token(principal)}")]
        if conf.hide_credentials and where is not None:
            kind, name = where.split(":", 1)
            if kind == "header":
                ctx.shared.setdefault("drop_headers", set()).add(name.lower())
            else:
                query = [(k, v) for k, v in parse_qsl(ctx.scope.get("query_string", b"").decode("latin-1"))
                         if k != name]
                ctx.scope["query_string"] = urlencode(query).encode("latin-1")
