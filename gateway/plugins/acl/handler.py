"""Kong's `acl` plugin (PRIORITY 950): allow or deny by group.

Deviation from Kong: a caller's groups are the platform roles of the authenticated
caller (the JWT's `roles` claim, or the roles of an API key), not Kong consumer groups,
so `acl` needs an authentication plugin on the same route; without an authenticated
caller it answers 401. A refusal (403) is written to the tenant's audit log as
`access.denied`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from services.common import audit
from services.common.context import current_request_id
from services.common.errors import ProblemError

from ..base import PluginHandler, RequestContext
from .schema import Config

log = logging.getLogger("gateway.acl")
DENIAL_AUDIT_TIMEOUT_S = 1.0


def is_allowed(groups: Iterable[str], config: Config) -> bool:
    """Allow list: at least one group in it. Deny list: no group in it."""
    have = set(groups)
    if config.allow is not None:
        return bool(have & set(config.allow))
    return not (have & set(config.deny or ()))


def enforce(groups: Iterable[str] | None, config: Config) -> None:
    """Raises 401 when nobody is authenticated, 403 when the groups are not allowed."""
    if groups is None:
        raise ProblemError(401, "this route needs an authenticated caller", field="Authorization",
                           headers={"WWW-Authenticate": 'Bearer realm="doctag"'})
    if not is_allowed(groups, config):
        raise ProblemError(403, "your roles do not allow this request")


class Handler(PluginHandler[Config]):
    PRIORITY = 950

    async def access(self, conf: Config, ctx: RequestContext) -> None:
        groups = ctx.groups
        try:
            enforce(groups, conf)
        except ProblemError as exc:
            if exc.status == 403:
                await self._record_denial(ctx)
            raise
        if groups is not None and not conf.hide_groups_header:
            ctx.upstream_headers.append(("X-Consumer-Groups", ", ".join(groups)))

    async def _record_denial(self, ctx: RequestContext) -> None:
        """Appends `access.denied` to the caller's tenant's audit log. Best effort: a failure to
        write it is logged as an error and the caller still gets the 403, after at most
        DENIAL_AUDIT_TIMEOUT_S (a slow database must not hold every refusal for the pool's
        30 s connection timeout)."""
        principal, request = ctx.principal, ctx.request
        assert principal is not None and request is not None
        try:
            async with (asyncio.timeout(DENIAL_AUDIT_TIMEOUT_S),
                        self.deps.db.tenant_transaction(principal.tenant_id) as conn):
                await audit.record(conn, action=audit.ACCESS_DENIED, outcome=audit.DENIED,
                                   actor_id=principal.user_id, actor_name=principal.username or None,
                                   request_id=current_request_id(),
                                   details={"method": request.method, "path": request.url.path,
                                            "route": ctx.route_name, "roles": list(principal.roles)})
        except Exception:
            log.exception("could not record the refused request in the audit log")
