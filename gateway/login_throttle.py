"""Login throttling for `POST /api/v1/auth/token`: per user (tenant slug + username, whether
or not it exists) and per source address, with exponential back-off.

Each failed login adds 1 to the failures of the user and of the address (kept for
`window` seconds after the last one). Past the free failures (`user_free`,
`address_free`) the user or address is locked for `base * 2^(n-1)` seconds (n = failures
past the free ones), at most `max`. While locked, every attempt, the right password
included, answers the same 429 with Retry-After, without checking the password. A
successful login clears the user's failures (not the address's, so one account an
attacker owns cannot reset the address's count). An unknown user and a wrong password
count alike, so the answers never tell them apart.

Counters live in Redis (shared by every gateway process) or in the process (`local`);
when Redis cannot be reached logins are not throttled (logged and counted), rather
than refused for everyone.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from prometheus_client import Counter

from services.common.errors import ProblemError

from .counters import Counters, CounterStoreError

log = logging.getLogger("gateway.login_throttle")
THROTTLED = Counter("doctag_gateway_login_throttled_total", "Logins refused while locked out", ["by"])
STORE_ERRORS = Counter("doctag_gateway_login_throttle_store_errors_total", "Login throttle store unreachable")


@dataclass(frozen=True)
class ThrottlePolicy:
    user_free: int = 5
    address_free: int = 20
    base_s: float = 1.0
    max_s: float = 900.0
    window_s: int = 900

    def lock_seconds(self, failures: int, free: int) -> int:
        past = failures - free
        return 0 if past <= 0 else math.ceil(min(self.max_s, self.base_s * 2 ** (past - 1)))


class LoginThrottle:
    def __init__(self, store: Counters, prefix: str, policy: ThrottlePolicy | None = None) -> None:
        self.store = store
        self.prefix = prefix
        self.policy = policy or ThrottlePolicy()

    def _keys(self, tenant_slug: str, username: str, address: str) -> dict[str, str]:
        user = f"{tenant_slug}:{username.lower()}"
        return {"user": f"{self.prefix}:login:user:{user}", "address": f"{self.prefix}:login:addr:{address}"}

    async def check(self, tenant_slug: str, username: str, address: str) -> None:
        """Raises 429 while the user or the address is locked out."""
        now = time.time()
        try:
            # A lock holds the time it ends, in milliseconds.
            waits = {by: await self.store.get(f"{key}:lock") / 1000 - now
                     for by, key in self._keys(tenant_slug, username, address).items()}
        except CounterStoreError as exc:
            STORE_ERRORS.inc()
            log.warning("login throttle unavailable; not throttling", extra={"error": str(exc)})
            return
        locked = {by: wait for by, wait in waits.items() if wait > 0}
        if locked:
            by = max(locked, key=lambda b: locked[b])
            THROTTLED.labels(by).inc()
            retry = math.ceil(locked[by])
            raise ProblemError(429, f"too many failed logins; try again in {retry} seconds", slug="login-throttled",
                               headers={"Retry-After": str(retry)}, extra={"retry_after": retry})

    async def failed(self, tenant_slug: str, username: str, address: str) -> None:
        keys = self._keys(tenant_slug, username, address)
        try:
            user_failures, address_failures = await self.store.incr(
                [(keys["user"], self.policy.window_s), (keys["address"], self.policy.window_s)])
            now = time.time()
            for by, failures, free in (("user", user_failures, self.policy.user_free),
                                       ("address", address_failures, self.policy.address_free)):
                seconds = self.policy.lock_seconds(failures, free)
                if seconds:
                    await self.store.put(f"{keys[by]}:lock", int((now + seconds) * 1000), seconds + 1)
        except CounterStoreError as exc:
            STORE_ERRORS.inc()
            log.warning("login throttle unavailable; failure not counted", extra={"error": str(exc)})

    async def succeeded(self, tenant_slug: str, username: str) -> None:
        key = self._keys(tenant_slug, username, "")["user"]
        try:
            await self.store.delete(key)
            await self.store.delete(f"{key}:lock")
        except CounterStoreError as exc:
            STORE_ERRORS.inc()
            log.warning("login throttle unavailable; failures not cleared", extra={"error": str(exc)})
