"""Who may call which gRPC method and which HTTP API: the tables to audit, and the gRPC server
interceptor that enforces the first (services/common/http_access.py enforces `HTTP_ACCESS`).

The caller's role is read from the verified peer certificate (its `spiffe://doctag/role/<role>`
URI SAN; TLS has already checked that it chains to the platform CA and has not expired). A
method not in the table is refused. Methods marked `user_token` also need the end user's JWT in
the `authorization` metadata (`Bearer <token>`), verified here; the tenant of the call is the
token's. Methods marked `job_capability` need the job capability upload signed for the job
(`doctag-job-capability` metadata), verified by the servicer against the request
(services/common/capability.py). Every refusal is PERMISSION_DENIED, logged and counted in
`doctag_grpc_denied_total`.

Keep the README's table ("Who may call what", under "Trust between services") in step with ACCESS
and HTTP_ACCESS.
"""
from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

import grpc
import jwt
from cryptography import x509
from prometheus_client import Counter

from .auth import Principal, decode_token, principal_from_claims
from .pki import SERVICE_ROLES, role_of

log = logging.getLogger(__name__)

USER_TOKEN_KEY = "authorization"
CAPABILITY_KEY = "doctag-job-capability"
ANY_PLATFORM_ROLE = frozenset({"gateway", "upload", "search", "tagging-worker", "model-serving"})

DENIED = Counter("doctag_grpc_denied_total", "gRPC calls refused by caller authorisation",
                 ["service", "method", "role", "reason"])


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    user_token: bool = False      # the end user's JWT must come along (the tenant is the token's)
    job_capability: bool = False  # upload's signed job capability must come along (the tenant is the job's)


ACCESS: dict[str, Rule] = {
    # upload: the tagging pipeline, only for the document a job was published for
    "/doctag.v1.Documents/ReadContent": Rule(frozenset({"tagging-worker"}), job_capability=True),
    "/doctag.v1.Documents/RecordTaggingResult": Rule(frozenset({"tagging-worker"}), job_capability=True),
    # on behalf of an end user: the platform's front door only, with the user's token
    "/doctag.v1.Documents/GetDocument": Rule(frozenset({"gateway"}), user_token=True),
    "/doctag.v1.Search/Search": Rule(frozenset({"gateway"}), user_token=True),
    # model-serving: the worker tags; the gateway serves the public predict API
    "/doctag.v1.ModelServing/Predict": Rule(frozenset({"tagging-worker", "gateway"})),
    "/doctag.v1.ModelServing/PredictBatch": Rule(frozenset({"tagging-worker", "gateway"})),
    "/doctag.v1.ModelServing/ListModels": Rule(frozenset({"tagging-worker", "gateway"})),
    # embeddings: passages at tagging time (and `doctag search reindex`, with the worker's certificate),
    # queries for search's hybrid ranking
    "/doctag.v1.ModelServing/Embed": Rule(frozenset({"tagging-worker", "search"})),
    # health of every server: any of the platform's services (readiness checks)
    "/grpc.health.v1.Health/Check": Rule(ANY_PLATFORM_ROLE),
    "/grpc.health.v1.Health/Watch": Rule(ANY_PLATFORM_ROLE),
}


@dataclass(frozen=True)
class HttpRule:
    """Which certificate roles may call a service's HTTPS port: `api` for every path but the
    operational ones (/healthz, /readyz, /metrics), which every platform certificate may read
    (probes, `doctag probe`, scrapes)."""
    api: frozenset[str]
    operational: frozenset[str] = frozenset(SERVICE_ROLES)


OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

# By the role of the server (its certificate). The public HTTP APIs are reached only through the
# gateway, which forwards the end user's token; nothing else of the platform calls them.
HTTP_ACCESS: dict[str, HttpRule] = {
    "upload": HttpRule(api=frozenset({"gateway"})),
    "search": HttpRule(api=frozenset({"gateway"})),
    "web": HttpRule(api=frozenset({"gateway"})),
    "model-serving": HttpRule(api=frozenset({"gateway"})),
    # the worker's HTTP port and the gateway's status listener (DOCTAG_GATEWAY_STATUS_TLS) serve
    # only the operational routes
    "tagging-worker": HttpRule(api=frozenset()),
    "gateway": HttpRule(api=frozenset()),
    "training-worker": HttpRule(api=frozenset()),
}


def http_allowed(rule: HttpRule, path: str, role: str | None) -> bool:
    roles = rule.operational if path in OPERATIONAL_PATHS else rule.api
    return role is not None and role in roles


# Set for the duration of a call by the interceptor: the verified caller and end user.
caller_role_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller_role", default=None)
user_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("grpc_user", default=None)


@dataclass(frozen=True)
class UserTokenSettings:
    public_key_file: Any  # Path
    issuer: str
    audience: str


class Denied(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@lru_cache(maxsize=64)
def _role_from_pem(pem: bytes) -> str | None:
    try:
        return role_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


def peer_role(context: grpc.aio.ServicerContext) -> str | None:
    """The role of the verified client certificate, None without one."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    return _role_from_pem(pems[0]) if pems else None


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value = item.value
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return None


async def deny(context: grpc.aio.ServicerContext, service: str, method: str, reason: str, detail: str) -> NoReturn:
    """Refuses the call with PERMISSION_DENIED, logged and counted like the interceptor's refusals
    (for checks only the servicer can make, such as a job capability against the request)."""
    role = peer_role(context) or "none"
    DENIED.labels(service, method, role, reason).inc()
    log.warning("gRPC call refused", extra={"method": method, "caller_role": role, "reason": reason,
                                            "peer": context.peer(), "detail": detail})
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method}: {detail}")
    raise AssertionError("unreachable: context.abort() raises")


def current_user() -> Principal:
    """The end user of a `user_token` method (set by the interceptor before the handler runs)."""
    user = user_var.get()
    if user is None:
        raise RuntimeError("no verified end user for this call (the method is not marked user_token)")
    return user


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type information
    """Refuses every call that ACCESS does not allow for the caller's certificate role.

    `enforce_roles=False` is the insecure development mode (no TLS, loopback only): there is no
    certificate to read a role from, so roles are not checked; user tokens still are."""

    def __init__(self, service: str, tokens: UserTokenSettings | None, *, enforce_roles: bool = True,
                 table: dict[str, Rule] | None = None) -> None:
        self.service = service
        self.tokens = tokens
        self.enforce_roles = enforce_roles
        self.table = ACCESS if table is None else table

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method
        check = self._check

        async def before(context: grpc.aio.ServicerContext) -> None:
            try:
                role, user = check(full_method, context)
            except Denied as exc:
                await deny(context, self.service, full_method, exc.reason, str(exc))
            caller_role_var.set(role)
            user_var.set(user)

        return wrap_handler(handler, before)

    def _check(self, full_method: str, context: grpc.aio.ServicerContext) -> tuple[str | None, Principal | None]:
        rule = self.table.get(full_method)
        if rule is None:
            raise Denied("unknown-method", "no caller may call this method")
        role = peer_role(context)
        if self.enforce_roles:
            if role is None:
                raise Denied("no-role", "the client certificate names no platform role")
            if role not in rule.roles:
                raise Denied("role", f"role {role} may not call this method")
        user = None
        if rule.user_token:
            user = self._user(context)
        if rule.job_capability and not metadata_value(context, CAPABILITY_KEY):
            raise Denied("no-capability", f"a job capability is required ({CAPABILITY_KEY} metadata)")
        return role, user

    def _user(self, context: grpc.aio.ServicerContext) -> Principal:
        header = metadata_value(context, USER_TOKEN_KEY) or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Denied("no-user-token", "the end user's token is required (authorization: Bearer ...)")
        if self.tokens is None:
            raise Denied("no-user-token", "this server cannot verify user tokens")
        try:
            claims = decode_token(token.strip(), public_key_file=self.tokens.public_key_file,
                                  issuer=self.tokens.issuer, audience=self.tokens.audience)
            return principal_from_claims(claims)
        except jwt.InvalidTokenError as exc:
            raise Denied("invalid-user-token", f"the user token is not valid: {exc}") from None


def wrap_handler(handler: grpc.RpcMethodHandler,
                 before: Callable[[grpc.aio.ServicerContext], Awaitable[None]]) -> grpc.RpcMethodHandler:
    """The same handler with `before(context)` awaited ahead of the method (unary and server-stream)."""
    if handler.unary_unary:
        fn = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            return await fn(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        sfn = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            async for item in sfn(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                    handler.response_serializer)
    # No method of ours streams requests; refuse rather than pass one unchecked.
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "streaming requests are not served")

    return grpc.unary_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
