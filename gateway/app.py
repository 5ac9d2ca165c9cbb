"""Wiring only: the proxy app (token endpoint, the admin endpoints, then every other path
proxied through the plugin pipeline) and the status app (Kong's `status_listen`: /healthz, /readyz,
/metrics on their own port), over one `Gateway` (gateway/runtime.py).
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from services.common.auth import ensure_keypair
from services.common.http import create_app

from .admin_api import admin_router
from .config import ConfigError, KongConfig
from .counters import Counters, LocalCounters, RedisCounters
from .dispatch import proxy_endpoint
from .fairness import TenantFairness
from .forwarders import TrustedForwarders
from .login_throttle import LoginThrottle, ThrottlePolicy
from .pipeline import PhasesMiddleware
from .quotas import DailyQuotas
from .runtime import Gateway
from .settings import GatewaySettings
from .tokens import TokenIssuer, token_router

log = logging.getLogger("gateway")

PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def prepare_keys(settings: GatewaySettings) -> tuple[Path, Path]:
    """Makes sure the signing key pair exists (generated on first start, never committed)."""
    private, public = settings.private_key_path, settings.public_key_path
    if private.exists() and public.exists():
        return private, public
    if private.parent != public.parent or (private.name, public.name) != ("jwt_private.pem", "jwt_public.pem"):
        raise ConfigError(f"JWT key files {private} / {public} are missing; they are only generated when both "
                          "are the default names jwt_private.pem / jwt_public.pem in one directory")
    ensure_keypair(private.parent)
    return private, public


@dataclass(frozen=True)
class GatewayApps:
    gateway: Gateway
    proxy: FastAPI
    status: FastAPI


def build_apps(settings: GatewaySettings, config: KongConfig) -> GatewayApps:
    private_key, _ = prepare_keys(settings)
    gateway = Gateway(settings, config)
    throttle_store: Counters = (RedisCounters.from_url(settings.redis_connection_url)
                                if settings.login_throttle_store == "redis" else LocalCounters())
    throttle = LoginThrottle(throttle_store, settings.gateway_redis_prefix, ThrottlePolicy(
        user_free=settings.login_free_failures_per_user, address_free=settings.login_free_failures_per_address,
        base_s=settings.login_backoff_base_seconds, max_s=settings.login_backoff_max_seconds,
        window_s=settings.login_failure_window_seconds))
    issuer = TokenIssuer(gateway.db, private_key_file=private_key, issuer=settings.jwt_issuer,
                         audience=settings.jwt_audience, ttl_seconds=settings.token_ttl_seconds, throttle=throttle,
                         max_concurrent_verifications=settings.login_max_concurrent_verifications)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        log.info("gateway started", extra={"routes": len(gateway.runtime.router.entries),
                                           "upstreams": sorted(gateway.proxy.balancers),
                                           "config": str(settings.gateway_config)})
        try:
            yield
        finally:
            await gateway.close()
            await throttle_store.close()

    async def config_loaded() -> None:
        if not gateway.runtime.router.entries:
            raise RuntimeError("the configuration has no routes")

    proxy = create_app("gateway", title="doctag API gateway", lifespan=lifespan, operational_routes=False)
    proxy.state.gateway = gateway
    proxy.include_router(token_router(issuer, TrustedForwarders(settings.gateway_trusted_forwarders)))
    proxy.include_router(admin_router(gateway))
    fairness = TenantFairness(settings.gateway_tenant_max_in_flight,
                              max_waiting=settings.gateway_tenant_max_waiting,
                              wait_s=settings.gateway_tenant_wait_seconds)
    quotas = DailyQuotas(gateway.db, default_quota=settings.api_daily_quota_default,
                         timezone=settings.api_quota_timezone, warning_percent=settings.api_quota_warning_percent)
    proxy.add_api_route("/{path:path}", proxy_endpoint(gateway.proxy, fairness,
                                                      quotas if settings.gateway_api_quotas else None),
                        methods=PROXY_METHODS, include_in_schema=False)
    proxy.add_middleware(PhasesMiddleware, current=gateway.current)

    status = create_app("gateway-status", title="doctag API gateway status",
                        readiness={"database": gateway.db.ping, "config": config_loaded})
    return GatewayApps(gateway=gateway, proxy=proxy, status=status)
