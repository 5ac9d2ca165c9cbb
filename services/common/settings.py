"""Configuration from environment variables, one prefix (`DOCTAG_`) for every service.

Defaults work on a developer machine: PostgreSQL and RabbitMQ on loopback, state
(keys, blobs, logs) under ./var. Each service subclasses `CommonSettings` and adds
its own fields; a process reads only the variables of its own service.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from .tls import ReloadingSSLContext


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOCTAG_", extra="ignore")

    service_name: str = "doctag"
    log_level: str = "INFO"
    # Listening addresses; each service sets its own default ports (DOCTAG_HTTP_PORT, DOCTAG_GRPC_PORT).
    http_host: str = "127.0.0.1"
    grpc_host: str = "127.0.0.1"
    # Request bodies on the service's own HTTP port, as the gateway limits them (its global
    # request-size-limiting: 8 MB; routes with larger limits say so in their service's settings).
    max_request_bytes: int = 8 * 1024 * 1024
    # /docs and /openapi.json on the service's own port.
    api_docs: bool = True
    # Where keys, blobs, logs and process state live when no other path is given.
    state_dir: Path = Path("var")

    db_host: str = "127.0.0.1"
    db_port: int = 5432
    db_name: str = "doctag"
    # Each service connects as its own role (see infra/migrations); set by the subclass.
    db_user: str = "postgres"
    db_password: str = ""
    # A file holding the password (what `make up` writes: var/secrets/db/<role>, 0600); used when
    # DOCTAG_DB_PASSWORD is empty.
    db_password_file: Path | None = None
    # TLS to PostgreSQL (libpq's sslmode). Unset: libpq's default (`prefer`), as on a developer
    # machine. The seven-VM deployment sets `verify-full`: the db host's certificate must be issued
    # by the platform CA (DOCTAG_DB_SSLROOTCERT, default the CA of DOCTAG_TLS_DIR) and name the
    # address or name in DOCTAG_DB_HOST.
    db_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    db_sslrootcert: Path | None = None
    db_pool_min: int = 1
    db_pool_max: int = 10

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # A file holding the AMQP password, which replaces the one in DOCTAG_AMQP_URL (what `make up`
    # writes: var/secrets/amqp/<user>, 0600).
    amqp_password_file: Path | None = None
    # Declare the exchanges and queues at start-up (needs the `configure` permission). `make up`
    # declares them once as the vhost's administrator and runs the services with this off, so
    # their users hold no `configure` permission; they then only check that the topology exists.
    amqp_declare_topology: bool = True
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

    # Mutual TLS between services (services/common/tls.py). The certificate names this process's
    # role (default: the service name); files default to <tls_dir>/ca.crt, <role>.crt, <role>.key.
    grpc_tls: bool = True
    # The service's own HTTP port over mutual TLS too (client certificates of the platform CA
    # required): what `make up` turns on, the gateway then reaching services over https. Off for
    # a service started alone (its HTTP port then answers plain HTTP, tokens still required).
    http_tls: bool = False
    service_role: str | None = None
    tls_dir: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Job capabilities (services/common/capability.py): upload signs with the private key; upload and
    # model-serving verify with the public key. Default: <state_dir>/keys/job_capability_ed25519[.pub].pem
    job_capability_private_key_file: Path | None = None
    job_capability_public_key_file: Path | None = None

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
        if password is None and not pw and self.db_password_file is not None:
            pw = read_secret(self.db_password_file)
        if pw:
            parts["password"] = pw
        parts.update(self.db_tls_params())
        if self.db_session_options():
            parts["options"] = self.db_session_options()
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    def db_session_options(self) -> str:
        """Server settings for this service's sessions, as libpq's `options` (`-c name=value ...`); none here."""
        return ""

    def db_tls_params(self) -> dict[str, str]:
        """libpq's sslmode (and sslrootcert when the server's certificate is verified), or nothing."""
        if self.db_sslmode is None:
            return {}
        params: dict[str, str] = {"sslmode": self.db_sslmode}
        if self.db_sslmode in ("verify-ca", "verify-full"):
            params["sslrootcert"] = str(self.db_sslrootcert or self.tls_ca_file or self.pki_dir / "ca.crt")
        return params

    @property
    def amqp_connection_url(self) -> str:
        """DOCTAG_AMQP_URL with the password of DOCTAG_AMQP_PASSWORD_FILE, when one is given."""
        if self.amqp_password_file is None:
            return self.amqp_url
        return with_password(self.amqp_url, read_secret(self.amqp_password_file))

    @property
    def role(self) -> str:
        return self.service_role or self.service_name

    @property
    def pki_dir(self) -> Path:
        return self.tls_dir or self.state_dir / "pki"

    def http_ssl(self, *, server: bool = True) -> ReloadingSSLContext | None:
        """The TLS context of this process's HTTP side when DOCTAG_HTTP_TLS is on (else None)."""
        if not self.http_tls:
            return None
        from .tls import ReloadingSSLContext, TlsFiles

        return ReloadingSSLContext(TlsFiles(*self.tls_paths()), server=server)

    def tls_paths(self) -> tuple[Path, Path, Path]:
        """(CA certificate, this role's certificate, its key)."""
        return (self.tls_ca_file or self.pki_dir / "ca.crt", self.tls_cert_file or self.pki_dir / f"{self.role}.crt",
                self.tls_key_file or self.pki_dir / f"{self.role}.key")

    @property
    def capability_private_key_path(self) -> Path:
        return self.job_capability_private_key_file or self.state_dir / "keys" / "job_capability_ed25519.pem"

    @property
    def capability_public_key_path(self) -> Path:
        return self.job_capability_public_key_file or self.state_dir / "keys" / "job_capability_ed25519.pub.pem"

    @property
    def cursor_key_path(self) -> Path:
        return self.cursor_key_file or self.state_dir / "keys" / "cursor_hmac.key"

    @property
    def public_key_path(self) -> Path:
        return self.jwt_public_key_file or self.state_dir / "keys" / "jwt_public.pem"


def with_password(url: str, password: str) -> str:
    """`url` (amqp://, redis://, ...) with its password replaced by `password` (escaped)."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(unquote(user), safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_secret(path: Path) -> str:
    """A password file's content without the trailing newline."""
    return path.read_text(encoding="utf-8").strip()


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
