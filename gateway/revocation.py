"""Token revocation: a token carries its user's token generation (`gen`) from when it was
issued; raising the generation (a password change, a role change, disabling the user)
ends every token issued before. The gateway looks the current generation up in
`identity.users`, cached per user for a few seconds (DOCTAG_GATEWAY_REVOCATION_CACHE_SECONDS),
so a revocation takes effect within that time. A user that no longer exists, or is
disabled, has no valid token. If the database cannot be asked, the request is refused
(503): revocation is a security check and does not fail open.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from services.common.auth import Principal
from services.common.db import Database
from services.common.errors import ProblemError

log = logging.getLogger("gateway.revocation")
REVOKED = Counter("doctag_gateway_revoked_tokens_total", "Requests refused: the token was revoked")
_MAX_CACHED = 10_000


def revoked(detail: str) -> ProblemError:
    return ProblemError(401, detail, slug="token-revoked", field="Authorization",
                        headers={"WWW-Authenticate": 'Bearer realm="doctag", error="invalid_token"'})


class TokenGenerations:
    def __init__(self, db: Database, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, int | None, bool]] = {}

    async def _current(self, principal: Principal) -> tuple[int | None, bool]:
        now = self.clock()
        cached = self._cache.get(principal.user_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        try:
            uuid.UUID(principal.user_id)
            uuid.UUID(principal.tenant_id)
        except ValueError:
            return None, True
        try:
            async with self.db.tenant_transaction(principal.tenant_id) as conn:
                row = await (await conn.execute(
                    "SELECT token_generation, disabled FROM identity.users WHERE id = %s",
                    (principal.user_id,))).fetchone()
        except Exception:
            log.exception("could not look up the user's token generation")
            raise ProblemError(503, "the token cannot be checked right now; try again shortly") from None
        current = (None, True) if row is None else (int(row["token_generation"]), bool(row["disabled"]))
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[principal.user_id] = (now + self.ttl_s, *current)
        return current

    async def check(self, principal: Principal, claims: dict[str, Any]) -> None:
        """Raises 401 `token-revoked` for a token of an older generation, a disabled or deleted user."""
        generation, disabled = await self._current(principal)
        issued = claims.get("gen", 0)
        if generation is None or disabled or not isinstance(issued, int) or issued != generation:
            REVOKED.inc()
            raise revoked("the token has been revoked (the password, roles or status of the user changed); "
                          "log in again")
