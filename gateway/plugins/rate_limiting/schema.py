"""`rate-limiting` config, as Kong 3.x's schema.lua: limits per `second` ... `year` (at least
one; a longer window may not allow fewer requests than a shorter one), `limit_by`
(consumer | credential | ip | service | header | path), `header_name`, `path`, `policy`
(local | redis; `cluster` needs Kong's database and is refused), `fault_tolerant`,
`hide_client_headers`, `redis` {host, port, username, password, database, timeout, ...}
(the older `redis_host`, `redis_port`, ... shorthands are accepted too), `error_code`,
`error_message`, `sync_rate` (-1: synchronous, the only mode here), `retry_after_jitter_max`."""
from __future__ import annotations

import os
from collections.abc import Mapping
from itertools import pairwise
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import Field, model_validator

from ..base import PluginConfig, kong_default_only

NAME = "rate-limiting"
PERIODS = ("second", "minute", "hour", "day", "month", "year")
_SHORTHANDS = {"redis_host": "host", "redis_port": "port", "redis_username": "username",
               "redis_password": "password", "redis_database": "database", "redis_timeout": "timeout",
               "redis_ssl": "ssl", "redis_ssl_verify": "ssl_verify", "redis_server_name": "server_name"}


class RedisConfig(PluginConfig):
    host: str | None = None
    port: int = Field(6379, ge=0, le=65535)
    username: str | None = None
    password: str | None = None
    database: int = Field(0, ge=0)
    # Milliseconds.
    timeout: int = Field(2000, ge=0, le=2**31 - 1)
    connect_timeout: int | None = Field(None, ge=0, le=2**31 - 1)
    send_timeout: int | None = Field(None, ge=0, le=2**31 - 1)
    read_timeout: int | None = Field(None, ge=0, le=2**31 - 1)
    ssl: Annotated[bool, kong_default_only(False, "TLS to Redis is not supported")] = False
    ssl_verify: Annotated[bool, kong_default_only(False, "TLS to Redis is not supported")] = False
    server_name: Annotated[str | None, kong_default_only(None, "TLS to Redis is not supported")] = None

    def url(self, env: Mapping[str, str] | None = None) -> str:
        """The Redis URL; a password `{file:PATH}` (`${VAR}` expanded in PATH from `env`) is read
        from that file, as the db host's setup leaves it (deviation from Kong's vault references)."""
        from ...config import resolve_secret_value  # here: gateway.config imports the plugin schemas

        auth = ""
        if self.password is not None:
            password = resolve_secret_value(self.password, os.environ if env is None else env).strip()
            auth = f"{quote(self.username or '', safe='')}:{quote(password, safe='')}@"
        return f"redis://{auth}{self.host}:{self.port}/{self.database}"


class Config(PluginConfig):
    second: float | None = Field(None, gt=0)
    minute: float | None = Field(None, gt=0)
    hour: float | None = Field(None, gt=0)
    day: float | None = Field(None, gt=0)
    month: float | None = Field(None, gt=0)
    year: float | None = Field(None, gt=0)
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path", "consumer-group"] = "consumer"
    header_name: str | None = None
    path: str | None = Field(None, pattern=r"^/")
    policy: Literal["local", "cluster", "redis"] = "local"
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    redis: RedisConfig = Field(default_factory=RedisConfig)
    error_code: int = Field(429, ge=0, le=999)
    error_message: str = "API rate limit exceeded"
    sync_rate: Annotated[float, kong_default_only(-1, "counters are always updated synchronously here")] = -1
    retry_after_jitter_max: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        """Kong's older flat `redis_*` keys fill the `redis` record."""
        if not isinstance(data, dict) or not any(k in data for k in _SHORTHANDS):
            return data
        data = dict(data)
        redis = dict(data.get("redis") or {})
        for old, new in _SHORTHANDS.items():
            if old in data:
                value = data.pop(old)
                if value is not None:
                    redis.setdefault(new, value)
        data["redis"] = redis
        return data

    @model_validator(mode="after")
    def _entity_checks(self) -> Config:
        limits = self.limits()
        if not limits:
            raise ValueError(f"at least one of these fields must be non-empty: {', '.join(PERIODS)}")
        for (short, low), (long, high) in pairwise(limits):
            if high < low:
                raise ValueError(f"the limit for {long} ({high:g}) cannot be lower than the limit for "
                                 f"{short} ({low:g})")
        if self.limit_by == "consumer-group":
            raise ValueError("limit_by: consumer groups are not supported")
        if self.limit_by == "header" and not self.header_name:
            raise ValueError("header_name: required when limit_by is header")
        if self.limit_by == "path" and not self.path:
            raise ValueError("path: required when limit_by is path")
        if self.policy == "cluster":
            raise ValueError("policy: 'cluster' keeps counters in Kong's database, which this gateway does not "
                             "have; use 'redis' (shared, exact) or 'local'")
        if self.policy == "redis" and not self.redis.host:
            raise ValueError("redis.host: required when policy is redis")
        return self

    def limits(self) -> list[tuple[str, float]]:
        """(period, limit) for each configured window, shortest first."""
        return [(p, v) for p in PERIODS if (v := getattr(self, p)) is not None]


RateLimitingConfig = Config
