"""`doctag dbhost`: the db VM role, run ON the db host as root (deploy calls it over SSH).

`setup` makes PostgreSQL, RabbitMQ and Redis serve the platform on the host's private address
(files and directories in dbhost_config.py): a server certificate issued by the platform CA,
pg_hba.conf from the inventory and the architecture's arrows, the services' database roles and
broker users with their passwords, the migrations, and WAL archiving. Run twice, it changes
nothing the second time (files are written only when they differ, servers restarted only then).
`backup` takes a base backup; `restore` brings one back, with the archived WAL, as a new cluster.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml
from cryptography import x509

from services.common import pki
from services.common.amqp import Topology
from services.common.settings import CommonSettings

from . import amqp_accounts, db_accounts, dbhost_servers, vm_layout
from .dbhost_config import (
    ADMIN_MAP,
    PG_BIN,
    PG_USER,
    RABBITMQ_BIN,
    RABBITMQ_USER,
    REDIS_GATEWAY_USER,
    REDIS_USER,
    DbHostConfig,
    archive_script,
    as_user,
    pg_ident_conf,
    postgresql_conf,
    rabbitmq_conf,
    redis_conf,
    restore_command,
    systemd_units,
    write_if_changed,
)
from .dbhost_servers import DbHostError, Direct, Systemd, run

# db_accounts names the gateway's VM role as the architecture's diagram does.
_DB_ACCOUNT_ROLE = {"gateway": "api-gw"}
CERT_ROLE = "db"


@dataclass(frozen=True)
class Host:
    name: str
    role: str
    address: str


def read_hosts(path: Path) -> list[Host]:
    """The inventory's hosts (name, role, address): all the db host needs of it. Errors name the entry."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DbHostError(f"{path}: {exc}") from None
    entries = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DbHostError(f"{path}: hosts: a list of hosts is required")
    roles = {r.name for r in vm_layout.ROLES}
    hosts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DbHostError(f"{path}: hosts[{i}]: a mapping with name, role and address is required")
        for key in ("name", "role", "address"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise DbHostError(f"{path}: hosts[{i}].{key}: required")
        if entry["role"] not in roles:
            raise DbHostError(f"{path}: hosts[{i}].role: {entry['role']!r} is not one of {', '.join(sorted(roles))}")
        try:
            ipaddress.ip_address(entry["address"])
        except ValueError:
            raise DbHostError(f"{path}: hosts[{i}].address: {entry['address']!r} is not an IP address") from None
        hosts.append(Host(entry["name"], entry["role"], entry["address"]))
    return hosts


def db_host(hosts: list[Host], name: str) -> Host:
    for host in hosts:
        if host.name == name:
            if host.role != "db":
                raise DbHostError(f"--host {name}: its role is {host.role}, not db")
            return host
    raise DbHostError(f"--host {name}: not in the inventory (hosts: {', '.join(h.name for h in hosts)})")


def postgres_client_roles() -> set[str]:
    """The VM roles whose services connect to PostgreSQL (vm_layout.ARROWS)."""
    return {vm_layout.role_of_service(client).name for client, server in vm_layout.ARROWS if server == "postgres"}


def pg_hba(cfg: DbHostConfig, hosts: list[Host]) -> str:
    """Each service role from the addresses of the hosts of its VM role, over TLS; nothing else."""
    allowed: dict[str, list[str]] = {}
    for host in hosts:
        if host.role in postgres_client_roles():
            allowed.setdefault(_DB_ACCOUNT_ROLE.get(host.role, host.role), []).append(host.address)
    return db_accounts.render_pg_hba(allowed, [], database=cfg.database, local_admin_map=ADMIN_MAP)


# ------------------------------------------------------------------ certificate


def _names_address(cert_path: Path, address: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return ipaddress.ip_address(address) in san.get_values_for_type(x509.IPAddress)


def ensure_certificate(cfg: DbHostConfig, pki_dir: Path) -> bool:
    """The db host's server certificate (role `db`, naming its address) in <root>/tls: issued here
    when `pki_dir` holds the platform CA's key, else taken from `pki_dir` (db.crt, db.key, ca.crt,
    issued on the operator's machine), else the one set up before. Returns True when it changed."""
    tls = cfg.root / "tls"
    cert, key = pki.cert_paths(tls, CERT_ROLE)
    current = key.exists() and _names_address(cert, cfg.address) and not pki.needs_renewal(cert)
    given_cert, given_key = pki.cert_paths(pki_dir, CERT_ROLE)
    if pki.ca_paths(pki_dir)[1].exists():
        if current and (tls / "ca.crt").exists() and (tls / "ca.crt").read_bytes() == (pki_dir / "ca.crt").read_bytes():
            return False
        pki.issue(pki_dir, CERT_ROLE, hosts=[cfg.host_name], ips=[cfg.address],
                  days=365, out_dir=tls)
        os.chmod(tls, 0o700)
        return True
    if given_key.exists() and _names_address(given_cert, cfg.address):
        changed = False
        for src, dst, mode in ((given_cert, cert, 0o644), (given_key, key, 0o600),
                               (pki_dir / "ca.crt", tls / "ca.crt", 0o644)):
            changed |= write_if_changed(dst, src.read_text(encoding="ascii"), mode=mode)
        return changed
    if current:
        return False
    raise DbHostError(f"--pki-dir {pki_dir}: no certificate for the db host: give the platform CA (ca.crt, ca.key) "
                      f"or db.crt/db.key/ca.crt issued for {cfg.address} (`doctag pki issue db --ip {cfg.address}`)")


def _install_tls(cfg: DbHostConfig, target: Path, owner: str) -> bool:
    changed = False
    target.mkdir(parents=True, exist_ok=True)
    shutil.chown(target, owner, owner)
    os.chmod(target, 0o700)
    for name, mode in (("ca.crt", 0o644), (f"{CERT_ROLE}.crt", 0o644), (f"{CERT_ROLE}.key", 0o600)):
        changed |= write_if_changed(target / name, (cfg.root / "tls" / name).read_text(encoding="ascii"),
                                    mode=mode, owner=owner)
    return changed


# ------------------------------------------------------------------ set-up


def _mkdir(path: Path, owner: str, mode: int = 0o700) -> None:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, owner, owner)
    os.chmod(path, mode)


def admin_settings(cfg: DbHostConfig, database: str | None = None) -> CommonSettings:
    """The local superuser through the socket (peer, pg_ident map: root → postgres)."""
    return CommonSettings(db_host=str(cfg.pg_socket_dir), db_port=cfg.pg_port, db_name=database or cfg.database,
                          db_user="postgres", service_name="doctag-dbhost")


def setup_postgres(cfg: DbHostConfig, hosts: list[Host], tls_changed: bool, ctl: Direct) -> list[str]:
    changes = []
    for path in (cfg.pg_dir, cfg.wal_archive, cfg.backups):
        _mkdir(path, PG_USER)
    _mkdir(cfg.pg_socket_dir, PG_USER, 0o755)
    if not (cfg.pg_data / "PG_VERSION").exists():
        run([*as_user(PG_USER), str(PG_BIN / "initdb"), "-D", str(cfg.pg_data), "-U", "postgres",
             "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
             "--data-checksums"], what="initdb", timeout=300)
        changes.append("postgres: cluster created")
    tls_changed |= _install_tls(cfg, cfg.pg_tls, PG_USER)
    restart = write_if_changed(cfg.pg_data / "doctag.conf", postgresql_conf(cfg), mode=0o600, owner=PG_USER)
    restart |= write_if_changed(cfg.archive_script, archive_script(cfg), mode=0o755)
    main_conf = cfg.pg_data / "postgresql.conf"
    include = "include_if_exists = 'doctag.conf'\n"
    text = main_conf.read_text(encoding="utf-8")
    if include not in text:
        restart |= write_if_changed(main_conf, text + "\n# doctag db host\n" + include, mode=0o600, owner=PG_USER)
    reload = write_if_changed(cfg.pg_data / "pg_hba.conf", pg_hba(cfg, hosts), mode=0o600, owner=PG_USER)
    reload |= write_if_changed(cfg.pg_data / "pg_ident.conf", pg_ident_conf(), mode=0o600, owner=PG_USER)
    if ctl.running(cfg, "postgres"):
        if restart:
            ctl.restart(cfg, "postgres")
            changes.append("postgres: restarted (configuration changed)")
        elif reload or tls_changed:
            ctl.reload(cfg, "postgres")
            changes.append("postgres: reloaded (pg_hba.conf or certificate changed)")
    else:
        ctl.start(cfg, "postgres")
        changes.append("postgres: started")
    return changes


def setup_database(cfg: DbHostConfig, secrets_dir: Path) -> list[str]:
    from services.common.migrate import upgrade

    settings = admin_settings(cfg)
    upgrade(settings, user="postgres", password="")
    db_accounts.ensure_passwords(settings.dsn(), secrets_dir / "db")
    return []


def _cookie(cfg: DbHostConfig) -> bool:
    path = cfg.rabbit_dir / ".erlang.cookie"
    if path.exists():
        return False
    return write_if_changed(path, secrets.token_hex(24), mode=0o400, owner=RABBITMQ_USER)


def setup_rabbitmq(cfg: DbHostConfig, secrets_dir: Path, tls_changed: bool, ctl: Direct) -> list[str]:
    changes = []
    for path in (cfg.rabbit_dir, cfg.rabbit_dir / "mnesia", cfg.rabbit_dir / "log"):
        _mkdir(path, RABBITMQ_USER)
    restart = _install_tls(cfg, cfg.rabbit_dir / "tls", RABBITMQ_USER) or tls_changed
    restart |= _cookie(cfg)
    restart |= write_if_changed(cfg.rabbit_dir / "rabbitmq.conf", rabbitmq_conf(cfg), mode=0o600, owner=RABBITMQ_USER)
    restart |= write_if_changed(cfg.rabbit_dir / "enabled_plugins", "[].\n", owner=RABBITMQ_USER)
    restart |= write_if_changed(cfg.rabbit_dir / "rabbitmq-env.conf", "# everything is set by `doctag dbhost`\n",
                                owner=RABBITMQ_USER)
    changes += _start_or_restart(cfg, ctl, "rabbitmq", restart)
    topology = Topology(prefix=cfg.amqp_prefix)
    rabbitmqctl = amqp_accounts.Rabbitmqctl(str(RABBITMQ_BIN / "rabbitmqctl"),
                                            prefix=dbhost_servers.rabbit_prefix(cfg), node=cfg.rabbit_node)
    if "guest" in rabbitmqctl.existing_users():
        rabbitmqctl.run("delete_user", "guest")
        changes.append("rabbitmq: guest user deleted")
    files = amqp_accounts.ensure(cfg.amqp_vhost, cfg.amqp_prefix, topology, secrets_dir / "amqp", ctl=rabbitmqctl)
    admin = amqp_accounts.users(cfg.amqp_prefix, topology)["admin"].name
    asyncio.run(amqp_accounts.declare_topology(
        amqp_accounts.url(cfg.address, cfg.amqp_port, cfg.amqp_vhost, admin,
                          files["admin"].read_text(encoding="utf-8").strip()), topology))
    return changes


def _start_or_restart(cfg: DbHostConfig, ctl: Direct, name: str, changed: bool) -> list[str]:
    if not ctl.running(cfg, name):
        ctl.start(cfg, name)
        return [f"{name}: started"]
    if changed:
        ctl.restart(cfg, name)
        return [f"{name}: restarted (configuration changed)"]
    return []


def setup_redis(cfg: DbHostConfig, secrets_dir: Path, ctl: Direct) -> list[str]:
    _mkdir(cfg.redis_dir, REDIS_USER)
    _mkdir(cfg.redis_dir / "data", REDIS_USER)
    password = db_accounts.read_or_create_password(secrets_dir / "redis" / REDIS_GATEWAY_USER)
    restart = write_if_changed(cfg.redis_dir / "redis.conf", redis_conf(cfg, password), mode=0o600, owner=REDIS_USER)
    return _start_or_restart(cfg, ctl, "redis", restart)


def setup(cfg: DbHostConfig, hosts: list[Host], *, secrets_dir: Path, pki_dir: Path, systemd: bool = False,
          say: Callable[[str], None] = print) -> list[str]:
    """Everything, in order; returns what changed (empty on a second run). `systemd`: the servers
    run as units (dbhost_config.systemd_units) instead of being started by this command."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.root, 0o755)
    changes = ["configuration saved"] if cfg.save() else []
    ctl: Direct
    if systemd:
        ctl = Systemd()
        if ctl.install(systemd_units(cfg)):
            changes.append("systemd units installed")
    else:
        ctl = Direct()
    tls_changed = ensure_certificate(cfg, pki_dir)
    if tls_changed:
        changes.append(f"certificate for {cfg.address} installed")
    changes += setup_postgres(cfg, hosts, tls_changed, ctl)
    say(f"PostgreSQL on {cfg.address}:{cfg.pg_port} (TLS, pg_hba.conf from the inventory)")
    changes += setup_database(cfg, secrets_dir)
    say(f"database {cfg.database} migrated; service role passwords in {secrets_dir / 'db'}")
    changes += setup_rabbitmq(cfg, secrets_dir, tls_changed, ctl)
    say(f"RabbitMQ {cfg.rabbit_node} on {cfg.address}:{cfg.amqp_port} (TLS {cfg.amqps_port}); vhost "
        f"{cfg.amqp_vhost}, users' passwords in {secrets_dir / 'amqp'}")
    changes += setup_redis(cfg, secrets_dir, ctl)
    say(f"Redis on {cfg.address}:{cfg.redis_port}, user {REDIS_GATEWAY_USER} "
        f"(password in {secrets_dir / 'redis' / REDIS_GATEWAY_USER})")
    return changes


# ------------------------------------------------------------------ backup and restore


def backup(cfg: DbHostConfig, now: dt.datetime | None = None) -> Path:
    """A base backup (plain files, WAL included, verified) in backups/<UTC time>; with the WAL
    archive it restores to any later moment."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H%M%SZ")
    target = cfg.backups / stamp
    if target.exists():
        raise DbHostError(f"{target} exists already")
    run([*as_user(PG_USER), str(PG_BIN / "pg_basebackup"), "-h", str(cfg.pg_socket_dir), "-p", str(cfg.pg_port),
         "-U", "postgres", "-D", str(target), "-Fp", "-X", "stream", "-c", "fast", "--no-password"],
        what="pg_basebackup", timeout=3600)
    run([*as_user(PG_USER), str(PG_BIN / "pg_verifybackup"), str(target)], what="pg_verifybackup", timeout=3600)
    return target


def prune(cfg: DbHostConfig, keep: int) -> list[Path]:
    """Keeps the newest `keep` base backups and the archived WAL from the oldest of them on
    (`pg_archivecleanup`); returns the backups removed."""
    backups = sorted(p for p in cfg.backups.iterdir() if (p / "backup_label").exists())
    if keep < 1 or len(backups) <= keep:
        return []
    label = (backups[-keep] / "backup_label").read_text(encoding="ascii")
    match = re.search(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", label)
    if match is None:
        raise DbHostError(f"{backups[-keep] / 'backup_label'}: no START WAL LOCATION")
    removed = backups[:-keep]
    for path in removed:
        shutil.rmtree(path)
    run([*as_user(PG_USER), str(PG_BIN / "pg_archivecleanup"), str(cfg.wal_archive), match.group(1)],
        what="pg_archivecleanup")
    return removed


def restore(cfg: DbHostConfig, base: Path, target: Path, port: int, *, until: str | None = None,
            timeout: float = 300) -> Path:
    """Restores the base backup `base` into the new data directory `target` and replays the WAL
    archive (to its end, or to `until`), then starts it on `port`, reachable only through its
    socket directory (returned: `<target>.run`, its log there too) and with archiving off, for the
    operator to check before making it the db host's cluster."""
    if not (base / "backup_label").exists():
        raise DbHostError(f"--backup {base}: not a base backup (no backup_label)")
    if target.exists():
        raise DbHostError(f"--target {target}: exists already; restore into a new directory")
    run(["cp", "-a", str(base), str(target)], what="copy of the base backup", timeout=3600)
    run(["chown", "-R", f"{PG_USER}:{PG_USER}", str(target)], what="chown")
    os.chmod(target, 0o700)
    settings = [f"restore_command = '{restore_command(cfg.wal_archive)}'",
                "recovery_target_timeline = 'latest'"]
    if until:
        settings += [f"recovery_target_time = '{until}'", "recovery_target_action = 'promote'"]
    auto = target / "postgresql.auto.conf"
    with open(auto, "a", encoding="utf-8") as fh:
        fh.write("\n# doctag dbhost restore\n" + "\n".join(settings) + "\n")
    (target / "recovery.signal").touch()
    for path in (auto, target / "recovery.signal"):
        shutil.chown(path, PG_USER, PG_USER)
    sockets = target.with_name(target.name + ".run")
    _mkdir(sockets, PG_USER, 0o755)
    log = sockets / "postgres.log"
    options = f"-p {port} -c listen_addresses='' -c archive_mode=off -k {sockets}"
    run([*as_user(PG_USER), str(PG_BIN / "pg_ctl"), "-D", str(target), "-l", str(log), "-w", "-t", str(int(timeout)),
         "-o", options,
         "start"], what="start of the restored cluster", timeout=timeout + 30)
    _wait_promoted(sockets, port, timeout)
    return sockets


def _wait_promoted(sockets: Path, port: int, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres",
                                 connect_timeout=5) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise DbHostError(f"the restored cluster did not finish recovery within {timeout:.0f} s")
        time.sleep(0.3)
