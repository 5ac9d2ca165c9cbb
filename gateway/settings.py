"""Gateway settings (environment variables with the `DOCTAG_` prefix)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from services.common.settings import CommonSettings, read_secret, with_password
from services.common.tls import ReloadingSSLContext, TlsFiles

from .forwarders import parse_networks

DEFAULT_CONFIG = Path(__file__).resolve().with_name("kong.yml")


class GatewaySettings(CommonSettings):
    service_name: str = "gateway"
    # Reads identity.tenants and identity.users (RLS) to issue tokens.
    db_user: str = "doctag_gateway"

    http_port: int = 8080
    # Kong's status_listen: /healthz, /readyz and /metrics are served here, never on the proxy port.
    gateway_status_port: int = Field(8100, ge=1, le=65535)
    gateway_status_host: str | None = None
    # The status listener over mutual TLS: any certificate of the platform CA may read it (the
    # scraper's, the operator's probes), nothing else. On for deployed hosts, where the listener is
    # on the host's network address (doctag deploy sets it); plain HTTP on a developer's loopback.
    gateway_status_tls: bool = False
    # DOCTAG_GATEWAY_CONFIG: the kong.yml to load.
    gateway_config: Path = DEFAULT_CONFIG
    # DOCTAG_JWT_PRIVATE_KEY_FILE: signs the tokens the gateway issues.
    jwt_private_key_file: Path | None = None
    token_ttl_seconds: int = Field(3600, ge=60, le=7 * 86400)
    # How long a passively-unhealthy target is left out before it is tried again.
    gateway_unhealthy_cooldown_seconds: float = Field(10.0, gt=0)
    # Reach upstream services over mutual TLS with the gateway's certificate (DOCTAG_TLS_DIR, role
    # `gateway`), verifying theirs against the platform CA; services whose protocol is https in
    # kong.yml need it (`make up` turns both on).
    upstream_tls: bool = False
    # Prefix of every Redis key the gateway writes (rate-limit and login-throttle counters).
    gateway_redis_prefix: str = "doctag"
    # Login throttling: counters in Redis (shared by every gateway process) or in the process.
    gateway_redis_url: str = "redis://127.0.0.1:6379/0"
    # A file holding the Redis password (the db host's ACL user, see `doctag dbhost setup`), which
    # replaces the one in DOCTAG_GATEWAY_REDIS_URL; the URL names the user (redis://USER@HOST:6379/0).
    gateway_redis_password_file: Path | None = None
    login_throttle_store: Literal["redis", "local"] = "redis"
    login_free_failures_per_user: int = Field(5, ge=1)
    login_free_failures_per_address: int = Field(20, ge=1)
    login_backoff_base_seconds: float = Field(1.0, gt=0)
    login_backoff_max_seconds: float = Field(900.0, gt=0)
    login_failure_window_seconds: int = Field(900, ge=1)
    # Login throttling by source address: connections from these addresses or networks (the web
    # replicas) may name the user's address in X-Forwarded-For (gateway/forwarders.py); from any
    # other client the header is ignored. Empty (default): nobody is trusted.
    gateway_trusted_forwarders: list[str] = Field(default_factory=list)
    # argon2 verifications at once (each takes tens of MB and ~50 ms of a core).
    login_max_concurrent_verifications: int = Field(4, ge=1)
    # Fairness: each tenant's concurrent requests per upstream (0: no cap), how many may wait
    # for a turn, and for how long (gateway/fairness.py).
    gateway_tenant_max_in_flight: int = Field(4, ge=0)
    gateway_tenant_max_waiting: int = Field(500, ge=0)
    gateway_tenant_wait_seconds: float = Field(30.0, gt=0)
    # Daily API quotas per tenant (gateway/quotas.py; limits and day in the common settings).
    gateway_api_quotas: bool = True
    # Token revocation (gateway/revocation.py): check each token's generation against its user's.
    gateway_token_revocation: bool = True
    gateway_revocation_cache_seconds: float = Field(5.0, ge=0)
    # In-flight requests get this long to finish after SIGTERM.
    shutdown_grace_seconds: float = Field(15.0, ge=0)

    @field_validator("gateway_trusted_forwarders")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        parse_networks(values)
        return values

    @property
    def redis_connection_url(self) -> str:
        """DOCTAG_GATEWAY_REDIS_URL with the password of DOCTAG_GATEWAY_REDIS_PASSWORD_FILE, when given."""
        if self.gateway_redis_password_file is None:
            return self.gateway_redis_url
        return with_password(self.gateway_redis_url, read_secret(self.gateway_redis_password_file))

    def upstream_ssl(self) -> ReloadingSSLContext | None:
        return ReloadingSSLContext(TlsFiles(*self.tls_paths()), server=False) if self.upstream_tls else None

    @property
    def private_key_path(self) -> Path:
        return self.jwt_private_key_file or self.state_dir / "keys" / "jwt_private.pem"
