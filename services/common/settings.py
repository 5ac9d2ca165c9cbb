"""Configuration from environment variables, one prefix (`DOCTAG_`) for every service.

Defaults work on a developer machine: PostgreSQL and RabbitMQ on loopback, state
(keys, blobs, logs) under ./var. Each service subclasses `CommonSettings` and adds
its own fields; a process reads only the variables of its own service.
"""
from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOCTAG_", extra="ignore")

    service_name: str = "doctag"
    log_level: str = "INFO"
    # Listening addresses; each service sets its own default ports (DOCTAG_HTTP_PORT, DOCTAG_GRPC_PORT).
    http_host: str = "127.0.0.1"
    grpc_host: str = "127.0.0.1"
    # Where keys, blobs, logs and process state live when no other path is given.
    state_dir: Path = Path("var")

    db_host: str = "127.0.0.1"
    db_port: int = 5432
    db_name: str = "doctag"
    # Each service connects as its own role (see infra/migrations); set by the subclass.
    db_user: str = "postgres"
    db_password: str = ""
    db_pool_min: int = 1
    db_pool_max: int = 10

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Prefix of exchange and queue names, so test runs never touch the real topology.
    amqp_prefix: str = "doctag"

    # The gateway signs tokens with the private key; every service verifies with the public key.
    jwt_public_key_file: Path | None = None
    # Daily API quotas (services/common/api_quota.py): calls a day for a tenant without its own
    # quota, the day's time zone, and the share of the quota from which calls are warned.
    api_daily_quota_default: int = 10_000
    api_quota_timezone: str = "Asia/Seoul"
    api_quota_warning_percent: int = 80
    # Signs page cursors (services/common/cursors.py); shared by every service like the state dir.
    cursor_key_file: Path | None = None
    jwt_issuer: str = "doctag"
    jwt_audience: str = "doctag-api"

    def dsn(self, user: str | None = None, password: str | None = None) -> str:
        """A libpq connection string for `user` (default: this service's role)."""
        parts = {
            "host": self.db_host,
            "port": str(self.db_port),
            "dbname": self.db_name,
            "user": user or self.db_user,
            "application_name": self.service_name,
        }
        pw = self.db_password if password is None else password
        if pw:
            parts["password"] = pw
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    @property
    def cursor_key_path(self) -> Path:
        return self.cursor_key_file or self.state_dir / "keys" / "cursor_hmac.key"

    @property
    def public_key_path(self) -> Path:
        return self.jwt_public_key_file or self.state_dir / "keys" / "jwt_public.pem"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
