"""`POST /api/v1/auth/token`: the gateway's own endpoint that turns a tenant, username
and password into an RS256 access token.

Unknown tenant, unknown user, disabled user and wrong password all answer the same
401 after the same amount of work (one argon2 verification and one audit entry), so the
endpoint does not reveal which tenants or users exist. Repeated failures lock the user and
the source address out for a growing time (gateway/login_throttle.py), the same way
whether the user exists or not. The source address of a login through the web UI is the
user's, as the web replica forwards it, when the replica is a trusted forwarder
(gateway/forwarders.py).

Every attempt is recorded in the audit log (`auth.login`, outcome success or failed). The
gateway writes into upload's `documents.audit_log` rather than a table of its own schema
`identity`, so that administrators read one trail through one endpoint (`GET /api/v1/audit`,
served by upload, which cannot read `identity`). The grant is narrow (migration 0006): INSERT
only, no SELECT, only `auth.login` rows, only for the tenant of the transaction (NULL for an
unknown tenant slug: only platform administrators see those). An entry holds the tenant slug and
username that were tried and, for a failure, the reason; never the password or the token.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from services.common import audit
from services.common.auth import sign_token
from services.common.context import current_request_id, tenant_id_var
from services.common.db import Database
from services.common.errors import ProblemError
from services.common.jsonbody import JsonInvalid, JsonTooLarge, loads_bounded
from services.common.passwords import MAX_PASSWORD_CHARS, check_password

from .forwarders import TrustedForwarders
from .login_throttle import LoginThrottle

log = logging.getLogger("gateway.tokens")

# The same patterns as the CHECK constraints of identity.tenants/users (migration 0001).
TENANT_SLUG = r"^[a-z0-9][a-z0-9-]{1,62}$"
USERNAME = r"^[A-Za-z0-9._@-]{1,64}$"
MAX_BODY_BYTES = 16 * 1024
ModelT = TypeVar("ModelT", bound=BaseModel)


class TokenRequest(BaseModel):
    tenant: str = Field(pattern=TENANT_SLUG, description="the tenant's slug", examples=["hr-dept"])
    username: str = Field(pattern=USERNAME, examples=["kim.minsu"])
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


def _invalid_credentials() -> ProblemError:
    return ProblemError(401, "the tenant, username or password is not correct", slug="invalid-credentials",
                        headers={"WWW-Authenticate": 'Bearer realm="doctag"'})


class TokenIssuer:
    def __init__(self, db: Database, *, private_key_file: Path, issuer: str, audience: str,
                 ttl_seconds: int, throttle: LoginThrottle, max_concurrent_verifications: int = 4) -> None:
        self.db = db
        self.private_key_file = private_key_file
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self.throttle = throttle
        # argon2 takes ~50 ms of CPU and tens of MB each: a flood of logins queues here instead
        # of starving every other request of CPU and memory.
        self._verifications = asyncio.Semaphore(max_concurrent_verifications)

    async def _find_user(self, tenant_slug: str, username: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        async with self.db.transaction() as conn:
            cur = await conn.execute("SELECT id, slug FROM identity.tenants WHERE slug = %s", (tenant_slug,))
            tenant = await cur.fetchone()
        if tenant is None:
            return None, None
        async with self.db.tenant_transaction(str(tenant["id"])) as conn:
            cur = await conn.execute(
                "SELECT id, username, password_hash, roles, disabled, token_generation FROM identity.users "
                "WHERE username = %s",
                (username,),
            )
            user = await cur.fetchone()
        return tenant, user

    async def issue(self, req: TokenRequest, address: str = "") -> TokenResponse:
        await self.throttle.check(req.tenant, req.username, address)
        tenant, user = await self._find_user(req.tenant, req.username)
        async with self._verifications:
            check = await asyncio.to_thread(check_password, user["password_hash"] if user else None, req.password)
        if tenant is None or user is None or not check.ok or user["disabled"]:
            await self.throttle.failed(req.tenant, req.username, address)
            reason = ("unknown tenant" if tenant is None else "unknown user" if user is None
                      else "wrong password" if not check.ok else "disabled user")
            log.info("token refused", extra={"tenant_slug": req.tenant, "username": req.username, "reason": reason})
            await self._record_login(
                str(tenant["id"]) if tenant else None, str(user["id"]) if user else None, req.username,
                audit.FAILED, {"tenant_slug": req.tenant, "reason": reason})
            raise _invalid_credentials()
        tenant_id = str(tenant["id"])
        tenant_id_var.set(tenant_id)
        await self.throttle.succeeded(req.tenant, req.username)
        if check.new_hash is not None:
            await self._store_rehash(tenant_id, str(user["id"]), check.new_hash)
        token = sign_token(
            private_key_file=self.private_key_file, user_id=str(user["id"]), tenant_id=tenant_id,
            tenant_slug=tenant["slug"], username=user["username"], roles=list(user["roles"]),
            issuer=self.issuer, audience=self.audience, ttl_seconds=self.ttl_seconds,
            generation=int(user["token_generation"]),
        )
        log.info("token issued", extra={"user_id": str(user["id"]), "roles": list(user["roles"])})
        await self._record_login(tenant_id, str(user["id"]), user["username"], audit.SUCCESS,
                                 {"tenant_slug": tenant["slug"], "roles": list(user["roles"])})
        return TokenResponse(access_token=token, expires_in=self.ttl_seconds)

    async def _record_login(self, tenant_id: str | None, user_id: str | None, username: str, outcome: str,
                            details: dict[str, Any]) -> None:
        """Appends the `auth.login` audit entry. Best effort: a login must not fail because the audit
        log cannot be written (the JSON log line above records the attempt too), but it is logged as
        an error for operators to see."""
        try:
            transaction = self.db.tenant_transaction(tenant_id) if tenant_id else self.db.transaction()
            async with transaction as conn:
                await audit.record(conn, action=audit.AUTH_LOGIN, outcome=outcome, actor_id=user_id,
                                   actor_name=username, request_id=current_request_id(), details=details)
        except Exception:
            log.exception("could not record the login in the audit log", extra={"outcome": outcome})

    async def _store_rehash(self, tenant_id: str, user_id: str, new_hash: str) -> None:
        """Upgrades an outdated hash; a failure here must not refuse a correct login."""
        try:
            async with self.db.tenant_transaction(tenant_id) as conn:
                await conn.execute("UPDATE identity.users SET password_hash = %s, updated_at = now() WHERE id = %s",
                                   (new_hash, user_id))
        except Exception:
            log.exception("could not store the rehashed password", extra={"user_id": user_id})


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ProblemError(413, f"the body may be at most {MAX_BODY_BYTES} bytes", extra={"max_bytes": MAX_BODY_BYTES})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ProblemError(413, f"the body may be at most {MAX_BODY_BYTES} bytes",
                               extra={"max_bytes": MAX_BODY_BYTES})
    return bytes(body)


def parse_json_model(raw: bytes, model: type[ModelT]) -> ModelT:
    """422 naming the field for anything but a valid JSON object of `model` (a flat object:
    nesting is bounded before the parser runs); 413 past MAX_BODY_BYTES."""
    try:
        data = loads_bounded(raw, max_bytes=MAX_BODY_BYTES, max_depth=4)
    except JsonTooLarge as exc:
        raise ProblemError(413, str(exc), extra={"max_bytes": exc.limit}) from None
    except JsonInvalid:
        raise ProblemError(422, "the body must be a JSON object", field="body") from None
    if not isinstance(data, dict):
        raise ProblemError(422, "the body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from None


def parse_token_request(raw: bytes) -> TokenRequest:
    return parse_json_model(raw, TokenRequest)


def token_router(issuer: TokenIssuer, forwarders: TrustedForwarders | None = None) -> APIRouter:
    forwarders = forwarders or TrustedForwarders()
    router = APIRouter()

    @router.post(
        "/api/v1/auth/token", response_model=TokenResponse, tags=["auth"],
        summary="Exchange tenant, username and password for an access token",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": TokenRequest.model_json_schema()}}}},
        responses={401: {"description": "wrong tenant, username or password"},
                   429: {"description": "too many failed logins for this user or address (Retry-After)"},
                   422: {"description": "malformed body"}},
    )
    async def issue_token(request: Request) -> JSONResponse:
        req = parse_token_request(await read_body(request))
        peer = request.client.host if request.client else ""
        address = forwarders.client_address(peer, request.headers.getlist("x-forwarded-for"))
        token = await issuer.issue(req, address)
        return JSONResponse(token.model_dump(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    return router
