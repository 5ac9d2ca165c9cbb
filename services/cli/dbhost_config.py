"""The db VM's servers as files: where each lives under the data root, and their configuration.

One layout for every db host, with or without systemd: PostgreSQL 15, RabbitMQ and Redis from the
distribution's packages, each with its own data directory under the data root (default
/var/lib/doctag-db), owned by its package's system user. Nothing here touches the distribution's
default instances, so a db host can run next to them (the multi-host test runs one in a network
namespace on a machine that has its own PostgreSQL, RabbitMQ and Redis on 127.0.0.1).

Everything is rendered from `DbHostConfig` (kept in `<root>/dbhost.json` by `doctag dbhost setup`,
so `start`, `stop`, `backup` need only the data root) and written only when it differs, which is
what makes `setup` idempotent.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import vm_layout

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
REDIS_SERVER = "/usr/bin/redis-server"
DEFAULT_ROOT = Path("/var/lib/doctag-db")
# The OS users of the packages; each server's directory is theirs.
PG_USER, RABBITMQ_USER, REDIS_USER = "postgres", "rabbitmq", "redis"
# pg_ident.conf map: root (running `doctag dbhost`) and postgres connect locally as `postgres`.
ADMIN_MAP = "doctag_admin"
REDIS_GATEWAY_USER = "doctag-gateway"
CONFIG_NAME = "dbhost.json"


@dataclass(frozen=True)
class DbHostConfig:
    root: Path
    address: str                       # the db host's private address: every listener binds to it
    host_name: str = "db-1"
    pg_port: int = vm_layout.POSTGRES_PORT
    amqp_port: int = vm_layout.RABBITMQ_PORT
    amqps_port: int = vm_layout.RABBITMQ_PORT - 1     # 5671, AMQP over TLS
    redis_port: int = vm_layout.REDIS_PORT
    rabbit_node: str = "doctag-db@localhost"          # not `rabbit@...`: the distribution's node keeps its name
    rabbit_dist_port: int = 25672                     # Erlang distribution, bound to loopback only
    database: str = "doctag"
    amqp_vhost: str = "doctag"
    amqp_prefix: str = "doctag"
    memory_mib: int = 0                # the host's memory, which PostgreSQL's is sized from; 0: its defaults

    # -- PostgreSQL ------------------------------------------------------------
    @property
    def pg_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_dir / "run"

    @property
    def pg_log(self) -> Path:
        return self.pg_dir / "postgres.log"

    @property
    def wal_archive(self) -> Path:
        return self.pg_dir / "wal-archive"

    @property
    def backups(self) -> Path:
        return self.pg_dir / "backups"

    @property
    def archive_script(self) -> Path:
        return self.pg_dir / "archive-wal.sh"

    @property
    def pg_tls(self) -> Path:
        return self.pg_dir / "tls"

    # -- RabbitMQ ----------------------------------------------------------------
    @property
    def rabbit_dir(self) -> Path:
        """Also the node's HOME: its Erlang cookie is `.erlang.cookie` here."""
        return self.root / "rabbitmq"

    @property
    def rabbit_pid(self) -> Path:
        return self.rabbit_dir / "rabbit.pid"

    # -- Redis -------------------------------------------------------------------
    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_pid(self) -> Path:
        return self.redis_dir / "redis.pid"

    def save(self) -> bool:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}
        return write_if_changed(self.root / CONFIG_NAME, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> DbHostConfig:
        path = root / CONFIG_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no db host here; run `doctag dbhost setup` first") from None
        data["root"] = Path(data["root"])
        return cls(**data)


def write_if_changed(path: Path, text: str, *, mode: int = 0o644, owner: str | None = None) -> bool:
    """Writes `text` atomically unless the file holds it already; returns True when it wrote."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    if owner is not None:
        import shutil

        shutil.chown(tmp, owner, owner)
    os.replace(tmp, path)
    return True


# ------------------------------------------------------------------ PostgreSQL


def host_memory_mib() -> int:
    """This machine's physical memory in MiB."""
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20)


def memory_settings(memory_mib: int) -> dict[str, str]:
    """PostgreSQL's memory from the host's (PostgreSQL's own sizing guidance for a dedicated server).

    shared_buffers a quarter of memory: search reads postings, documents and tags at random (4.3 GiB
    at a million documents), and the buffers are what keeps them in memory; the operating system's
    page cache cannot be counted on where the hypervisor takes free memory back. effective_cache_size
    half of it (the planner's estimate of what is cached); maintenance_work_mem for index builds and
    vacuum; work_mem for the search statement's sorts and aggregates (per operation, per session)."""
    if memory_mib <= 0:
        return {}
    return {
        "shared_buffers": f"{max(128, memory_mib // 4)}MB",
        "effective_cache_size": f"{max(256, memory_mib // 2)}MB",
        "maintenance_work_mem": f"{min(2048, max(64, memory_mib // 16))}MB",
        "work_mem": "16MB",
    }


def postgresql_conf(cfg: DbHostConfig) -> str:
    """`doctag.conf`, included at the end of the cluster's postgresql.conf."""
    def q(value: object) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    archive = f"/bin/sh {cfg.archive_script} %p %f"
    settings = {
        "listen_addresses": q(cfg.address),
        "port": str(cfg.pg_port),
        "unix_socket_directories": q(cfg.pg_socket_dir),
        "password_encryption": q("scram-sha-256"),
        "ssl": "on",
        "ssl_cert_file": q(cfg.pg_tls / "db.crt"),
        "ssl_key_file": q(cfg.pg_tls / "db.key"),
        "ssl_ca_file": q(cfg.pg_tls / "ca.crt"),
        "ssl_min_protocol_version": q("TLSv1.2"),
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": q(archive),
        # A segment is archived at least every minute, also when little is written: the most
        # work a restore from the archive can lose.
        "archive_timeout": "60",
        "max_wal_senders": "4",
        # A client host that vanishes from the network (rather than closing its connections) would
        # otherwise keep its sessions, and the row locks their transactions hold (the outbox relay's
        # dispatch lock), for the kernel's two hours of keepalive silence: dropped in about 25 s.
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "25000",
        "log_connections": "on",
        "log_line_prefix": q("%m [%p] %q%u@%d %r "),
        **memory_settings(cfg.memory_mib),
    }
    lines = ["# doctag db host (written by `doctag dbhost setup`; do not edit by hand)"]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def archive_script(cfg: DbHostConfig) -> str:
    """archive_command: a segment reaches the archive whole (copy, fsync, rename) or not at all.
    A segment archived before with the same content counts as done (a retry after a crash);
    different content under the same name is refused, so nothing archived is ever overwritten."""
    archive = shlex.quote(str(cfg.wal_archive))
    return f"""#!/bin/sh
# archive_command of the doctag db host: archive-wal.sh %p %f (written by `doctag dbhost setup`)
set -eu
src="$1"; name="$2"; dir={archive}
if [ -f "$dir/$name" ]; then
    cmp -s "$src" "$dir/$name" && exit 0
    echo "archive-wal: $dir/$name exists with other content" >&2
    exit 1
fi
cp "$src" "$dir/.$name.part"
sync "$dir/.$name.part"
mv "$dir/.$name.part" "$dir/$name"
sync "$dir"
"""


def pg_ident_conf() -> str:
    return ("# pg_ident.conf of the doctag db host (written by `doctag dbhost setup`)\n"
            f"{ADMIN_MAP:<16} root             postgres\n"
            f"{ADMIN_MAP:<16} postgres         postgres\n")


def restore_command(archive: Path) -> str:
    return f"cp {shlex.quote(str(archive))}/%f \"%p\""


# ------------------------------------------------------------------ RabbitMQ


def rabbitmq_conf(cfg: DbHostConfig) -> str:
    tls = cfg.rabbit_dir / "tls"
    return f"""# RabbitMQ of the doctag db host (written by `doctag dbhost setup`; do not edit by hand)
listeners.tcp.1 = {cfg.address}:{cfg.amqp_port}
listeners.ssl.1 = {cfg.address}:{cfg.amqps_port}
ssl_options.cacertfile = {tls / "ca.crt"}
ssl_options.certfile = {tls / "db.crt"}
ssl_options.keyfile = {tls / "db.key"}
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
loopback_users.guest = true
log.file = {cfg.rabbit_dir / "log" / "rabbit.log"}
log.console = false
"""


def rabbit_env(cfg: DbHostConfig) -> dict[str, str]:
    """The node's environment: its own name, files, cookie (HOME) and an Erlang distribution (and
    epmd) reachable from this host only."""
    d = cfg.rabbit_dir
    loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
    return {
        "HOME": str(d),
        "RABBITMQ_NODENAME": cfg.rabbit_node,
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(cfg.rabbit_pid),
        "RABBITMQ_DIST_PORT": str(cfg.rabbit_dist_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback,
        "RABBITMQ_CTL_ERL_ARGS": loopback,
    }


def as_user(user: str, env: dict[str, str] | None = None) -> list[str]:
    """Command prefix running as a package's user with exactly `env` added (runuser resets HOME)."""
    return ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in (env or {}).items())]


# ------------------------------------------------------------------ Redis


def redis_password_hash(password: str) -> str:
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def redis_conf(cfg: DbHostConfig, gateway_password: str) -> str:
    """Only the gateway's ACL user can log in (its password as a SHA-256 in the file); the
    default user is off, and protected mode stays on."""
    d = cfg.redis_dir
    return f"""# Redis of the doctag db host (written by `doctag dbhost setup`; do not edit by hand)
bind {cfg.address}
port {cfg.redis_port}
protected-mode yes
daemonize yes
pidfile {d / "redis.pid"}
logfile {d / "redis.log"}
dir {d / "data"}
save 3600 1
appendonly no
user default off
user {REDIS_GATEWAY_USER} on #{redis_password_hash(gateway_password)} ~* &* +@all -@admin -@dangerous
"""


# ------------------------------------------------------------------ systemd (hosts that have it)


def systemd_units(cfg: DbHostConfig) -> dict[str, str]:
    """One unit per server, running the same programs and files as `doctag dbhost start` does, in
    the foreground; each server tells systemd itself when it is ready (Type=notify)."""
    env = "\n".join(f'Environment="{k}={v}"' for k, v in rabbit_env(cfg).items())
    common = "Restart=on-failure\nRestartSec=5\nLimitNOFILE=65536\n"

    def hardened(writes: Path) -> str:
        return (f"ProtectSystem=strict\nReadWritePaths={writes}\nProtectHome=true\nPrivateTmp=true\n"
                "NoNewPrivileges=true\nPrivateDevices=true\n")
    return {
        "doctag-postgresql.service": f"""[Unit]
Description=doctag PostgreSQL ({cfg.pg_data})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
User={PG_USER}
ExecStart={PG_BIN / "postgres"} -D {cfg.pg_data}
ExecReload=/bin/kill -HUP $MAINPID
KillMode=mixed
KillSignal=SIGINT
TimeoutStopSec=120
{hardened(cfg.pg_dir)}{common}
[Install]
WantedBy=multi-user.target
""",
        "doctag-rabbitmq.service": f"""[Unit]
Description=doctag RabbitMQ ({cfg.rabbit_node})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
User={RABBITMQ_USER}
NotifyAccess=all
WorkingDirectory={cfg.rabbit_dir}
{env}
ExecStart={RABBITMQ_BIN / "rabbitmq-server"}
ExecStop={RABBITMQ_BIN / "rabbitmqctl"} -n {cfg.rabbit_node} stop
TimeoutStartSec=600
{hardened(cfg.rabbit_dir)}{common}
[Install]
WantedBy=multi-user.target
""",
        "doctag-redis.service": f"""[Unit]
Description=doctag Redis ({cfg.address}:{cfg.redis_port})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
User={REDIS_USER}
ExecStart={REDIS_SERVER} {cfg.redis_dir / "redis.conf"} --supervised systemd --daemonize no
{hardened(cfg.redis_dir)}{common}
[Install]
WantedBy=multi-user.target
""",
    }
