"""The db host's files as rendered from the inventory and the layout (no servers needed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.cli import db_accounts, dbhost, dbhost_config, vm_layout
from services.cli.dbhost_config import DbHostConfig
from services.cli.dbhost_servers import DbHostError

HOSTS = [
    dbhost.Host("db-1", "db", "10.20.0.10"),
    dbhost.Host("model-1", "model", "10.20.0.20"),
    dbhost.Host("web-1", "web", "10.20.0.30"),
    dbhost.Host("web-2", "web", "10.20.0.31"),
    dbhost.Host("tagging-1", "tagging", "10.20.0.40"),
    dbhost.Host("gw-1", "gateway", "10.20.0.50"),
]


def _cfg(tmp_path: Path) -> DbHostConfig:
    return DbHostConfig(root=tmp_path / "root", address="10.20.0.10")


def test_the_vm_roles_with_database_accounts_are_those_the_arrows_connect_to_postgres() -> None:
    mapped = {"api-gw" if r == "gateway" else r for r in dbhost.postgres_client_roles()}
    assert mapped == set(db_accounts.SERVICE_DB_ROLES.values())
    assert "tagging" not in dbhost.postgres_client_roles()


def test_pg_hba_from_the_inventory(tmp_path: Path) -> None:
    hba = dbhost.pg_hba(_cfg(tmp_path), HOSTS)
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    tcp = [r for r in rules if r[0] == "hostssl"]
    assert {(r[2], r[3]) for r in tcp} == {
        ("doctag_gateway", "10.20.0.50/32"),
        ("doctag_upload", "10.20.0.30/32"), ("doctag_upload", "10.20.0.31/32"),
        ("doctag_relay", "10.20.0.30/32"), ("doctag_relay", "10.20.0.31/32"),
        ("doctag_search", "10.20.0.30/32"), ("doctag_search", "10.20.0.31/32"),
        ("doctag_model", "10.20.0.20/32"), ("doctag_training", "10.20.0.20/32"),
    }
    assert all(r[1] == "doctag" and r[4] == "scram-sha-256" for r in tcp)
    assert "10.20.0.40" not in hba  # the tagging hosts have no database access
    assert rules[-1] == ["host", "all", "all", "all", "reject"]
    assert ["local", "replication", "postgres", "peer", "map=doctag_admin"] in rules


def test_inventory_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "hosts": [{"name": "db-1", "role": "db", "address": "10.0.0.1"},
                                              {"name": "x", "role": "db", "address": "not-an-ip"}]}))
    with pytest.raises(DbHostError, match=r"hosts\[1\]\.address: 'not-an-ip'"):
        dbhost.read_hosts(path)
    path.write_text(yaml.safe_dump({"version": 1,
                                    "hosts": [{"name": "db-1", "role": "database", "address": "10.0.0.1"}]}))
    with pytest.raises(DbHostError, match=r"hosts\[0\]\.role: unknown VM role 'database'"):
        dbhost.read_hosts(path)
    with pytest.raises(DbHostError, match="--host web-1: its role is web"):
        dbhost.db_host(HOSTS, "web-1")
    with pytest.raises(DbHostError, match="--host db-9: not in the inventory"):
        dbhost.db_host(HOSTS, "db-9")


def test_the_example_inventory_is_read() -> None:
    example = Path(__file__).resolve().parents[2] / "infra" / "inventory.example.yaml"
    if not example.exists():
        pytest.skip("infra/inventory.example.yaml comes with the deploy work")
    assert dbhost.db_host(dbhost.read_hosts(example), "db-1").role == "db"


def test_postgresql_listens_on_the_private_address_with_tls_and_archiving(tmp_path: Path) -> None:
    conf = dbhost_config.postgresql_conf(_cfg(tmp_path))
    for line in ("listen_addresses = '10.20.0.10'", "ssl = on", "archive_mode = on", "wal_level = replica",
                 f"port = {vm_layout.POSTGRES_PORT}", "password_encryption = 'scram-sha-256'",
                 # a web host cut off the network loses its sessions (and their locks) in seconds, not hours
                 "tcp_keepalives_idle = 10", "tcp_user_timeout = 25000"):
        assert line in conf
    assert "archive-wal.sh %p %f" in conf


def test_postgresql_memory_is_a_share_of_the_hosts() -> None:
    assert dbhost_config.memory_settings(16 * 1024) == {   # the db VM of the seven-host layout
        "shared_buffers": "4096MB", "effective_cache_size": "8192MB", "maintenance_work_mem": "1024MB",
        "work_mem": "16MB"}
    assert dbhost_config.memory_settings(256 * 1024)["maintenance_work_mem"] == "2048MB"
    assert dbhost_config.memory_settings(0) == {}, "unknown memory: PostgreSQL's defaults"
    assert dbhost_config.host_memory_mib() > 0
    conf = dbhost_config.postgresql_conf(DbHostConfig(root=Path("/x"), address="10.20.0.10", memory_mib=16 * 1024))
    assert "shared_buffers = 4096MB" in conf and "effective_cache_size = 8192MB" in conf
    assert "shared_buffers" not in dbhost_config.postgresql_conf(DbHostConfig(root=Path("/x"), address="10.20.0.10"))


def test_the_archive_command_copies_whole_and_never_overwrites(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cfg.wal_archive.mkdir(parents=True)
    script = tmp_path / "archive-wal.sh"
    script.write_text(dbhost_config.archive_script(cfg))
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(b"wal" * 1000)

    def archive() -> int:
        return subprocess.run(["/bin/sh", str(script), str(segment), segment.name], capture_output=True).returncode

    assert archive() == 0
    assert (cfg.wal_archive / segment.name).read_bytes() == segment.read_bytes()
    assert archive() == 0  # the same segment again (a retry after a crash): done already
    segment.write_bytes(b"other")
    assert archive() != 0  # different content under an archived name: refused, the archive kept
    assert (cfg.wal_archive / segment.name).read_bytes() == b"wal" * 1000
    assert sorted(p.name for p in cfg.wal_archive.iterdir()) == [segment.name]


def test_redis_keeps_protected_mode_and_only_a_hash_of_the_password(tmp_path: Path) -> None:
    conf = dbhost_config.redis_conf(_cfg(tmp_path), "비밀번호-secret")
    assert "protected-mode yes" in conf and "bind 10.20.0.10" in conf and "user default off" in conf
    assert "비밀번호-secret" not in conf
    assert f"#{dbhost_config.redis_password_hash('비밀번호-secret')}" in conf


def test_rabbitmq_listens_on_the_private_address_and_keeps_erlang_on_loopback(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    conf = dbhost_config.rabbitmq_conf(cfg)
    assert "listeners.tcp.1 = 10.20.0.10:5672" in conf and "listeners.ssl.1 = 10.20.0.10:5671" in conf
    env = dbhost_config.rabbit_env(cfg)
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert "inet_dist_use_interface {127,0,0,1}" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert env["RABBITMQ_NODENAME"] != "rabbit@localhost" and env["HOME"] == str(cfg.rabbit_dir)


def test_the_configuration_round_trips(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.save() is True
    assert cfg.save() is False  # unchanged: not written again
    assert DbHostConfig.load(cfg.root) == cfg


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    for name, text in dbhost_config.systemd_units(_cfg(tmp_path)).items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.glob("*.service")))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_db_host_certificate_serves_tls_and_is_no_client_certificate(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from services.common import pki

    pki.init_ca(tmp_path / "pki")
    cfg = _cfg(tmp_path)
    assert dbhost.ensure_certificate(cfg, tmp_path / "pki") is True
    assert dbhost.ensure_certificate(cfg, tmp_path / "pki") is False  # valid and naming the address: kept
    cert = x509.load_pem_x509_certificate((cfg.root / "tls" / "db.crt").read_bytes())
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    moved = DbHostConfig(root=cfg.root, address="10.20.0.11")
    assert dbhost.ensure_certificate(moved, tmp_path / "pki") is True  # a new address: a new certificate


def test_without_the_ca_key_the_certificate_must_be_given(tmp_path: Path) -> None:
    from services.common import pki

    pki.init_ca(tmp_path / "ca")
    given = tmp_path / "given"
    pki.issue(tmp_path / "ca", "db", hosts=["db-1"], ips=["10.20.0.10"], out_dir=given)
    cfg = _cfg(tmp_path)
    assert dbhost.ensure_certificate(cfg, given) is True
    assert (cfg.root / "tls" / "db.key").read_bytes() == (given / "db.key").read_bytes()
    with pytest.raises(DbHostError, match="no certificate for the db host"):
        dbhost.ensure_certificate(DbHostConfig(root=tmp_path / "other", address="10.20.0.99"), given)
