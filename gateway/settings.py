"""Gateway settings (environment variables with the `DOCTAG_` prefix)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.settings import CommonSettings
from services.common.tls import ReloadingSSLContext, TlsFiles

DEFAULT_CONFIG = Path(__file__).resolve().with_name("kong.yml")


class GatewaySettings(CommonSettings):
    service_name: str = "gateway"
    # Reads identity.tenants and identity.users (RLS) to issue tokens.
    db_user: str = "doctag_gateway"

    http_port: int = 8080
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
    # In-flight requests get this long to finish after SIGTERM.
    shutdown_grace_seconds: float = Field(15.0, ge=0)

    def upstream_ssl(self) -> ReloadingSSLContext | None:
        return ReloadingSSLContext(TlsFiles(*self.tls_paths()), server=False) if self.upstream_tls else None

    @property
    def private_key_path(self) -> Path:
        return self.jwt_private_key_file or self.state_dir / "keys" / "jwt_private.pem"
