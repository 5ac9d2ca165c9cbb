"""Daily API quotas per tenant (beyond Kong): every authenticated call through the gateway
counts towards its tenant's quota for the day (services/common/api_quota.py).

The count is one statement in PostgreSQL (`identity.api_usage`), which adds the call only
while it is under the quota: exact across gateway processes and restarts, and a refused
call does not count. The call that reaches `DOCTAG_API_QUOTA_WARNING_PERCENT` (80) of the
quota marks the day as warned and writes a `quota.warning` event to the outbox in the same
transaction (the upload relay publishes it), so there is exactly one warning per tenant and
day. Past the quota: 429 naming the quota and when it resets. Answers carry
`X-API-Quota-Limit`, `X-API-Quota-Remaining`, `X-API-Quota-Reset` (seconds) and, from the
warning threshold on, `X-API-Quota-Warning`. A tenant missing from `identity.tenants` has no
quota; when the database cannot be reached, calls go through uncounted (logged and counted in
`doctag_gateway_api_quota_errors_total`) rather than the whole platform stopping.
"""
from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from services.common.api_quota import QUOTA_NAME, QUOTA_WARNING, USAGE_SQL, quota_day, resets_at
from services.common.context import current_request_id
from services.common.db import Database, DictConnection
from services.common.errors import ProblemError

log = logging.getLogger("gateway.quotas")
WARNINGS = Counter("doctag_gateway_api_quota_warnings_total", "Tenants that reached the API quota warning "
                   "threshold for the day")
EXHAUSTED = Counter("doctag_gateway_api_quota_refused_total", "Calls refused because the tenant's daily API "
                    "quota was used up")
ERRORS = Counter("doctag_gateway_api_quota_errors_total", "Calls let through uncounted: the quota store failed")
# Today's use per tenant, as of the tenant's last counted call (the 80% / 100% API quota alerts). The
# reset time lets the rules ignore a day that is over when the tenant has made no call since.
CALLS = Gauge("doctag_tenant_api_calls", "Calls counted against the tenant's daily API quota today", ["tenant"])
DAILY_QUOTA = Gauge("doctag_tenant_api_daily_quota", "The tenant's daily API quota (calls)", ["tenant"])
RESETS_AT = Gauge("doctag_tenant_api_quota_resets_timestamp_seconds", "When today's API quota count starts "
                  "again (Unix time)", ["tenant"])


def _observe(tenant_id: str, calls: int, quota: int, reset: datetime) -> None:
    CALLS.labels(tenant_id).set(calls)
    DAILY_QUOTA.labels(tenant_id).set(quota)
    RESETS_AT.labels(tenant_id).set(reset.timestamp())

_CONSUME = """
WITH q AS (SELECT coalesce(t.api_daily_quota, %(default)s) AS quota FROM identity.tenants t WHERE t.id = %(tenant)s)
INSERT INTO identity.api_usage AS u (tenant_id, day, calls)
SELECT %(tenant)s, %(day)s, 1 FROM q WHERE q.quota > 0
ON CONFLICT (tenant_id, day) DO UPDATE SET calls = u.calls + 1 WHERE u.calls < (SELECT quota FROM q)
RETURNING u.calls, (SELECT quota FROM q) AS quota, u.warned_at
"""
_MARK_WARNED = ("UPDATE identity.api_usage SET warned_at = now() "
                "WHERE tenant_id = %(tenant)s AND day = %(day)s AND warned_at IS NULL RETURNING calls")
_OUTBOX = ("INSERT INTO documents.outbox (tenant_id, event_type, message_id, payload) "
           "VALUES (%s, %s, %s, %s::jsonb)")


@dataclass(frozen=True)
class Usage:
    quota: int
    calls: int
    resets_at: datetime

    def headers(self, now: datetime, warning_percent: int) -> list[tuple[str, str]]:
        out = [("X-API-Quota-Limit", str(self.quota)), ("X-API-Quota-Remaining", str(max(self.quota - self.calls, 0))),
               ("X-API-Quota-Reset", str(max(1, math.ceil((self.resets_at - now).total_seconds()))))]
        if self.quota and self.calls * 100 >= self.quota * warning_percent:
            out.append(("X-API-Quota-Warning", f"{self.calls * 100 // self.quota}% of the daily API quota is used"))
        return out


class DailyQuotas:
    def __init__(self, db: Database, *, default_quota: int, timezone: str, warning_percent: int) -> None:
        self.db = db
        self.default_quota = default_quota
        self.timezone = timezone
        self.warning_percent = warning_percent

    async def consume(self, tenant_id: str, now: datetime | None = None) -> Usage | None:
        """Counts one call; the usage after it, None when the tenant has no quota here (or the store
        failed). Raises 429 when the quota is used up."""
        now = now or datetime.now(UTC)
        params = {"tenant": tenant_id, "day": quota_day(now, self.timezone), "default": self.default_quota}
        reset = resets_at(now, self.timezone)
        try:
            async with self.db.tenant_transaction(tenant_id) as conn:
                row = await (await conn.execute(_CONSUME, params)).fetchone()
                if row is None:
                    current = await (await conn.execute(USAGE_SQL, params)).fetchone()
                elif row["warned_at"] is None and row["calls"] * 100 >= row["quota"] * self.warning_percent:
                    await self._warn(conn, tenant_id, params, row["calls"], row["quota"], reset, now)
        except Exception:
            ERRORS.inc()
            log.exception("could not count the call towards the daily API quota; let through")
            return None
        if row is not None:
            _observe(tenant_id, row["calls"], row["quota"], reset)
            return Usage(quota=row["quota"], calls=row["calls"], resets_at=reset)
        if current is None:
            return None  # not a tenant of this platform's identity schema: no quota to count against
        _observe(tenant_id, current["calls"], current["quota"], reset)
        EXHAUSTED.inc()
        retry = max(1, math.ceil((reset - now).total_seconds()))
        raise ProblemError(
            429, f"the daily API quota of {current['quota']} calls is used up; it resets at {reset.isoformat()}",
            slug="api-quota-exceeded", headers={"Retry-After": str(retry)},
            extra={"quota": QUOTA_NAME, "limit": current["quota"], "used": current["calls"],
                   "resets_at": reset.isoformat()})

    async def _warn(self, conn: DictConnection, tenant_id: str, params: dict[str, object], calls: int, quota: int,
                    reset: datetime, now: datetime) -> None:
        marked = await (await conn.execute(_MARK_WARNED, params)).fetchone()
        if marked is None:
            return  # another call of the same moment won
        payload = {"event": QUOTA_WARNING, "quota": QUOTA_NAME, "tenant_id": tenant_id, "day": str(params["day"]),
                   "limit": quota, "used": calls, "used_percent": calls * 100 // quota,
                   "threshold_percent": self.warning_percent, "resets_at": reset.isoformat(),
                   "at": now.isoformat(), "request_id": current_request_id()}
        message_id = f"{tenant_id}:{QUOTA_WARNING}:{QUOTA_NAME}:{params['day']}:{uuid.uuid4()}"
        await conn.execute(_OUTBOX, (tenant_id, QUOTA_WARNING, message_id, json.dumps(payload)))
        WARNINGS.inc()
        log.info("daily API quota warning", extra={"calls": calls, "quota": quota})
