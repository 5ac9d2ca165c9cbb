"""rate-limiting: Kong's schema checks, fixed windows, counting, headers and the 429."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from gateway.config import parse_config
from gateway.plugins.base import Dependencies, RequestContext
from gateway.plugins.rate_limiting.handler import Handler, identifier, window
from gateway.plugins.rate_limiting.schema import Config
from gateway.settings import GatewaySettings
from services.common.auth import Principal
from services.common.errors import ProblemError


def test_schema_entity_checks_as_kong() -> None:
    assert Config(minute=5, hour=100).limits() == [("minute", 5), ("hour", 100)]
    for bad, message in [({}, "at least one of these fields must be non-empty"),
                         ({"second": 10, "minute": 5}, "the limit for minute (5) cannot be lower than the limit "
                                                      "for second (10)"),
                         ({"minute": 0}, "greater than 0"),
                         ({"minute": 1, "policy": "cluster"}, "policy: 'cluster' keeps counters in Kong's database"),
                         ({"minute": 1, "policy": "redis"}, "redis.host: required when policy is redis"),
                         ({"minute": 1, "limit_by": "header"}, "header_name: required"),
                         ({"minute": 1, "limit_by": "consumer-group"}, "consumer groups are not supported"),
                         ({"minute": 1, "sync_rate": 10}, "counters are always updated synchronously"),
                         ({"minute": 1, "redis": {"ssl": True}}, "TLS to Redis is not supported")]:
        with pytest.raises(ValidationError) as info:
            Config.model_validate(bad)
        assert message in str(info.value)


def test_older_redis_shorthands_fill_the_redis_record() -> None:
    conf = Config.model_validate({"minute": 1, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6380,
                                  "redis_database": 2, "redis_timeout": 500, "redis_password": None})
    assert (conf.redis.host, conf.redis.port, conf.redis.database, conf.redis.timeout) == ("127.0.0.1", 6380, 2, 500)
    assert conf.redis.url() == "redis://127.0.0.1:6380/2"


def test_fixed_windows_utc() -> None:
    now = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC).timestamp()
    assert window("second", now) == (int(now), int(now) + 1)
    assert window("minute", now) == (int(now) - 30, int(now) + 30)
    month_start, month_end = window("month", now)
    assert datetime.fromtimestamp(month_start, UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(month_end, UTC) == datetime(2027, 1, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(window("year", now)[1], UTC) == datetime(2027, 1, 1, tzinfo=UTC)


def _ctx(principal: Principal | None = None, ip: str = "10.0.0.1", headers: dict[str, str] | None = None,
         path: str = "/api/v1/search") -> RequestContext:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "query_string": b"",
                             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
                             "client": (ip, 5555)}
    ctx = RequestContext(scope=scope, request=Request(scope), principal=principal)
    ctx.plugin_scope = "route:search"
    return ctx


def _principal(tenant: str = "t1", user: str = "u1") -> Principal:
    return Principal(user_id=user, tenant_id=tenant, tenant_slug="hr", username="kim", roles=("user",))


def test_identifiers_with_kong_fallback_to_the_address() -> None:
    p = _principal()
    assert identifier(Config(minute=1), _ctx(p)) == "consumer:u1"
    assert identifier(Config(minute=1), _ctx(None)) == "ip:10.0.0.1"
    assert identifier(Config(minute=1, limit_by="credential"), _ctx(p)) == "tenant:t1"
    assert identifier(Config(minute=1, limit_by="ip"), _ctx(p, ip="10.9.9.9")) == "ip:10.9.9.9"
    by_header = Config(minute=1, limit_by="header", header_name="X-Client")
    assert identifier(by_header, _ctx(p, headers={"X-Client": "batch-7"})) == "header:batch-7"
    assert identifier(by_header, _ctx(p)) == "ip:10.0.0.1"
    by_path = Config(minute=1, limit_by="path", path="/api/v1/search")
    assert identifier(by_path, _ctx(p)) == "path:/api/v1/search"
    assert identifier(by_path, _ctx(p, path="/api/v1/documents")) == "ip:10.0.0.1"


@pytest.fixture()
def handler(tmp_path: Path) -> Handler:
    config = parse_config({"_format_version": "3.0"}, "t")
    settings = GatewaySettings(state_dir=tmp_path, gateway_redis_prefix=f"t-{uuid.uuid4().hex}")
    return Handler(Dependencies(settings=settings, config=config, db=None))  # type: ignore[arg-type]


async def test_local_policy_counts_refuses_and_does_not_count_refusals(handler: Handler) -> None:
    conf = Config(minute=3, hour=1000)
    seen = []
    for _ in range(3):
        ctx = _ctx(_principal())
        await handler.access(conf, ctx)
        seen.append(dict(ctx.response_headers))
    assert [h["X-RateLimit-Remaining-Minute"] for h in seen] == ["2", "1", "0"]
    assert seen[-1]["RateLimit-Limit"] == "3" and seen[-1]["RateLimit-Remaining"] == "0"
    assert seen[0]["X-RateLimit-Limit-Hour"] == "1000" and seen[0]["X-RateLimit-Remaining-Hour"] == "999"
    assert 1 <= int(seen[-1]["RateLimit-Reset"]) <= 60  # the minute window has the fewest left
    for _ in range(2):
        ctx = _ctx(_principal())
        with pytest.raises(ProblemError) as refused:
            await handler.access(conf, ctx)
        assert refused.value.status == 429 and refused.value.detail == "API rate limit exceeded"
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
        assert refused.value.extra["windows"] == ["minute"]
        assert dict(ctx.response_headers)["X-RateLimit-Remaining-Minute"] == "0"
    # The refused requests did not use up the hourly allowance.
    hour_key = next(k for k in handler.local._values if ":hour:" in k)
    assert handler.local._values[hour_key][0] == 3
    # Another consumer has its own counters; hide_client_headers hides the headers.
    ctx = _ctx(_principal(user="u2"))
    await handler.access(Config(minute=3, hide_client_headers=True), ctx)
    assert ctx.response_headers == []


async def test_redis_unreachable_fault_tolerant_or_503(handler: Handler) -> None:
    down = {"minute": 1, "policy": "redis", "redis": {"host": "127.0.0.1", "port": 1, "timeout": 200}}
    ctx = _ctx(_principal())
    await handler.access(Config.model_validate(down), ctx)  # let through
    assert ctx.response_headers == []
    with pytest.raises(ProblemError) as info:
        await handler.access(Config.model_validate({**down, "fault_tolerant": False}), _ctx(_principal()))
    assert info.value.status == 503
    await handler.close()


async def test_redis_policy_counts_in_redis(handler: Handler) -> None:
    conf = Config.model_validate({"minute": 2, "policy": "redis", "redis": {"host": "127.0.0.1"}})
    await handler.access(conf, _ctx(_principal()))
    await handler.access(conf, _ctx(_principal()))
    with pytest.raises(ProblemError):
        await handler.access(conf, _ctx(_principal()))
    store = handler.store(conf)
    keys = [k async for k in store.client.scan_iter(f"{handler.prefix}:*")]  # type: ignore[attr-defined]
    assert len(keys) == 1 and await store.get(keys[0].decode()) == 2
    assert 0 < await store.client.ttl(keys[0]) <= 61  # type: ignore[attr-defined]
    await store.client.delete(*keys)  # type: ignore[attr-defined]
    await handler.close()
