"""Connection strings to PostgreSQL (TLS to the db host) and Redis (the gateway's ACL user)."""
from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from gateway.settings import GatewaySettings
from services.common.migrate import admin_url
from services.common.settings import CommonSettings


def _params(dsn: str) -> dict[str, str]:
    return psycopg.conninfo.conninfo_to_dict(dsn)  # type: ignore[return-value]


def test_developer_default_adds_no_tls_parameters() -> None:
    params = _params(CommonSettings(db_password="x").dsn())
    assert "sslmode" not in params and "sslrootcert" not in params
    assert params["host"] == "127.0.0.1" and params["password"] == "x"


def test_verify_full_uses_the_platform_ca_of_the_tls_dir(tmp_path: Path) -> None:
    settings = CommonSettings(db_host="10.20.0.10", db_sslmode="verify-full", tls_dir=tmp_path / "pki")
    params = _params(settings.dsn(user="doctag_search", password="비밀 'quoted' \\ pw"))
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == str(tmp_path / "pki" / "ca.crt")
    assert params["host"] == "10.20.0.10" and params["user"] == "doctag_search"
    assert params["password"] == "비밀 'quoted' \\ pw"


def test_an_explicit_root_certificate_wins(tmp_path: Path) -> None:
    settings = CommonSettings(db_sslmode="verify-ca", db_sslrootcert=tmp_path / "db-ca.pem",
                              tls_ca_file=tmp_path / "other.pem")
    assert _params(settings.dsn())["sslrootcert"] == str(tmp_path / "db-ca.pem")


def test_require_does_not_name_a_root_certificate() -> None:
    params = _params(CommonSettings(db_sslmode="require").dsn())
    assert params["sslmode"] == "require" and "sslrootcert" not in params


def test_an_unknown_sslmode_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="db_sslmode"):
        CommonSettings(db_sslmode="verify")


def test_alembic_url_escapes_the_password_and_carries_tls(tmp_path: Path) -> None:
    settings = CommonSettings(db_host="10.20.0.10", db_port=5433, db_name="doctag", db_sslmode="verify-full",
                              tls_ca_file=tmp_path / "ca.crt")
    url = make_url(admin_url(settings, "postgres", "p@ss:w/rd%"))
    assert (url.host, url.port, url.database, url.password) == ("10.20.0.10", 5433, "doctag", "p@ss:w/rd%")
    assert url.query == {"sslmode": "verify-full", "sslrootcert": str(tmp_path / "ca.crt")}


def test_alembic_url_reaches_a_socket_directory() -> None:
    url = make_url(admin_url(CommonSettings(db_host="/srv/db/run", db_port=5544), "postgres", ""))
    assert url.host is None and url.password is None
    assert url.query == {"host": "/srv/db/run", "port": "5544"}


def test_gateway_redis_password_file_fills_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "redis"
    secret.write_text("s3/cr@t\n", encoding="utf-8")
    settings = GatewaySettings(gateway_redis_url="redis://doctag-gateway@10.20.0.10:6379/0",
                               gateway_redis_password_file=secret)
    assert settings.redis_connection_url == "redis://doctag-gateway:s3%2Fcr%40t@10.20.0.10:6379/0"
    assert GatewaySettings().redis_connection_url == "redis://127.0.0.1:6379/0"
