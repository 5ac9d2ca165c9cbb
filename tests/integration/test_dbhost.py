"""The db VM role against real servers: `doctag dbhost setup` brings up a PostgreSQL cluster, a
RabbitMQ node and a Redis of their own (own data directories, node name and ports on 127.0.0.7,
next to the machine's shared servers), twice (the second run changes nothing); then what the
other hosts rely on is tried: verified TLS and pg_hba per role and host, migrations, broker users
over plain AMQP and TLS, the gateway's Redis user, and a base backup restored with the WAL
archived after it. Heavy (three servers): run under `flock /tmp/heavy.lock`.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import psycopg
import pytest
import redis
import yaml
from alembic.script import ScriptDirectory
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.counters import RedisCounters
from gateway.settings import GatewaySettings
from services.cli.dbhost_config import PG_BIN, DbHostConfig
from services.common import pki
from services.common.migrate import MIGRATIONS_DIR
from services.common.settings import CommonSettings
from tests.conftest import REPO, SESSION_ID

pytestmark = [pytest.mark.integration, pytest.mark.deployment]
NO_RETRY = Retry(NoBackoff(), 0)
DB_ADDRESS = "127.0.0.7"  # a refused login is the answer, not a reason to try again

if shutil.which("rabbitmq-server") is None or not (PG_BIN / "postgres").exists() or os.geteuid() != 0:
    pytest.skip("needs root, PostgreSQL 15 and rabbitmq-server", allow_module_level=True)


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.7", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class DbHost:
    base: Path
    cfg: DbHostConfig
    secrets: Path
    pki: Path
    inventory: Path
    first_run: str
    second_run: str

    def password(self, kind: str, user: str) -> str:
        return (self.secrets / kind / user).read_text(encoding="utf-8").strip()


def doctag(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"doctag {' '.join(args)} failed: {result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def dbhost() -> Iterator[DbHost]:
    base = Path(tempfile.mkdtemp(prefix="doctag-dbhost-"))
    os.chmod(base, 0o755)  # the servers' users traverse it
    pki.init_ca(base / "pki")
    inventory = base / "inventory.yaml"
    # The db host listens on its own loopback address; this process connects from 127.0.0.1 (the
    # kernel's source address for loopback), the gateway host's; the web and model hosts are elsewhere.
    inventory.write_text(yaml.safe_dump({"version": 1, "hosts": [
        {"name": "db-1", "role": "db", "address": DB_ADDRESS},
        {"name": "gw-1", "role": "gateway", "address": "127.0.0.1"},
        {"name": "web-1", "role": "web", "address": "127.0.0.2"},
        {"name": "web-2", "role": "web", "address": "127.0.0.3"},
        {"name": "model-1", "role": "model", "address": "127.0.0.4"},
        {"name": "tagging-1", "role": "tagging", "address": "127.0.0.5"},
    ]}), encoding="utf-8")
    pg, amqp, amqps, rds, dist = _free_ports(5)
    root = base / "root"
    args = ["dbhost", "setup", "--no-systemd", "--inventory", str(inventory), "--host", "db-1",
            "--data-root", str(root), "--secrets-dir", str(base / "secrets"), "--pki-dir", str(base / "pki"),
            "--pg-port", str(pg), "--amqp-port", str(amqp), "--amqps-port", str(amqps), "--redis-port", str(rds),
            "--rabbit-node", f"doctag-test-{SESSION_ID}@localhost", "--rabbit-dist-port", str(dist),
            "--database", "doctag", "--memory-mib", "2048"]
    try:
        first = doctag(*args).stdout
        second = doctag(*args).stdout
        yield DbHost(base, DbHostConfig.load(root), base / "secrets", base / "pki", inventory, first, second)
    finally:
        doctag("dbhost", "stop", "--data-root", str(root), check=False)
        restored = base / "restored"
        if (restored / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(restored), "stop",
                            "-m", "immediate"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _admin(host: DbHost, database: str = "doctag") -> psycopg.Connection:
    return psycopg.connect(host=str(host.cfg.pg_socket_dir), port=host.cfg.pg_port, user="postgres",
                           dbname=database, autocommit=True)


def _service(host: DbHost, user: str, **tls: str) -> psycopg.Connection:
    settings = CommonSettings(db_host=DB_ADDRESS, db_port=host.cfg.pg_port, db_name="doctag", db_user=user,
                              db_password=host.password("db", user), tls_dir=host.pki, **tls)  # type: ignore[arg-type]
    return psycopg.connect(settings.dsn(), autocommit=True, connect_timeout=5)


def test_setup_twice_changes_nothing_the_second_time(dbhost: DbHost) -> None:
    assert "changed:" in dbhost.first_run and "postgres: started" in dbhost.first_run
    assert "unchanged" in dbhost.second_run, dbhost.second_run
    assert f"listen_addresses = '{DB_ADDRESS}'" in (dbhost.cfg.pg_data / "doctag.conf").read_text()


def test_postgresql_memory_is_sized_from_the_host(dbhost: DbHost) -> None:
    with _admin(dbhost) as conn:
        shown = {name: conn.execute(f"SHOW {name}").fetchone() for name in ("shared_buffers", "effective_cache_size")}
    assert shown == {"shared_buffers": ("512MB",), "effective_cache_size": ("1GB",)}


def test_migrations_are_applied(dbhost: DbHost) -> None:
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    with _admin(dbhost) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head,)


def test_the_gateway_host_connects_over_verified_tls(dbhost: DbHost) -> None:
    with _service(dbhost, "doctag_gateway", db_sslmode="verify-full") as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row is not None and row[0] is True and row[1] in ("TLSv1.2", "TLSv1.3")
        assert conn.execute("SELECT current_user").fetchone() == ("doctag_gateway",)


def test_pg_hba_admits_only_the_roles_of_this_address_and_only_over_tls(dbhost: DbHost) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection .*no encryption"):
        _service(dbhost, "doctag_gateway", db_sslmode="disable")
    for role in ("doctag_search", "doctag_upload", "doctag_model"):  # their hosts are 127.0.0.2-4
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection|no pg_hba\.conf entry"):
            _service(dbhost, role, db_sslmode="verify-full")
    with pytest.raises(psycopg.OperationalError, match="pg_hba"):
        psycopg.connect(host=DB_ADDRESS, port=dbhost.cfg.pg_port, user="postgres", dbname="doctag",
                        sslmode="require", connect_timeout=5)


def test_a_client_that_does_not_trust_the_platform_ca_is_refused(dbhost: DbHost, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _service(dbhost, "doctag_gateway", db_sslmode="verify-full", db_sslrootcert=str(tmp_path / "other" / "ca.crt"))


def test_broker_users_log_in_to_their_vhost_and_guest_is_gone(dbhost: DbHost) -> None:
    cfg = dbhost.cfg
    user = f"{cfg.amqp_prefix}-upload"
    url = f"amqp://{user}:{dbhost.password('amqp', user)}@{DB_ADDRESS}:{cfg.amqp_port}/{cfg.amqp_vhost}"

    async def main() -> None:
        conn = await aio_pika.connect(url, timeout=10)
        await conn.close()
        with pytest.raises(Exception, match=r"ACCESS_REFUSED|PLAIN login refused"):
            await aio_pika.connect(f"amqp://guest:guest@{DB_ADDRESS}:{cfg.amqp_port}/", timeout=10)

    asyncio.run(main())


def test_the_broker_speaks_amqp_over_tls_with_the_platform_certificate(dbhost: DbHost) -> None:
    ctx = ssl.create_default_context(cafile=str(dbhost.pki / "ca.crt"))
    with socket.create_connection((DB_ADDRESS, dbhost.cfg.amqps_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=DB_ADDRESS) as tls:
        tls.sendall(b"AMQP\x00\x00\x09\x01")
        frame = tls.recv(7)
    assert frame[0] == 1  # a method frame: connection.start


def test_redis_admits_only_the_gateway_user(dbhost: DbHost) -> None:
    port = dbhost.cfg.redis_port
    settings = GatewaySettings(gateway_redis_url=f"redis://doctag-gateway@{DB_ADDRESS}:{port}/0",
                               gateway_redis_password_file=dbhost.secrets / "redis" / "doctag-gateway")

    async def counters() -> list[int]:
        store = RedisCounters.from_url(settings.redis_connection_url)
        try:
            return await store.incr([(f"doctag-test:{SESSION_ID}:login", 60)])
        finally:
            await store.close()

    assert asyncio.run(counters()) == [1]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=DB_ADDRESS, port=port, username="doctag-gateway", password="wrong", retry=NO_RETRY).ping()
    with pytest.raises((redis.AuthenticationError, redis.ResponseError), match=r"NOAUTH|authenticated"):
        redis.Redis(host=DB_ADDRESS, port=port, retry=NO_RETRY).set("x", 1)
    assert "protected-mode yes" in (dbhost.cfg.redis_dir / "redis.conf").read_text()


def test_a_base_backup_restores_with_the_rows_written_after_it(dbhost: DbHost) -> None:
    with _admin(dbhost) as conn:
        conn.execute("CREATE TABLE dbhost_probe (note text)")
        conn.execute("INSERT INTO dbhost_probe VALUES ('백업 전')")
    out = doctag("dbhost", "backup", "--data-root", str(dbhost.cfg.root)).stdout
    backup = Path(out.split("base backup in ")[1].split(" ")[0])
    assert (backup / "backup_manifest").exists()
    with _admin(dbhost) as conn:
        conn.execute("INSERT INTO dbhost_probe VALUES ('백업 후')")
        segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while True:  # the segment holding the second row reaches the archive
            row = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if row and row[0] and segment and row[0] >= segment[0]:
                break
            assert time.monotonic() < deadline, "WAL segment not archived"
            time.sleep(0.2)
    assert not [p for p in dbhost.cfg.wal_archive.iterdir() if p.name.endswith(".part")]

    target, (port,) = dbhost.base / "restored", _free_ports(1)
    doctag("dbhost", "restore", "--data-root", str(dbhost.cfg.root), "--backup", str(backup), "--target", str(target),
           "--port", str(port))
    with psycopg.connect(host=str(dbhost.base / "restored.run"), port=port, user="postgres", dbname="doctag") as conn:
        rows = conn.execute("SELECT note FROM dbhost_probe").fetchall()
    assert sorted(rows) == [("백업 전",), ("백업 후",)]
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(target), "stop", "-m",
                    "fast"], check=True, capture_output=True, timeout=60)


def test_backups_beyond_keep_go_with_the_wal_only_they_needed(dbhost: DbHost) -> None:
    first = sorted(dbhost.cfg.backups.iterdir())
    archived_before = sorted(p.name for p in dbhost.cfg.wal_archive.iterdir())
    time.sleep(1.1)  # backups are named by the second
    out = doctag("dbhost", "backup", "--data-root", str(dbhost.cfg.root), "--keep", "1").stdout
    kept = sorted(dbhost.cfg.backups.iterdir())
    assert len(first) == 1 and len(kept) == 1 and kept != first and "removed older backups" in out
    archived = sorted(p.name for p in dbhost.cfg.wal_archive.iterdir())
    assert archived and archived[0] > archived_before[0]


def test_stop_start_and_status(dbhost: DbHost) -> None:
    root = str(dbhost.cfg.root)
    assert doctag("dbhost", "status", "--data-root", root, "--address", DB_ADDRESS).returncode == 0
    wrong = doctag("dbhost", "status", "--data-root", root, "--address", "10.9.9.9", check=False)
    assert wrong.returncode == 1 and f"set up for {DB_ADDRESS}" in wrong.stderr
    doctag("dbhost", "stop", "--data-root", root, "--only", "postgres", "--only", "redis")
    stopped = doctag("dbhost", "status", "--data-root", root, check=False)
    assert stopped.returncode == 1 and "postgres: stopped" in stopped.stdout and "rabbitmq: running" in stopped.stdout
    doctag("dbhost", "start", "--data-root", root)
    with _service(dbhost, "doctag_gateway", db_sslmode="verify-full") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("doctag_gateway",)
    with _admin(dbhost) as conn:
        assert conn.execute("SELECT count(*) FROM dbhost_probe").fetchone() == (2,)
