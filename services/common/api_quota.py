"""Daily API quotas per tenant: the day a call counts towards and when the count resets.

The gateway counts every authenticated call in `identity.api_usage` (one row per tenant and
day); upload shows the count next to storage in GET /api/v1/quota. Both use the same day:
midnight to midnight in DOCTAG_API_QUOTA_TIMEZONE (Asia/Seoul by default, the departments'
working day).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

QUOTA_NAME = "api_daily_calls"
# The routing key of the warning event (services.common.amqp.QUOTA_WARNING; the gateway does
# not import the AMQP client, the upload relay publishes the outbox row).
QUOTA_WARNING = "quota.warning"

USAGE_SQL = (
    "SELECT coalesce(t.api_daily_quota, %(default)s) AS quota, coalesce(u.calls, 0) AS calls "
    "FROM identity.tenants t LEFT JOIN identity.api_usage u ON u.tenant_id = t.id AND u.day = %(day)s "
    "WHERE t.id = %(tenant)s")


def quota_day(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def resets_at(now: datetime, timezone: str) -> datetime:
    """The next midnight in `timezone` (an aware datetime)."""
    zone = ZoneInfo(timezone)
    tomorrow = now.astimezone(zone).date() + timedelta(days=1)
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone)


def usage_summary(quota: int, calls: int, now: datetime, timezone: str, warning_percent: int) -> dict[str, Any]:
    """The API shape of a tenant's API usage today."""
    return {"quota": QUOTA_NAME, "daily_limit": quota, "used_today": calls,
            "remaining_today": max(quota - calls, 0), "resets_at": resets_at(now, timezone).isoformat(),
            "warning": quota > 0 and calls * 100 >= quota * warning_percent}
